//! The byte layouts of the Linux `sev-guest` driver's `SNP_GET_EXT_REPORT` request and of what
//! the firmware and the host hand back: the `MSG_REPORT_RSP` message and the GHCB certificate
//! table. Pure encoding and decoding, kept apart from the one `unsafe` ioctl call so it can be
//! tested (and fuzzed) without the device.
//!
//! Layouts (from `include/uapi/linux/sev-guest.h`, the SNP firmware ABI and the GHCB spec):
//! - `struct snp_report_req` (96 B): `user_data[64]`, `vmpl: u32`, 28 reserved bytes.
//! - `struct snp_ext_report_req` (112 B): the request above, `certs_address: u64`,
//!   `certs_len: u32`, 4 bytes of padding.
//! - `struct snp_guest_request_ioctl` (32 B): `msg_version: u8`, 7 bytes of padding,
//!   `req_data: u64`, `resp_data: u64`, `exitinfo2: u64` (`fw_error: u32`, `vmm_error: u32`).
//! - `struct snp_report_resp` (4000 B) holds `MSG_REPORT_RSP`: `status: u32`,
//!   `report_size: u32`, 24 reserved bytes, then the report.
//! - The certificate table: entries of a 16-byte GUID, `offset: u32`, `length: u32`, ended by
//!   an all-zero entry; offsets count from the start of the table.

use thiserror::Error;

/// `_IOWR('S', 0x2, struct snp_guest_request_ioctl)`.
pub(crate) const SNP_GET_EXT_REPORT: u64 = ioc_readwrite(b'S', 0x2, GUEST_REQUEST_LEN);
/// Size of `struct snp_guest_request_ioctl`.
pub(crate) const GUEST_REQUEST_LEN: usize = 32;
/// Size of `struct snp_ext_report_req`.
pub(crate) const EXT_REPORT_REQ_LEN: usize = 112;
/// Size of `struct snp_report_resp`.
pub(crate) const REPORT_RESP_LEN: usize = 4000;
/// The guest message version the driver expects.
pub(crate) const MSG_VERSION: u8 = 1;
/// The certificate buffer we offer: the driver wants a whole number of pages, and its limit
/// (`SEV_FW_BLOB_MAX_SIZE`) is 16 KiB.
pub(crate) const CERTS_BUFFER_LEN: usize = 0x4000;
/// `vmm_error` value saying the certificate buffer was too small (`certs_len` then holds the
/// size needed).
pub(crate) const VMM_ERR_INVALID_LEN: u32 = 1;
/// Size of an SNP attestation report.
pub(crate) const REPORT_LEN: usize = 1184;

/// GUID of the VCEK in the certificate table (`63da758d-e664-4564-adc5-f4b93be8accd`).
pub(crate) const GUID_VCEK: [u8; 16] = guid(0x63da_758d, 0xe664, 0x4564, 0xadc5_f4b9_3be8_accd);
/// GUID of the VLEK (`a8074bc2-a25a-483e-aae6-39c045a0b8a1`).
pub(crate) const GUID_VLEK: [u8; 16] = guid(0xa807_4bc2, 0xa25a, 0x483e, 0xaae6_39c0_45a0_b8a1);
/// GUID of the ASK (`4ab7b379-bbac-4fe4-a02f-05aef327c782`).
pub(crate) const GUID_ASK: [u8; 16] = guid(0x4ab7_b379, 0xbbac, 0x4fe4, 0xa02f_05ae_f327_c782);
/// GUID of the ARK (`c0b406a4-a803-4952-9743-3fb6014cd0ae`).
pub(crate) const GUID_ARK: [u8; 16] = guid(0xc0b4_06a4, 0xa803, 0x4952, 0x9743_3fb6_014c_d0ae);

const fn ioc_readwrite(kind: u8, nr: u8, size: usize) -> u64 {
    // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr, dir = read|write = 3.
    (3 << 30) | ((size as u64) << 16) | ((kind as u64) << 8) | nr as u64
}

/// A GUID in the RFC 4122 byte order the table uses (libuuid's `uuid_t`).
const fn guid(a: u32, b: u16, c: u16, d: u64) -> [u8; 16] {
    let a = a.to_be_bytes();
    let b = b.to_be_bytes();
    let c = c.to_be_bytes();
    let d = d.to_be_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// What went wrong decoding the device's answer.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AbiError {
    /// The firmware answered with a non-zero status.
    #[error("the firmware refused the report request: MSG_REPORT_RSP status {0:#x}")]
    FirmwareStatus(u32),
    /// The response says the report is shorter than an SNP report.
    #[error("the firmware returned a report of {0} bytes, expected at least {REPORT_LEN}")]
    ReportSize(u32),
    /// The certificate table runs past its buffer or has no terminating entry.
    #[error("the certificate table is malformed: {0}")]
    CertTable(&'static str),
}

/// Encodes `struct snp_ext_report_req`.
#[must_use]
pub(crate) fn ext_report_request(
    report_data: &[u8; 64],
    vmpl: u32,
    certs_address: u64,
    certs_len: u32,
) -> [u8; EXT_REPORT_REQ_LEN] {
    let mut out = [0u8; EXT_REPORT_REQ_LEN];
    out[..64].copy_from_slice(report_data);
    out[64..68].copy_from_slice(&vmpl.to_le_bytes());
    out[96..104].copy_from_slice(&certs_address.to_le_bytes());
    out[104..108].copy_from_slice(&certs_len.to_le_bytes());
    out
}

/// Reads `certs_len` back out of an encoded `struct snp_ext_report_req` (the driver rewrites it
/// with the size it needs when the buffer was too small).
#[must_use]
pub(crate) fn ext_report_certs_len(request: &[u8; EXT_REPORT_REQ_LEN]) -> u32 {
    u32::from_le_bytes([request[104], request[105], request[106], request[107]])
}

/// Encodes `struct snp_guest_request_ioctl`.
#[must_use]
pub(crate) fn guest_request(req_data: u64, resp_data: u64) -> [u8; GUEST_REQUEST_LEN] {
    let mut out = [0u8; GUEST_REQUEST_LEN];
    out[0] = MSG_VERSION;
    out[8..16].copy_from_slice(&req_data.to_le_bytes());
    out[16..24].copy_from_slice(&resp_data.to_le_bytes());
    out
}

/// The `(fw_error, vmm_error)` halves of `exitinfo2` in a `struct snp_guest_request_ioctl`.
#[must_use]
pub(crate) fn guest_request_errors(request: &[u8; GUEST_REQUEST_LEN]) -> (u32, u32) {
    let word = |at: usize| {
        u32::from_le_bytes([
            request[at],
            request[at + 1],
            request[at + 2],
            request[at + 3],
        ])
    };
    (word(24), word(28))
}

/// Takes the report out of a `MSG_REPORT_RSP` message.
pub(crate) fn report_from_response(response: &[u8]) -> Result<Vec<u8>, AbiError> {
    let word = |at: usize| {
        response
            .get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if response.len() < 0x20 + REPORT_LEN {
        return Err(AbiError::ReportSize(0));
    }
    let status = word(0);
    if status != 0 {
        return Err(AbiError::FirmwareStatus(status));
    }
    let size = word(4);
    if (size as usize) < REPORT_LEN {
        return Err(AbiError::ReportSize(size));
    }
    // Only the architectural 1184 bytes are a report; anything past them is padding.
    Ok(response[0x20..0x20 + REPORT_LEN].to_vec())
}

/// The certificates the host attached to an extended report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CertTable {
    /// The VCEK (or the VLEK, when the host provisioned one instead), DER.
    pub vcek: Option<Vec<u8>>,
    /// Whether `vcek` is in fact a VLEK.
    pub is_vlek: bool,
    /// The ASK (or ASVK), DER.
    pub ask: Option<Vec<u8>>,
    /// The ARK, DER.
    pub ark: Option<Vec<u8>>,
}

/// Parses the GHCB certificate table. Entries with unknown GUIDs are skipped.
pub fn parse_cert_table(buf: &[u8]) -> Result<CertTable, AbiError> {
    const ENTRY: usize = 24;
    let mut table = CertTable::default();
    let mut at = 0usize;
    loop {
        let Some(entry) = buf.get(at..at + ENTRY) else {
            return Err(AbiError::CertTable("no terminating all-zero entry"));
        };
        if entry.iter().all(|b| *b == 0) {
            return Ok(table);
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&entry[..16]);
        let offset = u32::from_le_bytes([entry[16], entry[17], entry[18], entry[19]]) as usize;
        let length = u32::from_le_bytes([entry[20], entry[21], entry[22], entry[23]]) as usize;
        let data = offset
            .checked_add(length)
            .and_then(|end| buf.get(offset..end))
            .ok_or(AbiError::CertTable("an entry points past the buffer"))?
            .to_vec();
        match id {
            GUID_VCEK => table.vcek = Some(data),
            GUID_VLEK if table.vcek.is_none() => {
                table.vcek = Some(data);
                table.is_vlek = true;
            }
            GUID_ASK => table.ask = Some(data),
            GUID_ARK => table.ark = Some(data),
            _ => {}
        }
        at += ENTRY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_matches_the_kernel_header() {
        // _IOWR('S', 0x2, struct snp_guest_request_ioctl) on x86_64.
        assert_eq!(SNP_GET_EXT_REPORT, 0xC020_5302);
    }

    #[test]
    fn guids_are_in_rfc_byte_order() {
        assert_eq!(hex::encode(GUID_VCEK), "63da758de6644564adc5f4b93be8accd");
        assert_eq!(
            hex::encode(GUID_ARK),
            "c0b406a4a80349529743".to_owned() + "3fb6014cd0ae"
        );
    }

    #[test]
    fn ext_request_layout() {
        let mut data = [0u8; 64];
        data[0] = 0xAA;
        data[63] = 0xBB;
        let req = ext_report_request(&data, 2, 0x1122_3344_5566_7788, 0x4000);
        assert_eq!(req[0], 0xAA);
        assert_eq!(req[63], 0xBB);
        assert_eq!(&req[64..68], &[2, 0, 0, 0]);
        assert!(
            req[68..96].iter().all(|b| *b == 0),
            "reserved bytes stay zero"
        );
        assert_eq!(&req[96..104], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(ext_report_certs_len(&req), 0x4000);
        assert_eq!(&req[108..], &[0, 0, 0, 0]);
    }

    #[test]
    fn guest_request_layout() {
        let mut req = guest_request(0x10, 0x20);
        assert_eq!(req[0], MSG_VERSION);
        assert!(req[1..8].iter().all(|b| *b == 0));
        assert_eq!(&req[8..16], &0x10u64.to_le_bytes());
        assert_eq!(&req[16..24], &0x20u64.to_le_bytes());
        assert_eq!(guest_request_errors(&req), (0, 0));
        req[24] = 7;
        req[28] = 1;
        assert_eq!(guest_request_errors(&req), (7, VMM_ERR_INVALID_LEN));
    }

    #[test]
    fn response_decoding() {
        let mut resp = vec![0u8; REPORT_RESP_LEN];
        resp[4..8].copy_from_slice(&u32::try_from(REPORT_LEN).unwrap().to_le_bytes());
        resp[0x20] = 3;
        resp[0x20 + REPORT_LEN - 1] = 9;
        let report = report_from_response(&resp).unwrap();
        assert_eq!(report.len(), REPORT_LEN);
        assert_eq!((report[0], report[REPORT_LEN - 1]), (3, 9));

        resp[0] = 0x16;
        assert_eq!(
            report_from_response(&resp),
            Err(AbiError::FirmwareStatus(0x16))
        );
        resp[0] = 0;
        resp[4..8].copy_from_slice(&100u32.to_le_bytes());
        assert_eq!(report_from_response(&resp), Err(AbiError::ReportSize(100)));
        assert_eq!(report_from_response(&[0; 10]), Err(AbiError::ReportSize(0)));
    }

    fn table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
        let header = (entries.len() + 1) * 24;
        let mut out = vec![0u8; header];
        let mut offset = header;
        for (i, (id, data)) in entries.iter().enumerate() {
            let at = i * 24;
            out[at..at + 16].copy_from_slice(id);
            out[at + 16..at + 20].copy_from_slice(&u32::try_from(offset).unwrap().to_le_bytes());
            out[at + 20..at + 24]
                .copy_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
            offset += data.len();
        }
        for (_, data) in entries {
            out.extend_from_slice(data);
        }
        out.resize(CERTS_BUFFER_LEN, 0);
        out
    }

    #[test]
    fn cert_table_round_trip() {
        let buf = table(&[
            (GUID_ARK, b"ark"),
            (GUID_ASK, b"ask"),
            ([7; 16], b"crl"),
            (GUID_VCEK, b"vcek"),
        ]);
        let t = parse_cert_table(&buf).unwrap();
        assert_eq!(t.vcek.as_deref(), Some(&b"vcek"[..]));
        assert_eq!(t.ask.as_deref(), Some(&b"ask"[..]));
        assert_eq!(t.ark.as_deref(), Some(&b"ark"[..]));
        assert!(!t.is_vlek);

        let vlek = parse_cert_table(&table(&[(GUID_VLEK, b"vlek")])).unwrap();
        assert!(vlek.is_vlek);
        assert_eq!(parse_cert_table(&[0; 24]).unwrap(), CertTable::default());
    }

    proptest::proptest! {
        /// Whatever the host writes into the certificate buffer or the response, decoding
        /// returns a value or an error, never a panic.
        #[test]
        fn hostile_buffers_never_panic(
            buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            zero_tail in 0usize..48,
        ) {
            let mut buf = buf;
            let len = buf.len();
            buf[len.saturating_sub(zero_tail)..].fill(0);
            let _ = parse_cert_table(&buf);
            let _ = report_from_response(&buf);
        }
    }

    #[test]
    fn cert_table_hostile_input() {
        assert!(parse_cert_table(&[]).is_err());
        assert!(parse_cert_table(&[1; 23]).is_err());
        let mut buf = table(&[(GUID_VCEK, b"vcek")]);
        buf[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_cert_table(&buf).is_err());
        // No terminator anywhere: every entry non-zero.
        let endless = vec![0x41u8; 24 * 8];
        assert!(parse_cert_table(&endless).is_err());
    }
}
