//! The format 2 read layer (docs/design/format-v2.md, 3.3, 4.3 and 4.6) on
//! in-memory repositories made by `init`, with snapshots written from the
//! format encoders by `support::v2` (genuine and forged): which manifests,
//! list objects and index files are trusted, and how a snapshot's list
//! state is rebuilt along its cheapest path, and the restore of a signed
//! snapshot (and the refusal of a forged one).

mod support;

use std::collections::{HashMap, HashSet};

use backup_core::error::Error;
use backup_core::keyset::Trust;
use backup_core::repo::format::list2::{Delta, ListState, Named};
use backup_core::repo::path::{self, ListObject};
use backup_core::repo::{Selector, SnapshotsV2};
use backup_core::restore::RestoreOptions;
use backup_core::source::Entry;
use chrono::{DateTime, Duration, Utc};
use support::v2::{
    database, file, object, put, put_manifest, snapshot_id, sqlite_snap, write, Seal, Snap,
    Written, V2,
};

fn at(minutes: i64) -> DateTime<Utc> {
    "2026-12-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::minutes(minutes)
}

fn files(text: &str) -> Vec<support::v2::FileData> {
    vec![file("a.txt", text.as_bytes(), 7)]
}

fn trust_of<'a>(all: &'a SnapshotsV2, id: &str) -> &'a Trust {
    let found = all.snapshots.iter().find(|s| s.manifest.id == id);
    &found.unwrap_or_else(|| panic!("{id} is not listed")).trust
}

/// Asserts `id` is listed as rejected for a reason containing `needle`.
fn rejected(all: &SnapshotsV2, id: &str, needle: &str) {
    match trust_of(all, id) {
        Trust::Rejected { reason } => assert!(reason.contains(needle), "{id}: {reason}"),
        other => panic!("{id} is {other:?}, expected rejected ({needle})"),
    }
}

/// Unsigned, unknown signer, bad signature, moved, a removed writer after
/// its valid_until and a generation above the keyring's: each manifest
/// Rejected, and the same forgeries of list objects and index files are
/// not used; the genuine ones are Signed and used.
#[tokio::test]
async fn forged_manifests_lists_and_index_files_are_rejected() {
    let mut v2 = V2::new().await;
    let by_writer = Seal::of(&v2.writer_keys);
    let genuine = write(
        &v2.repo,
        &v2.writer_keys,
        Snap::new("app", at(0), files("one"), by_writer.clone()),
    )
    .await;
    let by_owner = write(
        &v2.repo,
        &v2.owner_keys,
        Snap::new("app", at(1), files("two"), Seal::of(&v2.owner_keys)),
    )
    .await;

    let forge = |n: i64, seal: Seal| Snap::new("app", at(10 + n), files("forged"), seal);
    let unsigned = write(&v2.repo, &v2.owner_keys, forge(0, Seal::Unsigned)).await;
    let stranger = write(&v2.repo, &v2.owner_keys, forge(1, Seal::By(v2.stranger()))).await;
    let altered = |from: &str, to: &str| Seal::Altered {
        by: v2.writer_signer(),
        from: from.into(),
        to: to.into(),
    };
    let mut changed = forge(2, altered("test-host", "evil-host"));
    changed.list = altered("a.txt", "b.txt");
    changed.index = altered(" 0 ", " 1 "); // the first chunk's offset
    let changed = write(&v2.repo, &v2.owner_keys, changed).await;
    let under = Seal::Under(v2.writer_signer(), genuine.manifest.key());
    let renamed = write(&v2.repo, &v2.owner_keys, forge(3, under)).await;
    // A genuine manifest copied, bytes and all, to another snapshot's name.
    let moved_id = snapshot_id(at(14));
    let moved_key = format!("snapshots/{moved_id}");
    let bytes = object(&v2.mem, &genuine.manifest.key());
    put(&v2.repo, &moved_key, bytes).await;
    let too_new = write(
        &v2.repo,
        &v2.writer_keys,
        forge(5, Seal::of(&v2.writer_keys)),
    )
    .await;
    let mut newer = too_new.manifest.clone();
    newer.generation = 9; // above the 2 the keyring reaches below
    put_manifest(
        &v2.repo,
        &v2.writer_keys,
        &newer.key(),
        &newer,
        &Seal::of(&v2.writer_keys),
    )
    .await;

    v2.remove_writer(at(20)).await;
    let after = write(
        &v2.repo,
        &v2.owner_keys,
        forge(30, Seal::By(v2.writer_signer())),
    )
    .await;

    let keys = &v2.owner_keys;
    let all = v2.repo.snapshots_v2(keys).await.unwrap();
    assert_eq!(all.unreadable, vec![], "every forgery decodes");
    assert_eq!(
        trust_of(&all, &genuine.manifest.id),
        &Trust::Signed {
            writer: "app-1".into()
        },
        "signed before the writer was removed"
    );
    assert_eq!(
        trust_of(&all, &by_owner.manifest.id),
        &Trust::Signed {
            writer: "owner".into()
        }
    );
    rejected(&all, &unsigned.manifest.id, "is not signed");
    rejected(&all, &stranger.manifest.id, "not a signer of this key set");
    rejected(&all, &changed.manifest.id, "does not match");
    rejected(&all, &renamed.manifest.id, "does not match");
    rejected(&all, &moved_id, "does not match");
    rejected(
        &all,
        &too_new.manifest.id,
        "above the keyring's current one",
    );
    rejected(&all, &after.manifest.id, "after it was removed");
    let signed: Vec<&str> = all.signed().map(|m| m.id.as_str()).collect();
    assert_eq!(
        signed,
        [by_owner.manifest.id.as_str(), genuine.manifest.id.as_str()],
        "newest first"
    );
    let listed: Vec<&str> = all
        .snapshots
        .iter()
        .map(|s| s.manifest.id.as_str())
        .collect();
    assert_eq!(
        listed[0], after.manifest.id,
        "rejected ones are listed, newest first too"
    );
    assert_eq!(listed.len(), 9);

    // Index files: only the genuine ones' chunks are indexed.
    let index = v2.repo.index_v2(keys).await.unwrap();
    let reasons: HashMap<&str, &str> = (index.rejected.iter())
        .map(|(k, r)| (k.as_str(), r.as_str()))
        .collect();
    // Unsigned, stranger, changed, signed under another key: rejected.
    assert_eq!(index.rejected.len(), 4, "{reasons:?}");
    for needle in [
        "is not signed",
        "not a signer of this key set",
        "does not match",
    ] {
        assert!(
            reasons.values().any(|r| r.contains(needle)),
            "{needle}: {reasons:?}"
        );
    }
    let genuine_chunks: HashSet<_> = chunk_ids(&genuine.state)
        .into_iter()
        .chain(chunk_ids(&by_owner.state))
        .collect();
    let forged_chunks = chunk_ids(&unsigned.state);
    assert!(genuine_chunks
        .iter()
        .all(|id| index.index.get(id).is_some()));
    assert!(forged_chunks.iter().all(|id| !genuine_chunks.contains(id)));
    // The writer's forgeries made after its removal, and too_new's, were
    // signed by a keyring writer: their files verify. The others' chunks
    // ("forged", written 4 times) are indexed only through those.
    assert_eq!(
        index.index.chunks.len(),
        genuine_chunks.len() + forged_chunks.len()
    );

    // Lists: a signed manifest whose list objects are forged has no state.
    let owner = keys.signer().unwrap().clone();
    let list_altered = Seal::Altered {
        by: owner.clone(),
        from: "a.txt".into(),
        to: "b.txt".into(),
    };
    for (i, seal) in [
        Seal::Unsigned,
        Seal::By(v2.stranger()),
        list_altered,
        Seal::Under(owner, genuine.list_key.clone()),
        Seal::By(v2.writer_signer()),
    ]
    .into_iter()
    .enumerate()
    {
        let mut snap = Snap::new(
            "app",
            at(40 + i as i64),
            files("list forged"),
            Seal::of(keys),
        );
        snap.list = seal;
        let w = write(&v2.repo, keys, snap).await;
        assert!(trust_of(&v2.repo.snapshots_v2(keys).await.unwrap(), &w.manifest.id).is_signed());
        let e = v2.repo.list_state(keys, &w.manifest).await.unwrap_err();
        assert!(
            matches!(&e, Error::Corrupt { key, .. } if *key == w.manifest.key()),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains(&w.list_key) && text.contains("rejected"),
            "{text}"
        );
    }
    assert_eq!(
        v2.repo.list_state(keys, &genuine.manifest).await.unwrap(),
        genuine.state
    );
    assert_eq!(
        v2.repo.list_state(keys, &by_owner.manifest).await.unwrap(),
        by_owner.state
    );
}

fn chunk_ids(state: &ListState) -> Vec<backup_core::chunk::ChunkId> {
    state
        .nodes()
        .flat_map(|n| n.chunks.iter().map(|(id, _)| *id))
        .collect()
}

/// Three snapshots of a tree: every kind of edit across full -> d -> d.
fn tree_v(n: u8) -> Vec<support::v2::FileData> {
    let dir = |path: &str| {
        (
            Entry::Dir {
                path: path.into(),
                mode: 0o755,
            },
            vec![],
        )
    };
    let link = |target: &str| {
        (
            Entry::Symlink {
                path: "d/link".into(),
                target: target.into(),
            },
            vec![],
        )
    };
    let big: Vec<u8> = (0..600u32)
        .map(|i| (i * 7 + u32::from(n) * (i / 500)) as u8)
        .collect();
    let mut out = vec![
        dir("d"),
        file("d/big", &big, 64),
        link(if n == 1 { "big" } else { "../x" }),
    ];
    match n {
        1 => out.push(file("d/gone", b"removed in 2", 5)),
        2 => out.push(file("d/new", b"added in 2", 4)),
        _ => {
            out[1] = file("d/big", &big[..300], 64);
            out.push(file("d/new", b"changed in 3, longer", 4));
            out.push(dir("e"));
        }
    }
    out.sort_by(|a, b| {
        backup_core::repo::format::list2::canonical_cmp(path_of(&a.0), path_of(&b.0))
    });
    out
}

fn path_of(e: &Entry) -> &str {
    match e {
        Entry::File { path, .. } | Entry::Dir { path, .. } | Entry::Symlink { path, .. } => path,
    }
}

async fn chain(v2: &V2) -> [Written; 3] {
    let keys = &v2.writer_keys;
    let seal = Seal::of(keys);
    let s1 = write(
        &v2.repo,
        keys,
        Snap::new("tree", at(0), tree_v(1), seal.clone()),
    )
    .await;
    let s2 = write(
        &v2.repo,
        keys,
        Snap::new("tree", at(1), tree_v(2), seal.clone()).delta_from(&s1),
    )
    .await;
    let s3 = write(
        &v2.repo,
        keys,
        Snap::new("tree", at(2), tree_v(3), seal).delta_from(&s2),
    )
    .await;
    [s1, s2, s3]
}

/// full -> d -> d rebuilds exactly the states that were written, each
/// matching its manifest's list_blake3.
#[tokio::test]
async fn a_delta_chain_rebuilds_exactly_the_state_written() {
    let v2 = V2::new().await;
    let written = chain(&v2).await;
    assert!(written[2]
        .list_key
        .ends_with(&format!("d-{}", written[1].manifest.id)));
    for w in &written {
        for keys in [&v2.owner_keys, &v2.writer_keys] {
            let state = v2.repo.list_state(keys, &w.manifest).await.unwrap();
            assert_eq!(state, w.state);
            assert_eq!(state.list_blake3(), w.manifest.list_blake3);
        }
    }
    assert_ne!(written[1].state, written[2].state);
}

/// The listing's plan for `target`, as `list_state` makes it.
fn planned(v2: &V2, target: &str, skip: &HashSet<String>) -> Vec<String> {
    let objects: Vec<ListObject> = (v2.mem.keys().into_iter())
        .filter(|k| k.starts_with("lists/"))
        .map(|k| {
            let size = object(&v2.mem, &k).len() as u64;
            ListObject::from_key(&k, size).unwrap()
        })
        .collect();
    let plan = path::plan(&objects, target, skip).unwrap();
    plan.objects.iter().map(ListObject::key).collect()
}

/// A damaged or forged object on the cheapest path costs another path,
/// never a wrong state: each time, list_state still matches list_blake3.
#[tokio::test]
async fn a_damaged_shortcut_falls_back_to_another_path() {
    let v2 = V2::new().await;
    let [s1, _, s3] = chain(&v2).await;
    let keys = &v2.writer_keys;
    let named = Named {
        snapshot: s1.manifest.id.clone(),
        list_blake3: s1.state.list_blake3(),
    };
    let shortcut = Delta::diff(named.clone(), &s1.state, &s3.manifest.id, &s3.state);
    let shortcut_key = format!("lists/{}/d-{}", s3.manifest.id, s1.manifest.id);
    let body = shortcut.write();
    let signer = Seal::of(keys);
    put(
        &v2.repo,
        &shortcut_key,
        signer.encode(&shortcut_key, body.clone(), keys),
    )
    .await;
    let none = HashSet::new();
    assert_eq!(
        planned(&v2, &s3.manifest.id, &none).len(),
        2,
        "the shortcut is the cheapest path"
    );

    // Damaged: a flipped byte.
    support::flip_middle_byte(&v2.mem, &shortcut_key);
    assert_eq!(
        v2.repo.list_state(keys, &s3.manifest).await.unwrap(),
        s3.state
    );

    // Forged by a stranger, and by a trusted writer with the right claim
    // but other edits: the end check catches what the signature cannot.
    let mut wrong = ListState::default();
    for node in s3.state.nodes() {
        wrong
            .insert(node.entry.clone(), node.chunks.clone())
            .unwrap();
    }
    wrong
        .insert(
            Entry::Dir {
                path: "zz".into(),
                mode: 0o700,
            },
            vec![],
        )
        .unwrap();
    let lying = Delta::diff(named, &s1.state, &s3.manifest.id, &wrong).write();
    let lying = String::from_utf8(lying).unwrap().replace(
        &wrong.list_blake3().to_string(),
        &s3.state.list_blake3().to_string(),
    );
    let forgeries = [
        Seal::By(v2.stranger()).encode(&shortcut_key, body.clone(), keys),
        signer.encode(&shortcut_key, lying.into_bytes(), keys),
    ];
    for forged in forgeries {
        put(&v2.repo, &shortcut_key, forged).await;
        assert_eq!(
            v2.repo.list_state(keys, &s3.manifest).await.unwrap(),
            s3.state
        );
    }

    // With the other path damaged too, nothing rebuilds it: an error naming
    // the snapshot and each object that failed; a genuine shortcut again
    // makes it whole.
    let skip: HashSet<String> = [shortcut_key.clone()].into();
    let other = planned(&v2, &s3.manifest.id, &skip);
    assert_eq!(other.len(), 3);
    support::flip_middle_byte(&v2.mem, &other[2]);
    let e = v2.repo.list_state(keys, &s3.manifest).await.unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(&e, Error::Corrupt { key, .. } if *key == s3.manifest.key()),
        "{e:?}"
    );
    assert!(
        text.contains(&shortcut_key) && text.contains(&other[2]),
        "{text}"
    );
    put(
        &v2.repo,
        &shortcut_key,
        signer.encode(&shortcut_key, body, keys),
    )
    .await;
    assert_eq!(
        v2.repo.list_state(keys, &s3.manifest).await.unwrap(),
        s3.state
    );
}

/// A v2 SQLite snapshot written by a writer restores with the owner's
/// identity to exactly the source's bytes, and passes integrity_check; a
/// writer's key set cannot restore, and writes nothing.
#[tokio::test]
async fn a_v2_sqlite_snapshot_restores_to_the_source_bytes() {
    let v2 = V2::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, source) = database(dir.path(), "source.db", 2000);
    assert!(source.len() > 40 * 4096, "{} bytes", source.len());
    let writer = &v2.writer_keys;
    let written = write(
        &v2.repo,
        writer,
        sqlite_snap(&source, at(0), Seal::of(writer)),
    )
    .await;

    let keys = &v2.owner_keys;
    let all = v2.repo.snapshots_v2(keys).await.unwrap();
    let chosen = all.latest_signed(Some("app")).unwrap();
    assert_eq!(chosen.manifest, written.manifest);
    let to = dir.path().join("restored/app.db");
    let opts = RestoreOptions::default();
    let summary = v2.repo.restore_v2(keys, chosen, &to, &opts).await.unwrap();
    assert_eq!(summary.snapshot, written.manifest.id);
    assert_eq!(summary.bytes, source.len() as u64);
    assert!(
        std::fs::read(&to).unwrap() == source,
        "the restored database differs"
    );
    assert_eq!(support::integrity(&to), "ok");

    let elsewhere = dir.path().join("by-writer/app.db");
    let e = v2
        .repo
        .restore_v2(writer, chosen, &elsewhere, &opts)
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("a writer key cannot restore: use an identity"),
        "{e}"
    );
    assert!(!dir.path().join("by-writer").exists(), "nothing written");
}

/// A forged snapshot newer than the genuine one: `latest` passes over it
/// and restores the genuine one; asking for it by id finds it, and
/// restoring it is refused with its name and reason, writing nothing.
#[tokio::test]
async fn a_forged_newest_snapshot_is_skipped_by_latest_and_refused_by_id() {
    let v2 = V2::new().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, genuine_db) = database(dir.path(), "genuine.db", 300);
    let (_, forged_db) = database(dir.path(), "forged.db", 900);
    let writer = &v2.writer_keys;
    let genuine = write(
        &v2.repo,
        writer,
        sqlite_snap(&genuine_db, at(0), Seal::of(writer)),
    )
    .await;
    let by_stranger = sqlite_snap(&forged_db, at(60), Seal::By(v2.stranger()));
    let forged = write(&v2.repo, writer, by_stranger).await;

    let keys = &v2.owner_keys;
    let all = v2.repo.snapshots_v2(keys).await.unwrap();
    assert_eq!(
        all.snapshots[0].manifest.id, forged.manifest.id,
        "the forgery is the newest"
    );
    let latest = all.select(Some("app"), &Selector::Latest).unwrap();
    assert_eq!(latest.manifest.id, genuine.manifest.id);
    assert_eq!(
        all.latest_signed(Some("app")).unwrap().manifest.id,
        genuine.manifest.id
    );
    let at = all.select(Some("app"), &Selector::At(at(90))).unwrap();
    assert_eq!(at.manifest.id, genuine.manifest.id);

    let asked = all
        .select(Some("app"), &Selector::Id(forged.manifest.id.clone()))
        .unwrap();
    let to = dir.path().join("restored/app.db");
    let opts = RestoreOptions::default();
    let e = v2
        .repo
        .restore_v2(keys, asked, &to, &opts)
        .await
        .unwrap_err();
    match &e {
        Error::Untrusted { key, reason } => {
            assert_eq!(*key, forged.manifest.key());
            assert!(reason.contains("not a signer of this key set"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains(&forged.manifest.key()), "{e}");
    let staged = v2.repo.stage_v2(keys, asked, &to, &opts).await;
    assert!(matches!(staged, Err(Error::Untrusted { .. })), "staged");
    assert!(!dir.path().join("restored").exists(), "nothing written");

    v2.repo.restore_v2(keys, latest, &to, &opts).await.unwrap();
    assert!(std::fs::read(&to).unwrap() == genuine_db);
    assert_eq!(support::integrity(&to), "ok");
}

/// A signed list is trusted for who wrote it, never for where it writes: a
/// stolen writer key signs a list whose file lies under its own symlink to
/// a directory outside; the restore refuses it and nothing outside changes.
#[tokio::test]
async fn a_signed_list_that_writes_through_a_symlink_is_refused() {
    let v2 = V2::new().await;
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("pwned"), b"precious").unwrap();
    let writer = &v2.writer_keys;
    let hostile = vec![
        (
            Entry::Symlink {
                path: "lnk".into(),
                target: outside.display().to_string(),
            },
            vec![],
        ),
        file("lnk/pwned", b"pwned by a signed list", 8),
    ];
    write(
        &v2.repo,
        writer,
        Snap::new("tree", at(0), hostile, Seal::of(writer)),
    )
    .await;
    let keys = &v2.owner_keys;
    let all = v2.repo.snapshots_v2(keys).await.unwrap();
    let chosen = all.latest_signed(Some("tree")).unwrap();
    let to = dir.path().join("restored");
    let e = v2
        .repo
        .restore_v2(keys, chosen, &to, &RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::UnsafeEntry { .. }), "{e:?}");
    assert_eq!(std::fs::read(outside.join("pwned")).unwrap(), b"precious");
    assert!(!to.exists(), "nothing restored");
}
