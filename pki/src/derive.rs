//! The mesh CA key, derived from the cluster's master secret.
//!
//! This is a contract (see `docs/pki.md`): anyone holding the master secret M must be able to
//! re-derive the same P-256 scalar. For i = 0, 1, … compute
//! `c_i = HKDF-SHA256(salt = "enclaveid-ca-v1", IKM = M, info = "p256 ca key" ‖ [i], L = 32)`,
//! read `c_i` big-endian and take the first with `1 ≤ c_i < n`.
//!
//! Which bytes of a released Azure Key Vault key form M is part of the contract too:
//! [`VaultKeyType`] and [`MasterSecret::from_vault_key`].

use std::fmt;

use hkdf::Hkdf;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

/// HKDF salt of the CA derivation.
pub const CA_SALT: &[u8] = b"enclaveid-ca-v1";
/// HKDF info prefix of the CA derivation; the counter byte `i` follows it.
pub const CA_INFO_PREFIX: &[u8] = b"p256 ca key";
/// The smallest master secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// Errors building a master secret or exporting the CA key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeriveError {
    /// The master secret is shorter than [`MIN_SECRET_LEN`].
    #[error("master secret is {got} bytes, at least {min} are required")]
    SecretTooShort {
        /// Length received.
        got: usize,
        /// Minimum length.
        min: usize,
    },
    /// A key type the derivation does not define.
    #[error("vault key type {0:?} is not one of oct, RSA, RSA-HSM, EC, EC-HSM, oct-HSM")]
    UnknownKeyType(String),
    /// Encoding the CA key failed (should not happen for a valid scalar).
    #[error("encoding the CA key: {0}")]
    Encoding(String),
}

/// The key types of Azure Key Vault, reduced to the families the derivation distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultKeyType {
    /// Symmetric key (`oct`, `oct-HSM`): M is `k`.
    Oct,
    /// RSA key (`RSA`, `RSA-HSM`): M is the private exponent `d`, big-endian, no leading zeros.
    Rsa,
    /// EC key (`EC`, `EC-HSM`): M is `d` as released (fixed length for the curve).
    Ec,
}

impl VaultKeyType {
    /// Maps a JWK `kty` (as Key Vault spells it) to its family.
    pub fn from_kty(kty: &str) -> Result<Self, DeriveError> {
        match kty {
            "oct" | "oct-HSM" => Ok(Self::Oct),
            "RSA" | "RSA-HSM" => Ok(Self::Rsa),
            "EC" | "EC-HSM" => Ok(Self::Ec),
            other => Err(DeriveError::UnknownKeyType(other.to_owned())),
        }
    }
}

/// The cluster's master secret: at least 32 bytes, zeroized on drop, never printed.
#[derive(Clone)]
pub struct MasterSecret(Zeroizing<Vec<u8>>);

impl MasterSecret {
    /// Wraps raw secret bytes; refuses fewer than [`MIN_SECRET_LEN`].
    pub fn new(mut bytes: Vec<u8>) -> Result<Self, DeriveError> {
        if bytes.len() < MIN_SECRET_LEN {
            let got = bytes.len();
            bytes.zeroize();
            return Err(DeriveError::SecretTooShort {
                got,
                min: MIN_SECRET_LEN,
            });
        }
        Ok(Self(Zeroizing::new(bytes)))
    }

    /// Selects M from a released key's material: `material` is `k` for oct, `d` for RSA and EC.
    /// For RSA, leading zero bytes are stripped (the contract's big-endian minimal form).
    pub fn from_vault_key(kty: VaultKeyType, material: &[u8]) -> Result<Self, DeriveError> {
        let bytes = match kty {
            VaultKeyType::Oct | VaultKeyType::Ec => material,
            VaultKeyType::Rsa => {
                let first = material
                    .iter()
                    .position(|b| *b != 0)
                    .unwrap_or(material.len());
                &material[first..]
            }
        };
        Self::new(bytes.to_vec())
    }

    /// The secret bytes. Callers must not log or persist them.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterSecret([redacted; {} bytes])", self.0.len())
    }
}

/// The mesh CA's P-256 private key. Zeroized on drop (by `p256::SecretKey`), never printed.
#[derive(Clone)]
pub struct CaKey(p256::SecretKey);

impl CaKey {
    /// The public key d·G.
    #[must_use]
    pub fn public_key(&self) -> p256::PublicKey {
        self.0.public_key()
    }

    /// The DER `SubjectPublicKeyInfo` of d·G (id-ecPublicKey, prime256v1, uncompressed point).
    pub fn spki_der(&self) -> Result<Vec<u8>, DeriveError> {
        self.public_key()
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|e| DeriveError::Encoding(e.to_string()))
    }

    /// The scalar d, 32 bytes big-endian (for test vectors; handle as a secret).
    #[must_use]
    pub fn scalar_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes().into())
    }

    /// The key as PKCS#8 DER (handle as a secret).
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, DeriveError> {
        self.0
            .to_pkcs8_der()
            .map(|d| Zeroizing::new(d.as_bytes().to_vec()))
            .map_err(|e| DeriveError::Encoding(e.to_string()))
    }

    /// An ECDSA P-256 signing key for the same scalar.
    #[must_use]
    pub fn signing_key(&self) -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from(&self.0)
    }
}

impl fmt::Debug for CaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CaKey([redacted])")
    }
}

/// Derives the CA key from the master secret, exactly as `docs/pki.md` specifies.
#[must_use]
pub fn derive_ca_key(secret: &MasterSecret) -> CaKey {
    let hk = Hkdf::<Sha256>::new(Some(CA_SALT), secret.expose());
    let mut info = Zeroizing::new(Vec::with_capacity(CA_INFO_PREFIX.len() + 1));
    for i in 0..=u8::MAX {
        info.clear();
        info.extend_from_slice(CA_INFO_PREFIX);
        info.push(i);
        let mut candidate = Zeroizing::new([0u8; 32]);
        hk.expand(&info, candidate.as_mut())
            .expect("32 bytes is far below HKDF-SHA256's 8160-byte output limit");
        // `from_bytes` rejects zero and anything ≥ n, which is exactly the contract's range.
        if let Ok(key) = p256::SecretKey::from_bytes(&(*candidate).into()) {
            return CaKey(key);
        }
    }
    // Each candidate is rejected with probability < 2^-32; 256 rejections in a row do not occur.
    unreachable!("256 consecutive HKDF outputs outside [1, n) for P-256")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret(byte: u8) -> MasterSecret {
        MasterSecret::new(vec![byte; 32]).unwrap()
    }

    #[test]
    fn short_secret_is_refused() {
        let err = MasterSecret::new(vec![1; 31]).unwrap_err();
        assert!(matches!(
            err,
            DeriveError::SecretTooShort { got: 31, min: 32 }
        ));
    }

    #[test]
    fn rsa_d_loses_leading_zeros_only() {
        let mut d = vec![0, 0];
        d.extend([7u8; 32]);
        let m = MasterSecret::from_vault_key(VaultKeyType::Rsa, &d).unwrap();
        assert_eq!(m.expose(), &[7u8; 32][..]);
        let oct = MasterSecret::from_vault_key(VaultKeyType::Oct, &d).unwrap();
        assert_eq!(oct.expose().len(), 34);
        let ec = MasterSecret::from_vault_key(VaultKeyType::Ec, &d).unwrap();
        assert_eq!(ec.expose().len(), 34);
        assert!(MasterSecret::from_vault_key(VaultKeyType::Rsa, &[0u8; 40]).is_err());
    }

    #[test]
    fn kty_mapping() {
        assert_eq!(
            VaultKeyType::from_kty("RSA-HSM").unwrap(),
            VaultKeyType::Rsa
        );
        assert_eq!(
            VaultKeyType::from_kty("oct-HSM").unwrap(),
            VaultKeyType::Oct
        );
        assert_eq!(VaultKeyType::from_kty("EC").unwrap(), VaultKeyType::Ec);
        assert!(VaultKeyType::from_kty("okp").is_err());
    }

    #[test]
    fn debug_redacts() {
        let m = secret(0xAB);
        let k = derive_ca_key(&m);
        assert!(!format!("{m:?}").contains("171"));
        assert!(!format!("{m:?}").to_lowercase().contains("ab"));
        assert_eq!(format!("{k:?}"), "CaKey([redacted])");
    }

    /// The vectors published in docs/pki.md (computed independently with Python's hmac and
    /// `cryptography`); a change here is a breaking change of the mesh.
    pub(crate) const VECTORS: [(&str, &str, &str); 3] = [
        (
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            "5ba29b299cc3ca7f11e8805384b1edf624ac4286d7877577117af6d8af25b530",
            "03b5d375ab7fe90a478e2dc7b6e1412d79baa4ba50c76c5ec57d7659e1c995e6b3",
        ),
        (
            "42424242424242424242424242424242424242424242424242424242424242424242424242424242424242424242424242424242424242424242424242424242",
            "1b999d9b7dbcd58e1118cf03c262bc06a7c12a092cd04aa05e13355f8636d3fd",
            "03e1e510721e98e7c273e636d34c33c5a1ea3cc46b912410937d638df22c524bc2",
        ),
        (
            "656e636c6176656964207465737420766563746f72206d61737465722073656372657421",
            "0d5ffd701f654f280338e8be205274d23cb65e07b298a18579ca6bfd9f754950",
            "",
        ),
    ];

    #[test]
    fn published_vectors() {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        for (m, d, q) in VECTORS {
            let key = derive_ca_key(&MasterSecret::new(hex::decode(m).unwrap()).unwrap());
            assert_eq!(hex::encode(*key.scalar_bytes()), d, "secret {m}");
            if !q.is_empty() {
                let point = key.public_key().to_encoded_point(true);
                assert_eq!(hex::encode(point.as_bytes()), q, "secret {m}");
            }
        }
    }

    #[test]
    fn first_candidate_is_hkdf_output_when_in_range() {
        // Independent re-computation of c_0 with the hkdf crate's one-shot API.
        let m = secret(9);
        let mut c0 = [0u8; 32];
        Hkdf::<Sha256>::new(Some(b"enclaveid-ca-v1"), m.expose())
            .expand(b"p256 ca key\x00", &mut c0)
            .unwrap();
        assert_eq!(*derive_ca_key(&m).scalar_bytes(), c0);
    }

    proptest! {
        #[test]
        fn derivation_is_deterministic(bytes in proptest::collection::vec(any::<u8>(), 32..96)) {
            let a = derive_ca_key(&MasterSecret::new(bytes.clone()).unwrap());
            let b = derive_ca_key(&MasterSecret::new(bytes).unwrap());
            prop_assert_eq!(*a.scalar_bytes(), *b.scalar_bytes());
            prop_assert_eq!(a.public_key(), b.public_key());
        }

        #[test]
        fn distinct_secrets_give_distinct_keys(
            a in proptest::collection::vec(any::<u8>(), 32..64),
            b in proptest::collection::vec(any::<u8>(), 32..64),
        ) {
            prop_assume!(a != b);
            let ka = derive_ca_key(&MasterSecret::new(a).unwrap());
            let kb = derive_ca_key(&MasterSecret::new(b).unwrap());
            prop_assert_ne!(ka.public_key(), kb.public_key());
        }
    }
}
