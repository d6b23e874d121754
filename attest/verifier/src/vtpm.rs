//! vTPM quotes: the bincode container used by `az-snp-vtpm`, `TPMS_ATTEST` parsing, the
//! RSASSA-PKCS1-v1_5 SHA-256 signature by the attestation key (AK) and the PCR digest.
//!
//! ```text
//! bincode quote:  u64-LE len ‖ signature   (raw RSA signature bytes)
//!                 u64-LE len ‖ message     (marshalled TPMS_ATTEST, big-endian inside)
//!                 u64-LE count ‖ count × 32-byte SHA-256 PCR values (PCR 0 first)
//! TPMS_ATTEST:    u32 magic 0xFF544347 ‖ u16 type 0x8018 (ATTEST_QUOTE)
//!                 ‖ TPM2B_NAME qualifiedSigner ‖ TPM2B_DATA extraData (the nonce)
//!                 ‖ TPMS_CLOCK_INFO (17 B) ‖ u64 firmwareVersion
//!                 ‖ TPML_PCR_SELECTION (u32 count, {u16 hash, u8 size, select bitmap}…)
//!                 ‖ TPM2B_DIGEST pcrDigest = H(selected PCR values in index order)
//! ```

use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;
use sha2::{Digest, Sha256};

/// `TPM_GENERATED_VALUE`.
pub const TPM_GENERATED: u32 = 0xFF54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_SHA256`.
pub const ALG_SHA256: u16 = 0x000B;
/// Largest accepted quote part (message or signature).
pub const MAX_PART_LEN: usize = 4096;
/// Most PCRs in a bank.
pub const MAX_PCRS: usize = 24;

/// Why a quote was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum VtpmError {
    /// The input ended early or declared an impossible length.
    #[error("{what}: truncated or oversized at byte {at}")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Offset where it failed.
        at: usize,
    },
    /// Bytes after the end of the structure.
    #[error("{what}: {extra} trailing bytes")]
    Trailing {
        /// Which structure.
        what: &'static str,
        /// How many.
        extra: usize,
    },
    /// Not `TPM_GENERATED_VALUE`.
    #[error("TPMS_ATTEST magic {0:#010x} is not 0xff544347")]
    Magic(u32),
    /// Not a quote.
    #[error("TPMS_ATTEST type {0:#06x} is not 0x8018 (quote)")]
    Type(u16),
    /// A PCR bank other than SHA-256 was selected.
    #[error("quote selects PCR bank {0:#06x}; only SHA-256 (0x000b) is supported")]
    Bank(u16),
    /// A selected PCR has no value in the evidence.
    #[error("quote selects PCR {index} but only {available} PCR values were given")]
    MissingPcr {
        /// The PCR index.
        index: usize,
        /// Values given.
        available: usize,
    },
    /// The PCR values do not hash to the quoted digest.
    #[error("PCR digest {found} does not match the quoted {quoted}")]
    PcrDigest {
        /// Computed, hex.
        found: String,
        /// Quoted, hex.
        quoted: String,
    },
    /// The AK public key could not be read.
    #[error("AK public key is not an RSA key in PEM: {0}")]
    AkKey(String),
    /// The signature does not verify under the AK.
    #[error("quote signature does not verify under the AK (RSASSA-PKCS1-v1_5 SHA-256)")]
    Signature,
}

/// A quote in the bincode container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// Raw RSA signature.
    pub signature: Vec<u8>,
    /// Marshalled `TPMS_ATTEST`.
    pub message: Vec<u8>,
    /// SHA-256 PCR values, PCR 0 first.
    pub pcrs: Vec<[u8; 32]>,
}

/// A parsed `TPMS_ATTEST` of type quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// The qualified name of the signing key.
    pub qualified_signer: Vec<u8>,
    /// The qualifying data (nonce) the quote was made over.
    pub extra_data: Vec<u8>,
    /// TPM clock (ms).
    pub clock: u64,
    /// TPM firmware version.
    pub firmware_version: u64,
    /// Selected PCRs per bank: (hash algorithm, PCR indices).
    pub selections: Vec<(u16, Vec<usize>)>,
    /// Digest of the selected PCR values.
    pub pcr_digest: Vec<u8>,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], VtpmError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(VtpmError::Truncated {
            what: self.what,
            at: self.at,
        })?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], VtpmError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u16_be(&mut self) -> Result<u16, VtpmError> {
        Ok(u16::from_be_bytes(self.arr()?))
    }
    fn u32_be(&mut self) -> Result<u32, VtpmError> {
        Ok(u32::from_be_bytes(self.arr()?))
    }
    fn u64_be(&mut self) -> Result<u64, VtpmError> {
        Ok(u64::from_be_bytes(self.arr()?))
    }
    fn len_le(&mut self, max: usize) -> Result<usize, VtpmError> {
        let at = self.at;
        let n = u64::from_le_bytes(self.arr()?);
        usize::try_from(n)
            .ok()
            .filter(|&n| n <= max)
            .ok_or(VtpmError::Truncated {
                what: self.what,
                at,
            })
    }
    fn tpm2b(&mut self) -> Result<&'a [u8], VtpmError> {
        let n = self.u16_be()?;
        self.take(usize::from(n))
    }
    fn finish(&self) -> Result<(), VtpmError> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            extra => Err(VtpmError::Trailing {
                what: self.what,
                extra,
            }),
        }
    }
}

impl Quote {
    /// Parses the bincode container.
    pub fn parse(raw: &[u8]) -> Result<Self, VtpmError> {
        let mut r = Reader {
            buf: raw,
            at: 0,
            what: "quote",
        };
        let n = r.len_le(MAX_PART_LEN)?;
        let signature = r.take(n)?.to_vec();
        let n = r.len_le(MAX_PART_LEN)?;
        let message = r.take(n)?.to_vec();
        let count = r.len_le(MAX_PCRS)?;
        let pcrs = (0..count)
            .map(|_| r.arr::<32>())
            .collect::<Result<Vec<_>, _>>()?;
        r.finish()?;
        Ok(Self {
            signature,
            message,
            pcrs,
        })
    }

    /// Serialises to the bincode container (the inverse of [`Quote::parse`]).
    #[must_use]
    pub fn to_bincode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for part in [&self.signature, &self.message] {
            out.extend_from_slice(&(part.len() as u64).to_le_bytes());
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&(self.pcrs.len() as u64).to_le_bytes());
        for p in &self.pcrs {
            out.extend_from_slice(p);
        }
        out
    }
}

impl QuoteInfo {
    /// Parses a marshalled `TPMS_ATTEST`, which must be a quote.
    pub fn parse(message: &[u8]) -> Result<Self, VtpmError> {
        let mut r = Reader {
            buf: message,
            at: 0,
            what: "TPMS_ATTEST",
        };
        let magic = r.u32_be()?;
        if magic != TPM_GENERATED {
            return Err(VtpmError::Magic(magic));
        }
        let kind = r.u16_be()?;
        if kind != ST_ATTEST_QUOTE {
            return Err(VtpmError::Type(kind));
        }
        let qualified_signer = r.tpm2b()?.to_vec();
        let extra_data = r.tpm2b()?.to_vec();
        let clock = r.u64_be()?;
        r.take(9)?; // resetCount, restartCount, safe
        let firmware_version = r.u64_be()?;
        let count = r.u32_be()?;
        if count > 16 {
            return Err(VtpmError::Truncated {
                what: "TPML_PCR_SELECTION",
                at: r.at,
            });
        }
        let mut selections = Vec::new();
        for _ in 0..count {
            let alg = r.u16_be()?;
            let size = r.take(1)?[0];
            let bitmap = r.take(usize::from(size))?;
            let indices = (0..bitmap.len() * 8)
                .filter(|i| bitmap[i / 8] & (1 << (i % 8)) != 0)
                .collect();
            selections.push((alg, indices));
        }
        let pcr_digest = r.tpm2b()?.to_vec();
        r.finish()?;
        Ok(Self {
            qualified_signer,
            extra_data,
            clock,
            firmware_version,
            selections,
            pcr_digest,
        })
    }

    /// Checks that `pcrs` (the SHA-256 bank, PCR 0 first) hash to the quoted digest.
    pub fn check_pcrs(&self, pcrs: &[[u8; 32]]) -> Result<(), VtpmError> {
        let mut hasher = Sha256::new();
        for (alg, indices) in &self.selections {
            if *alg != ALG_SHA256 {
                return Err(VtpmError::Bank(*alg));
            }
            for &index in indices {
                let value = pcrs.get(index).ok_or(VtpmError::MissingPcr {
                    index,
                    available: pcrs.len(),
                })?;
                hasher.update(value);
            }
        }
        let found = hasher.finalize();
        if found[..] != self.pcr_digest[..] {
            return Err(VtpmError::PcrDigest {
                found: hex::encode(found),
                quoted: hex::encode(&self.pcr_digest),
            });
        }
        Ok(())
    }
}

/// Reads an AK public key from PEM (`PUBLIC KEY` SPKI or `RSA PUBLIC KEY` PKCS#1).
pub fn ak_from_pem(pem: &str) -> Result<rsa::RsaPublicKey, VtpmError> {
    rsa::RsaPublicKey::from_public_key_pem(pem.trim())
        .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem.trim()))
        .map_err(|e| VtpmError::AkKey(e.to_string()))
}

/// Verifies the quote signature: RSASSA-PKCS1-v1_5 with SHA-256 over the `TPMS_ATTEST` bytes.
pub fn verify_signature(
    ak: &rsa::RsaPublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), VtpmError> {
    let key = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(ak.clone());
    let sig = rsa::pkcs1v15::Signature::try_from(signature).map_err(|_| VtpmError::Signature)?;
    key.verify(message, &sig).map_err(|_| VtpmError::Signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attest(extra: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut m = TPM_GENERATED.to_be_bytes().to_vec();
        m.extend_from_slice(&ST_ATTEST_QUOTE.to_be_bytes());
        m.extend_from_slice(&[0, 2, 0xAA, 0xBB]);
        m.extend_from_slice(&u16::try_from(extra.len()).unwrap().to_be_bytes());
        m.extend_from_slice(extra);
        m.extend_from_slice(&[0; 17 + 8]);
        m.extend_from_slice(&1u32.to_be_bytes());
        m.extend_from_slice(&[0x00, 0x0B, 3, 0b0000_0101, 0, 0]);
        m.extend_from_slice(&u16::try_from(digest.len()).unwrap().to_be_bytes());
        m.extend_from_slice(digest);
        m
    }

    #[test]
    fn parses_and_checks_pcr_digest() {
        let pcrs = [[1u8; 32], [2; 32], [3; 32]];
        let mut h = Sha256::new();
        h.update(pcrs[0]);
        h.update(pcrs[2]);
        let msg = attest(b"nonce", &h.finalize());
        let info = QuoteInfo::parse(&msg).unwrap();
        assert_eq!(info.extra_data, b"nonce");
        assert_eq!(info.selections, vec![(ALG_SHA256, vec![0, 2])]);
        info.check_pcrs(&pcrs).unwrap();
        assert!(matches!(
            info.check_pcrs(&[[1; 32], [2; 32], [4; 32]]),
            Err(VtpmError::PcrDigest { .. })
        ));
        assert!(matches!(
            info.check_pcrs(&pcrs[..1]),
            Err(VtpmError::MissingPcr { index: 2, .. })
        ));
    }

    #[test]
    fn truncation_is_an_error_everywhere() {
        let msg = attest(b"nonce", &[0; 32]);
        for len in 0..msg.len() {
            assert!(QuoteInfo::parse(&msg[..len]).is_err(), "len {len}");
        }
        let q = Quote {
            signature: vec![1; 4],
            message: msg,
            pcrs: vec![[0; 32]; 2],
        }
        .to_bincode();
        assert!(Quote::parse(&q).is_ok());
        for len in 0..q.len() {
            assert!(Quote::parse(&q[..len]).is_err(), "len {len}");
        }
        let mut huge = q.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Quote::parse(&huge).is_err());
    }
}
