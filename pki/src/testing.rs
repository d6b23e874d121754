//! Throwaway CAs and leaves for tests, minted per test with rcgen: a good workload leaf, and the
//! bad ones a verifier must refuse (another CA, expired, not yet valid, wrong SAN, a CA
//! certificate used as a leaf, a wrong extended key usage), and a real handshake over loopback.
//! Never enabled in a binary.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use rustls_pki_types::{CertificateDer, ServerName};
use time::{Duration, OffsetDateTime};

use crate::identity::{service_dns_names, SpiffeId, DEFAULT_TRUST_DOMAIN};

/// A CA that lives for the duration of a test.
pub struct TestCa {
    params: CertificateParams,
    key: KeyPair,
    cert: rcgen::Certificate,
}

/// A minted certificate with its key, as PEM and DER.
#[derive(Clone)]
pub struct TestCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
}

impl std::fmt::Debug for TestCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCert(..)")
    }
}

/// What to put in a leaf.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// URI SANs.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<std::net::IpAddr>,
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
    /// Extended key usages.
    pub ekus: Vec<ExtendedKeyUsagePurpose>,
    /// Mark the leaf as a CA (basicConstraints CA:TRUE), which a verifier must refuse.
    pub is_ca: bool,
}

impl LeafSpec {
    /// A leaf for service account `sa` in namespace `default`: its SPIFFE ID, the two service
    /// DNS names, `localhost` and 127.0.0.1, valid from an hour ago for a day, client+server auth.
    #[must_use]
    pub fn workload(sa: &str) -> Self {
        let id = SpiffeId::new(DEFAULT_TRUST_DOMAIN, "default", sa)
            .expect("test service account names are valid segments");
        let mut dns = service_dns_names(sa, "default");
        dns.push("localhost".to_owned());
        let now = OffsetDateTime::now_utc();
        Self {
            uris: vec![id.to_string()],
            dns,
            ips: vec![std::net::Ipv4Addr::LOCALHOST.into()],
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(1),
            ekus: vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
            is_ca: false,
        }
    }

    /// Validity moved entirely into the past.
    #[must_use]
    pub fn expired(mut self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.not_before = now - Duration::days(2);
        self.not_after = now - Duration::days(1);
        self
    }

    /// Validity moved entirely into the future.
    #[must_use]
    pub fn not_yet_valid(mut self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.not_before = now + Duration::days(1);
        self.not_after = now + Duration::days(2);
        self
    }
}

impl TestCa {
    /// A fresh P-256 root CA with the given common name and `pathlen:0`, like the mesh CA that
    /// init derives: it signs leaves only.
    #[must_use]
    pub fn new(common_name: &str) -> Self {
        Self::build(common_name, None)
    }

    /// An intermediate CA signed by this one (which a `pathlen:0` root must not accept).
    #[must_use]
    pub fn intermediate(&self, common_name: &str) -> Self {
        Self::build(common_name, Some(self))
    }

    fn build(common_name: &str, parent: Option<&TestCa>) -> Self {
        let key = KeyPair::generate().expect("P-256 key generation does not fail");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs to parse");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(30);
        let cert = match parent {
            None => params.self_signed(&key),
            Some(p) => params.signed_by(&key, &Issuer::from_params(&p.params, &p.key)),
        }
        .expect("signing a fresh CA does not fail");
        Self { params, key, cert }
    }

    /// The CA certificate, PEM.
    #[must_use]
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER.
    #[must_use]
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The CA certificate and key together, as a leaf-shaped bundle (to present a CA as a leaf).
    #[must_use]
    pub fn as_cert(&self) -> TestCert {
        TestCert {
            cert_pem: self.cert.pem(),
            key_pem: self.key.serialize_pem(),
            der: self.cert.der().clone(),
        }
    }

    /// The TLS material a sidecar would load: this CA pinned, `leaf` and its key.
    ///
    /// # Panics
    /// When the material does not verify, which a leaf from this CA always does.
    #[must_use]
    pub fn material(&self, leaf: &TestCert) -> crate::tls::Material {
        crate::tls::Material::from_pem(
            self.cert_pem().as_bytes(),
            leaf.cert_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            ["ca", "cert", "key"],
        )
        .expect("freshly minted material verifies")
    }

    /// Issues a leaf from a spec.
    #[must_use]
    pub fn issue(&self, spec: &LeafSpec) -> TestCert {
        let key = KeyPair::generate().expect("P-256 key generation does not fail");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs to parse");
        let cn = spec
            .uris
            .first()
            .or(spec.dns.first())
            .cloned()
            .unwrap_or_else(|| "test leaf".to_owned());
        params.distinguished_name.push(DnType::CommonName, cn);
        for uri in &spec.uris {
            params.subject_alt_names.push(SanType::URI(
                uri.clone().try_into().expect("test URIs are IA5"),
            ));
        }
        for dns in &spec.dns {
            params.subject_alt_names.push(SanType::DnsName(
                dns.clone().try_into().expect("test DNS names are IA5"),
            ));
        }
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.extended_key_usages.clone_from(&spec.ekus);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.is_ca {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .expect("signing a test leaf does not fail");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A leaf whose PEM is followed by this CA's certificate (a chain through an intermediate).
    #[must_use]
    pub fn workload_with_chain(&self, sa: &str) -> TestCert {
        let mut leaf = self.workload(sa);
        leaf.cert_pem.push_str(&self.cert.pem());
        leaf
    }

    /// A valid leaf for service account `sa` (see [`LeafSpec::workload`]).
    #[must_use]
    pub fn workload(&self, sa: &str) -> TestCert {
        self.issue(&LeafSpec::workload(sa))
    }
}

/// What each end of a [`loopback_handshake`] saw. Errors wrap the rustls error, so
/// [`crate::tls::RejectReason::from_io`] classifies them.
#[derive(Debug)]
pub struct HandshakeOutcome {
    /// The client's result: `Ok` once it has read the byte the server sends after accepting
    /// the client's certificate (in TLS 1.3 the client finishes before the server has checked it).
    pub client: std::io::Result<()>,
    /// The server's result.
    pub server: std::io::Result<()>,
}

/// One mutual-TLS handshake over a real TCP connection on loopback, with blocking sockets and a
/// thread for the server; every read and write has a generous timeout so nothing hangs.
#[must_use]
pub fn loopback_handshake(
    client: Arc<ClientConfig>,
    server_name: &str,
    server: Arc<ServerConfig>,
) -> HandshakeOutcome {
    const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
    let timeouts = |sock: &TcpStream| -> std::io::Result<()> {
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let server_side = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut sock, _) = listener.accept()?;
        timeouts(&sock)?;
        let mut conn = ServerConnection::new(server).map_err(std::io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        let mut tls = rustls::Stream::new(&mut conn, &mut sock);
        tls.write_all(b"k")?;
        tls.flush()?;
        // Wait for the client to close, so that closing first cannot reset the byte away.
        let _ = tls.read(&mut [0; 1]);
        Ok(())
    });
    let client_side = || -> std::io::Result<()> {
        // Connect first, so that the server thread's accept returns whatever happens next.
        let mut sock = TcpStream::connect(addr)?;
        timeouts(&sock)?;
        let name = ServerName::try_from(server_name.to_owned()).map_err(std::io::Error::other)?;
        let mut conn = ClientConnection::new(client, name).map_err(std::io::Error::other)?;
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)?;
        }
        rustls::Stream::new(&mut conn, &mut sock).read_exact(&mut [0; 1])
    };
    let client = client_side();
    let server = server_side
        .join()
        .expect("the server thread returns its errors rather than panicking");
    HandshakeOutcome { client, server }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PeerIdentity;
    use crate::tls::{Material, TlsError};

    #[test]
    fn aes_128_gcm_is_preferred_and_the_other_suites_keep_their_order() {
        use rustls::CipherSuite as S;
        let ours: Vec<_> = crate::tls::provider()
            .cipher_suites
            .iter()
            .map(rustls::SupportedCipherSuite::suite)
            .collect();
        assert_eq!(ours[0], S::TLS13_AES_128_GCM_SHA256);
        let mut default: Vec<_> = rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .map(rustls::SupportedCipherSuite::suite)
            .collect();
        default.retain(|s| *s != S::TLS13_AES_128_GCM_SHA256);
        assert_eq!(ours[1..], default[..]);
    }

    #[test]
    fn workload_leaf_verifies_and_bad_ones_do_not() {
        let ca = TestCa::new("test CA");
        let good = ca.workload("frontend");
        let m = ca.material(&good);
        assert_eq!(
            m.identity().uris,
            ["spiffe://cluster.local/ns/default/sa/frontend"]
        );
        assert_eq!(
            PeerIdentity::from_der(&good.der)
                .unwrap()
                .spiffe_id()
                .unwrap()
                .service_account(),
            "frontend"
        );

        let rogue = TestCa::new("rogue CA").workload("frontend");
        let expired = ca.issue(&LeafSpec::workload("x").expired());
        for (bad, what) in [(&rogue, "rogue"), (&expired, "expired")] {
            let err = Material::from_pem(
                ca.cert_pem().as_bytes(),
                bad.cert_pem.as_bytes(),
                bad.key_pem.as_bytes(),
                ["ca", "cert", "key"],
            )
            .unwrap_err();
            assert!(matches!(err, TlsError::Untrusted { .. }), "{what}: {err}");
        }
        // The root has pathlen 0: a chain through an intermediate is refused.
        let via = ca
            .intermediate("intermediate")
            .workload_with_chain("frontend");
        let err = Material::from_pem(
            ca.cert_pem().as_bytes(),
            via.cert_pem.as_bytes(),
            via.key_pem.as_bytes(),
            ["ca", "cert", "key"],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("PathLenConstraintViolated"),
            "{err}"
        );
        let other_key = ca.workload("y").key_pem;
        let err = Material::from_pem(
            ca.cert_pem().as_bytes(),
            good.cert_pem.as_bytes(),
            other_key.as_bytes(),
            ["ca", "cert", "key"],
        )
        .unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch(_)), "{err}");
    }
}
