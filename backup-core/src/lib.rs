//! offsite's engine.
//!
//! Reads top-down: [`source`] (what is snapshotted) -> [`chunk`] (splitting and
//! chunk ids) -> [`codec`] (zstd, then age) -> [`repo`] (format, manifests,
//! packs, index) -> [`storage`] (the trait every target implements). The
//! operations ([`backup`], [`restore`]) are thin functions over those and
//! return typed results; printing and progress display belong to the caller.

pub mod backup;
pub mod chunk;
pub mod codec;
pub mod error;
pub mod keys;
pub mod repair;
pub mod repo;
pub mod restore;
pub mod source;
pub mod storage;

pub use error::{Error, Result};
