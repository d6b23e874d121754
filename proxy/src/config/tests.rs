//! Config parsing: the issue's example, defaults, and one error per kind of mistake.

use super::*;

const EXAMPLE: &str = r#"
admin: { listen: 127.0.0.1:15000 }
tls:
  ca: /run/enclaveid/tls/ca.pem
  cert: /run/enclaveid/tls/cert.pem
  key: /run/enclaveid/tls/key.pem
inbound:
  - name: api
    listen: 0.0.0.0:15006
    forward: 127.0.0.1:8080
    protocol: tcp
    allow: ["spiffe://cluster.local/ns/default/sa/frontend", "*.default.svc.cluster.local"]
outbound:
  - name: backend
    listen: 127.0.0.1:15001
    upstream: backend.default.svc.cluster.local:15006
    server_name: backend.default.svc.cluster.local
    protocol: tcp
"#;

#[test]
fn issue_example_parses_with_defaults() {
    let c = Config::parse(EXAMPLE).unwrap();
    assert_eq!(c.admin.listen.to_string(), "127.0.0.1:15000");
    assert_eq!(c.inbound[0].forward.to_string(), "127.0.0.1:8080");
    assert_eq!(c.inbound[0].allow.as_ref().unwrap().len(), 2);
    assert_eq!(
        c.inbound[0].limits.idle_timeout,
        Duration::from_millis(DEFAULT_IDLE_TIMEOUT_MS)
    );
    assert_eq!(
        c.outbound[0].server_name,
        "backend.default.svc.cluster.local"
    );
    assert_eq!(c.tls.min_version, MinVersion::Tls13);
    assert!(!c.tls.session_resumption);
    assert_eq!(
        c.drain_timeout,
        Duration::from_millis(DEFAULT_DRAIN_TIMEOUT_MS)
    );
    let shown = serde_json::to_string(&c).unwrap();
    assert!(shown.contains("\"idle_timeout_ms\":300000"), "{shown}");
}

#[test]
fn server_name_defaults_to_upstream_host_and_overrides_apply() {
    let text = EXAMPLE.replace(
        "    server_name: backend.default.svc.cluster.local\n",
        "    connect_timeout_ms: 7\n",
    ) + "defaults: { idle_timeout_ms: 9, max_connections: 3 }\ndrain_timeout_ms: 5\n";
    let c = Config::parse(&text).unwrap();
    assert_eq!(
        c.outbound[0].server_name,
        "backend.default.svc.cluster.local"
    );
    assert_eq!(
        c.outbound[0].limits.connect_timeout,
        Duration::from_millis(7)
    );
    assert_eq!(c.inbound[0].limits.idle_timeout, Duration::from_millis(9));
    assert_eq!(c.inbound[0].limits.max_connections, 3);
    assert_eq!(c.drain_timeout, Duration::from_millis(5));
}

fn err(from: &str, to: &str) -> String {
    assert!(EXAMPLE.contains(from), "{from}");
    Config::parse(&EXAMPLE.replacen(from, to, 1))
        .unwrap_err()
        .to_string()
}

#[test]
fn errors_name_path_value_and_why() {
    let cases = [
        (
            "forward: 127.0.0.1:8080",
            "forward: 127.0.0.1:99999",
            r#"inbound[0].forward = "127.0.0.1:99999": invalid port"#,
        ),
        (
            "listen: 0.0.0.0:15006",
            "listen: api.local:15006",
            r#"inbound[0].listen = "api.local:15006": a listen address must be an IP literal"#,
        ),
        (
            "protocol: tcp\n    allow",
            "protocol: udp\n    allow",
            "inbound[0].protocol: unknown variant `udp`",
        ),
        (
            "\"*.default.svc.cluster.local\"",
            "\"a*.default\"",
            r#"inbound[0].allow[1] = "a*.default": allow pattern"#,
        ),
        (
            "name: backend",
            "name: api",
            r#"outbound[0].name = "api": already used by inbound[0]"#,
        ),
        (
            "upstream: backend.default.svc.cluster.local:15006",
            "upstream: backend",
            r#"outbound[0].upstream = "backend": expected host:port"#,
        ),
        (
            "listen: 127.0.0.1:15001",
            "listen: 127.0.0.1:15000",
            r#"outbound[0].listen = "127.0.0.1:15000": already used by admin"#,
        ),
        (
            "    protocol: tcp\n    allow",
            "    protcol: tcp\n    allow",
            "inbound[0]: unknown field `protcol`",
        ),
        (
            "admin: { listen: 127.0.0.1:15000 }",
            "admin: { listen: 127.0.0.1:15000, port: 1 }",
            "admin: unknown field `port`",
        ),
        (
            "  key: /run/enclaveid/tls/key.pem",
            "  key: /run/enclaveid/tls/key.pem\n  min_version: \"1.1\"",
            r#"tls.min_version = "1.1": expected"#,
        ),
    ];
    for (from, to, want) in cases {
        let got = err(from, to);
        assert!(got.starts_with(want), "want {want:?}\n got {got:?}");
    }
    let got = Config::parse(&format!("{EXAMPLE}defaults: {{ max_header_bytes: 10 }}\n"))
        .unwrap_err()
        .to_string();
    assert!(
        got.starts_with("defaults.max_header_bytes = \"10\": must be between"),
        "{got}"
    );
    let got = Config::parse(&format!("{EXAMPLE}surprise: 1\n"))
        .unwrap_err()
        .to_string();
    assert!(got.contains("unknown field `surprise`"), "{got}");
}

#[test]
fn host_port_forms() {
    assert_eq!(HostPort::parse("[::1]:80").unwrap().to_string(), "[::1]:80");
    assert_eq!(HostPort::parse("localhost:1").unwrap().host, "localhost");
    assert_eq!(
        HostPort::parse("a_b:1"),
        Err("invalid host: expected an IP address or a DNS name")
    );
    assert_eq!(
        HostPort::parse("x:0"),
        Err("invalid port: 0 is not a destination")
    );
}

#[test]
fn dns_cache_defaults_bounds_and_errors() {
    let c = Config::parse(EXAMPLE).unwrap();
    assert_eq!(
        c.dns.cache_ttl,
        Duration::from_millis(DEFAULT_DNS_CACHE_TTL_MS)
    );
    assert_eq!(c.dns.cache_max_entries, DEFAULT_DNS_CACHE_MAX_ENTRIES);
    let shown = serde_json::to_string(&c).unwrap();
    assert!(
        shown.contains("\"dns\":{\"cache_ttl_ms\":5000,\"cache_max_entries\":256}"),
        "{shown}"
    );
    let c = Config::parse(&format!("{EXAMPLE}dns: {{ cache_ttl_ms: 0 }}\n")).unwrap();
    assert!(c.dns.cache_ttl.is_zero(), "0 turns the cache off");
    for (yaml, want) in [
        (
            "dns: { cache_ttl_ms: 300001 }",
            "dns.cache_ttl_ms = \"300001\": at most 300000",
        ),
        (
            "dns: { cache_max_entries: 0 }",
            "dns.cache_max_entries = \"0\": must be between 1 and 65536",
        ),
        (
            "dns: { cache_ttl_ms: -1 }",
            "dns.cache_ttl_ms: invalid type",
        ),
        ("dns: { ttl: 5 }", "dns: unknown field `ttl`"),
    ] {
        let got = Config::parse(&format!("{EXAMPLE}{yaml}\n"))
            .unwrap_err()
            .to_string();
        assert!(got.starts_with(want), "want {want:?}\n got {got:?}");
    }
}
