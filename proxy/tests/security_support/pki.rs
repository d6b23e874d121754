//! Certificates for the adversarial tests, minted per test: a mesh CA shaped like the one init
//! derives (P-256, CA:TRUE with pathlen 0, keyCertSign + cRLSign), good workload leaves, and every
//! kind of bad certificate a sidecar must refuse. RSA-1024 and SHA-1 certificates are made with
//! the `openssl` CLI, since rcgen (rightly) cannot make them.

#![allow(
    dead_code,
    reason = "shared by several security test crates; each uses a part"
)]

use std::path::Path;
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// A certificate chain (leaf first) and its key, PEM.
#[derive(Clone)]
pub(crate) struct Minted {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Minted(..)")
    }
}

/// A CA for one test.
pub(crate) struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub(crate) cert_pem: String,
}

/// What goes into a leaf; `Default` is a valid workload leaf for `sa` = `frontend`.
#[derive(Clone, Debug)]
pub(crate) struct Leaf {
    pub(crate) sa: String,
    pub(crate) dns: Vec<String>,
    pub(crate) not_before: OffsetDateTime,
    pub(crate) not_after: OffsetDateTime,
    pub(crate) ekus: Vec<ExtendedKeyUsagePurpose>,
    pub(crate) ca: Option<BasicConstraints>,
    pub(crate) critical_unknown_extension: bool,
}

pub(crate) const TRUST_DOMAIN: &str = "cluster.local";

pub(crate) fn spiffe(sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/default/sa/{sa}")
}

impl Leaf {
    pub(crate) fn workload(sa: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            sa: sa.to_owned(),
            dns: vec![
                format!("{sa}.default.svc.cluster.local"),
                format!("{sa}.default.svc"),
                "localhost".to_owned(),
            ],
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(1),
            ekus: vec![
                ExtendedKeyUsagePurpose::ClientAuth,
                ExtendedKeyUsagePurpose::ServerAuth,
            ],
            ca: None,
            critical_unknown_extension: false,
        }
    }

    fn params(&self) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs to parse");
        params
            .distinguished_name
            .push(DnType::CommonName, spiffe(&self.sa));
        params.subject_alt_names.push(SanType::URI(
            spiffe(&self.sa).try_into().expect("test URIs are IA5"),
        ));
        for dns in &self.dns {
            params.subject_alt_names.push(SanType::DnsName(
                dns.clone().try_into().expect("test DNS names are IA5"),
            ));
        }
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
        params.not_before = self.not_before;
        params.not_after = self.not_after;
        params.extended_key_usages.clone_from(&self.ekus);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if let Some(bc) = &self.ca {
            params.is_ca = IsCa::Ca(*bc);
            params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        if self.critical_unknown_extension {
            // A private-arc OID no verifier knows; content is a DER NULL.
            let mut ext =
                CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 7, 1], vec![5, 0]);
            ext.set_criticality(true);
            params.custom_extensions.push(ext);
        }
        params
    }
}

impl Ca {
    /// A root like init's derived CA: P-256, CA:TRUE pathlen 0.
    pub(crate) fn mesh(common_name: &str) -> Self {
        Self::root(common_name, BasicConstraints::Constrained(0))
    }

    pub(crate) fn root(common_name: &str, constraints: BasicConstraints) -> Self {
        let key = KeyPair::generate().expect("P-256 key generation does not fail");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs to parse");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(constraints);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(30);
        let cert_pem = params
            .self_signed(&key)
            .expect("self-signing a fresh CA does not fail")
            .pem();
        Self {
            params,
            key,
            cert_pem,
        }
    }

    /// Issues a leaf (or, with `leaf.ca`, an intermediate) and returns it with its key.
    pub(crate) fn issue(&self, leaf: &Leaf) -> (Minted, CertificateParams, KeyPair) {
        let key = KeyPair::generate().expect("P-256 key generation does not fail");
        let params = leaf.params();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .expect("signing a test leaf does not fail");
        let minted = Minted {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        (minted, params, key)
    }

    pub(crate) fn leaf(&self, leaf: &Leaf) -> Minted {
        self.issue(leaf).0
    }

    /// This CA's own certificate and key, presented as if it were a leaf.
    pub(crate) fn as_leaf(&self) -> Minted {
        Minted {
            chain_pem: self.cert_pem.clone(),
            key_pem: self.key.serialize_pem(),
        }
    }

    /// A leaf for `sa` signed by `issuer_leaf` (itself signed by this CA), sent with that
    /// issuer in the chain: `leaf ← issuer_leaf ← CA`.
    pub(crate) fn leaf_signed_by_leaf(&self, issuer_leaf: &Leaf, sa: &str) -> Minted {
        let (first, first_params, first_key) = self.issue(issuer_leaf);
        let key = KeyPair::generate().expect("P-256 key generation does not fail");
        let issuer = Issuer::from_params(&first_params, &first_key);
        let second = Leaf::workload(sa)
            .params()
            .signed_by(&key, &issuer)
            .expect("signing a test leaf does not fail");
        Minted {
            chain_pem: format!("{}{}", second.pem(), first.chain_pem),
            key_pem: key.serialize_pem(),
        }
    }

    /// A leaf made with the openssl CLI: `newkey` is e.g. `rsa:1024` or `ec` (with
    /// `-pkeyopt ec_paramgen_curve:P-256`), `digest` e.g. `-sha1`.
    pub(crate) fn openssl_leaf(
        &self,
        dir: &Path,
        sa: &str,
        newkey: &[&str],
        digest: &str,
    ) -> Minted {
        let ca_cert = dir.join("openssl-ca.pem");
        let ca_key = dir.join("openssl-ca.key");
        let csr = dir.join("openssl-leaf.csr");
        let key = dir.join("openssl-leaf.key");
        let cert = dir.join("openssl-leaf.pem");
        let ext = dir.join("openssl-leaf.ext");
        std::fs::write(&ca_cert, &self.cert_pem).unwrap();
        std::fs::write(&ca_key, self.key.serialize_pem()).unwrap();
        std::fs::write(
            &ext,
            format!(
                "subjectAltName=URI:{},DNS:{sa}.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1\n\
                 extendedKeyUsage=clientAuth,serverAuth\nkeyUsage=critical,digitalSignature\n\
                 basicConstraints=critical,CA:FALSE\n",
                spiffe(sa)
            ),
        )
        .unwrap();
        let mut req = vec!["req", "-new", "-nodes", "-subj", "/CN=openssl-leaf"];
        req.extend_from_slice(newkey);
        let key_s = key.to_str().unwrap();
        let csr_s = csr.to_str().unwrap();
        req.extend_from_slice(&["-keyout", key_s, "-out", csr_s]);
        openssl(&req);
        openssl(&[
            "x509",
            "-req",
            "-in",
            csr_s,
            "-CA",
            ca_cert.to_str().unwrap(),
            "-CAkey",
            ca_key.to_str().unwrap(),
            "-CAcreateserial",
            "-days",
            "1",
            digest,
            "-extfile",
            ext.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ]);
        Minted {
            chain_pem: std::fs::read_to_string(&cert).unwrap(),
            key_pem: std::fs::read_to_string(&key).unwrap(),
        }
    }
}

/// Runs the openssl CLI and fails loudly (naming the install script) when it is missing.
pub(crate) fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl CLI not runnable ({e}): install it with scripts/ci-deps/base.sh")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
