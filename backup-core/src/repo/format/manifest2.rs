//! The format 2 manifest, `snapshots/<id>` (docs/design/format-v2.md, 3.2):
//! one line of compact JSON, then the signature line, encoded through
//! [`super::sealed`] (zstd, age to M).
//!
//! ```json
//! {"format":"offsite-snapshot","version":2,"id":"20261201T101500Z-9a74532e",
//!  "source":"app","kind":"sqlite","host":"app-server-1","writer":"app-server-1",
//!  "started":"2026-12-01T10:15:00.101Z","finished":"2026-12-01T10:15:03.512Z",
//!  "size":22020096,"files":1,"chunks":5376,"new_bytes":860160,"uploaded_bytes":333824,
//!  "list_blake3":"<64 hex>","parent":"20261130T101500Z-1b2c3d4e",
//!  "generation":3,"keyring":7,"page_size":4096,"tags":[],"tool":"offsite 0.2.0"}
//! ```
//!
//! The signature binds every field (it is over the body) and the object key
//! `snapshots/<id>`, and the body's `id` must be the key's, so a signed
//! manifest means one snapshot under one name only.
//!
//! Choices made here where the design leaves room (each is part of the
//! format from now on):
//! - The body is exactly [`ManifestV2::to_body`]'s bytes: compact JSON,
//!   the fields above in that order, every one present (`parent` null for
//!   a snapshot written as a full list, `page_size` null unless `kind` is
//!   `sqlite`), then `\n`. Anything else (another order, spacing, an
//!   unknown or missing field, `+00:00` for `Z`) is refused.
//! - `id` and `parent` are snapshot ids (`<%Y%m%dT%H%M%SZ>-<8 lowercase
//!   hex>`), `parent` not the snapshot itself; `generation` is 1 to 9999
//!   (4 digits in `keys/`), `keyring` 1 to 99999999 (8 digits in
//!   `keyring/`); a SQLite `page_size` is a power of two from 512 to 65536.
//! - A decoded manifest is at most [`MAX_BYTES`] of plaintext.
//! - `finished` before `started` is not refused: both are the writer's wall
//!   clock, which an NTP step may set back during a backup, and a genuine
//!   snapshot must stay readable; nothing is derived from their order.
//!
//! Never: return a manifest whose signature was not verified under the key
//! it was read from, or one stored under another snapshot's id. Who may
//! sign (the keyring's writers and owner, `valid_until`) is the caller's
//! [`crate::sign::Verifier`] and trust check, not this module's.
//!
//! Nothing in this build reads or writes these objects yet: format 1's
//! [`crate::repo::Manifest`] is untouched.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::list2::ListHash;
use super::sealed::{self, SealedError};
use crate::keys::SignerPublic;
use crate::sign::{Signer, Verifier};
use crate::source::SourceKind;

/// The most plaintext a manifest may decode to.
pub const MAX_BYTES: usize = 1 << 20;

/// A format 2 snapshot manifest (3.2).
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestV2 {
    pub id: String,
    pub source: String,
    pub kind: SourceKind,
    pub host: String,
    /// The keyring's name for the signer, for people; the signature line's
    /// key is what is checked.
    pub writer: String,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub size: u64,
    pub files: u64,
    pub chunks: u64,
    pub new_bytes: u64,
    pub uploaded_bytes: u64,
    /// BLAKE3 of the snapshot's canonical full list.
    pub list_blake3: ListHash,
    /// The snapshot whose list this one's delta starts from; `None` for a
    /// snapshot written as a full list.
    pub parent: Option<String>,
    /// The key generation its data was written with.
    pub generation: u32,
    /// The keyring serial the writer held.
    pub keyring: u32,
    pub page_size: Option<u32>,
    pub tags: Vec<String>,
    pub tool: String,
}

/// Why a manifest was refused. Each names the object.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{key}: not a format 2 manifest: {what}")]
    Malformed { key: String, what: String },
    #[error("{key} holds the manifest of snapshot {id}: a manifest is stored under its own id")]
    WrongKey { key: String, id: String },
    #[error(transparent)]
    Sealed(#[from] SealedError),
}

type Result<T, E = ManifestError> = std::result::Result<T, E>;

/// The JSON object, fields in the format's order. Every field is required:
/// `Option`s are read with `Option::deserialize`, which (unlike serde's
/// default for `Option`) refuses a missing field.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Json {
    format: String,
    version: u32,
    id: String,
    source: String,
    kind: SourceKind,
    host: String,
    writer: String,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    size: u64,
    files: u64,
    chunks: u64,
    new_bytes: u64,
    uploaded_bytes: u64,
    list_blake3: String,
    #[serde(deserialize_with = "Option::deserialize")]
    parent: Option<String>,
    generation: u32,
    keyring: u32,
    #[serde(deserialize_with = "Option::deserialize")]
    page_size: Option<u32>,
    tags: Vec<String>,
    tool: String,
}

const FORMAT: &str = "offsite-snapshot";
const VERSION: u32 = 2;

/// Whether `id` is a snapshot id: `<%Y%m%dT%H%M%SZ>-<8 lowercase hex>`.
pub fn is_snapshot_id(id: &str) -> bool {
    let Some((time, suffix)) = id.split_once('-') else {
        return false;
    };
    let lower_hex =
        suffix.len() == 8 && (suffix.bytes()).all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let parsed = chrono::NaiveDateTime::parse_from_str(time, "%Y%m%dT%H%M%SZ");
    lower_hex && parsed.is_ok_and(|t| t.format("%Y%m%dT%H%M%SZ").to_string() == time)
}

impl ManifestV2 {
    /// The object key the manifest is stored, and signed, under.
    pub fn key(&self) -> String {
        format!("{}{}", crate::repo::SNAPSHOTS, self.id)
    }

    /// The body: compact JSON and `\n`, the bytes that are signed.
    pub fn to_body(&self) -> Vec<u8> {
        let json = Json {
            format: FORMAT.into(),
            version: VERSION,
            id: self.id.clone(),
            source: self.source.clone(),
            kind: self.kind,
            host: self.host.clone(),
            writer: self.writer.clone(),
            started: self.started,
            finished: self.finished,
            size: self.size,
            files: self.files,
            chunks: self.chunks,
            new_bytes: self.new_bytes,
            uploaded_bytes: self.uploaded_bytes,
            list_blake3: self.list_blake3.to_string(),
            parent: self.parent.clone(),
            generation: self.generation,
            keyring: self.keyring,
            page_size: self.page_size,
            tags: self.tags.clone(),
            tool: self.tool.clone(),
        };
        let mut body = serde_json::to_vec(&json).expect("a manifest serializes");
        body.push(b'\n');
        body
    }

    /// Parses the body of the object `key`, refusing anything
    /// [`Self::to_body`] would not have written, and a manifest of a
    /// snapshot other than the key's.
    pub fn parse(key: &str, body: &[u8]) -> Result<ManifestV2> {
        let bad = |what: String| ManifestError::Malformed {
            key: key.to_string(),
            what,
        };
        // The kind and version first, so that another version's manifest
        // is named as such, not by the first field it does not share.
        #[derive(Deserialize)]
        struct Probe {
            format: Option<String>,
            version: Option<u32>,
        }
        let probe: Probe = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        if probe.format.as_deref() != Some(FORMAT) || probe.version != Some(VERSION) {
            return Err(bad(format!(
                "it says {:?} version {:?}, not {FORMAT:?} version {VERSION}",
                probe.format.unwrap_or_default(),
                probe.version.unwrap_or_default()
            )));
        }
        let json: Json = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        let list_blake3 = ListHash::parse(&json.list_blake3)
            .ok_or_else(|| bad("list_blake3 is not 64 lowercase hex digits".into()))?;
        let m = ManifestV2 {
            id: json.id,
            source: json.source,
            kind: json.kind,
            host: json.host,
            writer: json.writer,
            started: json.started,
            finished: json.finished,
            size: json.size,
            files: json.files,
            chunks: json.chunks,
            new_bytes: json.new_bytes,
            uploaded_bytes: json.uploaded_bytes,
            list_blake3,
            parent: json.parent,
            generation: json.generation,
            keyring: json.keyring,
            page_size: json.page_size,
            tags: json.tags,
            tool: json.tool,
        };
        m.check().map_err(|what| bad(what.into()))?;
        if m.to_body() != body {
            return Err(bad(
                "it is not exactly as offsite writes it (one line of compact JSON, \
                 the fields in order, then a newline)"
                    .into(),
            ));
        }
        if m.key() != key {
            return Err(ManifestError::WrongKey {
                key: key.to_string(),
                id: m.id,
            });
        }
        Ok(m)
    }

    /// The field rules serde does not check.
    fn check(&self) -> std::result::Result<(), &'static str> {
        if !is_snapshot_id(&self.id) {
            return Err("id is not a snapshot id (<%Y%m%dT%H%M%SZ>-<8 hex>)");
        }
        match &self.parent {
            Some(p) if !is_snapshot_id(p) => return Err("parent is not a snapshot id"),
            Some(p) if *p == self.id => return Err("parent is the snapshot itself"),
            _ => {}
        }
        if !(1..=9999).contains(&self.generation) {
            return Err("generation is not 1 to 9999");
        }
        if !(1..=99_999_999).contains(&self.keyring) {
            return Err("keyring is not a serial from 1 to 99999999");
        }
        let page_ok = match (self.kind, self.page_size) {
            (SourceKind::Sqlite, Some(p)) => p.is_power_of_two() && (512..=65536).contains(&p),
            (SourceKind::Sqlite, None) => false,
            (_, p) => p.is_none(),
        };
        if !page_ok {
            return Err("page_size is not a SQLite page size (or is set for another kind)");
        }
        Ok(())
    }

    /// The encoded object: the body sealed by `signer` under [`Self::key`],
    /// to `metadata` (the current M). Refused when the manifest breaks a
    /// rule [`Self::parse`] checks, so nothing unreadable is signed.
    pub fn encode(&self, signer: &Signer, metadata: &dyn age::Recipient) -> Result<Vec<u8>> {
        self.check().map_err(|what| ManifestError::Malformed {
            key: self.key(),
            what: what.into(),
        })?;
        Ok(sealed::encode(
            &self.key(),
            self.to_body(),
            signer,
            metadata,
        )?)
    }

    /// The manifest stored as `encoded` under `key`, decoded with the M
    /// identities given and verified, and its signer.
    pub fn decode<'a>(
        key: &str,
        encoded: &'a [u8],
        identities: impl Iterator<Item = &'a dyn age::Identity>,
        verifier: &Verifier,
    ) -> Result<(ManifestV2, SignerPublic)> {
        let (body, signer) = sealed::decode(key, encoded, identities, verifier, MAX_BYTES)?;
        Ok((ManifestV2::parse(key, &body)?, signer))
    }
}

#[cfg(test)]
mod tests {
    use super::super::sealed::test_keys::keys;
    use super::*;
    use crate::sign::SignatureError;

    const ID: &str = "20261201T101500Z-9a74532e";
    const KEY: &str = "snapshots/20261201T101500Z-9a74532e";

    fn example() -> ManifestV2 {
        let time = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        ManifestV2 {
            id: ID.into(),
            source: "app".into(),
            kind: SourceKind::Sqlite,
            host: "app-server-1".into(),
            writer: "app-server-1".into(),
            started: time("2026-12-01T10:15:00.101Z"),
            finished: time("2026-12-01T10:15:03.512Z"),
            size: 22020096,
            files: 1,
            chunks: 5376,
            new_bytes: 860160,
            uploaded_bytes: 333824,
            list_blake3: ListHash([0xab; 32]),
            parent: Some("20261130T101500Z-1b2c3d4e".into()),
            generation: 3,
            keyring: 7,
            page_size: Some(4096),
            tags: vec![],
            tool: "offsite 0.2.0".into(),
        }
    }

    /// The body of the design's example, byte for byte.
    fn example_body() -> String {
        format!(
            "{{\"format\":\"offsite-snapshot\",\"version\":2,\"id\":\"{ID}\",\"source\":\"app\",\
             \"kind\":\"sqlite\",\"host\":\"app-server-1\",\"writer\":\"app-server-1\",\
             \"started\":\"2026-12-01T10:15:00.101Z\",\"finished\":\"2026-12-01T10:15:03.512Z\",\
             \"size\":22020096,\"files\":1,\"chunks\":5376,\"new_bytes\":860160,\
             \"uploaded_bytes\":333824,\"list_blake3\":\"{}\",\
             \"parent\":\"20261130T101500Z-1b2c3d4e\",\"generation\":3,\"keyring\":7,\
             \"page_size\":4096,\"tags\":[],\"tool\":\"offsite 0.2.0\"}}\n",
            "ab".repeat(32)
        )
    }

    /// The fields of 3.2 in order, every one present; a full-list snapshot
    /// says `"parent":null`; signed under `snapshots/<id>` it decodes back
    /// with M and the writer's key.
    #[test]
    fn a_manifest_roundtrips_signed_under_its_own_id() {
        let k = keys();
        let m = example();
        assert_eq!(String::from_utf8(m.to_body()).unwrap(), example_body());
        assert_eq!(m.key(), KEY);
        assert_eq!(ManifestV2::parse(KEY, &m.to_body()).unwrap(), m);
        let encoded = m.encode(&k.writer, &k.meta.to_public()).unwrap();
        let (back, signer) = ManifestV2::decode(KEY, &encoded, k.m(), &k.verifier).unwrap();
        assert_eq!((&back, &signer), (&m, k.writer.public()));

        let full = ManifestV2 {
            parent: None,
            kind: SourceKind::Files,
            page_size: None,
            tags: vec!["migrated".into()],
            ..example()
        };
        let body = String::from_utf8(full.to_body()).unwrap();
        assert!(body.contains(r#""parent":null,"#), "{body}");
        assert!(
            body.contains(r#""page_size":null,"tags":["migrated"]"#),
            "{body}"
        );
        let encoded = full.encode(&k.writer, &k.meta.to_public()).unwrap();
        let (back, _) = ManifestV2::decode(KEY, &encoded, k.m(), &k.verifier).unwrap();
        assert_eq!(back, full);
    }

    fn refused(body: &str, what: &str) {
        let e = ManifestV2::parse(KEY, body.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, ManifestError::Malformed { key, what: w } if key == KEY && w.contains(what)),
            "{what}: {e:?}"
        );
    }

    /// Every way of writing a manifest other than offsite's, a missing or
    /// unknown field, a wrong value and a manifest under another id.
    #[test]
    fn a_manifest_not_exactly_as_written_is_refused() {
        let body = example_body();
        refused(
            &body.replace(r#""parent":"20261130T101500Z-1b2c3d4e","#, ""),
            "missing field `parent`",
        );
        refused(
            &body.replace(r#""page_size":4096,"#, ""),
            "missing field `page_size`",
        );
        refused(&body.replace(r#""tags":[],"#, ""), "missing field `tags`");
        refused(
            &body.replace(r#""tags":[]"#, r#""tags":[],"sha256":"00""#),
            "unknown field `sha256`",
        );
        refused(
            &body.replace(r#""tags":[]"#, r#""tags":[],"tags":[]"#),
            "duplicate field `tags`",
        );
        refused(
            &body.replace(r#""version":2"#, r#""version":1"#),
            "not \"offsite-snapshot\" version 2",
        );
        refused(
            &body.replace("offsite-snapshot", "offsite-snapshots"),
            "not \"offsite-snapshot\" version 2",
        );
        refused(
            &body
                .replace(r#""version":2"#, r#""version":3"#)
                .replace(r#""list_blake3""#, r#""list":"lists/x","list_blake3""#),
            "it says \"offsite-snapshot\" version 3, not",
        );
        refused(
            &body.replace(&"ab".repeat(32), &"AB".repeat(32)),
            "list_blake3 is not 64 lowercase hex",
        );
        refused(&body.replace(&"ab".repeat(32), "ab"), "list_blake3 is not");
        refused(
            &body.replace(r#",""#, r#", ""#),
            "not exactly as offsite writes it",
        );
        refused(
            &body.replace(".512Z", ".512+00:00"),
            "not exactly as offsite",
        );
        refused(body.trim_end(), "not exactly as offsite writes it");
        refused(
            &body.replace(
                r#""source":"app","kind":"sqlite","#,
                r#""kind":"sqlite","source":"app","#,
            ),
            "not exactly as offsite writes it",
        );
        refused(
            &body.replace("1b2c3d4e", "1B2C3D4E"),
            "parent is not a snapshot id",
        );
        refused(
            &body.replace("20261130T101500Z-1b2c3d4e", ID),
            "parent is the snapshot itself",
        );
        refused(
            &body.replace(r#""generation":3"#, r#""generation":0"#),
            "generation",
        );
        refused(
            &body.replace(r#""generation":3"#, r#""generation":10000"#),
            "generation",
        );
        refused(&body.replace(r#""keyring":7"#, r#""keyring":0"#), "keyring");
        refused(
            &body.replace(r#""keyring":7"#, r#""keyring":100000000"#),
            "keyring",
        );
        refused(
            &body.replace(r#""page_size":4096"#, r#""page_size":4000"#),
            "page_size",
        );
        refused(
            &body.replace(r#""page_size":4096"#, r#""page_size":null"#),
            "page_size",
        );
        refused(
            &body.replace(r#""kind":"sqlite""#, r#""kind":"files""#),
            "page_size",
        );
        refused(
            &body.replace(r#""kind":"sqlite""#, r#""kind":"mysql""#),
            "unknown variant",
        );
        refused(
            &body.replace(r#""size":22020096"#, r#""size":-1"#),
            "invalid value",
        );

        // Stored under another snapshot's id, the body's id is not the key's.
        let other = "snapshots/20261201T101500Z-00000000";
        let e = ManifestV2::parse(other, body.as_bytes()).unwrap_err();
        assert!(
            matches!(&e, ManifestError::WrongKey { key, id } if key == other && id == ID),
            "{e:?}"
        );
        for bad in [
            "20261201T101500Z-9a74532",
            "20261301T101500Z-9a74532e",
            "20261201T101500-9a74532e",
            "20261201T101500Z_9a74532e",
            "x/20261201T101500Z-9a74532e",
        ] {
            assert!(!is_snapshot_id(bad), "{bad}");
        }
        assert!(is_snapshot_id(ID));
        // Nothing that would be refused is signed.
        let k = keys();
        let bad = ManifestV2 {
            generation: 0,
            ..example()
        };
        let e = bad.encode(&k.writer, &k.meta.to_public()).unwrap_err();
        assert!(matches!(e, ManifestError::Malformed { .. }), "{e:?}");
    }

    /// Signed by a key the verifier does not trust, moved to another id, or
    /// signed under another id than the one it names: each is refused.
    #[test]
    fn a_manifest_signed_by_an_unknown_key_or_moved_is_refused() {
        let k = keys();
        let m = example();
        let forged = m.encode(&k.stranger(), &k.meta.to_public()).unwrap();
        let e = ManifestV2::decode(KEY, &forged, k.m(), &k.verifier).unwrap_err();
        assert!(
            matches!(
                e,
                ManifestError::Sealed(SealedError::Signature(SignatureError::UnknownSigner { .. }))
            ),
            "{e:?}"
        );
        let genuine = m.encode(&k.writer, &k.meta.to_public()).unwrap();
        let other = "snapshots/20261201T101500Z-00000000";
        let e = ManifestV2::decode(other, &genuine, k.m(), &k.verifier).unwrap_err();
        assert!(
            matches!(
                e,
                ManifestError::Sealed(SealedError::Signature(SignatureError::BadSignature { .. }))
            ),
            "{e:?}"
        );
        // A writer's genuine signature under a key whose id the body does not name.
        let misnamed = sealed::encode(other, m.to_body(), &k.writer, &k.meta.to_public()).unwrap();
        let e = ManifestV2::decode(other, &misnamed, k.m(), &k.verifier).unwrap_err();
        assert!(matches!(e, ManifestError::WrongKey { .. }), "{e:?}");
        let e = ManifestV2::decode(KEY, &genuine, k.d(), &k.verifier).unwrap_err();
        assert!(
            matches!(
                e,
                ManifestError::Sealed(SealedError::Codec(
                    crate::error::Error::WrongIdentity { .. }
                ))
            ),
            "{e:?}"
        );
    }
}
