//! Database check records of format 2 (docs/design/format-v2.md, 5.2):
//! `checks/<snapshot id>/<16 hex>`, a signed metadata object saying that
//! SQLite's `PRAGMA integrity_check` returned ok on the snapshot whose
//! full list hashes to `list_blake3`. A restore that finds one skips its
//! own check: every restored chunk matched its keyed id and the ids matched
//! `list_blake3`, so the restored file is, chunk for chunk, the content
//! that was checked.
//!
//! Who may write one: a signer the keyring trusts at the record's `checked`
//! time (the owner, or a writer before its removal). A writer can already
//! sign whole snapshots, so a record gives it nothing new; everyone else
//! (bucket write, recipients) cannot sign one.
//!
//! Never: accept a record that is not signed by a trusted signer under its
//! own key (so it cannot be moved to another snapshot), whose `snapshot` is
//! not its key's, whose `list_blake3` is not the manifest's, or whose result
//! is not ok; or fail a restore because a record could not be read or
//! written (a bad record is skipped with a warning and the check runs; a
//! record that cannot be stored, on a full target say, costs the next
//! restore its check, nothing else). Records are written create-if-absent
//! under a fresh name, so two hosts checking at once both land and nothing
//! is overwritten; a half-written object is one a reader skips. They are
//! written without a lock: one that lands after a prune removed its
//! snapshot vouches for nothing (no manifest names its list) and the next
//! prune deletes it with the other records of snapshots it does not keep.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::format::manifest2::ManifestV2;
use super::format::sealed;
use super::{Repository, CHECKS};
use crate::error::{Error, Result};
use crate::keyset::{KeySet, Trust};
use crate::storage::PutMode;

/// The most a check record may decode to: a few hundred bytes honestly.
const MAX_BYTES: usize = 64 * 1024;

/// Where a check ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckedAt {
    Backup,
    Restore,
}

impl CheckedAt {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckedAt::Backup => "backup",
            CheckedAt::Restore => "restore",
        }
    }
}

/// The record's body, one line of JSON (docs/format.md, "Check records").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    format: String,
    version: u32,
    snapshot: String,
    list_blake3: String,
    check: String,
    result: String,
    #[serde(rename = "where")]
    at: CheckedAt,
    host: String,
    checked: String,
    sqlite: String,
    tool: String,
}

/// A verified record of an ok `integrity_check` of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedCheck {
    pub at: CheckedAt,
    /// The host that ran it, as it says.
    pub host: String,
    /// The keyring's name for the signer (`owner` or a writer's name).
    pub signer: String,
    pub checked: DateTime<Utc>,
}

impl Repository {
    /// A trusted record of an ok `integrity_check` of `manifest`'s
    /// snapshot, if this repository holds one. Records that do not verify
    /// are skipped with a warning; only listing or download failures are
    /// errors.
    pub async fn recorded_check(
        &self,
        keys: &KeySet,
        manifest: &ManifestV2,
    ) -> Result<Option<RecordedCheck>> {
        let prefix = format!("{CHECKS}{}/", manifest.id);
        for meta in self.list(&prefix).await? {
            let Some(raw) = self.get_listed_or_gone(&meta).await? else {
                continue;
            };
            match judge(&meta.key, &raw, keys, manifest) {
                Ok(found) => return Ok(Some(found)),
                Err(why) => tracing::warn!("skipping check record {}: {why}", meta.key),
            }
        }
        Ok(None)
    }

    /// Records that `integrity_check` returned ok on `manifest`'s snapshot,
    /// signed by this host's signer. Returns the object's key.
    pub async fn record_check(
        &self,
        keys: &KeySet,
        manifest: &ManifestV2,
        at: CheckedAt,
    ) -> Result<String> {
        let signer = keys.require_signer("record a database check")?;
        let key = format!(
            "{CHECKS}{}/{}",
            manifest.id,
            hex::encode(rand::random::<[u8; 8]>())
        );
        let body = Body {
            format: "offsite-check".into(),
            version: 2,
            snapshot: manifest.id.clone(),
            list_blake3: manifest.list_blake3.to_string(),
            check: "integrity_check".into(),
            result: "ok".into(),
            at,
            host: crate::backup::hostname(),
            checked: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            sqlite: rusqlite::version().to_string(),
            tool: format!("offsite {}", env!("CARGO_PKG_VERSION")),
        };
        let mut text = serde_json::to_vec(&body).expect("a check record serializes");
        text.push(b'\n');
        let encoded = sealed::encode(&key, text, signer, &keys.metadata_recipient())
            .map_err(|e| Error::Key(format!("cannot seal {key}: {e}")))?;
        self.put_bytes(&key, Bytes::from(encoded), PutMode::Create)
            .await?;
        Ok(key)
    }
}

/// The record stored as `raw` under `key`, if it is a trusted ok check of
/// `manifest`'s snapshot; else why not.
fn judge(
    key: &str,
    raw: &[u8],
    keys: &KeySet,
    manifest: &ManifestV2,
) -> std::result::Result<RecordedCheck, String> {
    let ids = keys.metadata_key();
    let (text, signer) = sealed::decode(key, raw, ids.iter(), &keys.verifier(), MAX_BYTES)
        .map_err(|e| e.to_string())?;
    let body: Body = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.strip_suffix('\n'))
        .and_then(|t| serde_json::from_str(t).ok())
        .ok_or("not a check record")?;
    let checked = DateTime::parse_from_rfc3339(&body.checked)
        .map_err(|_| "its time is not RFC 3339")?
        .with_timezone(&Utc);
    if (body.format.as_str(), body.version) != ("offsite-check", 2)
        || body.check != "integrity_check"
    {
        return Err("not a version 2 integrity_check record".into());
    }
    if body.result != "ok" {
        return Err(format!("its result is {:?}", body.result));
    }
    if body.snapshot != manifest.id || body.list_blake3 != manifest.list_blake3.to_string() {
        return Err("it is about another snapshot or list".into());
    }
    match keys.trust(&signer, checked) {
        Trust::Signed { writer } => Ok(RecordedCheck {
            at: body.at,
            host: body.host,
            signer: writer,
            checked,
        }),
        Trust::Rejected { reason } => Err(reason),
        Trust::Unsigned => Err("it is not signed".into()),
    }
}
