//! Streaming a put body into B2: one `b2_upload_file` for bodies below the
//! part size, a large-file upload otherwise.
//!
//! Memory stays bounded by about `concurrency + 1` parts: the one being read
//! from the body and at most [`Shape::concurrency`] in flight. A large file that does not reach
//! `b2_finish_large_file` is cancelled, so B2 never shows (or bills for) half
//! an object; this module must never finish a large file whose body failed.
//!
//! What B2 stored is checked against what was sent before a put succeeds:
//! every upload and part carries its SHA-1, which B2 verifies, and the
//! `contentLength` (and, for a small file, `contentSha1`) of the version B2
//! reports is compared with the bytes sent; a version that does not match is
//! deleted again. A reached storage cap (403 `storage_cap_exceeded`) fails the
//! put as a full target.

use std::collections::VecDeque;
use std::sync::Arc;

use backup_core::storage::{ByteStream, ErrorKind, StorageError};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha1::{Digest, Sha1};
use tokio::task::JoinSet;

use crate::core::{Core, FileVersion, UploadPool};

/// How a target cuts and sends large files (its `part_size_mib` and
/// `upload_concurrency` settings).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Bodies of this many bytes or more are large files in parts of this size.
    pub part_size: usize,
    /// Parts uploaded at once per large file, each on its own part URL.
    pub concurrency: usize,
}
/// B2's cap on parts per large file.
const MAX_PARTS: u32 = 10_000;

/// What a part upload task ends with: its number and SHA-1, or why it failed.
type PartResult = Result<(u32, String), StorageError>;

/// Cuts a body into parts of exactly `size` bytes (the last may be shorter).
struct Parts {
    body: ByteStream,
    carry: Option<Bytes>,
    size: usize,
    done: bool,
}

impl Parts {
    async fn next(&mut self) -> Result<Option<Bytes>, StorageError> {
        let mut buf = BytesMut::new();
        while !self.done && buf.len() < self.size {
            let chunk = match self.carry.take() {
                Some(c) => c,
                None => match self.body.next().await {
                    Some(c) => c?,
                    None => {
                        self.done = true;
                        break;
                    }
                },
            };
            let room = self.size - buf.len();
            if chunk.len() > room {
                buf.extend_from_slice(&chunk[..room]);
                self.carry = Some(chunk.slice(room..));
            } else {
                buf.extend_from_slice(&chunk);
            }
        }
        Ok(if buf.is_empty() {
            None
        } else {
            Some(buf.freeze())
        })
    }
}

/// SHA-1 of a buffer, off the async workers: a 100 MiB part takes a while.
async fn sha1_hex(data: Bytes) -> String {
    tokio::task::spawn_blocking(move || hex::encode(Sha1::digest(&data)))
        .await
        .expect("hashing task panicked")
}

/// Uploads `body` as `name` and returns the version B2 created.
pub(crate) async fn upload(
    core: &Arc<Core>,
    key: &str,
    name: &str,
    body: ByteStream,
    shape: Shape,
) -> Result<FileVersion, StorageError> {
    let part_size = shape.part_size;
    let mut parts = Parts {
        body,
        carry: None,
        size: part_size,
        done: false,
    };
    let first = parts.next().await?.unwrap_or_default();
    let second = if first.len() < part_size {
        None
    } else {
        parts.next().await?
    };
    let Some(second) = second else {
        let sha1 = sha1_hex(first.clone()).await;
        let len = first.len() as u64;
        let version = core.upload_file(key, name, first, &sha1).await?;
        return check_stored(core, key, version, len, Some(&sha1)).await;
    };

    let file_id = core.start_large_file(key, name).await?;
    let mut guard = CancelOnDrop {
        core: core.clone(),
        key: key.to_string(),
        file_id: Some(file_id.clone()),
    };
    let ready = VecDeque::from([first, second]);
    match upload_parts(core, key, &file_id, ready, parts, shape.concurrency).await {
        Ok((sha1s, sent)) => {
            let version = core.finish_large_file(key, &file_id, &sha1s).await?;
            guard.file_id = None;
            check_stored(core, key, version, sent, None).await
        }
        Err(e) => {
            guard.file_id = None;
            if let Err(cancel) = core.cancel_large_file(key, &file_id).await {
                tracing::warn!(key, error = %cancel, "could not cancel unfinished B2 large file");
            }
            Err(e)
        }
    }
}

/// Fails unless B2's `version` holds the `sent` bytes (and, for a small file,
/// has the SHA-1 sent); a version that does not is deleted again.
async fn check_stored(
    core: &Core,
    key: &str,
    version: FileVersion,
    sent: u64,
    sha1: Option<&str>,
) -> Result<FileVersion, StorageError> {
    let sha1_ok = match (sha1, version.content_sha1.as_deref()) {
        (Some(sent), Some(stored)) => sent == stored,
        _ => true,
    };
    if version.content_length == sent && sha1_ok {
        return Ok(version);
    }
    if let Err(e) = core
        .delete_file_version(&version.file_name, &version.file_id)
        .await
    {
        tracing::warn!(key, error = %e, "could not delete a B2 version that does not match its upload");
    }
    Err(StorageError::new(
        ErrorKind::Other,
        key,
        format!(
            "B2 stored {} bytes (SHA-1 {}) of the {sent} bytes sent",
            version.content_length,
            version.content_sha1.as_deref().unwrap_or("unknown")
        ),
    ))
}

/// Uploads every part; returns their SHA-1s in part order and the bytes sent.
async fn upload_parts(
    core: &Arc<Core>,
    key: &str,
    file_id: &str,
    mut ready: VecDeque<Bytes>,
    mut parts: Parts,
    concurrency: usize,
) -> Result<(Vec<String>, u64), StorageError> {
    let pool = Arc::new(UploadPool::default());
    // Dropping the set on an early return aborts the parts still in flight.
    let mut tasks: JoinSet<PartResult> = JoinSet::new();
    let mut sha1s: Vec<Option<String>> = Vec::new();
    let mut number = 0u32;
    let mut sent = 0u64;
    loop {
        let part = match ready.pop_front() {
            Some(p) => p,
            None => match parts.next().await? {
                Some(p) => p,
                None => break,
            },
        };
        while tasks.len() >= concurrency {
            record(&mut sha1s, tasks.join_next().await)?;
        }
        number += 1;
        sent += part.len() as u64;
        if number > MAX_PARTS {
            return Err(StorageError::new(
                ErrorKind::Other,
                key,
                format!("object needs more than {MAX_PARTS} parts; raise part_size_mib"),
            ));
        }
        let (core, pool, file_id, key) = (
            core.clone(),
            pool.clone(),
            file_id.to_string(),
            key.to_string(),
        );
        tasks.spawn(async move {
            let sha1 = sha1_hex(part.clone()).await;
            core.upload_part(&key, &pool, &file_id, number, part, &sha1)
                .await?;
            Ok((number, sha1))
        });
    }
    while !tasks.is_empty() {
        record(&mut sha1s, tasks.join_next().await)?;
    }
    let sha1s = sha1s
        .into_iter()
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| StorageError::new(ErrorKind::Other, key, "a part went missing"))?;
    Ok((sha1s, sent))
}

fn record(
    sha1s: &mut Vec<Option<String>>,
    joined: Option<Result<PartResult, tokio::task::JoinError>>,
) -> Result<(), StorageError> {
    let Some(joined) = joined else {
        return Ok(());
    };
    let (number, sha1) = joined.map_err(|e| {
        StorageError::new(ErrorKind::Other, "part upload", "part upload task failed").with_source(e)
    })??;
    let index = number as usize - 1;
    if sha1s.len() <= index {
        sha1s.resize(index + 1, None);
    }
    sha1s[index] = Some(sha1);
    Ok(())
}

/// Cancels the large file if the put is dropped before it finished or
/// cancelled it itself (the caller gave up on the future mid-upload).
struct CancelOnDrop {
    core: Arc<Core>,
    key: String,
    file_id: Option<String>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(file_id) = self.file_id.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let core = self.core.clone();
            let key = std::mem::take(&mut self.key);
            runtime.spawn(async move {
                let _ = core.cancel_large_file(&key, &file_id).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    fn parts_of(pieces: &[&'static [u8]], size: usize) -> Parts {
        let body: ByteStream = Box::pin(stream::iter(
            pieces
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        ));
        Parts {
            body,
            carry: None,
            size,
            done: false,
        }
    }

    #[tokio::test]
    async fn parts_are_cut_at_exact_sizes() {
        let mut p = parts_of(&[b"abc", b"defgh", b"ij"], 4);
        let mut got = Vec::new();
        while let Some(part) = p.next().await.unwrap() {
            got.push(part);
        }
        assert_eq!(got, vec!["abcd", "efgh", "ij"]);
    }

    #[tokio::test]
    async fn a_body_of_exactly_one_part_is_one_part() {
        let mut p = parts_of(&[b"ab", b"cd"], 4);
        assert_eq!(p.next().await.unwrap().unwrap(), "abcd");
        assert!(p.next().await.unwrap().is_none());
        let mut empty = parts_of(&[], 4);
        assert!(empty.next().await.unwrap().is_none());
    }
}
