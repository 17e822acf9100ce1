//! What a storage backend crate provides so that the binary can offer it as a
//! kind of `[[targets]]`: the kind's name, its settings type and the one
//! constructor every backend has, `open(&Config) -> Result<Self, StorageError>`.
//!
//! The binary keeps one list of the backends it is built with
//! (`cli/src/targets.rs`), one line each; everything else about a kind
//! (parsing and checking its settings, which of them are file paths, which
//! are deprecated, building the storage) comes from this trait. A network
//! backend must not contact its service in [`Backend::open`]: a wrong bucket
//! or credentials show up on first use, with a message saying what to check.
//! (The binary checks a configuration by parsing the settings alone, so
//! `open` may do local work such as creating a directory.)

use serde::de::DeserializeOwned;

use super::{Storage, StorageError};

/// A kind of target.
pub trait Backend: Storage + Sized + 'static {
    /// The `kind = "..."` of its `[[targets]]` tables.
    const KIND: &'static str;
    /// Settings that hold file paths; the binary makes relative ones
    /// relative to the config file.
    const PATH_SETTINGS: &'static [&'static str] = &[];
    /// The settings of one `[[targets]]` table (besides `name` and `kind`).
    /// Unknown settings must be refused (`deny_unknown_fields`).
    type Config: DeserializeOwned;

    /// Checks the settings and builds the storage, without contacting it.
    fn open(config: &Self::Config) -> Result<Self, StorageError>;

    /// Deprecated settings that `config` uses, each with what to write
    /// instead. They keep working; the binary shows these as warnings.
    fn deprecations(config: &Self::Config) -> Vec<String> {
        let _ = config;
        Vec::new()
    }
}
