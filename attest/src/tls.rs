//! TLS helpers shared by the server and the client.
//!
//! The client side trusts **no** certificate authority: [`AnyServerKey`] accepts whatever
//! certificate the server presents (while still checking that the server signed the handshake
//! with that certificate's key), and the caller reads the presented key back from the
//! connection. Trust comes only from the evidence, which must commit to SHA-256 of exactly that
//! `SubjectPublicKeyInfo`; a relay or a man in the middle presents a different key and fails the
//! binding.

use std::sync::Arc;

use der::{Decode as _, Encode as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use thiserror::Error;

/// Why a certificate's key could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate is not valid DER X.509.
    #[error("the certificate is not DER X.509: {0}")]
    Certificate(String),
}

/// The DER `SubjectPublicKeyInfo` of a DER certificate.
pub fn spki_of_certificate(cert: &CertificateDer<'_>) -> Result<Vec<u8>, TlsError> {
    let parsed = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    parsed
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| TlsError::Certificate(e.to_string()))
}

/// A rustls server-certificate verifier that trusts no CA and accepts any certificate, but still
/// verifies the handshake signature with the presented key (so the server proves it holds the
/// private key the evidence is later checked against).
#[derive(Debug)]
pub struct AnyServerKey {
    provider: Arc<CryptoProvider>,
}

impl AnyServerKey {
    /// A verifier using `provider`'s signature algorithms.
    #[must_use]
    pub fn new(provider: Arc<CryptoProvider>) -> Self {
        Self { provider }
    }
}

impl ServerCertVerifier for AnyServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Only require that the key is readable: the evidence decides whether it is trusted.
        spki_of_certificate(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config that trusts no CA (see [`AnyServerKey`]) and speaks HTTP/1.1.
#[must_use]
pub fn attestation_client_config() -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerKey::new(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}
