//! One repository read shared by every request that asks for the same
//! thing at about the same time: status and `/metrics` read every target's
//! snapshots, and a burst of monitoring requests must cost one read, not
//! one each (issue 12: 200 concurrent status requests may not slow a
//! running backup).
//!
//! Never: answer from a read older than its `max_age`, or from one that
//! started before something changed what it reads ([`Fresh::forget`]: a
//! job finished), or hide a failed read (a failure is shared like a
//! success, and for as long).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::ApiError;

/// A read's result, when it finished and the generation it started in.
type Read<T> = (Instant, u64, Result<Arc<T>, ApiError>);

/// The last read of a `T`.
pub struct Fresh<T> {
    slot: Mutex<Option<Read<T>>>,
    max_age: Duration,
    /// Bumped by [`Fresh::forget`]: a read of an older generation is stale.
    generation: AtomicU64,
}

impl<T> Fresh<T> {
    pub fn new(max_age: Duration) -> Fresh<T> {
        Fresh {
            slot: Mutex::new(None),
            max_age,
            generation: AtomicU64::new(0),
        }
    }

    /// Makes the last read (and one running now) stale: what it read has
    /// changed, so the next request reads again.
    pub fn forget(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The last read when it finished less than `max_age` ago, else a new
    /// one by `read`. Requests that arrive while a read runs wait for it
    /// (the lock is held across it) and share its result.
    pub async fn get<F, Fut>(&self, read: F) -> Result<Arc<T>, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut slot = self.slot.lock().await;
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some((at, of, last)) = &*slot {
            if *of == generation && at.elapsed() < self.max_age {
                return last.clone();
            }
        }
        let result = read().await.map(Arc::new);
        *slot = Some((Instant::now(), generation, result.clone()));
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_requests_share_one_read_until_it_is_stale() {
        let fresh = Arc::new(Fresh::<usize>::new(Duration::from_millis(300)));
        let reads = Arc::new(AtomicUsize::new(0));
        let ask = |fresh: Arc<Fresh<usize>>, reads: Arc<AtomicUsize>| async move {
            fresh
                .get(|| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(reads.fetch_add(1, Ordering::SeqCst) + 1)
                })
                .await
        };
        let answers =
            futures::future::join_all((0..50).map(|_| ask(Arc::clone(&fresh), Arc::clone(&reads))))
                .await;
        assert!(answers.iter().all(|a| matches!(a, Ok(n) if **n == 1)));
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let again = ask(Arc::clone(&fresh), Arc::clone(&reads)).await;
        assert!(
            matches!(again, Ok(n) if *n == 2),
            "a stale read is read again"
        );
    }

    #[tokio::test]
    async fn a_failed_read_is_shared_too() {
        let fresh = Fresh::<u8>::new(Duration::from_secs(60));
        let fail = || async { Err(ApiError::new(axum::http::StatusCode::BAD_GATEWAY, "down")) };
        assert!(fresh.get(fail).await.is_err());
        let second = fresh.get(|| async { Ok(1) }).await;
        match second {
            Err(e) => assert_eq!(e.message, "down"),
            Ok(_) => panic!("a failure within max_age must not be hidden by a new read"),
        }
    }
}
