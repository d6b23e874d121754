//! `probe`: one plain-HTTP GET against the admin listener, for kubelet `exec` probes.
//!
//! The admin listener binds loopback in the chart (it is not for other pods), so the kubelet
//! cannot reach it with `httpGet`; it runs `enclaveid-attest probe` inside the container
//! instead. Exit 0 on a 2xx answer, 1 on anything else (refused, timed out, not 2xx), 2 on a
//! bad URL or timeout. One line on stderr says why; the kubelet records it in the pod events.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::anyhow;

use super::{Failure, ProbeArgs};

/// The default target: the attestation server's readiness on its loopback admin port.
pub(crate) const DEFAULT_URL: &str = "http://127.0.0.1:15010/ready";

/// The most of the answer that is read: the status line is all that matters.
const MAX_HEAD: usize = 4096;

/// Where to send the GET: the socket address to dial, the Host header and the request target.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    authority: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, Failure> {
    let bad = |why: &str| Failure::usage(anyhow!("--url={url:?}: {why}"));
    let uri: http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad(
            "only http:// is supported (the admin listener is plain HTTP)",
        ));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("user info is not supported"));
    }
    let port = authority.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    Ok(Target {
        authority: format!("{}:{port}", authority.host()),
        path: if path.is_empty() { "/" } else { path }.to_owned(),
    })
}

/// Sends the GET and returns the status code; every I/O step is bounded by `deadline`.
fn get(target: &Target, timeout: Duration) -> anyhow::Result<u16> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("timed out after {} ms", timeout.as_millis()))
    };
    let addrs: Vec<SocketAddr> = target
        .authority
        .to_socket_addrs()
        .map_err(|e| anyhow!("resolving {}: {e}", target.authority))?
        .collect();
    let addr = addrs
        .first()
        .ok_or_else(|| anyhow!("{} resolves to no address", target.authority))?;
    let mut stream = TcpStream::connect_timeout(addr, left()?)
        .map_err(|e| anyhow!("connecting to {addr}: {e}"))?;
    stream.set_write_timeout(Some(left()?))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: enclaveid-attest-probe\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| anyhow!("sending to {addr}: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0_u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        stream.set_read_timeout(Some(left()?))?;
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err(anyhow!("{addr} closed the connection before a status line")),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(anyhow!("timed out after {} ms", timeout.as_millis()));
            }
            Err(e) => return Err(anyhow!("reading from {addr}: {e}")),
        };
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return Err(anyhow!("{addr} sent no status line in {MAX_HEAD} bytes"));
        }
    }
    status_code(&head).ok_or_else(|| {
        let line = String::from_utf8_lossy(&head);
        anyhow!(
            "{addr} did not answer HTTP: {:?}",
            line.lines().next().unwrap_or("")
        )
    })
}

/// The code of an `HTTP/1.x NNN reason` status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

pub(super) fn run(args: &ProbeArgs) -> Result<ExitCode, Failure> {
    if args.timeout_ms == 0 {
        return Err(Failure::usage(anyhow!(
            "--timeout-ms=0: must be at least 1"
        )));
    }
    let target = parse_url(&args.url)?;
    match get(&target, Duration::from_millis(args.timeout_ms)) {
        Ok(code) if (200..300).contains(&code) => Ok(ExitCode::SUCCESS),
        Ok(code) => Err(Failure::runtime(anyhow!("{} answered {code}", args.url))),
        Err(e) => Err(Failure::runtime(e.context(format!("probing {}", args.url)))),
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// A real loopback listener that answers one connection with `answer` (or not at all).
    fn serve_once(answer: Option<&'static [u8]>) -> (String, thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!(
            "http://{}/ready",
            listener.local_addr().expect("bound address")
        );
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut buf = [0_u8; 256];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            match answer {
                Some(bytes) => {
                    let _ = stream.write_all(bytes);
                }
                // Hold the connection open without answering until the client gives up.
                None => {
                    let _ = stream.read(&mut buf);
                }
            }
            request
        });
        (url, handle)
    }

    fn probe(url: &str, timeout_ms: u64) -> Result<ExitCode, Failure> {
        run(&ProbeArgs {
            url: url.to_owned(),
            timeout_ms,
        })
    }

    #[test]
    fn a_2xx_answer_passes_and_the_request_is_plain_http() {
        let (url, server) =
            serve_once(Some(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nready\n"));
        assert!(probe(&url, 10_000).is_ok());
        let request = String::from_utf8(server.join().expect("server thread")).expect("utf-8");
        assert!(request.starts_with("GET /ready HTTP/1.1\r\n"), "{request}");
        assert!(request.contains("\r\nConnection: close\r\n"), "{request}");
    }

    #[test]
    fn a_503_fails_with_exit_1_naming_the_code() {
        let (url, server) = serve_once(Some(b"HTTP/1.1 503 Service Unavailable\r\n\r\nstarting\n"));
        let failure = probe(&url, 10_000).expect_err("503 is not ready");
        assert_eq!(failure.code, 1);
        assert!(
            failure.error.to_string().contains("answered 503"),
            "{:#}",
            failure.error
        );
        server.join().expect("server thread");
    }

    #[test]
    fn a_refused_connection_fails_with_exit_1() {
        // Bind, read the port, close: nothing listens there any more.
        let addr = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr");
        let failure = probe(&format!("http://{addr}/ready"), 10_000).expect_err("refused");
        assert_eq!(failure.code, 1);
        assert!(
            format!("{:#}", failure.error).contains("connecting to"),
            "{:#}",
            failure.error
        );
    }

    #[test]
    fn a_silent_server_times_out_with_exit_1() {
        let (url, server) = serve_once(None);
        let failure = probe(&url, 200).expect_err("no answer");
        assert_eq!(failure.code, 1);
        assert!(
            format!("{:#}", failure.error).contains("timed out"),
            "{:#}",
            failure.error
        );
        server.join().expect("server thread");
    }

    #[test]
    fn a_non_http_answer_fails_with_exit_1() {
        let (url, server) = serve_once(Some(b"SSH-2.0-OpenSSH_9.2\r\n"));
        let failure = probe(&url, 10_000).expect_err("not http");
        assert_eq!(failure.code, 1);
        assert!(
            format!("{:#}", failure.error).contains("did not answer HTTP"),
            "{:#}",
            failure.error
        );
        server.join().expect("server thread");
    }

    #[test]
    fn bad_urls_and_timeouts_are_usage_errors() {
        for (url, why) in [
            ("https://127.0.0.1:15010/ready", "only http://"),
            ("127.0.0.1:15010", "only http://"),
            ("http://u:p@127.0.0.1:15010/ready", "user info"),
            ("http://", "--url"),
        ] {
            let failure = probe(url, 1_000).expect_err(url);
            assert_eq!(failure.code, 2, "{url}");
            assert!(
                failure.error.to_string().contains(why),
                "{url}: {:#}",
                failure.error
            );
        }
        assert_eq!(probe(DEFAULT_URL, 0).expect_err("zero").code, 2);
    }

    #[test]
    fn urls_parse_to_authority_and_path() {
        assert_eq!(
            parse_url("http://127.0.0.1:15010/metrics").ok(),
            Some(Target {
                authority: "127.0.0.1:15010".into(),
                path: "/metrics".into()
            })
        );
        assert_eq!(
            parse_url("http://localhost").ok(),
            Some(Target {
                authority: "localhost:80".into(),
                path: "/".into()
            })
        );
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 200\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/2 200\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 x\r\n"), None);
    }
}
