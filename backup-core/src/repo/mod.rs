//! The repository, as laid out on any target: format version 1 below.
//!
//! ```text
//! config                      plaintext JSON: format, version, id, metadata recipient
//! snapshots/<snapshot-id>     manifest (JSON), metadata-encrypted
//! lists/<snapshot-id>         chunk list (text), metadata-encrypted
//! index/<random>              index file (text), metadata-encrypted
//! packs/<xx>/<random>         concatenated chunks, encrypted to the recipients only
//! damaged/<random>            chunks found damaged in a pack, metadata-encrypted
//! locks/<random>              prune's lock
//! ```
//!
//! Format 2 (docs/format.md; what a backup makes of an empty target,
//! `for_backup`) adds `keyring/`, `keys/` and `checks/`. Its `config`
//! parses here ([`Format::V2`]); [`Repository::open_with`] opens either
//! format (format 2 with the host's [`Access`]), [`Repository::open`] only
//! format 1, and key administration uses [`Repository::open_v2`]. `init`
//! creates a format 2 repository (or joins a target to a key set).
//! Format 2's list objects (full list,
//! delta, `list_blake3`) are in `format::list2` (their sealed objects in
//! `format::list2::object`), the planning of which of them to read in
//! `path`; its packs with their signed trailers and its index files in
//! `format::pack2`, its manifest ([`ManifestV2`]) in `format::manifest2`,
//! and the one encoding of its signed metadata in `format::sealed`.
//! Reading them (each manifest's trust, the index from signed index files,
//! a snapshot's list state along its cheapest path) is in `load2`.
//! "Metadata-encrypted" means zstd then age to the recipients plus the derived
//! metadata identity (see [`crate::keys`]). Object names are random or
//! timestamps and reveal nothing of the content. A snapshot exists once its
//! manifest exists, and the manifest is written last, with create-if-absent.
//! Reading the snapshot list and the index (with their skipping of objects
//! that do not decode) is in `load`, reading a snapshot's chunk list in
//! `list`, writing damage records in `damage`.
//! docs/format.md is the normative description; this module implements it.

mod checks;
mod damage;
mod for_backup;
pub mod format;
pub mod init;
mod list;
mod load;
mod load2;
mod ops;
pub mod path;

pub use checks::{CheckedAt, RecordedCheck};
pub use for_backup::{Creator, NewFormat};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Error, Result};
use crate::keyring::KeysetMemory;
use crate::keys::{Keys, KeysetId, MetadataKey, OwnerPublic};
use crate::keyset::{Holding, KeySet, Trust};
use crate::source::SourceKind;
use crate::storage::{
    bytes_stream, collect_bytes, list_all, ByteStream, ErrorKind, PutMode, RetryPolicy, Storage,
    StorageError,
};

pub use format::manifest2::ManifestV2;
pub use format::{Damage, Index, Location};
pub use list::{ChunkList, ListError};
pub use load::{newest_first, Cause, Dated, SnapshotList, Unreadable};
pub use load2::{IndexV2, SnapshotV2, SnapshotsV2};

/// The format version this build writes (and the only one it operates on).
pub const FORMAT_VERSION: u32 = 1;
pub const CONFIG_KEY: &str = "config";
pub const SNAPSHOTS: &str = "snapshots/";
pub const LISTS: &str = "lists/";
pub const INDEX: &str = "index/";
pub const PACKS: &str = "packs/";
pub const LOCKS: &str = "locks/";
pub const DAMAGED: &str = "damaged/";
/// Format 2: the owner-signed keyring, `keyring/<serial>`.
pub const KEYRING: &str = "keyring/";
/// Format 2: key bundles, `keys/<generation>/<holder id>-<8 hex>`.
pub const KEYS: &str = "keys/";
/// Format 2: database check records, `checks/<snapshot-id>/<16 hex>`.
pub const CHECKS: &str = "checks/";

/// zstd level for metadata objects; packs use the configured level.
pub(crate) const METADATA_LEVEL: i32 = 6;
/// The zstd level of format 2's signed metadata (pack trailers, index
/// files, lists, manifests). Their bulk is random hex ids, which compress
/// about as well at 3 as at 6, while level 6 cost about 8% of a full
/// backup's CPU (every pack carries its own trailer); readers accept any
/// level.
pub(crate) const SIGNED_METADATA_LEVEL: i32 = 3;

/// The repository format a `config` declares, with what only that format
/// names there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// The derived metadata identity's recipient (see [`crate::keys`]).
    V1 { metadata_recipient: String },
    /// The key set whose keyring holds the keys (docs/design/format-v2.md).
    V2 { keyset: KeysetId },
}

impl Format {
    /// The `version` number in `config`.
    pub fn version(&self) -> u32 {
        match self {
            Format::V1 { .. } => 1,
            Format::V2 { .. } => 2,
        }
    }
}

/// The `config` object (docs/format.md): plaintext, nothing in it trusted.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoConfig {
    /// Random per target.
    pub id: String,
    pub created: DateTime<Utc>,
    pub format: Format,
}

/// `config` as JSON: `format` is always `"offsite-repository"`; fields of
/// the other version are absent.
#[derive(Serialize, Deserialize)]
struct ConfigJson {
    format: String,
    version: u32,
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keyset: Option<String>,
    created: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata_recipient: Option<String>,
}

impl RepoConfig {
    /// A new format 1 config: what a backup to an empty target writes.
    fn new_v1(keys: &Keys) -> RepoConfig {
        RepoConfig {
            id: hex::encode(rand::random::<[u8; 16]>()),
            created: Utc::now(),
            format: Format::V1 {
                metadata_recipient: keys.metadata_recipient(),
            },
        }
    }

    pub fn version(&self) -> u32 {
        self.format.version()
    }

    /// Format 2's key set, `None` for format 1.
    pub fn keyset(&self) -> Option<&KeysetId> {
        match &self.format {
            Format::V2 { keyset } => Some(keyset),
            Format::V1 { .. } => None,
        }
    }

    /// Format 1's metadata recipient, `None` for format 2.
    pub fn metadata_recipient(&self) -> Option<&str> {
        match &self.format {
            Format::V1 { metadata_recipient } => Some(metadata_recipient),
            Format::V2 { .. } => None,
        }
    }

    /// The object's bytes (pretty JSON, as format 1 always wrote it).
    pub fn to_json(&self) -> Vec<u8> {
        let (keyset, metadata_recipient) = match &self.format {
            Format::V1 { metadata_recipient } => (None, Some(metadata_recipient.clone())),
            Format::V2 { keyset } => (Some(keyset.to_string()), None),
        };
        let json = ConfigJson {
            format: "offsite-repository".into(),
            version: self.version(),
            id: self.id.clone(),
            keyset,
            created: self.created,
            metadata_recipient,
        };
        serde_json::to_vec_pretty(&json).expect("config serializes")
    }

    /// Parses a `config` object of format 1 or 2; any other version is
    /// [`Error::UnsupportedVersion`]. `target` names the repository in errors.
    pub fn parse(raw: &[u8], target: &str) -> Result<RepoConfig> {
        let bad = |message: String| Error::NotARepository {
            target: target.to_string(),
            message,
        };
        #[derive(Deserialize)]
        struct Probe {
            format: Option<String>,
            version: Option<u32>,
        }
        let probe: Probe = serde_json::from_slice(raw)
            .map_err(|e| bad(format!("config is not valid JSON: {e}")))?;
        if probe.format.as_deref() != Some("offsite-repository") {
            return Err(bad("config is not an offsite repository config".into()));
        }
        let version = probe.version.unwrap_or(0);
        if !matches!(version, 1 | 2) {
            return Err(Error::UnsupportedVersion {
                target: target.to_string(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let json: ConfigJson =
            serde_json::from_slice(raw).map_err(|e| bad(format!("config: {e}")))?;
        let missing = |field: &str| bad(format!("config: version {version} needs `{field}`"));
        let format = match (version, json.metadata_recipient, json.keyset) {
            (1, Some(metadata_recipient), _) => Format::V1 { metadata_recipient },
            (1, None, _) => return Err(missing("metadata_recipient")),
            (_, _, Some(keyset)) => Format::V2 {
                keyset: keyset
                    .parse()
                    .map_err(|e| bad(format!("config: keyset: {e}")))?,
            },
            (_, _, None) => return Err(missing("keyset")),
        };
        Ok(RepoConfig {
            id: json.id,
            created: json.created,
            format,
        })
    }
}

/// A snapshot's manifest: everything about it except its chunk list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Always `"offsite-snapshot"`.
    pub format: String,
    pub version: u32,
    pub id: String,
    pub source: String,
    pub kind: SourceKind,
    pub host: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Bytes of data in the snapshot (the database size, or the files' total).
    pub size: u64,
    pub files: u64,
    pub chunks: u64,
    /// Bytes of chunks this snapshot was the first to store (before compression).
    pub new_bytes: u64,
    /// Bytes this backup uploaded (packs, index, list, manifest; encoded).
    pub uploaded_bytes: u64,
    /// SHA-256 of the snapshot's data: the file contents in list order.
    pub sha256: String,
    /// Key of the chunk list object.
    pub list: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// `offsite <version>` that wrote it.
    pub tool: String,
    /// Format 2: whether its signature counts ([`Manifest::from_v2`]);
    /// `None` for format 1. Never stored.
    #[serde(skip)]
    pub trust: Option<Trust>,
}

impl Manifest {
    /// The format 2 snapshot `s` as the operations that work on either
    /// format see a snapshot (listings, selection, restore's choice): its
    /// list is the prefix `lists/<id>/`, it has no SHA-256 (`list_blake3`
    /// commits to it), and `trust` says whether it may be used.
    pub fn from_v2(s: &SnapshotV2) -> Manifest {
        let m = &s.manifest;
        Manifest {
            format: "offsite-snapshot".into(),
            version: 2,
            id: m.id.clone(),
            source: m.source.clone(),
            kind: m.kind,
            host: m.host.clone(),
            started: m.started,
            finished: m.finished,
            size: m.size,
            files: m.files,
            chunks: m.chunks,
            new_bytes: m.new_bytes,
            uploaded_bytes: m.uploaded_bytes,
            sha256: String::new(),
            list: format!("{LISTS}{}/", m.id),
            page_size: m.page_size,
            tags: m.tags.clone(),
            tool: m.tool.clone(),
            trust: Some(s.trust.clone()),
        }
    }

    /// Whether the snapshot may be restored or chosen: format 1 ones
    /// (nothing is signed there), and format 2 ones that are signed.
    pub fn is_trusted(&self) -> bool {
        self.trust.as_ref().is_none_or(Trust::is_signed)
    }

    /// Whether this is the snapshot `offsite restore` took of a file before
    /// replacing it ([`PRE_RESTORE_TAG`]): it saves what was thrown away, so
    /// `--latest`, `--at`, drills, status and retention's regular rules pass
    /// over it. The one test for it.
    pub fn is_pre_restore(&self) -> bool {
        self.tags.iter().any(|t| t == PRE_RESTORE_TAG)
    }
}

/// Requests made through a repository, for summaries and benchmarks.
#[derive(Debug, Default)]
pub struct RequestStats {
    pub puts: AtomicU64,
    pub gets: AtomicU64,
    pub lists: AtomicU64,
    pub deletes: AtomicU64,
    pub bytes_put: AtomicU64,
}

impl RequestStats {
    pub fn total(&self) -> u64 {
        self.puts.load(Ordering::Relaxed)
            + self.gets.load(Ordering::Relaxed)
            + self.lists.load(Ordering::Relaxed)
            + self.deletes.load(Ordering::Relaxed)
    }
}

/// An opened repository on one target. A format 2 one opened with
/// [`Repository::open_with`] carries its [`KeySet`]: the operations that
/// read or write format 2 take their keys from it, so a repository and the
/// keys it was opened with never part.
#[derive(Debug, Clone)]
pub struct Repository {
    storage: Arc<dyn Storage>,
    config: RepoConfig,
    retry: RetryPolicy,
    stats: Arc<RequestStats>,
    keyset: Option<Arc<KeySet>>,
}

/// How this host opens format 2 repositories: the owner key it trusts
/// (the pin, or derived from the owner's identity), the secrets it holds,
/// and its key set memory (rollback protection).
#[derive(Debug, Clone)]
pub struct Access {
    pub trust: OwnerPublic,
    pub holding: Holding,
    pub memory: Option<KeysetMemory>,
}

impl Repository {
    /// Opens an existing repository.
    pub async fn open(storage: Arc<dyn Storage>) -> Result<Repository> {
        Self::open_any(storage).await?.format_1_only()
    }

    /// Until format 2's parts land (docs/design/format-v2.md, section 8)
    /// an operation not yet built for format 2 refuses it whole, never
    /// half-reads it.
    fn format_1_only(self) -> Result<Repository> {
        if self.config.version() != FORMAT_VERSION {
            return Err(Error::FormatNotSupportedYet {
                target: self.describe(),
                version: self.config.version(),
            });
        }
        Ok(self)
    }

    /// Opens an existing format 2 repository for key administration
    /// ([`crate::keyadmin`]) only; every other operation opens with
    /// [`Repository::open`], which refuses format 2. A format 1 one is
    /// [`Error::NotFormat2`].
    pub async fn open_v2(storage: Arc<dyn Storage>) -> Result<Repository> {
        let repo = Self::open_any(storage).await?;
        if repo.config.keyset().is_none() {
            return Err(Error::NotFormat2 {
                target: repo.describe(),
            });
        }
        Ok(repo)
    }

    /// Opens an existing repository of either format: format 1 as
    /// [`Repository::open`] does; format 2 with its [`KeySet`] opened from
    /// `access` (an error saying what to configure when there is none).
    pub async fn open_with(
        storage: Arc<dyn Storage>,
        access: Option<&Access>,
    ) -> Result<Repository> {
        Self::open_any(storage).await?.with_access(access).await
    }

    /// [`Repository::open_with`] for what lists snapshots and writes only
    /// unsigned metadata (status, pin): that needs a metadata key M, which
    /// a writer key or a recipient's identity holds, so a format 2
    /// repository without `access` is [`Error::NoMetadataKey`], saying so.
    pub async fn open_to_list(
        storage: Arc<dyn Storage>,
        access: Option<&Access>,
    ) -> Result<Repository> {
        match Self::open_with(storage, access).await {
            Err(Error::NoFormat2Keys { target }) => Err(Error::NoMetadataKey { target }),
            other => other,
        }
    }

    /// This repository as `access` opens it: format 1 as it is, format 2
    /// with its key set.
    async fn with_access(self, access: Option<&Access>) -> Result<Repository> {
        let repo = self;
        if repo.config.keyset().is_none() {
            return repo.format_1_only();
        }
        let Some(access) = access else {
            return Err(Error::NoFormat2Keys {
                target: repo.describe(),
            });
        };
        let keyset = KeySet::open(
            &repo,
            &access.trust,
            &access.holding,
            access.memory.as_ref(),
        )
        .await?;
        Ok(Repository {
            keyset: Some(Arc::new(keyset)),
            ..repo
        })
    }

    /// The format 2 keys this repository was opened with; `None` for
    /// format 1 (and for a format 2 one opened for key administration).
    pub fn keyset(&self) -> Option<&KeySet> {
        self.keyset.as_deref()
    }

    /// [`Repository::keyset`], shared.
    pub fn keyset_arc(&self) -> Option<Arc<KeySet>> {
        self.keyset.clone()
    }

    /// Opens a repository of either format for lock administration only
    /// (`offsite unlock`): locks are plaintext JSON in both formats and need
    /// no keys. Nothing but `locks/` may be read or written through it.
    pub async fn open_for_locks(storage: Arc<dyn Storage>) -> Result<Repository> {
        Self::open_any(storage).await
    }

    /// Reads and parses `config`, whatever format it declares.
    async fn open_any(storage: Arc<dyn Storage>) -> Result<Repository> {
        let stats = Arc::new(RequestStats::default());
        let retry = RetryPolicy::default();
        stats.gets.fetch_add(1, Ordering::Relaxed);
        let target = storage.describe();
        let raw = match retry
            .run(|| async { collect_bytes(storage.get(CONFIG_KEY).await?).await })
            .await
        {
            Ok(raw) => raw,
            Err(e) if e.is_not_found() => {
                return Err(Error::NotARepository {
                    target,
                    message: "no config object; run a backup to create one, or try again in a few \
                              seconds if one is being created this moment"
                        .into(),
                })
            }
            Err(e) => return Err(Error::Storage { target, cause: e }),
        };
        let config = RepoConfig::parse(&raw, &target)?;
        Ok(Repository {
            storage,
            config,
            retry,
            stats,
            keyset: None,
        })
    }

    /// Opens the repository, creating it if the target is empty, and checks
    /// that `keys` belong to it. Format 1 only (see [`Self::open_or_init_with`]).
    pub async fn open_or_init(storage: Arc<dyn Storage>, keys: &Keys) -> Result<Repository> {
        let repo = match Self::open(storage.clone()).await {
            Err(Error::NotARepository { target, .. }) => {
                Self::init_v1(storage, keys, target).await?
            }
            other => other?,
        };
        repo.check_keys(keys)?;
        Ok(repo)
    }

    /// Makes the empty target `storage` a format 1 repository for `keys`
    /// (or uses the one another host made at the same moment).
    async fn init_v1(storage: Arc<dyn Storage>, keys: &Keys, target: String) -> Result<Repository> {
        let existing = list_all(storage.as_ref(), "")
            .await
            .map_err(|e| Error::Storage {
                target: target.clone(),
                cause: e,
            })?;
        if !existing.is_empty() {
            return Err(Error::NotARepository {
                target,
                message: format!(
                    "it holds {} other objects but no offsite config; use an empty \
                     directory or prefix",
                    existing.len()
                ),
            });
        }
        let body = Bytes::from(RepoConfig::new_v1(keys).to_json());
        let len = body.len() as u64;
        match store_checked(
            storage.as_ref(),
            &RetryPolicy::default(),
            CONFIG_KEY,
            len,
            PutMode::Create,
            || Ok(bytes_stream(body.clone())),
        )
        .await
        {
            // Another host created it at the same moment: use theirs.
            Ok(())
            | Err(Error::Storage {
                cause:
                    StorageError {
                        kind: ErrorKind::AlreadyExists,
                        ..
                    },
                ..
            }) => {}
            Err(e) => return Err(e),
        }
        Self::open(storage).await
    }

    pub fn check_keys(&self, keys: &Keys) -> Result<()> {
        let expected = self.metadata_recipient()?;
        let found = keys.metadata_recipient();
        if found != expected {
            return Err(Error::RecipientMismatch {
                target: self.describe(),
                expected: expected.to_string(),
                found,
            });
        }
        Ok(())
    }

    /// Format 1's metadata recipient, from `config`. [`Repository::open`]
    /// refuses format 2, so this is the same error where it could differ.
    pub(crate) fn metadata_recipient(&self) -> Result<&str> {
        self.config
            .metadata_recipient()
            .ok_or_else(|| Error::FormatNotSupportedYet {
                target: self.describe(),
                version: self.config.version(),
            })
    }

    /// The store itself, for the engine's own modules only: everything
    /// outside goes through the methods here, with their retries and stats.
    pub(crate) fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// The repository's `config` object.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// Requests made to the target through this repository so far.
    pub fn requests(&self) -> u64 {
        self.stats.total()
    }

    /// The same repository with another retry policy (tests use a fast one).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Repository {
        self.retry = retry;
        self
    }

    pub fn describe(&self) -> String {
        self.storage.describe()
    }

    pub(crate) fn storage_err(&self, e: StorageError) -> Error {
        Error::Storage {
            target: self.describe(),
            cause: e,
        }
    }

    /// Reads a whole (small) object, with retries.
    pub async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        self.stats.gets.fetch_add(1, Ordering::Relaxed);
        self.retry
            .run(|| async { collect_bytes(self.storage.get(key).await?).await })
            .await
            .map_err(|e| self.storage_err(e))
    }

    /// Writes an in-memory object, with retries, and checks that the target
    /// stored all of it (see [`Self::put_stream`]).
    pub async fn put_bytes(&self, key: &str, data: Bytes, mode: PutMode) -> Result<()> {
        let len = data.len() as u64;
        self.put_stream(key, len, mode, || Ok(bytes_stream(data.clone())))
            .await
    }

    /// Writes an object of `len` bytes whose body `body` produces afresh for
    /// each attempt, with retries. Every object of the repository is written
    /// here, so this is where "never success for what was not stored" holds:
    /// - the target is full: fails at once with [`Error::TargetFull`] (no
    ///   retry), saying how much room is left where the target knows;
    /// - the target stored fewer (or more) bytes than `len`, by its own
    ///   account: fails with [`Error::ShortWrite`], and a created object (the
    ///   key was fresh and ours alone) is deleted again, so no manifest or
    ///   index ever refers to it and no reader finds it. An overwritten one
    ///   (a lock refresh) is left for its owner to replace;
    /// - a retried create finds the key taken, so an earlier attempt landed
    ///   but its answer was lost: a head tells whether it landed whole.
    pub async fn put_stream(
        &self,
        key: &str,
        len: u64,
        mode: PutMode,
        body: impl Fn() -> Result<ByteStream, StorageError>,
    ) -> Result<()> {
        store_checked(self.storage.as_ref(), &self.retry, key, len, mode, body).await?;
        self.stats.puts.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_put.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// What the target knows of one object, with retries. Returns the
    /// storage error itself, so that callers can tell "absent" apart.
    pub async fn head(
        &self,
        key: &str,
    ) -> std::result::Result<crate::storage::ObjectMeta, StorageError> {
        self.retry.run(|| self.storage.head(key)).await
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<crate::storage::ObjectMeta>> {
        self.stats.lists.fetch_add(1, Ordering::Relaxed);
        self.retry
            .run(|| list_all(self.storage.as_ref(), prefix))
            .await
            .map_err(|e| self.storage_err(e))
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        self.stats.deletes.fetch_add(1, Ordering::Relaxed);
        self.retry
            .run(|| self.storage.delete(key))
            .await
            .map_err(|e| self.storage_err(e))
    }

    /// Encodes a metadata object (readable with the identity or the recipients).
    pub fn encode_metadata(keys: &Keys, plain: &[u8]) -> Result<Bytes> {
        let recipients = keys.metadata_recipients();
        let refs: Vec<&dyn age::Recipient> = recipients
            .iter()
            .map(|r| r as &dyn age::Recipient)
            .collect();
        codec::encode(plain, &refs, METADATA_LEVEL)
            .map(Bytes::from)
            .map_err(|e| Error::io("encoding metadata", e))
    }

    /// Reads and decodes a metadata object.
    pub async fn get_metadata(&self, key: &str, ids: &MetadataKey) -> Result<Vec<u8>> {
        let raw = self.get_bytes(key).await?;
        codec::decode(&raw, ids.iter(), key)
    }
}

/// The one way an object is written: `body` is put under `key` with retries
/// of transient failures, and the size the target says it stored is compared
/// with `len` (see [`Repository::put_stream`] for what each failure does).
async fn store_checked(
    storage: &dyn Storage,
    retry: &RetryPolicy,
    key: &str,
    len: u64,
    mode: PutMode,
    body: impl Fn() -> Result<ByteStream, StorageError>,
) -> Result<()> {
    let mut attempt = 0u32;
    let stored = retry
        .run(|| {
            attempt += 1;
            let retried = attempt > 1;
            let body = &body;
            async move {
                match storage.put(key, body()?, mode).await {
                    Ok(meta) => Ok((meta.size, true)),
                    // A create whose first attempt landed but whose answer
                    // was lost reports AlreadyExists on the retry; the
                    // object is ours if it is whole.
                    Err(e) if retried && e.kind == ErrorKind::AlreadyExists => {
                        Ok((storage.head(key).await?.size, false))
                    }
                    Err(e) => Err(e),
                }
            }
        })
        .await;
    let target = storage.describe();
    let (size, created) = match stored {
        Ok(done) => done,
        Err(e) if e.is_full() => {
            return Err(Error::TargetFull {
                free: storage.free_space().await,
                target,
                needed: None,
                source: Box::new(e),
            })
        }
        Err(e) => return Err(Error::Storage { target, cause: e }),
    };
    if size == len {
        return Ok(());
    }
    // Only an object this very put created is surely ours to remove.
    let removed = created
        && mode == PutMode::Create
        && match retry.run(|| storage.delete(key)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(key, error = %e, "could not remove an incompletely stored object");
                false
            }
        };
    Err(Error::ShortWrite {
        target,
        key: key.to_string(),
        stored: size,
        expected: len,
        removed,
    })
}

/// The tag of the snapshot `offsite restore` takes of a file before it
/// replaces it. Such snapshots hold the state being thrown away, so
/// `--latest` and `--at` pass over them; they are chosen only by id.
pub const PRE_RESTORE_TAG: &str = "pre-restore";

/// Which snapshot to use.
#[derive(Debug, Clone)]
pub enum Selector {
    /// The newest snapshot that is not a pre-restore snapshot.
    Latest,
    /// A snapshot id, or a unique prefix or suffix of one.
    Id(String),
    /// The newest snapshot (not a pre-restore one) finished at or before this time.
    At(DateTime<Utc>),
}

/// The snapshots of `source` (all sources when `None`) that `--latest`,
/// `--at`, drills and status choose among, in the order given: pre-restore
/// snapshots ([`Manifest::is_pre_restore`]) pass over them. The one
/// pre-restore filter; only an id picks such a snapshot.
pub fn regular<'a, 's: 'i, 'i>(
    snapshots: &'a [Manifest],
    source: Option<&'s str>,
) -> impl Iterator<Item = &'a Manifest> + 'i
where
    'a: 'i,
{
    snapshots.iter().filter(move |m| {
        source.is_none_or(|s| m.source == s) && !m.is_pre_restore() && m.is_trusted()
    })
}

/// Whether `asked` names snapshot `id`: the whole id, or a prefix or
/// suffix of it (what a user may type).
pub fn id_matches(id: &str, asked: &str) -> bool {
    id == asked || id.starts_with(asked) || id.ends_with(asked)
}

/// Picks a snapshot of `source` (all sources when `None`) from a newest-first list.
pub fn select<'a>(
    snapshots: &'a [Manifest],
    source: Option<&str>,
    sel: &Selector,
) -> Result<&'a Manifest> {
    match sel {
        Selector::Latest => regular(snapshots, source).next().ok_or_else(|| {
            Error::SnapshotNotFound(format!("source {}", source.unwrap_or("(any)")))
        }),
        Selector::At(t) => regular(snapshots, source)
            .find(|m| m.finished <= *t)
            .ok_or_else(|| {
                Error::SnapshotNotFound(format!(
                    "{} at or before {t}",
                    source.unwrap_or("any source")
                ))
            }),
        Selector::Id(id) => {
            let hits: Vec<&Manifest> = snapshots
                .iter()
                .filter(|m| source.is_none_or(|s| m.source == s))
                .filter(|m| id_matches(&m.id, id))
                .collect();
            match hits.as_slice() {
                [one] => Ok(one),
                [] => Err(Error::SnapshotNotFound(format!("id {id}"))),
                many => Err(Error::AmbiguousSnapshot(
                    id.clone(),
                    many.iter()
                        .map(|m| m.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate_identity;
    use crate::storage::memory::MemoryStorage;

    /// A format 1 config exactly as format 1 has always written it.
    const V1: &str = r#"{
  "format": "offsite-repository",
  "version": 1,
  "id": "5f0c7d1e2a3b4c5d6e7f8091a2b3c4d5",
  "created": "2026-11-23T09:55:46.123Z",
  "metadata_recipient": "age1q73he0q5yzfu3d64msd3p6rvksnrwjk3d2598mgtmlqt9wrdr37q2vrn72"
}"#;
    const V2: &str = r#"{"format": "offsite-repository", "version": 2,
        "id": "5f0c7d1e2a3b4c5d6e7f8091a2b3c4d5",
        "keyset": "0123456789abcdef0123456789abcdef", "created": "2026-12-01T10:00:00Z"}"#;

    fn parse(text: &str) -> Result<RepoConfig> {
        RepoConfig::parse(text.as_bytes(), "mem")
    }

    #[test]
    fn config_version_2_parses_and_3_is_refused() {
        let v1 = parse(V1).unwrap();
        assert_eq!((v1.version(), v1.keyset()), (1, None));
        assert!(v1.metadata_recipient().unwrap().starts_with("age1q73he0"));
        assert_eq!(String::from_utf8(v1.to_json()).unwrap(), V1);

        let v2 = parse(V2).unwrap();
        assert_eq!(v2.version(), 2);
        assert_eq!(
            v2.keyset().map(KeysetId::as_str),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(v2.metadata_recipient(), None);
        let written = String::from_utf8(v2.to_json()).unwrap();
        assert!(!written.contains("metadata_recipient"), "{written}");
        assert_eq!(parse(&written).unwrap(), v2);

        let refused = |text: &str, needle: &str| {
            let e = parse(text).unwrap_err();
            assert!(matches!(e, Error::NotARepository { .. }), "{e:?}");
            assert!(e.to_string().contains(needle), "{needle}: {e}");
        };
        refused(
            &V2.replace(r#""keyset": "0123456789abcdef0123456789abcdef","#, ""),
            "version 2 needs `keyset`",
        );
        refused(
            &V2.replace("0123456789abcdef01", "0123456789ABCDEF01"),
            "keyset: \"0123456789ABCDEF01",
        );
        refused(
            &V1.replace(r#""version": 1"#, r#""version": 2"#),
            "version 2 needs `keyset`",
        );
        refused(
            &V2.replace(r#""version": 2"#, r#""version": 1"#),
            "version 1 needs `metadata_recipient`",
        );

        let e = parse(&V2.replace(r#""version": 2"#, r#""version": 3"#)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::UnsupportedVersion {
                    found: 3,
                    supported: 1,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .contains("uses format version 3; this offsite reads version 1"),
            "{e}"
        );
        let e = parse(&V2.replace(r#""version": 2,"#, "")).unwrap_err();
        assert!(
            matches!(e, Error::UnsupportedVersion { found: 0, .. }),
            "{e:?}"
        );
    }

    /// Format 2 parses but nothing of this build operates on it: backup
    /// (`open_or_init`) and restore (`open`) refuse it and write nothing,
    /// and a backup to an empty target still makes format 1.
    #[tokio::test]
    async fn a_format_2_repository_is_refused_for_backup_and_restore() {
        let (_, recipient) = generate_identity();
        let keys = Keys::from_recipients(&[recipient]).unwrap();
        let mem = Arc::new(MemoryStorage::default());
        mem.put(CONFIG_KEY, bytes_stream(Bytes::from(V2)), PutMode::Create)
            .await
            .unwrap();
        let not_yet = |e: Error| {
            assert!(
                matches!(e, Error::FormatNotSupportedYet { version: 2, .. }),
                "{e:?}"
            );
            assert!(
                e.to_string()
                    .contains("format 2 repositories are not supported by this build yet"),
                "{e}"
            );
        };
        not_yet(Repository::open(mem.clone()).await.unwrap_err());
        not_yet(
            Repository::open_or_init(mem.clone(), &keys)
                .await
                .unwrap_err(),
        );
        assert_eq!(mem.keys(), [CONFIG_KEY]);
        let config = collect_bytes(mem.get(CONFIG_KEY).await.unwrap())
            .await
            .unwrap();
        assert_eq!(config, V2.as_bytes());

        let empty = Arc::new(MemoryStorage::default());
        let repo = Repository::open_or_init(empty, &keys).await.unwrap();
        assert_eq!(
            repo.config().format,
            Format::V1 {
                metadata_recipient: keys.metadata_recipient()
            }
        );
    }
}
