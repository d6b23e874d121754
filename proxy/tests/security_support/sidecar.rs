//! The real `enclaveid-proxy` binary, spawned with a generated config (only the config contract
//! of issue 2 and the metric names are assumed), killed by PID when dropped. Its log goes to a
//! file that failure messages quote.

#![allow(
    dead_code,
    reason = "shared by several security test crates; each uses a part"
)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::net::{http_get, proc_stats, Scrape};
use super::pki::Minted;

/// A free loopback port: bound, read, released. The proxy binds it a moment later.
///
/// Ports come from below the kernel's ephemeral range (32768 and up by default), walking from a
/// per-process random start: a port 0 pick would come from that range, where the outgoing
/// connections of the tests running beside this one can take it in the moment before the
/// proxy binds it ("Address already in use").
pub(crate) fn free_port() -> SocketAddr {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    if NEXT.load(Ordering::Relaxed) == 0 {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id();
        let start = LOW + u16::try_from(seed % u32::from(SPAN)).unwrap();
        let _ = NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    }
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = if port >= LOW + SPAN {
            NEXT.store(LOW + 1, Ordering::Relaxed);
            LOW
        } else {
            port
        };
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().unwrap();
        }
    }
}

/// Writes ca.pem, cert.pem, key.pem (0444, 0444, 0400) into `dir`.
pub(crate) fn write_tls(dir: &Path, ca_pem: &str, leaf: &Minted) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    for (name, body, mode) in [
        ("ca.pem", ca_pem, 0o444),
        ("cert.pem", leaf.chain_pem.as_str(), 0o444),
        ("key.pem", leaf.key_pem.as_str(), 0o400),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// One listener of a generated config.
#[derive(Clone, Debug)]
pub(crate) enum Listener {
    Inbound {
        name: String,
        listen: SocketAddr,
        forward: String,
        protocol: &'static str,
        allow: Option<Vec<String>>,
        extra: String,
    },
    Outbound {
        name: String,
        listen: SocketAddr,
        upstream: String,
        server_name: String,
        protocol: &'static str,
        extra: String,
    },
}

/// A config: TLS dir, listeners, and raw YAML for `defaults:` and `tls:` extras.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub(crate) tls_dir: PathBuf,
    pub(crate) admin: SocketAddr,
    pub(crate) listeners: Vec<Listener>,
    /// Lines under `defaults:` (e.g. `handshake_timeout_ms: 1000`).
    pub(crate) defaults: Vec<String>,
    /// Extra lines under `tls:` (e.g. `min_version: "1.2"`).
    pub(crate) tls_extra: Vec<String>,
    pub(crate) drain_timeout_ms: Option<u64>,
}

impl Spec {
    pub(crate) fn new(tls_dir: &Path) -> Self {
        Self {
            tls_dir: tls_dir.to_owned(),
            admin: free_port(),
            listeners: Vec::new(),
            defaults: Vec::new(),
            tls_extra: Vec::new(),
            drain_timeout_ms: None,
        }
    }

    pub(crate) fn yaml(&self) -> String {
        let d = self.tls_dir.display();
        let mut y = format!(
            "admin: {{ listen: \"{}\" }}\ntls:\n  ca: {d}/ca.pem\n  cert: {d}/cert.pem\n  key: {d}/key.pem\n",
            self.admin
        );
        for l in &self.tls_extra {
            writeln!(y, "  {l}").unwrap();
        }
        if !self.defaults.is_empty() {
            y.push_str("defaults:\n");
            for l in &self.defaults {
                writeln!(y, "  {l}").unwrap();
            }
        }
        if let Some(ms) = self.drain_timeout_ms {
            writeln!(y, "drain_timeout_ms: {ms}").unwrap();
        }
        let (mut inbound, mut outbound) = (String::new(), String::new());
        for l in &self.listeners {
            match l {
                Listener::Inbound {
                    name,
                    listen,
                    forward,
                    protocol,
                    allow,
                    extra,
                } => {
                    write!(
                        inbound,
                        "  - name: {name}\n    listen: \"{listen}\"\n    forward: \"{forward}\"\n    protocol: {protocol}\n"
                    )
                    .unwrap();
                    if let Some(allow) = allow {
                        let list: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
                        writeln!(inbound, "    allow: [{}]", list.join(", ")).unwrap();
                    }
                    inbound.push_str(extra);
                }
                Listener::Outbound {
                    name,
                    listen,
                    upstream,
                    server_name,
                    protocol,
                    extra,
                } => {
                    write!(
                        outbound,
                        "  - name: {name}\n    listen: \"{listen}\"\n    upstream: \"{upstream}\"\n    server_name: {server_name}\n    protocol: {protocol}\n"
                    )
                    .unwrap();
                    outbound.push_str(extra);
                }
            }
        }
        if !inbound.is_empty() {
            y.push_str("inbound:\n");
            y.push_str(&inbound);
        }
        if !outbound.is_empty() {
            y.push_str("outbound:\n");
            y.push_str(&outbound);
        }
        y
    }
}

/// A running sidecar process.
pub(crate) struct Sidecar {
    pub(crate) child: Child,
    pub(crate) admin: SocketAddr,
    pub(crate) log: PathBuf,
    pub(crate) config: PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    /// Writes the config next to the TLS files and starts the binary.
    pub(crate) fn spawn(spec: &Spec, name: &str) -> Self {
        let config = spec.tls_dir.join(format!("{name}.yaml"));
        std::fs::write(&config, spec.yaml()).unwrap();
        Self::spawn_config(
            &config,
            spec.admin,
            &spec.tls_dir.join(format!("{name}.log")),
        )
    }

    /// Starts the binary on an existing config file (for restarts).
    pub(crate) fn spawn_config(config: &Path, admin: SocketAddr, log: &Path) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_enclaveid-proxy"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .env_remove("LOG_FORMAT")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("spawning enclaveid-proxy");
        Self {
            child,
            admin,
            log: log.to_owned(),
            config: config.to_owned(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) until `/ready` answers 200. The proxy is another process, so readiness
    /// is its admin endpoint; connection-refused retries are spaced 20 ms apart.
    pub(crate) async fn ready(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "proxy exited with {status} before ready; log:\n{}",
                    self.log_text()
                );
            }
            if let Ok((200, _)) = http_get(self.admin, "/ready").await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "proxy not ready after 20 s; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) async fn scrape(&self) -> Scrape {
        let (status, body) = http_get(self.admin, "/metrics")
            .await
            .unwrap_or_else(|e| panic!("scraping {}: {e}; log:\n{}", self.admin, self.log_text()));
        assert_eq!(status, 200, "/metrics: {body}");
        Scrape::parse(&body)
    }

    /// Open file descriptors and `VmRSS` in KiB.
    pub(crate) fn stats(&self) -> (usize, u64) {
        proc_stats(self.pid())
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// Waits (bounded) for the process to exit and returns its exit code.
    pub(crate) async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "proxy still running after {within:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
