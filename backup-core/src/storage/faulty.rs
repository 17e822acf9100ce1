//! A store that wraps a real store and makes it fail on purpose, for fault
//! tests: of the layers above a backend (backups onto a target that fills
//! up, crashes mid-backup, flaky targets), and of the backends themselves
//! (the conformance suite's [`super::testing::full_and_short_writes`] runs
//! every backend through it). Like `object_store`'s `ThrottledStore`, it is a
//! store around a store, not a flag inside one.
//!
//! Faults apply to puts whose key starts with [`FaultyStorage::prefix`]:
//! - `fail_puts`: the next N puts fail at once with `kind`;
//! - `abort_after`: puts after that many successful ones fail (a crash);
//! - [`FaultyStorage::set_free`]: the store holds only so many more bytes. A
//!   body that goes past them fails at that byte with [`ErrorKind::Full`], so
//!   the inner store sees what a filesystem running full looks like from the
//!   inside (a body failing mid-object) and must store nothing. Deletes give
//!   space back;
//! - [`FaultyStorage::cut_bodies`]: the body silently ends early; the inner
//!   store stores the short body and the put succeeds (a layer that lost
//!   bytes without saying so). The put's answer must then report the short
//!   size;
//! - [`FaultyStorage::fail_bodies`]: the body fails with a given kind after
//!   N bytes (a connection lost or a disk failing mid-object);
//! - [`FaultyStorage::set_delay`]: every put waits first (a slow target).
//!
//! Reads, listings and deletes pass through unchanged.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};

use super::{ByteStream, ErrorKind, ObjectMeta, PutMode, Storage, StorageError};

/// What happens to a body once a [`BodyFault`] reaches its byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The body ends there, as if that were all of it.
    Truncate,
    /// The body fails there with this kind.
    Fail(ErrorKind),
}

#[derive(Debug, Clone)]
struct BodyFault {
    prefix: String,
    after: u64,
    cut: Cut,
    /// Puts left to break.
    times: usize,
}

#[derive(Debug)]
pub struct FaultyStorage {
    pub inner: Arc<dyn Storage>,
    pub prefix: String,
    pub kind: ErrorKind,
    pub fail_puts: AtomicUsize,
    pub abort_after: Option<usize>,
    pub puts_done: AtomicUsize,
    /// Bytes the store may still take; `None`: unlimited.
    free: Arc<Mutex<Option<u64>>>,
    body_faults: Mutex<Vec<BodyFault>>,
    delay: Mutex<Option<Duration>>,
}

impl FaultyStorage {
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        FaultyStorage {
            inner,
            prefix: String::new(),
            kind: ErrorKind::Transient,
            fail_puts: AtomicUsize::new(0),
            abort_after: None,
            puts_done: AtomicUsize::new(0),
            free: Arc::new(Mutex::new(None)),
            body_faults: Mutex::new(Vec::new()),
            delay: Mutex::new(None),
        }
    }

    /// From now on the store holds only `free` more bytes (`None`: as many
    /// as the inner store takes). Calling it again with more is "space came
    /// back".
    pub fn set_free(&self, free: Option<u64>) {
        *self.free.lock().unwrap() = free;
    }

    /// Bytes the store may still take, as [`Self::set_free`] set and puts and
    /// deletes changed it.
    pub fn free(&self) -> Option<u64> {
        *self.free.lock().unwrap()
    }

    /// The next `times` puts under `prefix` get only the first `after` bytes
    /// of their body, and are not told.
    pub fn cut_bodies(&self, prefix: &str, after: u64, times: usize) {
        self.add_body_fault(prefix, after, Cut::Truncate, times);
    }

    /// The bodies of the next `times` puts under `prefix` fail with `kind`
    /// after `after` bytes.
    pub fn fail_bodies(&self, prefix: &str, after: u64, kind: ErrorKind, times: usize) {
        self.add_body_fault(prefix, after, Cut::Fail(kind), times);
    }

    /// Every put waits `delay` before it starts.
    pub fn set_delay(&self, delay: Option<Duration>) {
        *self.delay.lock().unwrap() = delay;
    }

    fn add_body_fault(&self, prefix: &str, after: u64, cut: Cut, times: usize) {
        self.body_faults.lock().unwrap().push(BodyFault {
            prefix: prefix.to_string(),
            after,
            cut,
            times,
        });
    }

    /// The body fault for a put of `key`, counted as used.
    fn take_body_fault(&self, key: &str) -> Option<(u64, Cut)> {
        let mut faults = self.body_faults.lock().unwrap();
        let i = faults
            .iter()
            .position(|f| f.times > 0 && key.starts_with(&f.prefix))?;
        faults[i].times -= 1;
        let found = (faults[i].after, faults[i].cut);
        faults.retain(|f| f.times > 0);
        Some(found)
    }

    fn give_back(&self, bytes: u64) {
        if let Some(free) = self.free.lock().unwrap().as_mut() {
            *free = free.saturating_add(bytes);
        }
    }

    /// Fails the put at once when `fail_puts` or `abort_after` say so.
    fn refuse(&self, key: &str) -> Result<(), StorageError> {
        if !key.starts_with(&self.prefix) {
            return Ok(());
        }
        if let Some(limit) = self.abort_after {
            if self.puts_done.load(Ordering::SeqCst) >= limit {
                return Err(StorageError::new(ErrorKind::Other, key, "injected crash"));
            }
        }
        let left = self.fail_puts.load(Ordering::SeqCst);
        if left > 0 {
            self.fail_puts.store(left - 1, Ordering::SeqCst);
            return Err(StorageError::new(self.kind, key, "injected failure"));
        }
        Ok(())
    }
}

/// A body on its way through the wrapper.
struct Passing {
    body: ByteStream,
    key: String,
    passed: u64,
    fault: Option<(u64, Cut)>,
    free: Arc<Mutex<Option<u64>>>,
    /// Bytes taken from the free space by this put.
    used: Arc<AtomicU64>,
    /// Set once the body has been cut: what comes after the last piece.
    end: Option<Option<StorageError>>,
}

impl Passing {
    async fn next(&mut self) -> Option<Result<bytes::Bytes, StorageError>> {
        if let Some(end) = self.end.take() {
            self.end = Some(None);
            return end.map(Err);
        }
        let mut piece = match self.body.next().await? {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        if let Some((after, cut)) = self.fault {
            if self.passed + piece.len() as u64 > after {
                piece.truncate((after - self.passed) as usize);
                self.end = Some(match cut {
                    Cut::Truncate => None,
                    Cut::Fail(kind) => Some(StorageError::new(
                        kind,
                        &self.key,
                        format!("injected failure after {after} bytes"),
                    )),
                });
            }
        }
        if let Some(free) = self.free.lock().unwrap().as_mut() {
            if piece.len() as u64 > *free {
                piece.truncate(*free as usize);
                self.end = Some(Some(StorageError::new(
                    ErrorKind::Full,
                    &self.key,
                    "no space left on device (injected)",
                )));
            }
            *free -= piece.len() as u64;
            self.used.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
        self.passed += piece.len() as u64;
        match self.end.take() {
            // Nothing of this piece is left: go straight to the cut.
            Some(end) if piece.is_empty() => {
                self.end = Some(None);
                end.map(Err)
            }
            end => {
                self.end = end;
                Some(Ok(piece))
            }
        }
    }
}

#[async_trait]
impl Storage for FaultyStorage {
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        mode: PutMode,
    ) -> Result<ObjectMeta, StorageError> {
        let delay = *self.delay.lock().unwrap();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        self.refuse(key)?;
        // An overwrite gives the old object's space back once it is replaced.
        let replaced = match (self.free(), mode) {
            (Some(_), PutMode::Overwrite) => self.inner.head(key).await.map_or(0, |m| m.size),
            _ => 0,
        };
        let used = Arc::new(AtomicU64::new(0));
        let passing = Passing {
            body,
            key: key.to_string(),
            passed: 0,
            fault: self.take_body_fault(key),
            free: self.free.clone(),
            used: used.clone(),
            end: None,
        };
        let body: ByteStream = Box::pin(stream::unfold(passing, |mut p| async move {
            p.next().await.map(|item| (item, p))
        }));
        match self.inner.put(key, body, mode).await {
            Ok(meta) => {
                self.give_back(replaced);
                self.puts_done.fetch_add(1, Ordering::SeqCst);
                Ok(meta)
            }
            Err(e) => {
                // Nothing was stored.
                self.give_back(used.load(Ordering::SeqCst));
                Err(e)
            }
        }
    }
    async fn get(&self, key: &str) -> Result<ByteStream, StorageError> {
        self.inner.get(key).await
    }
    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        self.inner.head(key).await
    }
    fn list(&self, prefix: &str) -> BoxStream<'_, Result<ObjectMeta, StorageError>> {
        self.inner.list(prefix)
    }
    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let size = match self.free() {
            Some(_) => self.inner.head(key).await.map_or(0, |m| m.size),
            None => 0,
        };
        self.inner.delete(key).await?;
        self.give_back(size);
        Ok(())
    }
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
    async fn free_space(&self) -> Option<u64> {
        match self.free() {
            Some(free) => Some(free),
            None => self.inner.free_space().await,
        }
    }
}
