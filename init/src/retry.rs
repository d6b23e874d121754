//! Retries with exponential backoff under a total deadline, for transient vault and MAA
//! failures (connect errors, 429, 5xx). Uses tokio's clock, so tests run it in paused time.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How long to keep trying and how to space the attempts.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Total time budget across all attempts, sleeps included.
    pub deadline: Duration,
    /// Delay after the first failure; doubled after each further one.
    pub initial_backoff: Duration,
    /// Cap of a single delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_mins(1),
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
        }
    }
}

/// Whether an error is worth another attempt.
pub trait Transient {
    /// True for connect errors, timeouts, 429 and 5xx.
    fn is_transient(&self) -> bool;
    /// The error to report when an attempt was still running at the deadline.
    fn deadline_exceeded(after: Duration) -> Self
    where
        Self: Sized;
}

/// The final error of a retried operation.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E: std::error::Error + 'static> {
    /// A permanent error (4xx, bad data): not retried.
    #[error("{what}: {source}")]
    Permanent {
        /// The operation.
        what: String,
        /// Its error.
        #[source]
        source: E,
    },
    /// Transient errors until the deadline ran out.
    #[error("{what}: gave up after {attempts} attempts in {elapsed:?}: {source}")]
    Exhausted {
        /// The operation.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last error.
        #[source]
        source: E,
    },
}

impl<E: std::error::Error + 'static> RetryError<E> {
    /// The underlying error.
    pub fn inner(&self) -> &E {
        match self {
            Self::Permanent { source, .. } | Self::Exhausted { source, .. } => source,
        }
    }
}

/// Runs `op` until it succeeds, fails permanently, or the next attempt would start after the
/// deadline.
pub async fn retry<T, E, F, Fut>(
    policy: RetryPolicy,
    what: impl fmt::Display,
    mut op: F,
) -> Result<T, RetryError<E>>
where
    E: std::error::Error + Transient + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut backoff = policy.initial_backoff;
    let mut attempts = 0u32;
    let mut last: Option<E> = None;
    loop {
        attempts += 1;
        let remaining = policy.deadline.saturating_sub(start.elapsed());
        let Ok(outcome) = tokio::time::timeout(remaining, op()).await else {
            let elapsed = start.elapsed();
            return Err(RetryError::Exhausted {
                what: what.to_string(),
                attempts,
                elapsed,
                // The deadline cut this attempt short; the previous failure says more.
                source: last.unwrap_or_else(|| E::deadline_exceeded(elapsed)),
            });
        };
        match outcome {
            Ok(value) => return Ok(value),
            Err(e) if !e.is_transient() => {
                return Err(RetryError::Permanent {
                    what: what.to_string(),
                    source: e,
                })
            }
            Err(e) => {
                let elapsed = start.elapsed();
                if elapsed + backoff > policy.deadline {
                    return Err(RetryError::Exhausted {
                        what: what.to_string(),
                        attempts,
                        elapsed,
                        source: e,
                    });
                }
                tracing::warn!(operation = %what, attempt = attempts, error = %e, retry_in = ?backoff, "transient failure");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(policy.max_backoff);
                last = Some(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, thiserror::Error)]
    enum TestError {
        #[error("unavailable")]
        Unavailable,
        #[error("forbidden")]
        Forbidden,
        #[error("deadline after {0:?}")]
        Deadline(Duration),
    }

    impl Transient for TestError {
        fn is_transient(&self) -> bool {
            matches!(self, Self::Unavailable)
        }
        fn deadline_exceeded(after: Duration) -> Self {
            Self::Deadline(after)
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            deadline: Duration::from_secs(10),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(4),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_until_the_deadline() {
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let err = retry(policy(), "op", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(TestError::Unavailable)
        })
        .await
        .unwrap_err();
        // Sleeps 1, 2, 4 (7 s); the next 4 s would pass the 10 s deadline.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert!(
            matches!(err, RetryError::Exhausted { attempts: 4, .. }),
            "{err}"
        );
        assert!(start.elapsed() <= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_are_not_retried() {
        let calls = AtomicU32::new(0);
        let err = retry(policy(), "op", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(TestError::Forbidden)
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(matches!(err, RetryError::Permanent { .. }));
    }

    #[tokio::test(start_paused = true)]
    async fn success_after_failures_and_hung_attempts_hit_the_deadline() {
        let calls = AtomicU32::new(0);
        let v = retry(policy(), "op", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(TestError::Unavailable)
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 7);
        let err = retry(policy(), "hang", || async {
            tokio::time::sleep(Duration::from_hours(1)).await;
            Ok::<(), TestError>(())
        })
        .await
        .unwrap_err();
        assert!(matches!(err.inner(), TestError::Deadline(_)), "{err}");
    }
}
