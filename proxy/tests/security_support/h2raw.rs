//! Just enough HTTP/2 framing (RFC 9113) and HPACK (RFC 7541) to be a hostile client: frames are
//! written byte for byte, so the tests control exactly what a real client library would refuse
//! to send (endless CONTINUATION frames, a reset after every HEADERS).

#![allow(
    dead_code,
    reason = "shared by several security test crates; each uses a part"
)]

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;

/// One frame: 24-bit length, type, flags, 31-bit stream id, payload.
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("test frames are small");
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The client's opening: preface and an empty SETTINGS.
pub(crate) fn opening() -> Vec<u8> {
    let mut v = PREFACE.to_vec();
    v.extend(frame(SETTINGS, 0, 0, &[]));
    v
}

/// HPACK for `GET https://backend/` using static-table indices: `:method GET` (2),
/// `:scheme https` (7), `:path /` (4), and `:authority` (name index 1) as a literal without
/// indexing.
pub(crate) fn get_request_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x87, 0x84];
    literal_indexed_name(&mut b, 1, b"backend");
    b
}

/// A literal header field without indexing, with an indexed name (RFC 7541 §6.2.2).
pub(crate) fn literal_indexed_name(out: &mut Vec<u8>, name_index: u8, value: &[u8]) {
    assert!(name_index < 15, "4-bit prefix");
    out.push(name_index);
    string(out, value);
}

/// A literal header field without indexing, with a new name (RFC 7541 §6.2.2).
pub(crate) fn literal_new_name(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    string(out, name);
    string(out, value);
}

/// A string literal, not Huffman-coded, with a 7-bit-prefix length (RFC 7541 §5.1, §5.2).
fn string(out: &mut Vec<u8>, s: &[u8]) {
    let mut len = s.len();
    if len < 127 {
        out.push(u8::try_from(len).expect("checked above"));
    } else {
        out.push(127);
        len -= 127;
        while len >= 128 {
            out.push(u8::try_from(len % 128).expect("below 128") | 0x80);
            len /= 128;
        }
        out.push(u8::try_from(len).expect("below 128"));
    }
    out.extend_from_slice(s);
}

/// Frames the server sent: splits a byte stream into (type, flags, stream, payload length).
#[derive(Default, Debug)]
pub(crate) struct Reader {
    buf: Vec<u8>,
    pub(crate) goaway: Option<u32>,
    pub(crate) rst: usize,
    pub(crate) headers: usize,
    pub(crate) frames: usize,
    /// Payloads of the PINGs (not ACKs) received, for a client that answers them.
    pub(crate) pings: Vec<Vec<u8>>,
}

impl Reader {
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= 9 {
            let len = usize::from(self.buf[0]) << 16
                | usize::from(self.buf[1]) << 8
                | usize::from(self.buf[2]);
            if self.buf.len() < 9 + len {
                break;
            }
            let kind = self.buf[3];
            self.frames += 1;
            match kind {
                GOAWAY if len >= 8 => {
                    let code = u32::from_be_bytes([
                        self.buf[13],
                        self.buf[14],
                        self.buf[15],
                        self.buf[16],
                    ]);
                    self.goaway = Some(code);
                }
                RST_STREAM => self.rst += 1,
                PING if self.buf[4] & ACK == 0 => self.pings.push(self.buf[9..9 + len].to_vec()),
                HEADERS => self.headers += 1,
                _ => {}
            }
            self.buf.drain(..9 + len);
        }
    }
}
