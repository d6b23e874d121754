//! A token bucket that caps how often the server asks the provider for evidence.
//!
//! Evidence is expensive (a PSP round trip, or a TPM quote that takes tens of milliseconds and
//! serialises on the TPM), and an unauthenticated endpoint must not let one client starve the
//! others or wear the device. The bucket holds `burst` tokens, refills at `per_second`, and each
//! `/attestation` request takes one; an empty bucket answers 429 with `Retry-After`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket (global to the server, shared by every connection).
#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `per_second` tokens per second.
    ///
    /// `per_second` and `burst` are clamped to at least a tiny positive value and 1 token.
    #[must_use]
    pub fn new(per_second: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: per_second.max(1e-6),
            burst,
            state: Mutex::new(State {
                tokens: burst,
                last: Instant::now(),
            }),
        }
    }

    /// Takes a token, or says how long until one is available.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        self.try_acquire_at(Instant::now())
    }

    fn try_acquire_at(&self, now: Instant) -> Result<(), Duration> {
        // A poisoned lock only means another thread panicked mid-update of two floats; the
        // state is still usable, so carry on with it.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.per_second).min(self.burst);
        state.last = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - state.tokens) / self.per_second;
            Err(Duration::from_secs_f64(wait.min(3600.0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill() {
        let bucket = TokenBucket::new(2.0, 3);
        for _ in 0..3 {
            assert!(bucket.try_acquire().is_ok());
        }
        let wait = bucket.try_acquire().unwrap_err();
        assert!(
            wait <= Duration::from_millis(500) && wait > Duration::ZERO,
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(bucket.try_acquire().is_ok());
        assert!(bucket.try_acquire().is_err());
        // Refill never exceeds the burst.
        tokio::time::advance(Duration::from_mins(1)).await;
        for _ in 0..3 {
            assert!(bucket.try_acquire().is_ok());
        }
        assert!(bucket.try_acquire().is_err());
    }
}
