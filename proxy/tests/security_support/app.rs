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
    /// Like `Http200`, but only after this many milliseconds (a request in flight).
    Http200After(u64),
    /// Read everything, answer nothing (a backend that hangs mid-request).
    Stall,
}

/// Counters of what reached the app.
#[derive(Default, Debug)]
pub(crate) struct Seen {
    pub(crate) connections: AtomicUsize,
    pub(crate) bytes: AtomicUsize,
    /// The first MiB received, across connections, for header checks.
    pub(crate) data: std::sync::Mutex<Vec<u8>>,
}

const KEEP: usize = 1 << 20;

impl Seen {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.data.lock().unwrap()).into_owned()
    }

    pub(crate) fn snapshot(&self) -> (usize, usize) {
        (
            self.connections.load(Ordering::SeqCst),
            self.bytes.load(Ordering::SeqCst),
        )
    }
}

/// A running app; dropping it stops the accept loop and closes every open connection, like a
/// backend process that dies.
pub(crate) struct App {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl App {
    /// Stops the app and returns once its listening socket is closed: `abort` alone only asks
    /// the runtime, so a connect racing it could still land in the old accept queue.
    pub(crate) async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        let conns: Vec<_> = self.conns.lock().unwrap().drain(..).collect();
        for c in conns {
            c.abort();
        }
    }

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
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let conns2 = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                seen2.connections.fetch_add(1, Ordering::SeqCst);
                let seen = seen2.clone();
                let conn = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let mut head = Vec::new();
                    loop {
                        let n = match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        seen.bytes.fetch_add(n, Ordering::SeqCst);
                        {
                            let mut data = seen.data.lock().unwrap();
                            let room = KEEP.saturating_sub(data.len()).min(n);
                            data.extend_from_slice(&buf[..room]);
                        }
                        match reply {
                            Reply::Echo => {
                                if sock.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                            Reply::Stall => {}
                            Reply::Http200 | Reply::Http200After(_) => {
                                head.extend_from_slice(&buf[..n]);
                                // One answer per complete head; bodies are not used by tests.
                                while let Some(end) = find(&head, b"\r\n\r\n") {
                                    head.drain(..end + 4);
                                    if let Reply::Http200After(ms) = reply {
                                        tokio::time::sleep(std::time::Duration::from_millis(ms))
                                            .await;
                                    }
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
                conns2.lock().unwrap().push(conn.abort_handle());
            }
        });
        Self {
            addr,
            seen,
            task,
            conns,
        }
    }
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
