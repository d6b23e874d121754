//! Prometheus metrics, all prefixed `enclaveid_proxy_`. One registry per running proxy (so two
//! proxies in one test process do not mix), and per-listener handles resolved once at start so
//! the data path only does atomic adds.

use std::sync::Arc;

use enclaveid_pki::tls::RejectReason;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const PREFIX: &str = "enclaveid_proxy";

/// Every metric of one proxy.
pub struct Metrics {
    registry: Registry,
    opened: IntCounterVec,
    active: IntGaugeVec,
    closed: IntCounterVec,
    bytes: IntCounterVec,
    handshakes: IntCounterVec,
    handshake_failures: IntCounterVec,
    upstream_failures: IntCounterVec,
    dns_failures: IntCounterVec,
    rejected: IntCounterVec,
    requests: IntCounterVec,
    duration: HistogramVec,
    /// `notAfter` of the serving certificate, Unix seconds.
    pub cert_expiry: Gauge,
    reloads: IntCounterVec,
    /// 1 while the TLS files on disk cannot be used (the previous certificate keeps serving).
    pub reload_failing: IntGauge,
    /// 1 when ready, 0 otherwise (not bound yet, or draining).
    pub ready: IntGauge,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(PREFIX)
}

impl Metrics {
    /// Creates and registers every metric.
    #[must_use]
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let ld = &["listener", "direction"];
        let m = Self {
            opened: IntCounterVec::new(opts("connections_opened_total", "Connections accepted."), ld).expect("valid metric"),
            active: IntGaugeVec::new(opts("connections_active", "Connections currently open."), ld).expect("valid metric"),
            closed: IntCounterVec::new(opts("connections_closed_total", "Connections closed."), ld).expect("valid metric"),
            bytes: IntCounterVec::new(
                opts("bytes_total", "Bytes copied; flow to_upstream is from the accepting side to the side we dialled."),
                &["listener", "direction", "flow"],
            )
            .expect("valid metric"),
            handshakes: IntCounterVec::new(opts("tls_handshakes_total", "Completed TLS handshakes."), ld).expect("valid metric"),
            handshake_failures: IntCounterVec::new(
                opts("tls_handshake_failures_total", "TLS handshakes that failed or were refused, by reason."),
                &["listener", "direction", "reason"],
            )
            .expect("valid metric"),
            upstream_failures: IntCounterVec::new(
                opts("upstream_failures_total", "Failures to reach the app (inbound) or the peer (outbound)."),
                ld,
            )
            .expect("valid metric"),
            dns_failures: IntCounterVec::new(
                opts("dns_resolution_failures_total", "Failed lookups of an outbound upstream name (also counted in upstream_failures_total)."),
                ld,
            )
            .expect("valid metric"),
            rejected: IntCounterVec::new(
                opts("connections_rejected_total", "Connections closed at accept because the listener was at max_connections."),
                ld,
            )
            .expect("valid metric"),
            requests: IntCounterVec::new(
                opts("http_requests_total", "HTTP requests answered, by status class."),
                &["listener", "direction", "status_class"],
            )
            .expect("valid metric"),
            duration: HistogramVec::new(
                HistogramOpts::new("http_request_duration_seconds", "Time from request head to response head.")
                    .namespace(PREFIX)
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                ld,
            )
            .expect("valid metric"),
            cert_expiry: Gauge::with_opts(opts("certificate_expiry_timestamp_seconds", "notAfter of the serving certificate."))
                .expect("valid metric"),
            reloads: IntCounterVec::new(opts("certificate_reloads_total", "Certificate reload attempts, by result."), &["result"])
                .expect("valid metric"),
            reload_failing: IntGauge::with_opts(opts(
                "certificate_reload_failing",
                "1 while the TLS files on disk cannot be used and the previous certificate keeps serving.",
            ))
            .expect("valid metric"),
            ready: IntGauge::with_opts(opts("ready", "1 when every listener is bound and certificates are loaded.")).expect("valid metric"),
            registry,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 15] = [
            Box::new(m.opened.clone()),
            Box::new(m.active.clone()),
            Box::new(m.closed.clone()),
            Box::new(m.bytes.clone()),
            Box::new(m.handshakes.clone()),
            Box::new(m.handshake_failures.clone()),
            Box::new(m.upstream_failures.clone()),
            Box::new(m.dns_failures.clone()),
            Box::new(m.rejected.clone()),
            Box::new(m.requests.clone()),
            Box::new(m.duration.clone()),
            Box::new(m.cert_expiry.clone()),
            Box::new(m.reloads.clone()),
            Box::new(m.reload_failing.clone()),
            Box::new(m.ready.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::new(
                std::process::id().cast_signed(),
                PREFIX,
            );
            m.registry
                .register(Box::new(pc))
                .expect("process metric names are unique");
        }
        for result in ["success", "failure"] {
            m.reloads.with_label_values(&[result]);
        }
        Arc::new(m)
    }

    /// Handles for one listener; every series is created at zero.
    #[must_use]
    pub fn listener(self: &Arc<Self>, name: &str, direction: Direction) -> ListenerMetrics {
        let l = &[name, direction.as_str()];
        for r in RejectReason::ALL {
            self.handshake_failures
                .with_label_values(&[name, direction.as_str(), r.as_str()]);
        }
        ListenerMetrics {
            name: name.to_owned(),
            direction,
            opened: self.opened.with_label_values(l),
            active: self.active.with_label_values(l),
            closed: self.closed.with_label_values(l),
            to_upstream: self
                .bytes
                .with_label_values(&[name, direction.as_str(), "to_upstream"]),
            to_downstream: self.bytes.with_label_values(&[
                name,
                direction.as_str(),
                "to_downstream",
            ]),
            handshakes: self.handshakes.with_label_values(l),
            upstream_failures: self.upstream_failures.with_label_values(l),
            dns_failures: self.dns_failures.with_label_values(l),
            rejected: self.rejected.with_label_values(l),
            status: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|c| {
                self.requests
                    .with_label_values(&[name, direction.as_str(), c])
            }),
            duration: self.duration.with_label_values(l),
            all: self.clone(),
        }
    }

    /// Counts a reload attempt.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .inc();
    }

    /// Reload attempts so far with this result.
    #[must_use]
    pub fn reloads(&self, ok: bool) -> u64 {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "failure" }])
            .get()
    }

    /// Adds a collector owned elsewhere (e.g. the verified-chain cache counters of
    /// [`crate::tls_state::TlsState`]) to this proxy's registry.
    ///
    /// # Errors
    /// When one of its metric names is already registered.
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// The Prometheus text exposition.
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O, and our metric names are valid.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Which way a listener carries traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// mTLS in, plaintext to the app.
    Inbound,
    /// Plaintext from the app, mTLS out.
    Outbound,
}

impl Direction {
    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
        }
    }
}

/// Pre-resolved handles for one listener.
#[derive(Clone)]
pub struct ListenerMetrics {
    /// Listener name.
    pub name: String,
    /// Listener direction.
    pub direction: Direction,
    /// Connections accepted.
    pub opened: IntCounter,
    /// Connections open.
    pub active: IntGauge,
    /// Connections closed.
    pub closed: IntCounter,
    /// Bytes from the accepting side to the dialled side.
    pub to_upstream: IntCounter,
    /// Bytes from the dialled side to the accepting side.
    pub to_downstream: IntCounter,
    /// Completed handshakes.
    pub handshakes: IntCounter,
    /// App or peer unreachable.
    pub upstream_failures: IntCounter,
    /// Outbound upstream name lookups that failed.
    pub dns_failures: IntCounter,
    /// Refused at accept (`max_connections`).
    pub rejected: IntCounter,
    status: [IntCounter; 5],
    /// Request latency.
    pub duration: Histogram,
    all: Arc<Metrics>,
}

impl ListenerMetrics {
    /// Counts a failed handshake.
    pub fn handshake_failed(&self, reason: RejectReason) {
        self.all
            .handshake_failures
            .with_label_values(&[&self.name, self.direction.as_str(), reason.as_str()])
            .inc();
    }

    /// Failed handshakes so far for a reason.
    #[must_use]
    pub fn handshake_failures(&self, reason: RejectReason) -> u64 {
        self.all
            .handshake_failures
            .with_label_values(&[&self.name, self.direction.as_str(), reason.as_str()])
            .get()
    }

    /// Counts an answered request.
    pub fn response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.status[class].inc();
    }

    /// An RAII guard that keeps `active` up while a connection lives and counts the close.
    #[must_use]
    pub fn connection(&self) -> ConnectionGuard {
        self.opened.inc();
        self.active.inc();
        ConnectionGuard {
            active: self.active.clone(),
            closed: self.closed.clone(),
        }
    }
}

/// Decrements `active` and counts a close when dropped.
pub struct ConnectionGuard {
    active: IntGauge,
    closed: IntCounter,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.active.dec();
        self.closed.inc();
    }
}
