//! Parsing of the AMD SEV-SNP `ATTESTATION_REPORT` structure (SNP ABI, table `ATTESTATION_REPORT`
//! Structure), versions 2, 3 and 5.
//!
//! The report is exactly 1184 bytes. Bytes `0x000..0x2A0` are signed by the VCEK with ECDSA
//! P-384 over SHA-384; the signature at `0x2A0` holds R and S as 72-byte little-endian integers.
//! Parsing never panics: anything that is not exactly 1184 bytes, or that carries an unknown
//! version, a non-ECDSA signature algorithm or a signature component wider than 48 bytes, is an
//! error that names the offending value.

use crate::product::Product;

/// Size of an SNP attestation report in bytes.
pub const REPORT_LEN: usize = 0x4A0;
/// End (exclusive) of the signed part of the report.
pub const SIGNED_LEN: usize = 0x2A0;
/// Offset of the 64-byte `report_data` field.
pub const REPORT_DATA_OFFSET: usize = 0x50;
/// The only signature algorithm SNP defines: ECDSA P-384 with SHA-384.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Guest policy bit 19: debugging of the guest is allowed.
pub const POLICY_DEBUG_BIT: u64 = 1 << 19;
/// Guest policy bit 16: SMT is allowed.
pub const POLICY_SMT_BIT: u64 = 1 << 16;

/// Why a byte string is not an SNP report.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReportError {
    /// The input is not 1184 bytes long.
    #[error("report is {len} bytes, an SNP attestation report is exactly {REPORT_LEN} bytes")]
    Length {
        /// The length found.
        len: usize,
    },
    /// The version field names a layout this verifier does not know.
    #[error("report version {0} is not supported (known: 2, 3, 4, 5)")]
    Version(u32),
    /// The signature algorithm is not ECDSA P-384 SHA-384.
    #[error("report signature_algo {0} is not 1 (ECDSA P-384 with SHA-384)")]
    SignatureAlgorithm(u32),
    /// R or S has non-zero bytes beyond the 48 bytes of a P-384 scalar.
    #[error("report signature component {0} does not fit in 48 bytes")]
    SignatureWidth(&'static str),
}

/// A TCB version as the raw 64-bit value the firmware reports.
///
/// Its byte layout depends on the product: Milan and Genoa put the boot loader SPL in byte 0,
/// TEE in 1, SNP in 6 and microcode in 7; Turin puts FMC in 0, boot loader in 1, TEE in 2, SNP
/// in 3 and microcode in 7. Use [`RawTcb::decode`] with the product to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct RawTcb(pub u64);

/// The security patch levels (SPLs) of one TCB version.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct TcbVersion {
    /// FMC SPL (Turin and later only).
    pub fmc: Option<u8>,
    /// Boot loader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// CPU microcode SPL.
    pub microcode: u8,
}

impl RawTcb {
    /// Decodes the SPLs with the layout of `product`.
    #[must_use]
    pub fn decode(self, product: Product) -> TcbVersion {
        let b = self.0.to_le_bytes();
        if product.has_fmc() {
            TcbVersion {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            }
        } else {
            TcbVersion {
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            }
        }
    }

    /// Encodes SPLs with the layout of `product` (the inverse of [`RawTcb::decode`]).
    #[must_use]
    pub fn encode(tcb: TcbVersion, product: Product) -> Self {
        let mut b = [0u8; 8];
        if product.has_fmc() {
            b[0] = tcb.fmc.unwrap_or(0);
            b[1] = tcb.bootloader;
            b[2] = tcb.tee;
            b[3] = tcb.snp;
        } else {
            b[0] = tcb.bootloader;
            b[1] = tcb.tee;
            b[6] = tcb.snp;
        }
        b[7] = tcb.microcode;
        Self(u64::from_le_bytes(b))
    }
}

impl TcbVersion {
    /// True if every SPL is at least the one in `min` (an absent FMC counts as 0).
    #[must_use]
    pub fn meets(&self, min: &TcbVersion) -> bool {
        self.bootloader >= min.bootloader
            && self.tee >= min.tee
            && self.snp >= min.snp
            && self.microcode >= min.microcode
            && self.fmc.unwrap_or(0) >= min.fmc.unwrap_or(0)
    }
}

impl std::fmt::Display for TcbVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bl={} tee={} snp={} ucode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// A parsed SNP attestation report. Every field of the ABI is kept; reserved areas are not.
#[derive(Clone, PartialEq, Eq)]
pub struct AttestationReport {
    /// Report format version (2, 3 or 5 in the wild).
    pub version: u32,
    /// Guest SVN from the ID block.
    pub guest_svn: u32,
    /// Guest policy (bit 19 = debug allowed, bit 16 = SMT allowed, …).
    pub policy: u64,
    /// Family ID from the ID block.
    pub family_id: [u8; 16],
    /// Image ID from the ID block.
    pub image_id: [u8; 16],
    /// The VMPL that requested the report.
    pub vmpl: u32,
    /// Signature algorithm (1 = ECDSA P-384 SHA-384).
    pub signature_algo: u32,
    /// Current TCB of the platform.
    pub current_tcb: RawTcb,
    /// Platform info flags (SMT enabled, TSME enabled, …).
    pub platform_info: u64,
    /// Word at 0x48: bit 0 author key enabled, bit 1 mask chip key, bits 2..5 signing key
    /// (0 = VCEK, 1 = VLEK).
    pub key_info: u32,
    /// Guest-chosen data; carries the binding.
    pub report_data: [u8; 64],
    /// Launch measurement.
    pub measurement: [u8; 48],
    /// Host-chosen data (on confidential containers: SHA-256 of the security policy).
    pub host_data: [u8; 32],
    /// SHA-384 of the ID key.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author key.
    pub author_key_digest: [u8; 48],
    /// Report ID of the guest.
    pub report_id: [u8; 32],
    /// Report ID of the migration agent.
    pub report_id_ma: [u8; 32],
    /// The TCB the VCEK was derived from; must equal the VCEK's TCB extensions.
    pub reported_tcb: RawTcb,
    /// CPUID family (version 3 and later; 0 before).
    pub cpuid_fam_id: u8,
    /// CPUID model (version 3 and later; 0 before).
    pub cpuid_mod_id: u8,
    /// CPUID stepping (version 3 and later; 0 before).
    pub cpuid_step: u8,
    /// Chip identifier (zero if masked); Turin uses only the first 8 bytes.
    pub chip_id: [u8; 64],
    /// Committed TCB.
    pub committed_tcb: RawTcb,
    /// Current firmware build, minor, major.
    pub current_version: (u8, u8, u8),
    /// Committed firmware build, minor, major.
    pub committed_version: (u8, u8, u8),
    /// TCB at launch.
    pub launch_tcb: RawTcb,
    /// Launch mitigation vector (version 5 and later).
    pub launch_mit_vector: u64,
    /// Current mitigation vector (version 5 and later).
    pub current_mit_vector: u64,
    /// Signature R as a 48-byte big-endian scalar.
    pub signature_r: [u8; 48],
    /// Signature S as a 48-byte big-endian scalar.
    pub signature_s: [u8; 48],
}

impl std::fmt::Debug for AttestationReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttestationReport")
            .field("version", &self.version)
            .field("policy", &format_args!("{:#x}", self.policy))
            .field("vmpl", &self.vmpl)
            .field("report_data", &hex::encode(self.report_data))
            .field("measurement", &hex::encode(self.measurement))
            .field("host_data", &hex::encode(self.host_data))
            .field(
                "reported_tcb",
                &format_args!("{:#018x}", self.reported_tcb.0),
            )
            .field("chip_id", &hex::encode(self.chip_id))
            .finish_non_exhaustive()
    }
}

/// A little cursor over a fixed-size buffer; every read is within `REPORT_LEN` by construction.
struct Fields<'a>(&'a [u8; REPORT_LEN]);

impl Fields<'_> {
    fn arr<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.0[at..at + N]);
        out
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.arr(at))
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.arr(at))
    }
}

/// Converts a 72-byte little-endian signature component to a 48-byte big-endian scalar.
fn scalar(le: &[u8], name: &'static str) -> Result<[u8; 48], ReportError> {
    if le[48..].iter().any(|&b| b != 0) {
        return Err(ReportError::SignatureWidth(name));
    }
    let mut be = [0u8; 48];
    for (dst, src) in be.iter_mut().zip(le[..48].iter().rev()) {
        *dst = *src;
    }
    Ok(be)
}

impl AttestationReport {
    /// Parses a raw 1184-byte report.
    pub fn parse(raw: &[u8]) -> Result<Self, ReportError> {
        let buf: &[u8; REPORT_LEN] = raw
            .try_into()
            .map_err(|_| ReportError::Length { len: raw.len() })?;
        let f = Fields(buf);
        let version = f.u32(0x00);
        if !(2..=5).contains(&version) {
            return Err(ReportError::Version(version));
        }
        let signature_algo = f.u32(0x34);
        if signature_algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(ReportError::SignatureAlgorithm(signature_algo));
        }
        let (cpuid_fam_id, cpuid_mod_id, cpuid_step) = if version >= 3 {
            (buf[0x188], buf[0x189], buf[0x18A])
        } else {
            (0, 0, 0)
        };
        let (launch_mit_vector, current_mit_vector) = if version >= 5 {
            (f.u64(0x1F8), f.u64(0x200))
        } else {
            (0, 0)
        };
        Ok(Self {
            version,
            guest_svn: f.u32(0x04),
            policy: f.u64(0x08),
            family_id: f.arr(0x10),
            image_id: f.arr(0x20),
            vmpl: f.u32(0x30),
            signature_algo,
            current_tcb: RawTcb(f.u64(0x38)),
            platform_info: f.u64(0x40),
            key_info: f.u32(0x48),
            report_data: f.arr(0x50),
            measurement: f.arr(0x90),
            host_data: f.arr(0xC0),
            id_key_digest: f.arr(0xE0),
            author_key_digest: f.arr(0x110),
            report_id: f.arr(0x140),
            report_id_ma: f.arr(0x160),
            reported_tcb: RawTcb(f.u64(0x180)),
            cpuid_fam_id,
            cpuid_mod_id,
            cpuid_step,
            chip_id: f.arr(0x1A0),
            committed_tcb: RawTcb(f.u64(0x1E0)),
            current_version: (buf[0x1E8], buf[0x1E9], buf[0x1EA]),
            committed_version: (buf[0x1EC], buf[0x1ED], buf[0x1EE]),
            launch_tcb: RawTcb(f.u64(0x1F0)),
            launch_mit_vector,
            current_mit_vector,
            signature_r: scalar(&buf[0x2A0..0x2E8], "R")?,
            signature_s: scalar(&buf[0x2E8..0x330], "S")?,
        })
    }

    /// True if the guest policy allows debugging (bit 19).
    #[must_use]
    pub fn debug_allowed(&self) -> bool {
        self.policy & POLICY_DEBUG_BIT != 0
    }

    /// The key that signed the report: 0 = VCEK, 1 = VLEK, 7 = none.
    #[must_use]
    pub fn signing_key(&self) -> u32 {
        (self.key_info >> 2) & 0b111
    }

    /// True if the chip ID was masked by the guest policy (`MASK_CHIP_ID`).
    #[must_use]
    pub fn chip_id_masked(&self) -> bool {
        self.key_info & 0b10 != 0
    }

    /// The product named by the report's CPUID fields (version 3 and later), if any.
    #[must_use]
    pub fn cpuid_product(&self) -> Option<Product> {
        if self.version < 3 {
            return None;
        }
        Product::from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)
    }
}

/// The signed part (`0x000..0x2A0`) of a raw report; `None` if the input is shorter.
#[must_use]
pub fn signed_bytes(raw: &[u8]) -> Option<&[u8]> {
    raw.get(..SIGNED_LEN)
}

/// Decodes a report given as raw bytes or as hex text (whitespace ignored), as the CLI reads it.
pub fn decode_raw_or_hex(input: &[u8]) -> Result<Vec<u8>, ReportError> {
    if input.len() == REPORT_LEN {
        return Ok(input.to_vec());
    }
    let text: Vec<u8> = input
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if text.len() == REPORT_LEN * 2 {
        if let Ok(bytes) = hex::decode(&text) {
            return Ok(bytes);
        }
    }
    Err(ReportError::Length { len: input.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(version: u32) -> Vec<u8> {
        let mut raw = vec![0u8; REPORT_LEN];
        raw[0..4].copy_from_slice(&version.to_le_bytes());
        raw[0x34..0x38].copy_from_slice(&1u32.to_le_bytes());
        raw
    }

    #[test]
    fn wrong_lengths_are_errors() {
        for len in [0, 1, REPORT_LEN - 1, REPORT_LEN + 1, 4096] {
            assert_eq!(
                AttestationReport::parse(&vec![0; len]),
                Err(ReportError::Length { len })
            );
        }
    }

    #[test]
    fn version_and_algorithm_are_checked() {
        assert_eq!(
            AttestationReport::parse(&blank(1)),
            Err(ReportError::Version(1))
        );
        let mut raw = blank(2);
        raw[0x34] = 2;
        assert_eq!(
            AttestationReport::parse(&raw),
            Err(ReportError::SignatureAlgorithm(2))
        );
        let mut raw = blank(3);
        raw[0x2A0 + 60] = 1;
        assert_eq!(
            AttestationReport::parse(&raw),
            Err(ReportError::SignatureWidth("R"))
        );
    }

    #[test]
    fn signature_is_reversed_to_big_endian() {
        let mut raw = blank(5);
        raw[0x2A0] = 0xAA;
        raw[0x2E8 + 47] = 0xBB;
        let r = AttestationReport::parse(&raw).unwrap();
        assert_eq!(r.signature_r[47], 0xAA);
        assert_eq!(r.signature_s[0], 0xBB);
    }

    #[test]
    fn tcb_round_trips_per_product() {
        let tcb = TcbVersion {
            fmc: None,
            bootloader: 3,
            tee: 0,
            snp: 8,
            microcode: 115,
        };
        let raw = RawTcb::encode(tcb, Product::Milan);
        assert_eq!(raw.0, 0x7308_0000_0000_0003);
        assert_eq!(raw.decode(Product::Milan), tcb);
        let turin = TcbVersion {
            fmc: Some(1),
            ..tcb
        };
        assert_eq!(
            RawTcb::encode(turin, Product::Turin).decode(Product::Turin),
            turin
        );
    }

    #[test]
    fn hex_input_is_accepted() {
        let raw = blank(2);
        let text = hex::encode(&raw) + "\n";
        assert_eq!(decode_raw_or_hex(text.as_bytes()).unwrap(), raw);
        assert!(decode_raw_or_hex(b"zz").is_err());
    }
}
