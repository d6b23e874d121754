//! Prometheus metrics of the attestation server, all prefixed `enclaveid_attest_`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The server's metrics and the registry they live in.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Answers to `/attestation`, by HTTP status code.
    pub requests: IntCounterVec,
    /// How long the provider took to produce evidence, by provider and outcome.
    pub evidence_seconds: HistogramVec,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: IntCounterVec,
    /// Connections being served now.
    pub open_connections: IntGauge,
    /// 1 once the provider produced its first evidence.
    pub ready: IntGauge,
}

impl Metrics {
    /// Registers every metric in a fresh registry (also the `process_*` collector).
    #[must_use]
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("enclaveid_attest".to_owned()), None)
            .expect("a fixed, valid prefix");
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Answers to GET /attestation, by HTTP status code",
            ),
            &["code"],
        )
        .expect("valid metric");
        let evidence_seconds = HistogramVec::new(
            HistogramOpts::new(
                "evidence_seconds",
                "Time the evidence provider took to produce one piece of evidence",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["provider", "outcome"],
        )
        .expect("valid metric");
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new("tls_handshake_failures_total", "TLS handshakes that failed"),
            &["reason"],
        )
        .expect("valid metric");
        let open_connections =
            IntGauge::new("open_connections", "Connections being served").expect("valid metric");
        let ready = IntGauge::new(
            "ready",
            "1 once the evidence provider has produced evidence, else 0",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(evidence_seconds.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(open_connections.clone()),
            Box::new(ready.clone()),
        ] {
            registry.register(collector).expect("names are unique");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("names are unique");
        Self {
            registry,
            requests,
            evidence_seconds,
            tls_handshake_failures,
            open_connections,
            ready,
        }
    }

    /// The text exposition format of every metric.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let m = Metrics::new();
        m.requests.with_label_values(&["200"]).inc();
        m.evidence_seconds
            .with_label_values(&["simulated", "ok"])
            .observe(0.01);
        let text = m.render();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("enclaveid_attest_"), "{line}");
        }
        assert!(text.contains("enclaveid_attest_requests_total{code=\"200\"} 1"));
    }
}
