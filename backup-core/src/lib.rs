//! offsite's engine.
//!
//! Reads top-down: [`source`] (what is snapshotted) -> [`chunk`] (splitting and
//! chunk ids) -> [`codec`] (zstd, then age) -> [`repo`] (format, manifests,
//! packs, index) -> [`storage`] (the trait every target implements). The
//! operations ([`backup`], [`restore`], ...) are thin functions over those and
//! return typed results; printing and progress display belong to the caller.

pub mod storage;
