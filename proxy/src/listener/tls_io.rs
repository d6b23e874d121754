//! The `tcp` data path's TLS stream, on rustls' unbuffered API: a connection holds no receive
//! or send buffer while it is idle.
//!
//! rustls' buffered API (`tokio-rustls`) keeps a 4 KiB receive buffer per connection for its
//! whole life. Here every read from the socket goes into one scratch buffer per thread
//! (`IN_BUF`), records are decrypted there and the plaintext goes straight into the caller's
//! buffer; every write is encrypted into a second scratch buffer per thread (`OUT_BUF`) and
//! written straight to the socket. A connection keeps bytes of its own only for what cannot
//! move at once: a partial record (`rx`), ciphertext the socket did not take (`tx`) and
//! plaintext the caller had no room for (`plain`). `rx` and `plain` are freed once drained,
//! `tx` at the next flush (`copy` flushes when its reader goes idle), so a burst reuses it.
//!
//! Both ends are plain `AsyncRead + AsyncWrite`, so `copy::bidirectional` drives them as it
//! drives a TCP socket. A read returns `Ok(0)` after the peer's `close_notify` and
//! `UnexpectedEof` when the peer closes TCP without one (as rustls' buffered reader does); a
//! write shutdown sends `close_notify`. Alerts rustls queues on an error are sent on a best-effort
//! basis before the error is returned (in the handshake: before it fails). A `KeyUpdate` from the
//! peer is handled inside rustls; the answer it asks for leaves with our next record.
//!
//! This file depends on nothing else in the crate: `benches/copy.rs` includes it by path.

use std::cell::RefCell;
use std::io;
use std::mem;
use std::ops::DerefMut;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, UnbufferedConnectionCommon,
    UnbufferedStatus,
};
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// The most one read takes from the socket: four full records.
const READ: usize = 64 * 1024;
/// The receive scratch buffer: one read behind what is left of the previous one (a partial
/// record, or a handshake message that spans records: rustls allows 64 KiB).
const IN_CAP: usize = READ + 80 * 1024;
/// The most plaintext one write encrypts, and room for its records' overhead.
const WRITE: usize = 64 * 1024;
const OUT_CAP: usize = WRITE + 2048;

thread_local! {
    /// Receive scratch shared by every connection polled on this thread; borrowed only inside
    /// one synchronous `poll_read`, never across an await.
    static IN_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; IN_CAP].into_boxed_slice());
    /// Send scratch, likewise, inside one `poll_write` or `poll_shutdown`.
    static OUT_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; OUT_CAP].into_boxed_slice());
}

/// The client or the server side of an unbuffered rustls connection.
pub(crate) trait Side:
    DerefMut<Target = UnbufferedConnectionCommon<Self::Data>> + Unpin
{
    /// rustls' per-side state.
    type Data;
    /// `process_tls_records`, which rustls defines per side.
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Side for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Side for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

/// Completes a server handshake on `sock`. Errors carry the `rustls::Error` (kind
/// `InvalidData`), as `tokio-rustls` does, so `RejectReason::from_io` reads them alike.
pub(crate) async fn accept(
    config: Arc<ServerConfig>,
    sock: TcpStream,
) -> io::Result<TlsStream<UnbufferedServerConnection>> {
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    TlsStream::new(sock, conn).handshake().await
}

/// Completes a client handshake with `name` on `sock`.
pub(crate) async fn connect(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    sock: TcpStream,
) -> io::Result<TlsStream<UnbufferedClientConnection>> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(tls_error)?;
    TlsStream::new(sock, conn).handshake().await
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// What the connection needs after rustls has consumed what it could.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Next {
    /// More bytes from the peer (application data may be written meanwhile, once the
    /// handshake is done).
    Read,
    /// Both sides sent `close_notify`.
    Closed,
}

/// What to do once rustls can take application data.
#[derive(Clone, Copy)]
enum Action<'a> {
    Nothing,
    Encrypt(&'a [u8]),
    CloseNotify,
}

/// The result of one `process` run.
struct Processed {
    /// Bytes of `incoming` rustls is done with (to discard from the front).
    consumed: usize,
    /// What comes next, or the TLS error.
    next: Result<Next, rustls::Error>,
    /// Ciphertext written into the send scratch by the action.
    sealed: usize,
    /// Whether the action ran.
    acted: bool,
}

/// A TLS connection over a TCP socket that holds no buffer while idle.
pub(crate) struct TlsStream<C> {
    sock: TcpStream,
    conn: C,
    /// Received bytes rustls has not consumed yet (a partial record); empty while idle.
    rx: Vec<u8>,
    /// Records produced but not yet written to the socket; empty while idle.
    tx: Vec<u8>,
    tx_pos: usize,
    /// Decrypted bytes the caller had no room for.
    plain: Vec<u8>,
    plain_pos: usize,
    /// The peer sent `close_notify`.
    peer_closed: bool,
    /// The socket reached EOF (or the read side failed).
    read_done: bool,
    /// We sent `close_notify`.
    close_sent: bool,
}

impl<C: Side> TlsStream<C> {
    fn new(sock: TcpStream, conn: C) -> Self {
        Self {
            sock,
            conn,
            rx: Vec::new(),
            tx: Vec::new(),
            tx_pos: 0,
            plain: Vec::new(),
            plain_pos: 0,
            peer_closed: false,
            read_done: false,
            close_sent: false,
        }
    }

    /// The rustls connection (peer certificates, negotiated parameters).
    pub(crate) fn conn(&self) -> &C {
        &self.conn
    }

    /// Bytes this connection holds in buffers of its own (zero while idle).
    #[cfg(test)]
    pub(crate) fn buffered_capacity(&self) -> usize {
        self.rx.capacity() + self.tx.capacity() + self.plain.capacity()
    }

    /// Received bytes kept for the next read (a partial record).
    #[cfg(test)]
    pub(crate) fn kept(&self) -> &[u8] {
        &self.rx
    }

    /// Waits until the socket has bytes to read.
    #[cfg(test)]
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.sock.readable().await
    }

    async fn handshake(mut self) -> io::Result<Self> {
        loop {
            let mut rx = mem::take(&mut self.rx);
            let p = self.process(&mut rx, None, Action::Nothing, &mut []);
            rx.drain(..p.consumed);
            if let Err(e) = p.next {
                self.encode_alerts(&mut rx);
                let _ = self.send_all().await;
                return Err(tls_error(e));
            }
            self.rx = rx;
            self.send_all().await?;
            if !self.conn.is_handshaking() {
                break;
            }
            self.rx.reserve(4096);
            if self.sock.read_buf(&mut self.rx).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                ));
            }
        }
        // Keep nothing of the handshake's buffers but bytes that already follow it.
        if self.rx.is_empty() {
            self.rx = Vec::new();
        } else {
            self.rx.shrink_to_fit();
        }
        self.tx = Vec::new();
        self.tx_pos = 0;
        Ok(self)
    }

    /// Writes all of `tx` (handshake only).
    async fn send_all(&mut self) -> io::Result<()> {
        if self.tx_pos < self.tx.len() {
            self.sock.write_all(&self.tx[self.tx_pos..]).await?;
        }
        self.tx.clear();
        self.tx_pos = 0;
        Ok(())
    }

    /// Runs rustls over `incoming` until it needs more bytes. Decrypted records go to `out`
    /// while they fit there and nothing older waits in `plain`, otherwise to `plain`; records
    /// rustls produces on its own (handshake messages, alerts, key updates) are appended to
    /// `tx`; once rustls can take application data, `action` runs, writing into `sealed`.
    fn process(
        &mut self,
        incoming: &mut [u8],
        mut out: Option<&mut ReadBuf<'_>>,
        mut action: Action<'_>,
        sealed: &mut [u8],
    ) -> Processed {
        let mut done = Processed {
            consumed: 0,
            next: Ok(Next::Read),
            sealed: 0,
            acted: false,
        };
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process(&mut incoming[done.consumed..]);
            let next = match state {
                Err(e) => Some(Err(e)),
                Ok(ConnectionState::ReadTraffic(mut r)) => match r.next_record() {
                    Some(Ok(record)) => {
                        discard += record.discard;
                        deliver(
                            &mut self.plain,
                            &mut self.plain_pos,
                            out.as_deref_mut(),
                            record.payload,
                        );
                        None
                    }
                    Some(Err(e)) => Some(Err(e)),
                    None => None,
                },
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    encode(&mut self.tx, &mut e);
                    None
                }
                // The encoded records wait in `tx`, which leaves before anything newer.
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    None
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    None
                }
                Ok(ConnectionState::Closed) => Some(Ok(Next::Closed)),
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    let r = match mem::replace(&mut action, Action::Nothing) {
                        Action::Nothing => Ok(0),
                        Action::Encrypt(data) => {
                            done.acted = true;
                            seal(&mut self.tx, sealed, |buf| w.encrypt(data, buf))
                        }
                        Action::CloseNotify => {
                            done.acted = true;
                            seal(&mut self.tx, sealed, |buf| w.queue_close_notify(buf))
                        }
                    };
                    match r {
                        Ok(n) => {
                            done.sealed = n;
                            Some(Ok(Next::Read))
                        }
                        Err(e) => Some(Err(e)),
                    }
                }
                Ok(ConnectionState::BlockedHandshake) => Some(Ok(Next::Read)),
                Ok(other) => Some(Err(rustls::Error::General(format!(
                    "unexpected TLS connection state {other:?}"
                )))),
            };
            done.consumed += discard;
            if let Some(next) = next {
                done.next = next;
                return done;
            }
        }
    }

    /// After an error: appends the alert rustls queued to `tx`. rustls hands out what it queued
    /// before it looks at the input again, and it is not asked for more: input that failed
    /// would fail again (and queue a second fatal alert).
    fn encode_alerts(&mut self, incoming: &mut [u8]) {
        while self.conn.wants_write() {
            let UnbufferedStatus { state, .. } = self.conn.process(incoming);
            let Ok(ConnectionState::EncodeTlsData(mut e)) = state else {
                return;
            };
            encode(&mut self.tx, &mut e);
        }
    }

    /// Writes what waits in `tx`; `Ready(Ok)` once it is all written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.tx_pos < self.tx.len() {
            let n = ready!(Pin::new(&mut self.sock).poll_write(cx, &self.tx[self.tx_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tx_pos += n;
        }
        // Drained: keep the allocation for the rest of a burst (`poll_flush` frees it).
        self.tx.clear();
        self.tx_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Queues `bytes` after what waits in `tx`, writing straight to the socket when nothing
    /// waits; keeps what the socket does not take.
    fn send(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> io::Result<()> {
        if self.tx_pos < self.tx.len() {
            self.tx.extend_from_slice(bytes);
            return match self.poll_send(cx) {
                Poll::Ready(r) => r,
                Poll::Pending => Ok(()),
            };
        }
        let mut off = 0;
        while off < bytes.len() {
            match Pin::new(&mut self.sock).poll_write(cx, &bytes[off..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => off += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }
        self.tx.clear();
        self.tx_pos = 0;
        self.tx.extend_from_slice(&bytes[off..]);
        Ok(())
    }

    /// Keeps `rest` (unconsumed received bytes) in `rx`, freeing `rx` when there are none.
    fn keep_rx(&mut self, rest: &[u8]) {
        if rest.is_empty() {
            self.rx = Vec::new();
        } else {
            self.rx.clear();
            self.rx.extend_from_slice(rest);
        }
    }

    /// Fails the connection with `e`: the alert rustls queued goes out if the socket takes it.
    fn fail(&mut self, cx: &mut Context<'_>, e: rustls::Error, incoming: &mut [u8]) -> io::Error {
        self.read_done = true;
        self.encode_alerts(incoming);
        let _ = self.poll_send(cx);
        tls_error(e)
    }

    /// Copies plaintext kept in `plain` into `out`.
    fn take_plain(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.plain.len() - self.plain_pos);
        out.put_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
        self.plain_pos += n;
        if self.plain_pos == self.plain.len() {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
    }

    fn read_records(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut len = self.rx.len();
        let Some(front) = buf.get_mut(..len) else {
            // Not reachable: `rx` only ever holds bytes that came from this buffer.
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a TLS message larger than the receive buffer",
            )));
        };
        front.copy_from_slice(&self.rx);
        let before = out.filled().len();
        loop {
            let p = self.process(&mut buf[..len], Some(out), Action::Nothing, &mut []);
            let next = match p.next {
                Ok(next) => next,
                Err(e) => {
                    let rest = &mut buf[p.consumed..len];
                    return Poll::Ready(Err(self.fail(cx, e, rest)));
                }
            };
            buf.copy_within(p.consumed..len, 0);
            len -= p.consumed;
            if self.tx_pos < self.tx.len() {
                // A handshake message's answer or a key update: it leaves now if it can.
                if let Poll::Ready(Err(e)) = self.poll_send(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            if out.filled().len() > before || self.plain_pos < self.plain.len() {
                self.keep_rx(&buf[..len]);
                if out.filled().len() == before {
                    self.take_plain(out);
                }
                return Poll::Ready(Ok(()));
            }
            if self.peer_closed || next == Next::Closed {
                self.read_done = true;
                self.keep_rx(&buf[..len]);
                return Poll::Ready(Ok(()));
            }
            if len == buf.len() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a TLS message larger than the receive buffer",
                )));
            }
            let end = buf.len().min(len + READ);
            let mut rb = ReadBuf::new(&mut buf[len..end]);
            match Pin::new(&mut self.sock).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    self.keep_rx(&buf[..len]);
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => {
                    self.read_done = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    self.read_done = true;
                    self.rx = Vec::new();
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection without sending TLS close_notify",
                    )));
                }
                Poll::Ready(Ok(())) => len += rb.filled().len(),
            }
        }
    }

    /// Runs `action` (encrypt or `close_notify`) and sends its records; `Ok(false)` when rustls
    /// can no longer take application data.
    fn act(&mut self, cx: &mut Context<'_>, action: Action<'_>) -> io::Result<bool> {
        OUT_BUF.with_borrow_mut(|sealed| {
            let mut rx = mem::take(&mut self.rx);
            let p = self.process(&mut rx, None, action, sealed);
            if let Err(e) = p.next {
                let rest = &mut rx[p.consumed..];
                return Err(self.fail(cx, e, rest));
            }
            rx.drain(..p.consumed);
            if rx.is_empty() {
                rx = Vec::new();
            }
            self.rx = rx;
            self.send(cx, &sealed[..p.sealed])?;
            Ok(p.acted)
        })
    }
}

/// Appends the record rustls hands out (a handshake message, an alert) to `tx`.
fn encode<Data>(tx: &mut Vec<u8>, e: &mut EncodeTlsData<'_, Data>) {
    let at = tx.len();
    if let Err(EncodeError::InsufficientSize(s)) = e.encode(&mut []) {
        tx.resize(at + s.required_size, 0);
        let n = e.encode(&mut tx[at..]).unwrap_or(0);
        tx.truncate(at + n);
    }
}

/// Runs an encrypt-like call into `sealed`, or into the end of `tx` when `sealed` is too small.
fn seal(
    tx: &mut Vec<u8>,
    sealed: &mut [u8],
    mut f: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<usize, rustls::Error> {
    match f(sealed) {
        Ok(n) => Ok(n),
        Err(EncryptError::InsufficientSize(s)) => {
            let at = tx.len();
            tx.resize(at + s.required_size, 0);
            let n = f(&mut tx[at..]).map_err(|e| rustls::Error::General(e.to_string()))?;
            tx.truncate(at + n);
            Ok(0)
        }
        Err(e) => Err(rustls::Error::General(e.to_string())),
    }
}

/// Puts a decrypted record into `out` if it fits and nothing older waits in `plain`; the rest
/// goes to `plain`.
fn deliver(plain: &mut Vec<u8>, pos: &mut usize, out: Option<&mut ReadBuf<'_>>, payload: &[u8]) {
    let mut taken = 0;
    if let Some(out) = out {
        if *pos == plain.len() {
            taken = out.remaining().min(payload.len());
            out.put_slice(&payload[..taken]);
        }
    }
    if taken < payload.len() {
        if *pos == plain.len() {
            plain.clear();
            *pos = 0;
        }
        plain.extend_from_slice(&payload[taken..]);
    }
}

impl<C: Side> AsyncRead for TlsStream<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.plain_pos < this.plain.len() {
            this.take_plain(out);
            return Poll::Ready(Ok(()));
        }
        if this.read_done || this.peer_closed {
            this.read_done = true;
            return Poll::Ready(Ok(()));
        }
        IN_BUF.with_borrow_mut(|buf| this.read_records(cx, buf, out))
    }
}

impl<C: Side> AsyncWrite for TlsStream<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Older records first: this is where a slow peer pushes back.
        ready!(this.poll_send(cx))?;
        if this.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &data[..data.len().min(WRITE)];
        if this.act(cx, Action::Encrypt(data))? {
            Poll::Ready(Ok(data.len()))
        } else {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the TLS connection is closed",
            )))
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        if this.tx.capacity() > 0 {
            this.tx = Vec::new();
        }
        Pin::new(&mut this.sock).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(this.poll_send(cx))?;
            this.close_sent = true;
            this.act(cx, Action::CloseNotify)?;
        }
        ready!(this.poll_send(cx))?;
        this.tx = Vec::new();
        Pin::new(&mut this.sock).poll_shutdown(cx)
    }
}
