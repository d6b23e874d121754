//! The `tcp` data path: one future per connection copies both directions. Each direction ends on
//! its own (a read EOF becomes a write shutdown on the other side: half-close), buffers start
//! small and grow only for connections that fill them, and an idle check costs one timer per
//! idle period instead of one per read.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// First buffer size per direction.
const INITIAL_BUF: usize = 4 * 1024;
/// Largest buffer size per direction.
const MAX_BUF: usize = 64 * 1024;

/// One direction of the copy.
#[allow(
    clippy::struct_excessive_bools,
    reason = "a small state machine's flags"
)]
struct Half {
    buf: Box<[u8]>,
    pos: usize,
    cap: usize,
    read_done: bool,
    need_flush: bool,
    grow: bool,
    done: bool,
    total: u64,
}

impl Half {
    fn new() -> Self {
        Self {
            buf: vec![0; INITIAL_BUF].into_boxed_slice(),
            pos: 0,
            cap: 0,
            read_done: false,
            need_flush: false,
            grow: false,
            done: false,
            total: 0,
        }
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
            if self.pos == self.cap && !self.read_done {
                if self.grow {
                    self.buf = vec![0; (self.buf.len() * 2).min(MAX_BUF)].into_boxed_slice();
                    self.grow = false;
                }
                let mut rb = ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                    // A TLS peer that closes TCP without close_notify ends its direction like
                    // an EOF; the bytes it did send were authenticated and are delivered.
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        self.read_done = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.grow = n == self.buf.len() && self.buf.len() < MAX_BUF;
                            self.pos = 0;
                            self.cap = n;
                        }
                    }
                }
            }
            while self.pos < self.cap {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.total += n as u64;
                counter.inc_by(n as u64);
                self.need_flush = true;
            }
            if self.pos == self.cap && self.read_done {
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
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
}
