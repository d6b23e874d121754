//! The YAML configuration contract that init and the Helm chart write: `admin`, `tls`,
//! `inbound[]`, `outbound[]`, plus documented defaults for timeouts and limits. Serde fills the
//! `Raw*` structs (unknown keys are errors) and `Config::from_raw` builds the typed config;
//! every error names the key path, the bad value and why.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use enclaveid_pki::identity::AllowPattern;
use enclaveid_pki::tls::{MinVersion, TlsSettings};
use serde::{Deserialize, Serialize, Serializer};

/// Default admin listener.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:15000";
/// Default TCP connect timeout, ms.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Default TLS handshake timeout, ms.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Default idle timeout: no byte in either direction for this long closes a connection, ms.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 300_000;
/// Default cap on concurrent connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default cap on the size of an HTTP request head, bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 65_536;
/// Default drain timeout after SIGTERM, ms.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 30_000;
/// Default data-path threads: one. A sidecar serves one pod's app; a single-threaded runtime has
/// no work stealing, one malloc arena and the smallest footprint. Raise it for busy pods.
pub const DEFAULT_WORKERS: usize = 1;
/// Default poll interval for certificate file changes, ms.
pub const DEFAULT_RELOAD_INTERVAL_MS: u64 = 1_000;
/// Default lifetime of a resolved outbound upstream name, ms (Envoy's DNS refresh default).
pub const DEFAULT_DNS_CACHE_TTL_MS: u64 = 5_000;
/// Longest accepted `dns.cache_ttl_ms`: a longer cache would outlive a rescheduled peer pod.
pub const MAX_DNS_CACHE_TTL_MS: u64 = 300_000;
/// Default cap on cached names.
pub const DEFAULT_DNS_CACHE_MAX_ENTRIES: usize = 256;
/// Largest accepted `dns.cache_max_entries`.
pub const MAX_DNS_CACHE_MAX_ENTRIES: usize = 65_536;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not fit the schema (unknown key, wrong type, ...); serde names the path.
    #[error("{0}")]
    Syntax(String),
    /// A key has a bad value.
    #[error("{path} = {value:?}: {why}")]
    Field {
        /// The key path, e.g. `inbound[0].forward`.
        path: String,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        why: String,
    },
}

impl ConfigError {
    fn field(path: impl Into<String>, value: impl fmt::Display, why: impl Into<String>) -> Self {
        Self::Field {
            path: path.into(),
            value: value.to_string(),
            why: why.into(),
        }
    }
}

/// L4 byte copy or L7 HTTP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Bidirectional byte copy with half-close.
    #[default]
    Tcp,
    /// HTTP/1.1 and HTTP/2 through hyper.
    Http,
}

/// Which HTTP version an inbound `http` listener speaks to the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/2 with prior knowledge (h2c) for gRPC requests, HTTP/1.1 otherwise.
    #[default]
    Auto,
    /// Always HTTP/1.1.
    Http1,
    /// Always HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// A `host:port` pair whose host may be a DNS name or an IP literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// The host, without IPv6 brackets.
    pub host: String,
    /// The port, never 0.
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port` or `[v6]:port`; `why` strings are the ones shown to the operator.
    pub fn parse(s: &str) -> Result<Self, &'static str> {
        let (host, port) = s.rsplit_once(':').ok_or("expected host:port")?;
        let port: u16 = port.parse().map_err(|_| "invalid port")?;
        if port == 0 {
            return Err("invalid port: 0 is not a destination");
        }
        let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>()
                .map_err(|_| "invalid IPv6 address")?;
            v6
        } else {
            if host.parse::<IpAddr>().is_err() && !is_dns_name(host) {
                return Err("invalid host: expected an IP address or a DNS name");
            }
            host
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// The host as an IP address, when it is one.
    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
        })
}

fn parse_listen(path: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    let hp = HostPort::parse(s).or_else(|why| {
        // Port 0 is fine for a listener (tests bind an ephemeral port).
        if why.starts_with("invalid port: 0") {
            Ok(HostPort {
                host: s
                    .rsplit_once(':')
                    .map_or("", |(h, _)| h)
                    .trim_matches(['[', ']'])
                    .to_owned(),
                port: 0,
            })
        } else {
            Err(ConfigError::field(path, s, why))
        }
    })?;
    let ip = hp
        .ip()
        .ok_or_else(|| ConfigError::field(path, s, "a listen address must be an IP literal"))?;
    Ok(SocketAddr::new(ip, hp.port))
}

fn ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn display<T: fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[allow(clippy::ref_option, reason = "serde's serialize_with signature")]
fn patterns<S: Serializer>(v: &Option<Vec<AllowPattern>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        None => s.serialize_none(),
        Some(p) => s.collect_seq(p.iter().map(AllowPattern::as_str)),
    }
}

#[allow(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with signature"
)]
fn min_version<S: Serializer>(v: &MinVersion, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match v {
        MinVersion::Tls12 => "1.2",
        MinVersion::Tls13 => "1.3",
    })
}

// ---------------------------------------------------------------------------------------------
// Raw, as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    admin: Option<RawAdmin>,
    tls: RawTls,
    #[serde(default)]
    defaults: RawLimits,
    drain_timeout_ms: Option<u64>,
    workers: Option<usize>,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    inbound: Vec<RawInbound>,
    #[serde(default)]
    outbound: Vec<RawOutbound>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDns {
    cache_ttl_ms: Option<u64>,
    cache_max_entries: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    min_version: Option<String>,
    session_resumption: Option<bool>,
    reload_interval_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    connect_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_header_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    name: String,
    listen: String,
    forward: String,
    #[serde(default)]
    protocol: Protocol,
    allow: Option<Vec<String>>,
    #[serde(default)]
    app_protocol: AppProtocol,
    // Inlined (not `flatten`ed) because serde cannot deny unknown fields through a flatten.
    connect_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_header_bytes: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    name: String,
    listen: String,
    upstream: String,
    server_name: Option<String>,
    #[serde(default)]
    protocol: Protocol,
    // Inlined (not `flatten`ed) because serde cannot deny unknown fields through a flatten.
    connect_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    max_header_bytes: Option<usize>,
}

// ---------------------------------------------------------------------------------------------
// Typed, with defaults applied.

/// The effective configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Admin listener.
    pub admin: Admin,
    /// TLS files and settings.
    pub tls: Tls,
    /// How long open connections may finish after SIGTERM.
    #[serde(rename = "drain_timeout_ms", serialize_with = "ms")]
    pub drain_timeout: Duration,
    /// Data-path threads: 1 (default) = a single-threaded runtime, n = n threads, 0 = one per
    /// CPU (or `TOKIO_WORKER_THREADS`).
    pub workers: usize,
    /// Resolution of outbound upstream names.
    pub dns: Dns,
    /// mTLS in, plaintext to the app.
    pub inbound: Vec<Inbound>,
    /// Plaintext from the app, mTLS out.
    pub outbound: Vec<Outbound>,
}

/// The cache of resolved outbound upstream names (IP literals are never looked up).
#[derive(Clone, Debug, Serialize)]
pub struct Dns {
    /// How long a successful lookup is reused; zero resolves at every connect.
    #[serde(rename = "cache_ttl_ms", serialize_with = "ms")]
    pub cache_ttl: Duration,
    /// Most names held; the entry closest to expiry makes room.
    pub cache_max_entries: usize,
}

/// The admin listener.
#[derive(Clone, Debug, Serialize)]
pub struct Admin {
    /// Address, loopback by default.
    pub listen: SocketAddr,
}

/// The three TLS files and the TLS knobs.
#[derive(Clone, Debug, Serialize)]
pub struct Tls {
    /// The pinned CA bundle.
    pub ca: PathBuf,
    /// This workload's leaf and chain.
    pub cert: PathBuf,
    /// This workload's private key (the path only; the key is never shown).
    pub key: PathBuf,
    /// Lowest TLS version.
    #[serde(serialize_with = "min_version")]
    pub min_version: MinVersion,
    /// Whether session resumption is on.
    pub session_resumption: bool,
    /// How often the files are checked for changes.
    #[serde(rename = "reload_interval_ms", serialize_with = "ms")]
    pub reload_interval: Duration,
}

impl Tls {
    /// The settings handed to the rustls builders.
    #[must_use]
    pub fn settings(&self) -> TlsSettings {
        TlsSettings {
            min_version: self.min_version,
            session_resumption: self.session_resumption,
        }
    }
}

/// Per-listener timeouts and limits.
#[derive(Clone, Debug, Serialize)]
pub struct Limits {
    /// TCP connect to the app or upstream.
    #[serde(rename = "connect_timeout_ms", serialize_with = "ms")]
    pub connect_timeout: Duration,
    /// TLS handshake.
    #[serde(rename = "handshake_timeout_ms", serialize_with = "ms")]
    pub handshake_timeout: Duration,
    /// No byte in either direction for this long closes the connection.
    #[serde(rename = "idle_timeout_ms", serialize_with = "ms")]
    pub idle_timeout: Duration,
    /// Concurrent connections accepted; more are closed and counted.
    pub max_connections: usize,
    /// Largest HTTP request head (bytes); larger gets 431.
    pub max_header_bytes: usize,
}

/// An inbound listener.
#[derive(Clone, Debug, Serialize)]
pub struct Inbound {
    /// Name, used as the `listener` metric label.
    pub name: String,
    /// mTLS listen address.
    pub listen: SocketAddr,
    /// The app, plaintext.
    #[serde(serialize_with = "display")]
    pub forward: HostPort,
    /// tcp or http.
    pub protocol: Protocol,
    /// SAN patterns; `None` = any certificate from the pinned CA.
    #[serde(serialize_with = "patterns")]
    pub allow: Option<Vec<AllowPattern>>,
    /// HTTP version towards the app (http only).
    pub app_protocol: AppProtocol,
    /// Timeouts and limits.
    #[serde(flatten)]
    pub limits: Limits,
}

/// An outbound listener.
#[derive(Clone, Debug, Serialize)]
pub struct Outbound {
    /// Name, used as the `listener` metric label.
    pub name: String,
    /// Plaintext listen address (loopback).
    pub listen: SocketAddr,
    /// The peer sidecar.
    #[serde(serialize_with = "display")]
    pub upstream: HostPort,
    /// The SAN the peer must present.
    pub server_name: String,
    /// tcp or http.
    pub protocol: Protocol,
    /// Timeouts and limits.
    #[serde(flatten)]
    pub limits: Limits,
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Parses and checks YAML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let admin_listen = raw
            .admin
            .and_then(|a| a.listen)
            .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.to_owned());
        let admin = Admin {
            listen: parse_listen("admin.listen", &admin_listen)?,
        };
        let tls = tls(raw.tls)?;
        limits("defaults", &raw.defaults, &RawLimits::default())?;
        let mut inbound = Vec::new();
        for (i, r) in raw.inbound.into_iter().enumerate() {
            inbound.push(self::inbound(&format!("inbound[{i}]"), r, &raw.defaults)?);
        }
        let mut outbound = Vec::new();
        for (i, r) in raw.outbound.into_iter().enumerate() {
            outbound.push(self::outbound(&format!("outbound[{i}]"), r, &raw.defaults)?);
        }
        let config = Self {
            admin,
            tls,
            drain_timeout: Duration::from_millis(
                raw.drain_timeout_ms.unwrap_or(DEFAULT_DRAIN_TIMEOUT_MS),
            ),
            workers: raw.workers.unwrap_or(DEFAULT_WORKERS),
            dns: dns(&raw.dns)?,
            inbound,
            outbound,
        };
        if config.workers > 1024 {
            return Err(ConfigError::field(
                "workers",
                config.workers,
                "at most 1024",
            ));
        }
        config.cross_check()?;
        Ok(config)
    }

    /// Checks that span several keys: unique names, no two listeners on one address.
    fn cross_check(&self) -> Result<(), ConfigError> {
        if self.inbound.is_empty() && self.outbound.is_empty() {
            return Err(ConfigError::field(
                "inbound",
                "[]",
                "no inbound or outbound listener: nothing to proxy",
            ));
        }
        let listeners = self
            .inbound
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("inbound[{i}]"), &l.name, l.listen))
            .chain(
                self.outbound
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (format!("outbound[{i}]"), &l.name, l.listen)),
            );
        let mut names = std::collections::HashMap::new();
        let mut addrs = std::collections::HashMap::from([(self.admin.listen, "admin".to_owned())]);
        for (path, name, listen) in listeners {
            if let Some(prev) = names.insert(name.clone(), path.clone()) {
                return Err(ConfigError::field(
                    format!("{path}.name"),
                    name,
                    format!("already used by {prev}"),
                ));
            }
            if listen.port() != 0 {
                if let Some(prev) = addrs.insert(listen, path.clone()) {
                    return Err(ConfigError::field(
                        format!("{path}.listen"),
                        listen,
                        format!("already used by {prev}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn dns(raw: &RawDns) -> Result<Dns, ConfigError> {
    let ttl = raw.cache_ttl_ms.unwrap_or(DEFAULT_DNS_CACHE_TTL_MS);
    if ttl > MAX_DNS_CACHE_TTL_MS {
        return Err(ConfigError::field(
            "dns.cache_ttl_ms",
            ttl,
            format!("at most {MAX_DNS_CACHE_TTL_MS} (5 min): a longer cache would keep dialling a peer that moved; 0 turns the cache off"),
        ));
    }
    let max = raw
        .cache_max_entries
        .unwrap_or(DEFAULT_DNS_CACHE_MAX_ENTRIES);
    if !(1..=MAX_DNS_CACHE_MAX_ENTRIES).contains(&max) {
        return Err(ConfigError::field(
            "dns.cache_max_entries",
            max,
            format!("must be between 1 and {MAX_DNS_CACHE_MAX_ENTRIES}"),
        ));
    }
    Ok(Dns {
        cache_ttl: Duration::from_millis(ttl),
        cache_max_entries: max,
    })
}

fn tls(raw: RawTls) -> Result<Tls, ConfigError> {
    for (key, path) in [
        ("tls.ca", &raw.ca),
        ("tls.cert", &raw.cert),
        ("tls.key", &raw.key),
    ] {
        if path.as_os_str().is_empty() {
            return Err(ConfigError::field(key, "", "a file path is required"));
        }
    }
    let min_version = match raw.min_version.as_deref() {
        None | Some("1.3") => MinVersion::Tls13,
        Some("1.2") => MinVersion::Tls12,
        Some(other) => {
            return Err(ConfigError::field(
                "tls.min_version",
                other,
                "expected \"1.2\" or \"1.3\"",
            ))
        }
    };
    let reload_ms = raw.reload_interval_ms.unwrap_or(DEFAULT_RELOAD_INTERVAL_MS);
    if reload_ms == 0 {
        return Err(ConfigError::field(
            "tls.reload_interval_ms",
            0,
            "must be at least 1",
        ));
    }
    Ok(Tls {
        ca: raw.ca,
        cert: raw.cert,
        key: raw.key,
        min_version,
        session_resumption: raw.session_resumption.unwrap_or(false),
        reload_interval: Duration::from_millis(reload_ms),
    })
}

fn limits(path: &str, own: &RawLimits, defaults: &RawLimits) -> Result<Limits, ConfigError> {
    let ms = |key: &str,
              own: Option<u64>,
              dflt: Option<u64>,
              builtin: u64|
     -> Result<Duration, ConfigError> {
        let v = own.or(dflt).unwrap_or(builtin);
        if v == 0 {
            return Err(ConfigError::field(
                format!("{path}.{key}"),
                v,
                "must be at least 1 ms",
            ));
        }
        Ok(Duration::from_millis(v))
    };
    let max_connections = own
        .max_connections
        .or(defaults.max_connections)
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(ConfigError::field(
            format!("{path}.max_connections"),
            0,
            "must be at least 1",
        ));
    }
    let max_header_bytes = own
        .max_header_bytes
        .or(defaults.max_header_bytes)
        .unwrap_or(DEFAULT_MAX_HEADER_BYTES);
    if !(8192..=16 << 20).contains(&max_header_bytes) {
        return Err(ConfigError::field(
            format!("{path}.max_header_bytes"),
            max_header_bytes,
            "must be between 8192 and 16777216",
        ));
    }
    Ok(Limits {
        connect_timeout: ms(
            "connect_timeout_ms",
            own.connect_timeout_ms,
            defaults.connect_timeout_ms,
            DEFAULT_CONNECT_TIMEOUT_MS,
        )?,
        handshake_timeout: ms(
            "handshake_timeout_ms",
            own.handshake_timeout_ms,
            defaults.handshake_timeout_ms,
            DEFAULT_HANDSHAKE_TIMEOUT_MS,
        )?,
        idle_timeout: ms(
            "idle_timeout_ms",
            own.idle_timeout_ms,
            defaults.idle_timeout_ms,
            DEFAULT_IDLE_TIMEOUT_MS,
        )?,
        max_connections,
        max_header_bytes,
    })
}

fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::field(
            format!("{path}.name"),
            name,
            "1-63 letters, digits, '-', '_' or '.'",
        ))
    }
}

fn inbound(path: &str, raw: RawInbound, defaults: &RawLimits) -> Result<Inbound, ConfigError> {
    check_name(path, &raw.name)?;
    let raw_limits = RawLimits {
        connect_timeout_ms: raw.connect_timeout_ms,
        handshake_timeout_ms: raw.handshake_timeout_ms,
        idle_timeout_ms: raw.idle_timeout_ms,
        max_connections: raw.max_connections,
        max_header_bytes: raw.max_header_bytes,
    };
    let listen = parse_listen(&format!("{path}.listen"), &raw.listen)?;
    let forward = HostPort::parse(&raw.forward)
        .map_err(|why| ConfigError::field(format!("{path}.forward"), &raw.forward, why))?;
    let allow = match raw.allow {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(ConfigError::field(format!("{path}.allow"), "[]", "an empty list would refuse every peer; omit the key to allow any certificate from the pinned CA"));
        }
        Some(list) => Some(
            list.iter()
                .enumerate()
                .map(|(i, p)| {
                    AllowPattern::parse(p).map_err(|e| {
                        ConfigError::field(format!("{path}.allow[{i}]"), p, e.to_string())
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Inbound {
        name: raw.name,
        listen,
        forward,
        protocol: raw.protocol,
        allow,
        app_protocol: raw.app_protocol,
        limits: limits(path, &raw_limits, defaults)?,
    })
}

fn outbound(path: &str, raw: RawOutbound, defaults: &RawLimits) -> Result<Outbound, ConfigError> {
    check_name(path, &raw.name)?;
    let raw_limits = RawLimits {
        connect_timeout_ms: raw.connect_timeout_ms,
        handshake_timeout_ms: raw.handshake_timeout_ms,
        idle_timeout_ms: raw.idle_timeout_ms,
        max_connections: raw.max_connections,
        max_header_bytes: raw.max_header_bytes,
    };
    let listen = parse_listen(&format!("{path}.listen"), &raw.listen)?;
    let upstream = HostPort::parse(&raw.upstream)
        .map_err(|why| ConfigError::field(format!("{path}.upstream"), &raw.upstream, why))?;
    let server_name = raw.server_name.unwrap_or_else(|| upstream.host.clone());
    rustls_pki_types::ServerName::try_from(server_name.as_str()).map_err(|e| {
        ConfigError::field(format!("{path}.server_name"), &server_name, e.to_string())
    })?;
    Ok(Outbound {
        name: raw.name,
        listen,
        upstream,
        server_name,
        protocol: raw.protocol,
        limits: limits(path, &raw_limits, defaults)?,
    })
}

#[cfg(test)]
mod tests;
