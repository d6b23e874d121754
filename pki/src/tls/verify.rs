//! The mesh's certificate verifiers: rustls' `WebPki*Verifier` against the pinned CA bundle,
//! plus each anchor's `pathLenConstraint`, the listener's allow list (server side), and a
//! bounded cache of chains that already verified ([`super::verified`]).
//!
//! Per handshake, a cache hit replaces only the chain verification (signatures, path, key
//! usage), and only while every certificate of the chain is valid at the handshake's `now`. The
//! allow list, the server name and the peer's `CertificateVerify` signature are checked on
//! every handshake, hit or miss.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{aws_lc_rs, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};

use super::verified::{Verified, VerifiedChains};
use super::TlsError;
use crate::identity::{AllowPattern, PeerIdentity};

/// The pinned anchors with each one's `pathLenConstraint`, which webpki does not apply to a
/// trust anchor: the mesh CA has pathlen 0, so a chain through any intermediate is refused.
#[derive(Debug)]
pub(super) struct Anchors {
    trusted: Vec<TrustAnchor<'static>>,
    path_len: Vec<Option<u32>>,
    algs: WebPkiSupportedAlgorithms,
}

impl Anchors {
    pub(super) fn new(ca_certs: &[CertificateDer<'static>]) -> Result<Self, TlsError> {
        let mut anchors = Vec::with_capacity(ca_certs.len());
        let mut path_len = Vec::with_capacity(ca_certs.len());
        for (index, c) in ca_certs.iter().enumerate() {
            let bad = |why: String| TlsError::BadAnchor { index, why };
            anchors.push(
                webpki::anchor_from_trusted_cert(c)
                    .map_err(|e| bad(e.to_string()))?
                    .to_owned(),
            );
            let (_, parsed) =
                x509_parser::parse_x509_certificate(c).map_err(|e| bad(e.to_string()))?;
            let bc = parsed.basic_constraints().map_err(|e| bad(e.to_string()))?;
            path_len.push(bc.and_then(|b| b.value.path_len_constraint));
        }
        Ok(Self {
            trusted: anchors,
            path_len,
            algs: aws_lc_rs::default_provider().signature_verification_algorithms,
        })
    }

    /// Verifies a chain for a usage at `now`, including the anchors' path length limits.
    pub(super) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<(), webpki::Error> {
        let ee = webpki::EndEntityCert::try_from(end_entity)?;
        let check = |path: &webpki::VerifiedPath<'_>| {
            let depth = path.intermediate_certificates().count();
            let spki = path.anchor().subject_public_key_info.as_ref();
            let limit = self
                .trusted
                .iter()
                .zip(&self.path_len)
                .find(|(a, _)| a.subject_public_key_info.as_ref() == spki)
                .and_then(|(_, l)| *l);
            match limit {
                Some(l) if depth > l as usize => Err(webpki::Error::PathLenConstraintViolated),
                _ => Ok(()),
            }
        };
        ee.verify_for_usage(
            self.algs.all,
            &self.trusted,
            intermediates,
            now,
            usage,
            None,
            Some(&check),
        )
        .map(|_| ())
    }
}

/// A chain the anchors' path length refuses, as a rustls error (counted as `bad_certificate`).
fn path_error(e: webpki::Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

/// The peer's handshake signature (`CertificateVerify`) did not verify: a bad certificate (for
/// example an RSA-1024 key), not an unknown CA.
#[derive(Debug, thiserror::Error)]
#[error("handshake signature rejected: {0}")]
struct HandshakeSignatureError(rustls::Error);

fn signature_error(e: rustls::Error) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        HandshakeSignatureError(e),
    ))))
}

/// The pinned-CA client verifier, plus the anchors' path length, the listener's allow list and
/// the cache of verified client chains.
#[derive(Debug)]
pub(super) struct MeshClientVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) anchors: Arc<Anchors>,
    pub(super) allow: Option<Vec<AllowPattern>>,
    pub(super) chains: Arc<VerifiedChains>,
}

impl MeshClientVerifier {
    /// The whole chain verification, without the cache.
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        // Fast path: a leaf sent alone cannot exceed any path length.
        if !intermediates.is_empty() {
            self.anchors
                .verify(
                    end_entity,
                    intermediates,
                    now,
                    webpki::KeyUsage::client_auth(),
                )
                .map_err(path_error)?;
        }
        Ok(())
    }

    /// The allow list, on every handshake.
    fn check_allowed(&self, identity: Option<&PeerIdentity>) -> Result<(), rustls::Error> {
        let Some(allow) = &self.allow else {
            return Ok(());
        };
        let identity = identity.ok_or(rustls::Error::InvalidCertificate(
            CertificateError::BadEncoding,
        ))?;
        if identity.is_allowed(allow) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = self.chains.key(end_entity, intermediates);
        if let Some(hit) = key.and_then(|k| self.chains.lookup(&k, now)) {
            self.check_allowed(hit.identity())?;
            return Ok(ClientCertVerified::assertion());
        }
        self.verify_chain(end_entity, intermediates, now)?;
        let identity = PeerIdentity::from_der(end_entity).ok();
        self.check_allowed(identity.as_ref())?;
        // Cached only once everything passed; a leaf whose SANs cannot be read is not cached
        // (it is accepted only by listeners without an allow list, as before the cache).
        if let (Some(key), Some(identity)) = (key, identity) {
            if let Some(v) = Verified::new(end_entity, intermediates, Some(identity)) {
                self.chains.insert(key, v, now);
            }
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, cert, dss)
            .map_err(signature_error)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, cert, dss)
            .map_err(signature_error)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The pinned-CA server verifier (chain, validity, SAN against the server name), plus the
/// anchors' path length and the cache of verified server chains.
#[derive(Debug)]
pub(super) struct MeshServerVerifier {
    pub(super) inner: Arc<WebPkiServerVerifier>,
    pub(super) anchors: Arc<Anchors>,
    pub(super) chains: Arc<VerifiedChains>,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = self.chains.key(end_entity, intermediates);
        if key.and_then(|k| self.chains.lookup(&k, now)).is_some() {
            // The name is per handshake: the same chain may be offered for another name.
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_name(&cert, server_name)?;
            return Ok(ServerCertVerified::assertion());
        }
        // Chain, validity, key usage and the server name.
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if !intermediates.is_empty() {
            self.anchors
                .verify(
                    end_entity,
                    intermediates,
                    now,
                    webpki::KeyUsage::server_auth(),
                )
                .map_err(path_error)?;
        }
        if let Some(key) = key {
            if let Some(v) = Verified::new(end_entity, intermediates, None) {
                self.chains.insert(key, v, now);
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls12_signature(message, cert, dss)
            .map_err(signature_error)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner
            .verify_tls13_signature(message, cert, dss)
            .map_err(signature_error)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
