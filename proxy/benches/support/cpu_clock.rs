//! A criterion clock that reads the bench thread's own CPU time (`/proc/thread-self/schedstat`)
//! instead of the wall clock: on a shared 2-core machine the wall clock mostly measures the other
//! tenants. The kernel updates the figure at scheduler ticks, so use long, flat samples.

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};

/// CPU time of the calling thread, from the scheduler's own accounting (nanoseconds on CPU).
pub(crate) struct ThreadCpu;

fn thread_cpu_now() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")
        .expect("Linux exposes /proc/thread-self/schedstat");
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<u64>().ok())
        .expect("schedstat starts with the nanoseconds spent on CPU");
    Duration::from_nanos(ns)
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_now()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_secs_f64() * 1e9
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Same unit (nanoseconds) as the wall clock, so reuse its formatting.
        WallTime.formatter()
    }
}
