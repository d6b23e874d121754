//! The app behind an inbound sidecar, as a witness: a loopback listener that records every
//! connection and every byte it receives, and answers in one of a few simple ways. A refused
//! peer must leave it untouched.

#![allow(
    dead_code,
    reason = "shared by several security test crates; each uses a part"
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How the app answers.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reply {
    /// Echo every byte back (tcp mode).
    Echo,
    /// Answer each HTTP/1.1 request head with a small 200 (http mode, keep-alive).
    Http200,
}

/// Counters of what reached the app.
#[derive(Default, Debug)]
pub(crate) struct Seen {
    pub(crate) connections: AtomicUsize,
    pub(crate) bytes: AtomicUsize,
}

impl Seen {
    pub(crate) fn snapshot(&self) -> (usize, usize) {
        (
            self.connections.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }
}

/// A running app; the accept loop stops when this is dropped.
pub(crate) struct App {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub(crate) async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, reply)
    }

    /// Serves on an already bound listener (to restart an app on the same port).
    pub(crate) fn serve(listener: TcpListener, reply: Reply) -> Self {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                seen2.connections.fetch_add(1, Ordering::SeqCst);
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut head = Vec::new();
                    loop {
                        let n = match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        seen.bytes.fetch_add(n, Ordering::SeqCst);
                        match reply {
                            Reply::Echo => {
                                if sock.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            Reply::Http200 => {
                                head.extend_from_slice(&buf[..n]);
                                // One answer per complete head; bodies are not used by tests.
                                while let Some(end) = find(&head, b"\r\n\r\n") {
                                    head.drain(..end + 4);
                                    let body = b"ok\n";
                                    let resp = format!(
                                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
                                        body.len()
                                    );
                                    if sock.write_all(resp.as_bytes()).await.is_err()
                                        || sock.write_all(body).await.is_err()
                                    {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                });
            }
        });
        Self { addr, seen, task }
    }
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
