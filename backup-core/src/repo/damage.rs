//! Writing damage records (`damaged/<name>`, docs/format.md): when a read
//! of a pack finds chunks that do not decode or do not match their ids
//! (verify, a drill, a restore), the repository remembers it, so that the
//! next backup stores those chunks again instead of deduplicating against
//! the damaged copies, and the index prefers any other copy.
//!
//! Readers of the records are in [`super::load`]. A record is written once
//! under a fresh name (create-if-absent) and never changed; prune deletes
//! records whose packs are gone. Recording is best effort for the finders:
//! a host with read-only credentials still reports the damage, with a
//! warning that it could not be recorded.
//!
//! Interrupted or failed (fail-point `damage.record`): no record, so the
//! damage is found and recorded again by the next read of those chunks; a
//! record that landed damaged does not decode and is skipped like any junk.
//! Two finders at once write two records naming the same chunks, which
//! reads the same as one.

use std::str::FromStr;

use age::x25519;
use bytes::Bytes;

use super::format::{write_damage, Damage, DamagedPack};
use super::{Repository, DAMAGED, METADATA_LEVEL};
use crate::codec;
use crate::error::{Error, Result};
use crate::keys::Identities;
use crate::storage::PutMode;

impl Repository {
    /// Writes a damage record naming `found`; returns its key.
    ///
    /// The finder holds identities, maybe no recipients (a restore host), so
    /// the record is encrypted to the repository's metadata recipient (every
    /// backup host reads it) and to the identities' own recipients.
    pub async fn record_damage(&self, ids: &Identities, found: &[DamagedPack]) -> Result<String> {
        let recipients = match self.keyset() {
            // Format 2: to the current metadata recipient M, which every
            // holder of the key set reads. Unsigned, like pins: a forged
            // record only makes backups store those chunks again.
            Some(keys) => vec![keys.metadata_recipient()],
            None => self.v1_damage_recipients(ids)?,
        };
        let refs: Vec<&dyn age::Recipient> = recipients
            .iter()
            .map(|r| r as &dyn age::Recipient)
            .collect();
        let body = codec::encode(&write_damage(found), &refs, METADATA_LEVEL)
            .map_err(|e| Error::io("encoding a damage record", e))?;
        let key = format!("{DAMAGED}{}", hex::encode(rand::random::<[u8; 16]>()));
        crate::failpoint::hit("damage.record")
            .map_err(|e| Error::io("writing a damage record", e))?;
        self.put_bytes(&key, Bytes::from(body), PutMode::Create)
            .await?;
        Ok(key)
    }

    /// Format 1's damage record recipients: the metadata recipient (every
    /// backup host reads it) and the finder's own.
    fn v1_damage_recipients(&self, ids: &Identities) -> Result<Vec<x25519::Recipient>> {
        let metadata = x25519::Recipient::from_str(self.metadata_recipient()?).map_err(|e| {
            Error::NotARepository {
                target: self.describe(),
                message: format!("config: metadata_recipient: {e}"),
            }
        })?;
        let mut recipients: Vec<x25519::Recipient> = ids.recipients().to_vec();
        recipients.push(metadata);
        recipients.sort_by_key(|r| r.to_string());
        recipients.dedup_by_key(|r| r.to_string());
        Ok(recipients)
    }

    /// Records the part of `found` that `known` does not name yet, warning
    /// about what was found; a failure to record is a warning, not an error.
    /// Returns the new record's key, if one was written.
    pub async fn note_damage(
        &self,
        ids: &Identities,
        known: &Damage,
        found: &[DamagedPack],
    ) -> Option<String> {
        let new = known.unknown(found);
        if new.is_empty() {
            return None;
        }
        let chunks: usize = new.iter().map(|(_, ids)| ids.len()).sum();
        let packs: Vec<&str> = new.iter().map(|(p, _)| p.as_str()).collect();
        match self.record_damage(ids, &new).await {
            Ok(key) => {
                tracing::warn!(
                    "{}: {chunks} damaged chunks in {} (recorded as {key}; the next backup stores them again)",
                    self.describe(),
                    packs.join(", ")
                );
                Some(key)
            }
            Err(e) => {
                tracing::warn!(
                    "{}: {chunks} damaged chunks in {}, but the damage could not be recorded ({e}); \
                     until it is (run `offsite verify --read-data` with write access), backups \
                     keep deduplicating against the damaged copies",
                    self.describe(),
                    packs.join(", ")
                );
                None
            }
        }
    }
}
