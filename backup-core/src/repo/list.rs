//! A snapshot's chunk list (`lists/<snapshot>`, the object its manifest
//! names), fetched and decoded the one way every reader does it: verify
//! checks it against the index, restore plans from it, prune collects the
//! chunks the kept snapshots use.
//!
//! The encoded object is downloaded whole (it is compressed, and small
//! beside the data it describes); its plaintext is decoded as a stream
//! straight into the caller's closure, item by item, so the decoded list is
//! never held in memory here.
//!
//! A list that cannot be read is reported one way, naming its key: one that
//! is not there is [`Error::Corrupt`] "the chunk list is missing", one that
//! does not decode or parse is the codec's or the parser's error. A failure
//! to reach the target is a storage error, not a verdict on the list.
//!
//! Never: judge a list on a failed or short download (with the size a
//! listing gave, a shorter download is retried as a transient failure), or
//! let a caller take what decoded before a fault for the whole list.

use bytes::Bytes;

use super::format::{parse_list, ListItem};
use super::load::decode_classified;
use super::{Cause, Manifest, Repository};
use crate::error::{Error, Result};
use crate::keys::MetadataKey;
use crate::storage::ObjectMeta;

/// A snapshot's chunk list, downloaded and not yet decoded.
#[derive(Debug, Clone)]
pub struct ChunkList {
    key: String,
    raw: Bytes,
}

/// Why a chunk list could not be read whole. Each kind carries the one
/// error it is reported as, which names the list's key (or, when the target
/// failed, the target).
#[derive(Debug)]
pub enum ListError {
    /// The target could not be read: nothing is known about the list.
    Unreachable(Error),
    /// No object under the key the manifest names.
    Missing(Error),
    /// The object does not decode or parse, and why.
    Unreadable { cause: Cause, error: Error },
}

impl ListError {
    /// Whether the list is provably not one offsite wrote: empty, not
    /// decodable or encrypted to other keys (see [`Cause::junk`]). What
    /// decoded of it before the fault is then all there is of it.
    pub fn junk(&self) -> bool {
        matches!(self, ListError::Unreadable { cause, .. } if cause.junk())
    }

    /// The error this is reported as.
    pub fn error(&self) -> &Error {
        match self {
            ListError::Unreachable(e) | ListError::Missing(e) => e,
            ListError::Unreadable { error, .. } => error,
        }
    }
}

impl std::fmt::Display for ListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error().fmt(f)
    }
}

impl std::error::Error for ListError {}

impl From<ListError> for Error {
    fn from(e: ListError) -> Error {
        match e {
            ListError::Unreachable(e) | ListError::Missing(e) => e,
            ListError::Unreadable { error, .. } => error,
        }
    }
}

impl Repository {
    /// Downloads `manifest`'s chunk list. `listed_size`, the size a listing
    /// of `lists/` gave for it, makes a shorter download a transient failure
    /// (retried) instead of a list that does not decode.
    pub async fn chunk_list(
        &self,
        manifest: &Manifest,
        listed_size: Option<u64>,
    ) -> Result<ChunkList, ListError> {
        let key = manifest.list.clone();
        let raw = match listed_size {
            Some(size) => {
                let meta = ObjectMeta {
                    key: key.clone(),
                    size,
                };
                self.get_listed(&meta).await
            }
            None => self.get_bytes(&key).await,
        };
        match raw {
            Ok(raw) => Ok(ChunkList { key, raw }),
            Err(Error::Storage { cause, .. }) if cause.is_not_found() => {
                Err(ListError::Missing(Error::Corrupt {
                    key,
                    message: "the chunk list is missing".into(),
                }))
            }
            Err(e) => Err(ListError::Unreachable(e)),
        }
    }
}

impl ChunkList {
    /// The list's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Decodes the list, handing each item to `each` in list order as it
    /// decodes. An error from `each` stops the reading and is returned as
    /// the list's (its contents are what `each` refused). CPU-bound: a
    /// caller with many lists to read runs this on a blocking thread.
    pub fn read(
        &self,
        ids: &MetadataKey,
        each: impl FnMut(ListItem) -> Result<()>,
    ) -> Result<(), ListError> {
        decode_classified(&self.key, &self.raw, ids, |r| {
            parse_list(r, &self.key, each)
        })
        .map_err(|(cause, error)| ListError::Unreadable { cause, error })
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use super::*;
    use crate::chunk::ChunkId;
    use crate::keys::{generate_identity, Keys};
    use crate::repo::format::{write_chunk, write_entry, LIST_HEADER};
    use crate::source::{Entry, SourceKind};
    use crate::storage::memory::MemoryStorage;
    use crate::storage::{PutMode, RetryPolicy};

    fn manifest(list: &str) -> Manifest {
        let t = chrono::Utc::now();
        Manifest {
            format: "offsite-snapshot".into(),
            version: 1,
            id: "s1".into(),
            source: "app".into(),
            kind: SourceKind::Files,
            host: "h".into(),
            started: t,
            finished: t,
            size: 5,
            files: 1,
            chunks: 1,
            new_bytes: 5,
            uploaded_bytes: 0,
            sha256: String::new(),
            list: list.into(),
            page_size: None,
            tags: Vec::new(),
            tool: "test".into(),
            trust: None,
        }
    }

    /// A good list reads item by item; a truncated one, a missing one and
    /// one that does not parse each fail with one error naming the key.
    #[tokio::test]
    async fn a_chunk_list_reads_whole_or_fails_naming_its_key() {
        let (_, recipient) = generate_identity();
        let keys = Keys::from_recipients(&[recipient]).unwrap();
        let ids = keys.metadata_key();
        let repo = Repository::open_or_init(Arc::new(MemoryStorage::default()), &keys)
            .await
            .unwrap();
        let file = Entry::File {
            path: "a".into(),
            mode: 0o644,
            size: 5,
            mtime: 1,
        };
        let mut plain = Vec::new();
        writeln!(plain, "{LIST_HEADER}").unwrap();
        write_entry(&mut plain, &file).unwrap();
        for i in 0..2000u32 {
            write_chunk(&mut plain, &ChunkId::of(&i.to_le_bytes()), 5).unwrap();
        }
        let body = Repository::encode_metadata(&keys, &plain).unwrap();
        let store = |key: &'static str, data: Bytes| {
            let repo = repo.clone();
            async move { repo.put_bytes(key, data, PutMode::Create).await.unwrap() }
        };
        store("lists/good", body.clone()).await;
        store("lists/cut", body.slice(..body.len() - 40)).await;
        let bad = Repository::encode_metadata(&keys, b"offsite-list 1\nF nonsense\n").unwrap();
        store("lists/bad", bad).await;

        let good = repo
            .chunk_list(&manifest("lists/good"), None)
            .await
            .unwrap();
        let mut items = Vec::new();
        good.read(&ids, |i| {
            items.push(i);
            Ok(())
        })
        .unwrap();
        assert_eq!(items.len(), 2001);
        assert!(matches!(&items[0], ListItem::Entry(e) if *e == file));
        // The listed size is insisted on: a matching one reads the same, a
        // download that comes back shorter is the target's failure, never
        // a verdict on the list.
        let good_m = manifest("lists/good");
        let size = body.len() as u64;
        let listed = repo.chunk_list(&good_m, Some(size)).await.unwrap();
        listed.read(&ids, |_| Ok(())).unwrap();
        let fast = repo.clone().with_retry(RetryPolicy::fast());
        let e = fast.chunk_list(&good_m, Some(size + 1)).await.unwrap_err();
        assert!(matches!(e, ListError::Unreachable(_)) && !e.junk(), "{e}");

        let cut = repo.chunk_list(&manifest("lists/cut"), None).await.unwrap();
        let mut read = 0;
        let e = cut
            .read(&ids, |_| {
                read += 1;
                Ok(())
            })
            .unwrap_err();
        assert!(e.junk(), "{e}");
        assert!(read < 2001, "a truncated list never reads whole");
        let e = Error::from(e);
        assert!(
            matches!(&e, Error::Corrupt { key, .. } if key == "lists/cut"),
            "{e}"
        );

        let e = repo
            .chunk_list(&manifest("lists/gone"), None)
            .await
            .unwrap_err();
        assert!(matches!(e, ListError::Missing(_)) && !e.junk(), "{e}");
        assert_eq!(
            e.to_string(),
            "corrupt object lists/gone: the chunk list is missing"
        );

        let bad = repo.chunk_list(&manifest("lists/bad"), None).await.unwrap();
        let e = bad.read(&ids, |_| Ok(())).unwrap_err();
        assert!(
            matches!(
                &e,
                ListError::Unreadable {
                    cause: Cause::Unparseable,
                    ..
                }
            ),
            "{e}"
        );
        assert!(!e.junk());
        assert!(
            e.to_string()
                .starts_with("corrupt object lists/bad: line 2"),
            "{e}"
        );
    }
}
