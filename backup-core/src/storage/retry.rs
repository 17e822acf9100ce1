//! Retrying transient storage failures: the one retry layer of offsite. The
//! repository runs every storage call (a whole object's put, get, head,
//! delete, a listing) through a [`RetryPolicy`]; the backends send each
//! request once and never retry themselves (object_store's own retries are
//! switched off, B2's client has no loop), so an object costs at most
//! [`RetryPolicy::max_attempts`] attempts, not a product of nested loops.
//! What a backend still does in place is not a retry of a failed transfer:
//! B2 renews an expired account token and repeats the call once.
//!
//! Only [`ErrorKind::Transient`](super::ErrorKind::Transient) is retried; a
//! permission or not-found error fails at once so a misconfigured target is
//! reported in seconds, not after minutes of backoff. The figures are in
//! docs/backends.md ("Retries").

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use super::StorageError;

/// Capped exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, including the first.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// A policy for tests against local fault injectors: same logic, no waiting.
    pub fn fast() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        }
    }

    /// The wait before attempt `attempt + 1` (attempt counts from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)));
        let cap = exp.min(self.max_backoff);
        // Full jitter spreads retries of many parallel uploads apart.
        let millis = cap.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
    }

    /// Runs `op` until it succeeds, fails with a non-transient error, or the
    /// attempts run out (then the last error is returned).
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_transient() && attempt < self.max_attempts => {
                    let wait = self.backoff(attempt);
                    tracing::debug!(error = %e, attempt, ?wait, "transient storage error, retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(mut e) => {
                    if e.is_transient() && attempt > 1 {
                        // The message is the last attempt's; say that it
                        // was not the only one.
                        e.message = format!("{} (gave up after {attempt} attempts)", e.message);
                    }
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ErrorKind;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn retries_transient_then_succeeds() {
        let calls = AtomicU32::new(0);
        let out = RetryPolicy::fast()
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(StorageError::new(ErrorKind::Transient, "k", "503"))
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!(out, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_errors_fail_at_once() {
        let calls = AtomicU32::new(0);
        let err = RetryPolicy::fast()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(StorageError::new(ErrorKind::PermissionDenied, "k", "403"))
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::PermissionDenied);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts() {
        let calls = AtomicU32::new(0);
        let err = RetryPolicy::fast()
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(StorageError::new(ErrorKind::Transient, "k", "503"))
            })
            .await
            .unwrap_err();
        assert!(err.is_transient());
        assert_eq!(calls.load(Ordering::SeqCst), 6);
        assert!(err.message.ends_with("(gave up after 6 attempts)"), "{err}");
    }

    #[test]
    fn backoff_is_capped() {
        let p = RetryPolicy::default();
        for attempt in 1..20 {
            assert!(p.backoff(attempt) <= p.max_backoff);
        }
    }
}
