//! The stored list objects of format 2 (docs/design/format-v2.md, 1, 3.2
//! and 4.3): `lists/<snapshot id>/full` holds a full list body and
//! `lists/<snapshot id>/d-<from id>` a delta body, each a signed metadata
//! object of [`super::super::sealed`] (signature line under the object's
//! own key, zstd, age to M). This is the one way they are encoded and
//! decoded.
//!
//! What the signature binds (3.2): the object key, so the snapshot ids of
//! a full list and the `from`/`to` of a delta, and every line of the body,
//! so the full list's `list_blake3` and the delta's `from`/`to` hashes. A
//! delta's body must name the ids its key names, so a writer's slip cannot
//! store a delta under another snapshot's name either.
//!
//! Bounds: a list's plaintext is read up to [`list_limit`] of its stored
//! length and refused beyond, before the rest is decompressed. Lines of a
//! list can repeat long path prefixes, so the ratio is not
//! [`super::super::sealed::text_limit`]'s 4 but [`MAX_RATIO`]; measured
//! with zstd at level 6, 100,000 directories under one 200-byte prefix
//! compress 179 times, as many symlinks 163 times, 100,000 `R` lines 26
//! times. [`encode_full`] and [`encode_delta`] refuse a body that
//! compresses better than a reader accepts, so a list that was written is
//! a list that can be read: a clear error at backup, never an unreadable
//! snapshot. Inside the limit, `list2`'s parsers refuse what does not add
//! up before allocating for it (a hostile `N`).
//!
//! Never: hand out a list whose signature was not verified under the key
//! it was read from, or a delta whose body names other snapshots than its
//! key; decompress more than [`list_limit`] of a list.
//!
//! Nothing in this build stores or reads these objects yet (pure code, no
//! I/O): backup and restore write format 1's lists.

use super::{Delta, ListFormatError, ListHash, ListState, Named};
use crate::keys::SignerPublic;
use crate::repo::format::manifest2::is_snapshot_id;
use crate::repo::format::sealed::{self, SealedError};
use crate::sign::{Signer, Verifier};

/// The most a list's plaintext may exceed its stored length, as a factor.
pub const MAX_RATIO: usize = 256;

/// The plaintext limit for a list object stored in `encoded_len` bytes:
/// [`MAX_RATIO`] times, plus room for the signature line.
pub fn list_limit(encoded_len: usize) -> usize {
    encoded_len.saturating_mul(MAX_RATIO).saturating_add(1024)
}

/// Why a list object was not read or not written. Each names the object.
#[derive(Debug, thiserror::Error)]
pub enum ListObjectError {
    #[error(
        "{key} is not a list object key (lists/<snapshot id>/full or \
         lists/<snapshot id>/d-<snapshot id>)"
    )]
    Key { key: String },
    #[error("{key}: {error}")]
    Format {
        key: String,
        // Boxed: it is large, and every Result of this module carries it.
        error: Box<ListFormatError>,
    },
    #[error(
        "{key} holds the delta from {from} to {to}: a delta is stored under \
         lists/<to>/d-<from>"
    )]
    WrongKey {
        key: String,
        from: String,
        to: String,
    },
    #[error(
        "{key}: the list compresses more than {MAX_RATIO} times, more than a reader \
         accepts: refused unwritten"
    )]
    TooCompressible { key: String },
    #[error(transparent)]
    Sealed(#[from] SealedError),
}

type Result<T, E = ListObjectError> = std::result::Result<T, E>;

/// The key of a list object, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKey {
    /// `lists/<snapshot>/full`
    Full { snapshot: String },
    /// `lists/<to>/d-<from>`
    Delta { to: String, from: String },
}

impl ListKey {
    /// Parses `lists/<id>/full` or `lists/<id>/d-<id>`, ids snapshot ids.
    pub fn parse(key: &str) -> Option<ListKey> {
        let rest = key.strip_prefix(crate::repo::LISTS)?;
        let (id, name) = rest.split_once('/')?;
        let parsed = if name == "full" {
            ListKey::Full {
                snapshot: id.to_string(),
            }
        } else {
            let from = (name.strip_prefix("d-")).filter(|f| is_snapshot_id(f) && *f != id)?;
            ListKey::Delta {
                to: id.to_string(),
                from: from.to_string(),
            }
        };
        is_snapshot_id(id).then_some(parsed)
    }

    /// The object key.
    pub fn key(&self) -> String {
        match self {
            ListKey::Full { snapshot } => format!("{}{snapshot}/full", crate::repo::LISTS),
            ListKey::Delta { to, from } => format!("{}{to}/d-{from}", crate::repo::LISTS),
        }
    }
}

/// A decoded list object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListObject {
    /// A full list: the snapshot (its `list_blake3` computed) and state.
    Full {
        named: Named,
        state: ListState,
    },
    Delta(Delta),
}

/// The object `lists/<snapshot>/full` for `state`, sealed by `signer` to
/// `metadata` (the current M).
pub fn encode_full(
    snapshot: &str,
    state: &ListState,
    signer: &Signer,
    metadata: &dyn age::Recipient,
) -> Result<Vec<u8>> {
    let key = ListKey::Full {
        snapshot: snapshot.to_string(),
    };
    seal(key, state.write_full(), signer, metadata)
}

/// The object `lists/<to>/d-<from>` for `delta`, sealed by `signer` to
/// `metadata` (the current M).
pub fn encode_delta(
    delta: &Delta,
    signer: &Signer,
    metadata: &dyn age::Recipient,
) -> Result<Vec<u8>> {
    let key = ListKey::Delta {
        to: delta.to().snapshot.clone(),
        from: delta.from().snapshot.clone(),
    };
    seal(key, delta.write(), signer, metadata)
}

/// Seals `body` under `key`, refused when the key is not a list key or the
/// stored object would be refused by [`list_limit`].
fn seal(
    key: ListKey,
    body: Vec<u8>,
    signer: &Signer,
    metadata: &dyn age::Recipient,
) -> Result<Vec<u8>> {
    let name = key.key();
    if ListKey::parse(&name).as_ref() != Some(&key) {
        return Err(ListObjectError::Key { key: name });
    }
    let body_len = body.len();
    let encoded = sealed::encode(&name, body, signer, metadata)?;
    // The signature line is under 1,024 bytes, list_limit's margin.
    if body_len > encoded.len().saturating_mul(MAX_RATIO) {
        return Err(ListObjectError::TooCompressible { key: name });
    }
    Ok(encoded)
}

/// The list object stored as `encoded` under `key`, decoded with the M
/// identities given, verified, parsed, and its signer.
pub fn decode<'a>(
    key: &str,
    encoded: &'a [u8],
    identities: impl Iterator<Item = &'a dyn age::Identity>,
    verifier: &Verifier,
) -> Result<(ListObject, SignerPublic)> {
    let parsed = ListKey::parse(key).ok_or_else(|| ListObjectError::Key {
        key: key.to_string(),
    })?;
    let limit = list_limit(encoded.len());
    let (body, signer) = sealed::decode(key, encoded, identities, verifier, limit)?;
    let format = |error| ListObjectError::Format {
        key: key.to_string(),
        error: Box::new(error),
    };
    let object = match parsed {
        ListKey::Full { snapshot } => {
            let state = ListState::parse_full(&body).map_err(format)?;
            // parse_full accepts only the canonical bytes: these are them.
            let list_blake3 = ListHash::of(&body);
            let named = Named {
                snapshot,
                list_blake3,
            };
            ListObject::Full { named, state }
        }
        ListKey::Delta { to, from } => {
            let delta = Delta::parse(&body).map_err(format)?;
            if delta.to().snapshot != to || delta.from().snapshot != from {
                return Err(ListObjectError::WrongKey {
                    key: key.to_string(),
                    from: delta.from().snapshot.clone(),
                    to: delta.to().snapshot.clone(),
                });
            }
            ListObject::Delta(delta)
        }
    };
    Ok((object, signer))
}

#[cfg(test)]
mod tests {
    use super::super::tests_support::*;
    use super::*;
    use crate::error::Error;
    use crate::repo::format::sealed::test_keys::keys;
    use crate::sign::SignatureError;

    const A: &str = "20261130T101500Z-1b2c3d4e";
    const B: &str = "20261201T101500Z-9a74532e";
    const C: &str = "20261202T101500Z-00000000";

    fn parent() -> ListState {
        state(vec![dir("d"), file("d/db", &pages(50)), link("l", "d/db")])
    }

    fn child() -> ListState {
        let mut db = pages(50);
        db[7] = (id(1007), 4096);
        db.push((id(2000), 100));
        state(vec![
            dir("d"),
            file("d/db", &db),
            file("d/new", &[(id(9), 9)]),
        ])
    }

    fn delta() -> Delta {
        Delta::diff(named(A, &parent()), &parent(), B, &child())
    }

    fn full_key(id: &str) -> String {
        ListKey::Full {
            snapshot: id.into(),
        }
        .key()
    }

    /// A full list and a delta come back as written, under the keys the
    /// design names, with their signer and the full list's list_blake3.
    #[test]
    fn a_full_list_and_a_delta_roundtrip() {
        let k = keys();
        let m = k.meta.to_public();
        let full = encode_full(A, &parent(), &k.writer, &m).unwrap();
        let key = format!("lists/{A}/full");
        let (object, signer) = decode(&key, &full, k.m(), &k.verifier).unwrap();
        let want = ListObject::Full {
            named: named(A, &parent()),
            state: parent(),
        };
        assert_eq!((object, &signer), (want, k.writer.public()));

        let d = delta();
        let encoded = encode_delta(&d, &k.writer, &m).unwrap();
        let key = format!("lists/{B}/d-{A}");
        let (object, _) = decode(&key, &encoded, k.m(), &k.verifier).unwrap();
        let ListObject::Delta(back) = object else {
            panic!("a delta decodes as a delta");
        };
        assert_eq!(back, d);
        assert_eq!(
            back.apply(&named(A, &parent()), &parent()).unwrap(),
            child()
        );
        // Not readable with the data identity: lists are to M.
        let e = decode(&key, &encoded, k.d(), &k.verifier).unwrap_err();
        assert!(
            matches!(
                e,
                ListObjectError::Sealed(SealedError::Codec(Error::WrongIdentity { .. }))
            ),
            "{e}"
        );
    }

    /// A list object copied to another key fails its signature; a delta
    /// signed under a key other than the one its body names is refused by
    /// that; an unknown signer is refused; keys that are not list keys are
    /// refused on both sides.
    #[test]
    fn a_moved_or_unknown_list_object_is_refused() {
        let k = keys();
        let m = k.meta.to_public();
        let bad_signature = |r: Result<(ListObject, SignerPublic)>| {
            matches!(
                r,
                Err(ListObjectError::Sealed(SealedError::Signature(
                    SignatureError::BadSignature { .. }
                )))
            )
        };
        let full = encode_full(A, &parent(), &k.writer, &m).unwrap();
        assert!(bad_signature(decode(
            &full_key(C),
            &full,
            k.m(),
            &k.verifier
        )));
        let encoded = encode_delta(&delta(), &k.writer, &m).unwrap();
        for moved in [format!("lists/{C}/d-{A}"), format!("lists/{B}/d-{C}")] {
            assert!(bad_signature(decode(&moved, &encoded, k.m(), &k.verifier)));
        }

        let elsewhere = format!("lists/{C}/d-{A}");
        let sealed = sealed::encode(&elsewhere, delta().write(), &k.writer, &m).unwrap();
        let e = decode(&elsewhere, &sealed, k.m(), &k.verifier).unwrap_err();
        assert!(
            matches!(&e, ListObjectError::WrongKey { to, from, .. } if to == B && from == A),
            "{e}"
        );
        let as_full = sealed::encode(&full_key(B), delta().write(), &k.writer, &m).unwrap();
        let e = decode(&full_key(B), &as_full, k.m(), &k.verifier).unwrap_err();
        assert!(matches!(e, ListObjectError::Format { .. }), "{e}");

        let forged = encode_full(A, &parent(), &k.stranger(), &m).unwrap();
        let e = decode(&full_key(A), &forged, k.m(), &k.verifier).unwrap_err();
        assert!(
            matches!(
                e,
                ListObjectError::Sealed(SealedError::Signature(
                    SignatureError::UnknownSigner { .. }
                ))
            ),
            "{e}"
        );

        for key in [
            "lists/x/full",
            "lists/{A}/d-{A}",
            "snapshots/{A}",
            "lists/{A}/d-",
        ] {
            let key = key.replace("{A}", A);
            let e = decode(&key, &full, k.m(), &k.verifier).unwrap_err();
            assert!(matches!(e, ListObjectError::Key { .. }), "{key}: {e}");
        }
        let short_ids = Delta::diff(named("s1", &parent()), &parent(), "s2", &child());
        let e = encode_delta(&short_ids, &k.writer, &m).unwrap_err();
        assert!(matches!(e, ListObjectError::Key { .. }), "{e}");
    }

    /// A few hundred bytes that decompress to 4 MiB under a list key are
    /// refused after list_limit bytes, before the signature is looked at;
    /// and a writer refuses a list that compresses beyond what a reader
    /// accepts instead of storing an unreadable one.
    #[test]
    fn a_decompression_bomb_or_overcompressible_list_is_refused() {
        let k = keys();
        let m = k.meta.to_public();
        let key = full_key(A);
        let mut bomb = b"offsite-list 2\n".to_vec();
        bomb.resize(4 << 20, b'\n');
        let encoded = sealed::encode(&key, bomb, &k.writer, &m).unwrap();
        assert!(encoded.len() < 4096, "{}", encoded.len());
        let e = decode(&key, &encoded, k.m(), &k.verifier).unwrap_err();
        assert!(
            matches!(&e, ListObjectError::Sealed(SealedError::TooLarge { limit, .. })
                if *limit == list_limit(encoded.len())),
            "{e}"
        );

        let prefix = "p/".repeat(2000);
        let mut s = ListState::default();
        s.insert(dir(&prefix[..prefix.len() - 1]).0, vec![])
            .unwrap();
        for i in 0..2000 {
            s.insert(dir(&format!("{prefix}{i:05}")).0, vec![]).unwrap();
        }
        let e = encode_full(A, &s, &k.writer, &m).unwrap_err();
        assert!(matches!(e, ListObjectError::TooCompressible { .. }), "{e}");
    }
}

#[cfg(test)]
mod doc_tests {
    use super::super::tests_support::*;
    use super::super::Chunk;
    use super::*;
    use crate::chunk::ChunkId;

    fn chunk(byte: u8, len: u32) -> Chunk {
        (ChunkId([byte; 32]), len)
    }

    /// The examples of docs/format.md are what offsite writes, verbatim.
    #[test]
    fn the_documented_examples_are_what_is_written() {
        let parent = state(vec![
            dir("app"),
            file("app/data.db", &[chunk(0xaa, 4096), chunk(0xbb, 4096)]),
            link("app/current", "data.db"),
        ]);
        let child = state(vec![
            dir("app"),
            file(
                "app/data.db",
                &[chunk(0xaa, 4096), chunk(0xcc, 4096), chunk(0xdd, 4096)],
            ),
            file("app/new file", &[chunk(0xee, 12)]),
        ]);
        let full = String::from_utf8(parent.write_full()).unwrap();
        let from = Named {
            snapshot: "20261130T101500Z-1b2c3d4e".into(),
            list_blake3: parent.list_blake3(),
        };
        let delta = Delta::diff(from, &parent, "20261201T101500Z-9a74532e", &child);
        let delta = String::from_utf8(delta.write()).unwrap();
        let doc = include_str!("../../../../../docs/format.md");
        let fenced = |body: &str| format!("```text\n{body}<signature line>\n```");
        assert!(doc.contains(&fenced(&full)), "{full}");
        assert!(doc.contains(&fenced(&delta)), "{delta}");
    }
}
