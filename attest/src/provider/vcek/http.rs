//! A deliberately small, blocking HTTP/1.1 GET for THIM: link-local, plain HTTP, one request,
//! `Connection: close`, a size limit and timeouts. Providers are synchronous, and pulling an
//! HTTP client stack in for one GET to 169.254.169.254 is not worth it.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use super::VcekError;

/// An `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Url {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) path: String,
}

impl Url {
    pub(super) fn parse(url: &str) -> Result<Self, VcekError> {
        let bad = |reason| VcekError::Url {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// is supported (THIM is link-local plain HTTP)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("missing or invalid host"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in host"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, port.parse().map_err(|_| bad("invalid port"))?),
                None if after.is_empty() => (host, 80),
                None => return Err(bad("junk after ]")),
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, port.parse().map_err(|_| bad("invalid port"))?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(bad("the path has spaces or control characters"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }
}

/// GETs `url` and returns the body of a 200 answer.
pub(super) fn get(
    url: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
    max_body: usize,
) -> Result<Vec<u8>, VcekError> {
    let parsed = Url::parse(url)?;
    let fail = |reason: String| VcekError::Fetch {
        url: url.to_owned(),
        reason,
    };
    let addr = (parsed.host.as_str(), parsed.port)
        .to_socket_addrs()
        .map_err(|e| fail(format!("resolving the host: {e}")))?
        .next()
        .ok_or_else(|| fail("the host has no address".into()))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| fail(format!("connecting: {e}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n",
        parsed.path, parsed.host
    );
    for (name, value) in headers {
        request.push_str(name);
        request.push_str(": ");
        request.push_str(value);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| fail(format!("sending the request: {e}")))?;
    let mut raw = Vec::new();
    // Headers are small; allow the body limit plus room for them.
    let limit = (max_body + 16 * 1024) as u64;
    stream
        .take(limit + 1)
        .read_to_end(&mut raw)
        .map_err(|e| fail(format!("reading the answer: {e}")))?;
    if raw.len() as u64 > limit {
        return Err(fail(format!("the answer is larger than {max_body} bytes")));
    }
    parse_response(&raw, max_body).map_err(fail)
}

/// Splits a raw HTTP/1.x answer, checks for 200 and undoes chunked transfer encoding.
fn parse_response(raw: &[u8], max_body: usize) -> Result<Vec<u8>, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no complete header")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "the header is not UTF-8")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("malformed status line {status_line:?}"))?;
    if status != 200 {
        return Err(format!("HTTP status {status}"));
    }
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("content-length") {
                length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
            }
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(length) = length {
        body.get(..length)
            .ok_or("the body is shorter than Content-Length")?
            .to_vec()
    } else {
        body.to_vec()
    };
    if body.len() > max_body {
        return Err(format!("the body is larger than {max_body} bytes"));
    }
    Ok(body)
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk header")?;
        let size_text = std::str::from_utf8(&body[..eol]).map_err(|_| "bad chunk header")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).ok_or("truncated chunk trailer")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://169.254.169.254/metadata/THIM/amd/certification").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("169.254.169.254", 80));
        assert_eq!(u.path, "/metadata/THIM/amd/certification");
        let u = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8080, "/"));
        assert!(Url::parse("https://x/").is_err());
        assert!(Url::parse("http://:80/").is_err());
        assert!(Url::parse("http://h:99999/").is_err());
        assert!(Url::parse("http://h/a b").is_err());
    }

    proptest::proptest! {
        /// A hostile metadata endpoint gets an error or a body, never a panic.
        #[test]
        fn hostile_answers_never_panic(
            head in "HTTP/1\\.[01] [0-9]{3} [ -~]{0,10}\r\n([A-Za-z-]{1,20}: [ -~]{0,20}\r\n){0,4}\r\n",
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let mut raw = head.into_bytes();
            raw.extend_from_slice(&body);
            let _ = parse_response(&raw, 100);
            let _ = dechunk(&body);
        }
    }

    #[test]
    fn responses() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        assert_eq!(parse_response(ok, 100).unwrap(), b"hello");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked, 100).unwrap(), b"abcde");
        let until_eof = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n{}";
        assert_eq!(parse_response(until_eof, 100).unwrap(), b"{}");
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n", 100)
            .unwrap_err()
            .contains("404"));
        assert!(parse_response(b"HTTP/1.1 200", 100).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nab", 100).is_err());
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\nab",
            100
        )
        .is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n0123456789", 5).is_err());
    }
}
