//! The operations on one repository, as its methods: each is a thin entry
//! that hands the work to the one module that does it ([`crate::backup`],
//! [`crate::restore`], [`crate::prune`], [`crate::verify`], [`crate::drill`],
//! [`crate::pins`], [`crate::status`], [`crate::lock`]), so that a caller
//! starts from the repository it opened and the key it holds says what it
//! may do: [`Keys`] to write (back up, prune, pin), a [`MetadataKey`] to
//! list and check structure, [`Identities`] to restore and read data (in
//! format 2, a [`KeySet`] whose data identities restore).
//!
//! Nothing here decides anything: it must never hold logic of its own.

use std::collections::HashSet;
use std::path::Path;

use chrono::{DateTime, Utc};

use super::{Manifest, Repository, SnapshotV2};
use crate::backup::{BackupOptions, BackupSummary};
use crate::drill::{DrillOptions, DrillReport};
use crate::error::Result;
use crate::keys::{Identities, Keys, MetadataKey};
use crate::keyset::KeySet;
use crate::lock::{LockInfo, LockWait};
use crate::prune::{PruneOptions, PruneReport};
use crate::restore::{RestoreOptions, RestoreSummary, Staged};
use crate::source::SourceSpec;
use crate::verify::{VerifyOptions, VerifyReport};

impl Repository {
    /// Backs up one source here (see [`crate::backup::backup_many`] for
    /// several targets in one run).
    pub async fn backup(
        &self,
        keys: &Keys,
        spec: &SourceSpec,
        opts: &BackupOptions,
    ) -> Result<BackupSummary> {
        crate::backup::backup(self, keys, spec, opts).await
    }

    /// Restores `manifest`'s snapshot to `to` ([`crate::restore::restore`]).
    pub async fn restore(
        &self,
        ids: &Identities,
        manifest: &Manifest,
        to: &Path,
        opts: &RestoreOptions,
    ) -> Result<RestoreSummary> {
        crate::restore::restore(self, ids, manifest, to, opts).await
    }

    /// Downloads, stages and verifies a snapshot beside `to`, touching
    /// nothing at `to` ([`crate::restore::stage`]).
    pub async fn stage(
        &self,
        ids: &Identities,
        manifest: &Manifest,
        to: &Path,
        opts: &RestoreOptions,
    ) -> Result<Staged> {
        crate::restore::stage(self, ids, manifest, to, opts).await
    }

    /// Restores a format 2 snapshot to `to`: only a [`crate::keyset::Trust::Signed`]
    /// one, with the data identities of `keys` ([`crate::restore::restore_v2`]).
    pub async fn restore_v2(
        &self,
        keys: &KeySet,
        snapshot: &SnapshotV2,
        to: &Path,
        opts: &RestoreOptions,
    ) -> Result<RestoreSummary> {
        crate::restore::restore_v2(self, keys, snapshot, to, opts).await
    }

    /// [`Repository::stage`] for a format 2 snapshot ([`crate::restore::stage_v2`]).
    pub async fn stage_v2(
        &self,
        keys: &KeySet,
        snapshot: &SnapshotV2,
        to: &Path,
        opts: &RestoreOptions,
    ) -> Result<Staged> {
        crate::restore::stage_v2(self, keys, snapshot, to, opts).await
    }

    /// Applies retention, then removes unused data ([`crate::prune`]).
    pub async fn prune(&self, keys: &Keys, opts: &PruneOptions) -> Result<PruneReport> {
        crate::prune::prune(self, keys, opts).await
    }

    /// Prunes a format 2 repository with the key set it was opened with
    /// ([`crate::prune`]'s format 2 part).
    pub async fn prune_v2(&self, opts: &PruneOptions) -> Result<PruneReport> {
        crate::prune::prune_v2(self, opts).await
    }

    /// Checks that every snapshot is restorable ([`crate::verify`]).
    pub async fn verify(&self, key: &MetadataKey, opts: &VerifyOptions) -> Result<VerifyReport> {
        crate::verify::verify(self, key, opts).await
    }

    /// Restores `source`'s newest snapshot into `scratch` and checks it
    /// ([`crate::drill`]).
    pub async fn drill(
        &self,
        ids: &Identities,
        source: &str,
        opts: &DrillOptions,
        scratch: &Path,
        now: DateTime<Utc>,
    ) -> Result<DrillReport> {
        crate::drill::drill(self, ids, source, opts, scratch, now).await
    }

    /// Keeps snapshot `id` through every prune; `false` if it already was.
    pub async fn pin(&self, keys: &Keys, id: &str, wait: LockWait) -> Result<bool> {
        crate::pins::pin(self, keys, id, wait).await
    }

    /// [`Repository::pin`] for a format 2 repository opened with its key
    /// set: a signed snapshot only ([`crate::pins::pin_v2`]).
    pub async fn pin_v2(&self, id: &str, wait: LockWait) -> Result<bool> {
        crate::pins::pin_v2(self, id, wait).await
    }

    /// Lets retention decide about snapshot `id` again; `false` if it was
    /// not pinned.
    pub async fn unpin(&self, id: &str) -> Result<bool> {
        crate::pins::unpin(self, id).await
    }

    /// The ids of the pinned snapshots.
    pub async fn pinned(&self) -> Result<HashSet<String>> {
        crate::pins::pinned(self).await
    }

    /// Bytes stored in packs, index files, lists and manifests.
    pub async fn stored_bytes(&self) -> Result<u64> {
        crate::status::stored_bytes(self).await
    }

    /// The locks on the repository, with what each says (`None`: unreadable).
    pub async fn locks(&self) -> Result<Vec<(String, Option<LockInfo>)>> {
        crate::lock::list(self).await
    }

    /// Removes stale locks, or every lock with `all`; what it removed.
    pub async fn remove_locks(&self, all: bool) -> Result<Vec<(String, Option<LockInfo>)>> {
        crate::lock::remove(self, all).await
    }
}
