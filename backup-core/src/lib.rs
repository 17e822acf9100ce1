//! offsite's engine.
//!
//! Reads top-down: [`source`] (what is snapshotted) -> [`chunk`] (splitting and
//! chunk ids) -> [`codec`] (zstd, then age) -> [`repo`] (format, manifests,
//! packs, index) -> [`storage`] (the trait every target implements). The
//! operations ([`backup`], [`restore`] with [`fetch`], [`prune`] with
//! [`retention`], [`pins`] and [`lock`], [`verify`], [`drill`], [`status`]) are
//! thin functions over those and return typed results; [`run`] (a backup of
//! every source to every target), [`restore_run`] (a whole `offsite restore`,
//! hooks included) and [`each`] (the other operations on every target)
//! decide the order and what a failure means. Printing and progress display
//! belong to the caller. Format 2 (the default for new repositories,
//! docs/format.md) adds [`sign`], [`keys::v2`], [`keys::bundle`],
//! [`keyring`], [`keyadmin`] (key changes), [`repo::init`] (`offsite
//! init`, and a backup's creation of a repository), [`rewrite`] (`offsite
//! key rewrite`) and [`migrate`] (a format 1 repository moved to format 2).

pub mod across;
pub mod backup;
pub mod chunk;
pub mod codec;
pub mod drill;
pub mod each;
pub mod error;
pub mod failpoint;
pub mod fetch;
pub mod keyadmin;
pub mod keyring;
pub mod keys;
pub mod keyset;
pub mod lock;
pub mod migrate;
pub mod pins;
pub mod process;
pub mod prune;
pub mod repair;
pub mod replicate;
pub mod repo;
pub mod restore;
pub mod restore_run;
pub mod retention;
pub mod rewrite;
pub mod run;
pub mod sign;
pub mod source;
pub mod status;
pub mod storage;
pub mod verify;

pub use error::{Error, Result};
