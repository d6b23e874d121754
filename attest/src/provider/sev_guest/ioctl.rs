//! The single `unsafe` call of the workspace: `ioctl(fd, SNP_GET_EXT_REPORT, ...)` on
//! `/dev/sev-guest`. Everything around it (encoding, decoding, retries) lives in safe code.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use super::abi;

/// What one ioctl call returned: the raw OS result and the request blocks as the driver left
/// them (it writes `exitinfo2` and, on a short certificate buffer, `certs_len`).
pub(super) struct Outcome {
    pub(super) result: io::Result<()>,
    pub(super) guest_request: [u8; abi::GUEST_REQUEST_LEN],
    pub(super) ext_request: [u8; abi::EXT_REPORT_REQ_LEN],
}

/// Issues `SNP_GET_EXT_REPORT` once. `response` and `certs` are written by the driver.
pub(super) fn get_ext_report(
    device: &File,
    report_data: &[u8; 64],
    vmpl: u32,
    response: &mut [u8; abi::REPORT_RESP_LEN],
    certs: &mut [u8],
) -> Outcome {
    let certs_len = u32::try_from(certs.len()).unwrap_or(u32::MAX);
    // Pointers are passed to the kernel as u64 addresses, which is what the uapi structs hold.
    let mut ext_request =
        abi::ext_report_request(report_data, vmpl, certs.as_mut_ptr() as u64, certs_len);
    let mut guest_request = abi::guest_request(
        ext_request.as_mut_ptr() as u64,
        response.as_mut_ptr() as u64,
    );
    // SAFETY: `guest_request` is a correctly laid out `struct snp_guest_request_ioctl` (32 bytes,
    // see `abi`) whose `req_data` points at `ext_request` (a 112-byte `snp_ext_report_req`) and
    // whose `resp_data` points at `response` (a 4000-byte `snp_report_resp`); the request's
    // `certs_address`/`certs_len` describe `certs`, a live, writable buffer of exactly that
    // length. All four buffers are exclusively borrowed and outlive the call, and the driver
    // writes only within the lengths it was given. The ioctl number matches the struct size.
    let rc = unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            abi::SNP_GET_EXT_REPORT as libc::Ioctl,
            guest_request.as_mut_ptr(),
        )
    };
    let result = if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    };
    Outcome {
        result,
        guest_request,
        ext_request,
    }
}
