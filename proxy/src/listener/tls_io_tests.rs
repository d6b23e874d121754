//! The unbuffered TLS stream (`tls_io`) against real sockets on loopback. The peer is rustls'
//! buffered `ClientConnection` driven by hand over a plain TCP socket, so a test decides exactly
//! which bytes reach our side and when: half a record, a key update, `close_notify` or a bare
//! FIN.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use enclaveid_pki::testing::TestCa;
use enclaveid_pki::tls::TlsSettings;
use futures_util::FutureExt;
use rustls::{ClientConnection, ServerConfig};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::tls_io::{accept, connect, TlsStream};

fn server_config(ca: &TestCa) -> Arc<ServerConfig> {
    Arc::new(
        ca.material(&ca.workload("backend"))
            .server_config(&TlsSettings::default(), None, &[])
            .unwrap(),
    )
}

fn client_config(ca: &TestCa) -> Arc<rustls::ClientConfig> {
    Arc::new(
        ca.material(&ca.workload("frontend"))
            .client_config(&TlsSettings::default(), &[])
            .unwrap(),
    )
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}

/// rustls' buffered client over a TCP socket, driven by hand.
struct Peer {
    conn: ClientConnection,
    sock: TcpStream,
    /// Plaintext received and not yet taken.
    received: Vec<u8>,
    /// The server's `close_notify` arrived.
    closed: bool,
}

impl Peer {
    /// The TLS bytes the client has queued.
    fn take_tls(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out).unwrap();
        }
        out
    }

    /// Hands received bytes to the client (`read_tls` takes at most 4 KiB a call) and
    /// collects the plaintext.
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            self.conn.read_tls(&mut bytes).unwrap();
            let state = self.conn.process_new_packets().unwrap();
            self.closed |= state.peer_has_closed();
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match self.conn.reader().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(k) => self.received.extend_from_slice(&chunk[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client read: {e}"),
                }
            }
        }
    }

    /// Encrypts and sends `data` (in pieces: the client buffers at most 64 KiB).
    async fn send(&mut self, data: &[u8]) {
        for piece in data.chunks(16 * 1024) {
            self.conn.writer().write_all(piece).unwrap();
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        let bytes = self.take_tls();
        self.sock.write_all(&bytes).await.unwrap();
    }

    /// Reads one piece from the socket into the client.
    async fn pump(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        let k = self.sock.read(&mut buf).await.unwrap();
        assert!(
            k > 0,
            "EOF (received {} bytes, close_notify: {})",
            self.received.len(),
            self.closed
        );
        self.feed(&buf[..k]);
        // A key update request from us is answered here.
        self.flush().await;
    }

    /// Reads until the client has `n` plaintext bytes and takes them.
    async fn read_plain(&mut self, n: usize) -> Vec<u8> {
        while self.received.len() < n {
            self.pump().await;
        }
        self.received.drain(..n).collect()
    }

    /// Reads until the server's `close_notify`.
    async fn read_close(&mut self) {
        while !self.closed {
            self.pump().await;
        }
    }
}

/// Our server stream and a hand-driven rustls client connected to it.
async fn pair() -> (TlsStream<rustls::server::UnbufferedServerConnection>, Peer) {
    let ca = TestCa::new("tls-io CA");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = server_config(&ca);
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        accept(config, sock).await
    });
    let name = ServerName::try_from("localhost").unwrap();
    let mut peer = Peer {
        conn: ClientConnection::new(client_config(&ca), name).unwrap(),
        sock: TcpStream::connect(addr).await.unwrap(),
        received: Vec::new(),
        closed: false,
    };
    let mut buf = vec![0u8; 16 * 1024];
    while peer.conn.is_handshaking() {
        peer.flush().await;
        if !peer.conn.is_handshaking() {
            break;
        }
        let k = within(peer.sock.read(&mut buf)).await.unwrap();
        assert!(k > 0, "the server closed during the handshake");
        peer.feed(&buf[..k]);
    }
    peer.flush().await;
    let ours = within(server).await.unwrap().expect("handshake");
    (ours, peer)
}

/// Waits until our socket has bytes to read (a whole write arrives at once on loopback).
async fn arrived(ours: &TlsStream<rustls::server::UnbufferedServerConnection>) {
    within(ours.readable()).await.unwrap();
}

#[tokio::test]
async fn a_record_split_across_reads_waits_in_rx_then_arrives_whole() {
    let (mut ours, mut peer) = pair().await;
    assert_eq!(
        ours.buffered_capacity(),
        0,
        "nothing held after the handshake"
    );
    peer.conn
        .writer()
        .write_all(b"hello, split record")
        .unwrap();
    let record = peer.take_tls();
    peer.sock.write_all(&record[..7]).await.unwrap();
    arrived(&ours).await;
    let mut buf = [0u8; 64];
    assert!(
        ours.read(&mut buf).now_or_never().is_none(),
        "half a record"
    );
    assert_eq!(ours.kept(), &record[..7], "the partial record is kept");
    peer.sock.write_all(&record[7..]).await.unwrap();
    let n = within(ours.read(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"hello, split record");
    assert!(ours.read(&mut buf).now_or_never().is_none());
    assert_eq!(ours.buffered_capacity(), 0, "drained and idle: no buffer");
}

#[tokio::test]
async fn records_cut_anywhere_arrive_whole_and_in_order() {
    let (mut ours, mut peer) = pair().await;
    // A split inside the record header, then inside the body.
    peer.conn.writer().write_all(b"header split").unwrap();
    let record = peer.take_tls();
    for piece in [&record[..3], &record[3..4], &record[4..20], &record[20..]] {
        peer.sock.write_all(piece).await.unwrap();
        arrived(&ours).await;
        let mut buf = [0u8; 64];
        match ours.read(&mut buf).now_or_never() {
            None => assert!(!ours.kept().is_empty()),
            Some(n) => assert_eq!(&buf[..n.unwrap()], b"header split"),
        }
    }
    assert_eq!(ours.buffered_capacity(), 0);
    // Many records of many sizes, their bytes written in pieces of every size.
    let sent: Vec<u8> = (0..400_000u32).map(|i| (i % 233) as u8).collect();
    let mut wire = Vec::new();
    let mut seed = 7u32;
    let mut next = |max: u32| {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        1 + (seed >> 8) % max
    };
    let mut off = 0;
    while off < sent.len() {
        let n = (next(20_000) as usize).min(sent.len() - off);
        peer.conn.writer().write_all(&sent[off..off + n]).unwrap();
        wire.extend(peer.take_tls());
        off += n;
    }
    let cuts: Vec<usize> = {
        let mut at = 0;
        let mut cuts = Vec::new();
        while at < wire.len() {
            at = (at + next(30_000) as usize).min(wire.len());
            cuts.push(at);
        }
        cuts
    };
    let mut got = Vec::new();
    within(async {
        tokio::join!(
            async {
                let mut from = 0;
                for to in cuts {
                    peer.sock.write_all(&wire[from..to]).await.unwrap();
                    from = to;
                    tokio::task::yield_now().await;
                }
            },
            async {
                let mut buf = vec![0u8; 24 * 1024];
                while got.len() < sent.len() {
                    let n = ours.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    got.extend_from_slice(&buf[..n]);
                }
            }
        )
    })
    .await;
    assert!(got == sent, "every byte, in order");
    assert_eq!(ours.buffered_capacity(), 0);
}

#[tokio::test]
async fn a_record_larger_than_the_read_buffer_is_delivered_in_pieces() {
    let (mut ours, mut peer) = pair().await;
    let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    peer.send(&sent).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1000];
    while got.len() < sent.len() {
        let n = within(ours.read(&mut buf)).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, sent);
    assert_eq!(ours.buffered_capacity(), 0);
    // And the other way, larger than one write call takes.
    let back: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    let (writer, reader) = tokio::join!(
        async {
            ours.write_all(&back).await.unwrap();
            ours.flush().await.unwrap();
            ours
        },
        peer.read_plain(back.len())
    );
    assert_eq!(reader, back);
    assert_eq!(writer.buffered_capacity(), 0, "flushed: no send buffer");
}

#[tokio::test]
async fn a_key_update_from_the_peer_is_answered_and_both_directions_go_on() {
    let (mut ours, mut peer) = pair().await;
    for round in 0..3u8 {
        // The peer rolls its keys and asks us to roll ours.
        peer.conn.refresh_traffic_keys().unwrap();
        peer.conn.writer().write_all(&[round; 3000]).unwrap();
        peer.flush().await;
        let mut got = vec![0u8; 3000];
        within(ours.read_exact(&mut got)).await.unwrap();
        assert_eq!(got, [round; 3000]);
        // Our answer (a key update under the old keys) leads our next record.
        ours.write_all(&[round + 100; 5000]).await.unwrap();
        ours.flush().await.unwrap();
        assert_eq!(within(peer.read_plain(5000)).await, [round + 100; 5000]);
    }
    assert_eq!(ours.buffered_capacity(), 0);
}

#[tokio::test]
async fn close_notify_is_a_clean_eof_and_the_other_direction_goes_on() {
    let (mut ours, mut peer) = pair().await;
    peer.conn.writer().write_all(b"last words").unwrap();
    peer.conn.send_close_notify();
    peer.flush().await;
    let mut got = Vec::new();
    within(ours.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"last words");
    ours.write_all(b"reply after half-close").await.unwrap();
    ours.shutdown().await.unwrap();
    assert_eq!(within(peer.read_plain(22)).await, b"reply after half-close");
    within(peer.read_close()).await;
}

#[tokio::test]
async fn a_bare_fin_is_an_unexpected_eof_after_every_byte() {
    let (mut ours, mut peer) = pair().await;
    peer.conn.writer().write_all(b"authenticated").unwrap();
    peer.flush().await;
    peer.sock.shutdown().await.unwrap();
    let mut buf = [0u8; 64];
    let n = within(ours.read(&mut buf)).await.unwrap();
    assert_eq!(&buf[..n], b"authenticated");
    let err = within(ours.read(&mut buf)).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_refused_handshake_sends_the_alert_and_names_the_reason() {
    let ca = TestCa::new("tls-io CA");
    let stranger = TestCa::new("another CA");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = server_config(&ca);
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        accept(config, sock).await.map(|_| ())
    });
    // A client whose certificate the server's CA did not issue (it trusts the server).
    let leaf = stranger.workload("frontend");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let key = <rustls_pki_types::PrivateKeyDer<'static> as rustls_pki_types::pem::PemObject>::from_pem_slice(
        leaf.key_pem.as_bytes(),
    )
    .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(enclaveid_pki::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![leaf.der.clone()], key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let sock = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let result = within(async {
        let mut tls = connector.connect(name, sock).await?;
        // TLS 1.3: the client finishes first; the refusal arrives as an alert on read.
        let mut buf = [0u8; 8];
        tls.read(&mut buf).await
    })
    .await;
    let err = result.expect_err("the server refuses the client");
    let alert = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned();
    assert!(
        matches!(alert, Some(rustls::Error::AlertReceived(_))),
        "the client got the server's alert: {err}"
    );
    let refused = within(server).await.unwrap().unwrap_err();
    assert_eq!(
        enclaveid_pki::tls::RejectReason::from_io(&refused),
        enclaveid_pki::tls::RejectReason::UnknownCa
    );
}

#[tokio::test]
async fn our_client_talks_to_a_buffered_server_both_ways() {
    let ca = TestCa::new("tls-io CA");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&ca));
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(sock).await.unwrap();
        // Echo until close_notify, then close in turn.
        let mut buf = vec![0u8; 7000];
        loop {
            let n = tls.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            tls.write_all(&buf[..n]).await.unwrap();
        }
        tls.shutdown().await.unwrap();
    });
    let name = ServerName::try_from("localhost").unwrap();
    let sock = TcpStream::connect(addr).await.unwrap();
    let mut ours = within(connect(client_config(&ca), name, sock))
        .await
        .expect("handshake");
    let sent: Vec<u8> = (0..500_000u32).map(|i| (i % 253) as u8).collect();
    let mut got = Vec::new();
    let (mut rd, mut wr) = tokio::io::split(&mut ours);
    let ((), ()) = within(async {
        tokio::join!(
            async {
                for chunk in sent.chunks(12_345) {
                    wr.write_all(chunk).await.unwrap();
                }
                wr.shutdown().await.unwrap();
            },
            async {
                rd.read_to_end(&mut got).await.unwrap();
            }
        )
    })
    .await;
    assert_eq!(got, sent);
    within(server).await.unwrap();
    assert_eq!(ours.buffered_capacity(), 0);
}

#[tokio::test]
async fn an_idle_proxied_tls_connection_holds_no_buffer() {
    let (mut ours, mut peer) = pair().await;
    let app_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut upstream = TcpStream::connect(app_listener.local_addr().unwrap())
        .await
        .unwrap();
    let (mut app, _) = app_listener.accept().await.unwrap();
    let counter = prometheus::IntCounter::new("c", "c").unwrap();
    let mut copy = crate::copy::bidirectional(
        &mut ours,
        &mut upstream,
        &counter,
        &counter,
        Duration::from_secs(30),
    );
    assert!((&mut copy).now_or_never().is_none());
    assert_eq!(copy.held() + copy.a().buffered_capacity(), 0, "nothing yet");

    // Peer -> app, records of every size, while the app reads slowly.
    let up: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    peer.send(&up).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 1500];
    within(async {
        while got.len() < up.len() {
            tokio::select! {
                r = &mut copy => panic!("the copy ended early: {r:?}"),
                n = app.read(&mut buf) => got.extend_from_slice(&buf[..n.unwrap()]),
            }
        }
    })
    .await;
    assert_eq!(got, up);

    // App -> peer.
    let down: Vec<u8> = (0..300_000u32).map(|i| (i % 247) as u8).collect();
    app.write_all(&down).await.unwrap();
    within(async {
        while peer.received.len() < down.len() {
            tokio::select! {
                r = &mut copy => panic!("the copy ended early: {r:?}"),
                () = peer.pump() => {}
            }
        }
    })
    .await;
    assert_eq!(peer.received, down);

    // Idle again: neither the copy nor the TLS stream holds a buffer.
    assert!((&mut copy).now_or_never().is_none());
    assert_eq!(copy.held(), 0, "no copy buffer");
    assert_eq!(copy.a().buffered_capacity(), 0, "no TLS buffer");
    assert_eq!(counter.get(), 500_000);
}

#[tokio::test]
async fn tls12_where_a_listener_allows_it() {
    let ca = TestCa::new("tls-io CA");
    let settings = TlsSettings {
        min_version: enclaveid_pki::tls::MinVersion::Tls12,
        session_resumption: false,
    };
    let server = Arc::new(
        ca.material(&ca.workload("backend"))
            .server_config(&settings, None, &[])
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let ours = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut tls = accept(server, sock).await.expect("handshake");
        // Echo until close_notify, then close in turn.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = tls.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            tls.write_all(&buf[..n]).await.unwrap();
        }
        tls.shutdown().await.unwrap();
        tls.conn().protocol_version()
    });
    // A TLS 1.2-only client with the frontend's certificate.
    let leaf = ca.workload("frontend");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    let key = <rustls_pki_types::PrivateKeyDer<'static> as rustls_pki_types::pem::PemObject>::from_pem_slice(
        leaf.key_pem.as_bytes(),
    )
    .unwrap();
    let client = rustls::ClientConfig::builder_with_provider(enclaveid_pki::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![leaf.der.clone()], key)
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let sock = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = within(connector.connect(name, sock)).await.unwrap();
    let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 239) as u8).collect();
    let mut got = Vec::new();
    let (mut rd, mut wr) = tokio::io::split(&mut tls);
    within(async {
        tokio::join!(
            async {
                wr.write_all(&sent).await.unwrap();
                wr.shutdown().await.unwrap();
            },
            async { rd.read_to_end(&mut got).await.unwrap() }
        )
    })
    .await;
    assert_eq!(got, sent);
    assert_eq!(
        within(ours).await.unwrap(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}
