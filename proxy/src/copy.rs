//! The `tcp` data path: one future per connection copies both directions. Each direction ends on
//! its own (a read EOF becomes a write shutdown on the other side: half-close), and an idle check
//! costs one timer per idle period instead of one per read.
//!
//! Memory: an idle connection holds no copy buffer. Every read goes into one scratch buffer per
//! thread (`SCRATCH`, 64 KiB, so a bulk read fills whole 16 KiB TLS records) and is written
//! straight on; only the bytes the writer does not take at once are copied into a private buffer
//! of that connection, which is freed again as soon as it is drained and the reader has nothing
//! more (ztunnel's "start small, grow with traffic", taken to zero while idle).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Size of the per-thread read buffer: the most one read takes from a socket.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    /// The read buffer shared by every connection polled on this thread. It is borrowed only
    /// inside one synchronous `poll_read` + `poll_write` step, never across an await.
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// What one read-and-write step through the scratch buffer did.
enum Step {
    /// The reader has nothing now.
    Idle,
    /// Bytes moved (some may be left in `pending`).
    Moved,
    /// The reader reached its end.
    Eof,
}

/// One direction of the copy.
struct Half {
    /// Bytes read but not yet taken by the writer; empty (no allocation) while idle.
    pending: Vec<u8>,
    /// How much of `pending` is written.
    pos: usize,
    read_done: bool,
    need_flush: bool,
    done: bool,
    total: u64,
}

impl Half {
    fn new() -> Self {
        Self {
            pending: Vec::new(),
            pos: 0,
            read_done: false,
            need_flush: false,
            done: false,
            total: 0,
        }
    }

    fn wrote(&mut self, n: usize, counter: &IntCounter) {
        self.total += n as u64;
        counter.inc_by(n as u64);
        self.need_flush = true;
    }

    /// Reads once into the scratch buffer and writes what it got; keeps what the writer did
    /// not take in `pending`.
    fn step<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        counter: &IntCounter,
    ) -> io::Result<Step>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        SCRATCH_BUF.with_borrow_mut(|buf| {
            let mut rb = ReadBuf::new(buf);
            let n = match r.poll_read(cx, &mut rb) {
                Poll::Pending => return Ok(Step::Idle),
                // A TLS peer that closes TCP without close_notify ends its direction like an
                // EOF; the bytes it did send were authenticated and are delivered.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Ok(Step::Eof)
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) => rb.filled().len(),
            };
            if n == 0 {
                return Ok(Step::Eof);
            }
            let mut off = 0;
            while off < n {
                match w.as_mut().poll_write(cx, &buf[off..n]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(k)) => {
                        off += k;
                        self.wrote(k, counter);
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => break,
                }
            }
            if off < n {
                self.pending.clear();
                self.pending.extend_from_slice(&buf[off..n]);
                self.pos = 0;
            }
            Ok(Step::Moved)
        })
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        counter: &IntCounter,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            while self.pos < self.pending.len() {
                let n = ready!(w.as_mut().poll_write(cx, &self.pending[self.pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.wrote(n, counter);
            }
            if self.pos > 0 {
                // Drained: keep the allocation for the next slow write of this burst.
                self.pending.clear();
                self.pos = 0;
            }
            if self.read_done {
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                self.pending = Vec::new();
                return Poll::Ready(Ok(()));
            }
            match self.step(cx, r.as_mut(), w.as_mut(), counter)? {
                Step::Moved => {}
                Step::Eof => self.read_done = true,
                Step::Idle => {
                    // Nothing pending and nothing to read: give the private buffer back.
                    if self.pending.capacity() > 0 {
                        self.pending = Vec::new();
                    }
                    if self.need_flush {
                        ready!(w.as_mut().poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Copies `a` ⇄ `b` until both directions have ended, an error occurs, or nothing moved for
/// `idle`. Returns the bytes copied a→b and b→a.
pub(crate) struct Bidirectional<'a, A: ?Sized, B: ?Sized> {
    a: &'a mut A,
    b: &'a mut B,
    a_to_b: Half,
    b_to_a: Half,
    to_b: &'a IntCounter,
    to_a: &'a IntCounter,
    idle: Duration,
    idle_timer: Pin<Box<Sleep>>,
    seen: u64,
}

/// Builds the copy future; `to_b` and `to_a` count bytes per direction.
pub(crate) fn bidirectional<'a, A, B>(
    a: &'a mut A,
    b: &'a mut B,
    to_b: &'a IntCounter,
    to_a: &'a IntCounter,
    idle: Duration,
) -> Bidirectional<'a, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    Bidirectional {
        a,
        b,
        a_to_b: Half::new(),
        b_to_a: Half::new(),
        to_b,
        to_a,
        idle,
        idle_timer: Box::pin(tokio::time::sleep(idle)),
        seen: 0,
    }
}

#[cfg(test)]
impl<A: ?Sized, B: ?Sized> Bidirectional<'_, A, B> {
    /// Bytes the copy holds in buffers of its own.
    pub(crate) fn held(&self) -> usize {
        self.a_to_b.pending.capacity() + self.b_to_a.pending.capacity()
    }

    /// The `a` side, to look at what it holds.
    pub(crate) fn a(&self) -> &A {
        self.a
    }
}

impl<A, B> Future for Bidirectional<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<(u64, u64)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.a_to_b.done {
            if let Poll::Ready(Err(e)) = this.a_to_b.poll_copy(
                cx,
                Pin::new(&mut *this.a),
                Pin::new(&mut *this.b),
                this.to_b,
            ) {
                return Poll::Ready(Err(e));
            }
        }
        if !this.b_to_a.done {
            if let Poll::Ready(Err(e)) = this.b_to_a.poll_copy(
                cx,
                Pin::new(&mut *this.b),
                Pin::new(&mut *this.a),
                this.to_a,
            ) {
                return Poll::Ready(Err(e));
            }
        }
        if this.a_to_b.done && this.b_to_a.done {
            return Poll::Ready(Ok((this.a_to_b.total, this.b_to_a.total)));
        }
        while this.idle_timer.as_mut().poll(cx).is_ready() {
            let moved = this.a_to_b.total + this.b_to_a.total;
            if moved == this.seen {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")));
            }
            this.seen = moved;
            this.idle_timer.as_mut().reset(Instant::now() + this.idle);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn half_close_keeps_the_other_direction_and_every_byte() {
        let (mut client, mut proxy_a) = tokio::io::duplex(7);
        let (mut proxy_b, mut server) = tokio::io::duplex(5);
        let (to_b, to_a) = (
            IntCounter::new("a", "a").unwrap(),
            IntCounter::new("b", "b").unwrap(),
        );
        let copy = tokio::spawn(async move {
            bidirectional(
                &mut proxy_a,
                &mut proxy_b,
                &to_b,
                &to_a,
                Duration::from_secs(30),
            )
            .await
            .map(|r| (r, to_b.get()))
        });
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload, "every byte in order, then EOF");
        server.write_all(b"reply after half-close").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply after half-close");
        let ((up, down), counted) = copy.await.unwrap().unwrap();
        assert_eq!((up, down, counted), (200_000, 22, 200_000));
    }

    #[tokio::test]
    async fn idle_connections_time_out() {
        let (_client, mut a) = tokio::io::duplex(64);
        let (mut b, _server) = tokio::io::duplex(64);
        let c = IntCounter::new("c", "c").unwrap();
        let err = bidirectional(&mut a, &mut b, &c, &c, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_copy_buffer() {
        use futures_util::FutureExt;
        let (mut client, mut a) = tokio::io::duplex(64 * 1024);
        // The server side takes 16 bytes at a time, so the copy is left holding the rest.
        let (mut b, mut server) = tokio::io::duplex(16);
        let c = IntCounter::new("c", "c").unwrap();
        let mut copy = bidirectional(&mut a, &mut b, &c, &c, Duration::from_secs(30));
        assert!((&mut copy).now_or_never().is_none());
        assert_eq!(copy.a_to_b.pending.capacity(), 0, "nothing read yet");
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        client.write_all(&sent).await.unwrap();
        assert!((&mut copy).now_or_never().is_none());
        assert!(
            copy.a_to_b.pending.capacity() > 0,
            "a slow writer leaves bytes pending"
        );
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < sent.len() {
            tokio::select! {
                r = &mut copy => panic!("the copy ended early: {r:?}"),
                n = server.read(&mut buf) => got.extend_from_slice(&buf[..n.unwrap()]),
            }
        }
        assert_eq!(got, sent);
        assert!((&mut copy).now_or_never().is_none());
        assert_eq!(copy.a_to_b.pending.capacity(), 0, "drained and idle");
        assert_eq!(copy.b_to_a.pending.capacity(), 0);
        assert_eq!(c.get(), 10_000);
    }
}
