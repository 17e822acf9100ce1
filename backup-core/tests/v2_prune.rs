//! Prune on format 2 (docs/design/format-v2.md, 3.3 and 4.5), on
//! in-memory repositories made by `init`: real backups by a writer
//! (`backup_many_v2`, deltas against the parent) and snapshots forged with
//! `support::v2`. What is kept (signed snapshots only, pins), that every
//! kept snapshot still restores byte for byte along a short path of kept
//! list objects (shortcuts written where the removals broke one), that the
//! packs only removed snapshots used are gone, what happens to forged
//! objects, and that a prune cut off after any write or delete loses
//! nothing and the next one finishes.

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use backup_core::backup::{backup_many_v2, BackupOptions};
use backup_core::chunk::ChunkId;
use backup_core::keyset::Holding;
use backup_core::prune::{PruneOptions, PruneReport};
use backup_core::repo::path::{self, ListObject};
use backup_core::repo::{CheckedAt, ManifestV2, Repository, LISTS, PACKS, SNAPSHOTS};
use backup_core::restore::RestoreOptions;
use backup_core::retention::Policy;
use backup_core::storage::memory::MemoryStorage;
use backup_core::verify::{ReadData, VerifyOptions};
use backup_core::Error;
use chrono::{DateTime, Duration, Utc};
use support::v2::{file, holding, put_manifest, write, Seal, Snap, V2};
use support::{add_tasks as add_rows, copy_of, keep_last, DiesAfter, Wrapped};

/// `storage` opened as the owner (who restores) or as the writer (a
/// backup host, which prunes too).
async fn opened(
    v2: &V2,
    storage: Arc<dyn backup_core::storage::Storage>,
    owner: bool,
) -> Repository {
    let holding = match owner {
        true => holding(v2.owner.identity()),
        false => Holding::Writer(v2.writer.clone()),
    };
    v2.open_as(storage, holding).await
}

fn policy(last: u64, daily: u64) -> PruneOptions {
    PruneOptions {
        default_policy: Policy {
            last,
            daily,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `n` backups of a SQLite database of 20,000 rows (about 540 pages),
/// rows added before each; `pinned` are pinned as they are made. Returns
/// each manifest with the database's bytes at the time.
async fn backups(
    repo: &Repository,
    dir: &Path,
    n: usize,
    pinned: &[usize],
) -> Vec<(ManifestV2, Vec<u8>)> {
    let db = dir.join("app.db");
    add_rows(&db, 0, 20_000);
    let mut made = Vec::new();
    for i in 0..n {
        add_rows(&db, 20_000 + i * 30, 30);
        let opts = BackupOptions {
            pin: pinned.contains(&i),
            ..support::pack_size(64 << 10)
        };
        let done = backup_many_v2(&[repo], &support::sqlite("app", &db), &opts)
            .await
            .unwrap();
        let manifest = done.into_iter().next().unwrap().unwrap().manifest;
        made.push((manifest, std::fs::read(&db).unwrap()));
    }
    made
}

/// Restores `m` with the owner's keys and compares the file with `want`.
async fn restores(owner: &Repository, m: &ManifestV2, want: &[u8]) {
    let keys = owner.keyset().unwrap();
    let all = owner.snapshots_v2(keys).await.unwrap();
    let snapshot = (all.snapshots.iter())
        .find(|s| s.manifest.id == m.id)
        .unwrap_or_else(|| panic!("snapshot {} is gone", m.id));
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("app.db");
    (owner
        .restore_v2(keys, snapshot, &to, &RestoreOptions::default())
        .await)
        .unwrap_or_else(|e| panic!("snapshot {} no longer restores: {e}", m.id));
    assert!(std::fs::read(&to).unwrap() == want, "{} differs", m.id);
}

/// The signed snapshot ids, oldest first.
async fn signed_ids(repo: &Repository) -> Vec<String> {
    let all = repo.snapshots_v2(repo.keyset().unwrap()).await.unwrap();
    let mut ids: Vec<String> = all.signed().map(|m| m.id.clone()).collect();
    ids.reverse();
    ids
}

/// The list objects as a listing of `mem` shows them.
fn list_objects(mem: &MemoryStorage) -> Vec<ListObject> {
    let sizes: HashMap<String, u64> = (mem.keys().into_iter())
        .filter(|k| k.starts_with(LISTS))
        .map(|k| (k.clone(), support::v2::object(mem, &k).len() as u64))
        .collect();
    (sizes.iter())
        .filter_map(|(k, s)| ListObject::from_key(k, *s))
        .collect()
}

/// The packs that hold a chunk of one of `kept` (by the signed index).
async fn packs_of(repo: &Repository, kept: &[&ManifestV2]) -> BTreeSet<String> {
    let keys = repo.keyset().unwrap();
    let index = repo.index_v2(keys).await.unwrap().index;
    let mut live: HashSet<ChunkId> = HashSet::new();
    for m in kept {
        let state = repo.list_state(keys, m).await.unwrap();
        live.extend(state.nodes().flat_map(|n| n.chunks.iter().map(|c| c.0)));
    }
    let at = |id: &ChunkId| index.packs[index.chunks[id].pack as usize].clone();
    live.iter().map(at).collect()
}

fn packs(mem: &MemoryStorage) -> BTreeSet<String> {
    support::keys_under(mem, PACKS).into_iter().collect()
}

/// Twelve backups, each a delta against the one before; snapshot 5
/// pinned; keep the last 2 (and the newest of the day). Snapshots 0 to 4
/// and 6 to 9 go, which breaks the only path of the pinned one (from 0's
/// full list) and of the 10th (through 6 to 9): prune writes a full list
/// for 5 and a delta from 5 for 10, so every kept path is at most 3 kept
/// objects; every kept snapshot restores byte for byte, the packs only
/// removed snapshots used are gone, the repository verifies with the
/// data read, and a second prune changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_every_kept_snapshot_restorable_and_chains_short() {
    let v2 = V2::new().await;
    let writer = opened(&v2, v2.mem.clone(), false).await;
    let dir = tempfile::tempdir().unwrap();
    let made = backups(&writer, dir.path(), 12, &[5]).await;
    for (n, pair) in made.windows(2).enumerate() {
        assert_eq!(
            pair[1].0.parent.as_ref(),
            Some(&pair[0].0.id),
            "backup {}",
            n + 1
        );
    }
    let kept: Vec<&ManifestV2> = [5, 10, 11].iter().map(|&i| &made[i].0).collect();
    let want_packs = packs_of(&writer, &kept).await;
    assert!(
        want_packs.len() < packs(&v2.mem).len(),
        "the test needs dead packs"
    );

    let ks = writer.keyset().unwrap();
    for (m, _) in &made {
        writer.record_check(ks, m, CheckedAt::Backup).await.unwrap();
    }
    let report = writer.prune_v2(&policy(2, 1)).await.unwrap();
    let checks: BTreeSet<String> = (v2.mem.keys().into_iter())
        .filter_map(|k| Some(k.strip_prefix("checks/")?.split_once('/')?.0.to_string()))
        .collect();
    let kept_ids: BTreeSet<String> = kept.iter().map(|m| m.id.clone()).collect();
    assert_eq!(
        checks, kept_ids,
        "check records of removed snapshots go with them"
    );
    let verdicts: Vec<(&str, bool)> = (report.snapshots.iter())
        .map(|v| (v.manifest.id.as_str(), v.keep))
        .collect();
    assert_eq!(verdicts.len(), 12);
    for (i, (m, _)) in made.iter().enumerate() {
        let keep = [5, 10, 11].contains(&i);
        assert!(
            verdicts.contains(&(m.id.as_str(), keep)),
            "snapshot {i}: {verdicts:?}"
        );
    }
    assert_eq!(report.shortcuts_written, 2, "{report:?}");
    assert_eq!(report.rejected_deleted, vec![]);
    assert!(report.packs_deleted > 0);

    let owner = opened(&v2, v2.mem.clone(), true).await;
    let ids: Vec<String> = kept.iter().map(|m| m.id.clone()).collect();
    assert_eq!(signed_ids(&owner).await, ids);
    let lists: BTreeSet<String> = list_objects(&v2.mem).iter().map(ListObject::key).collect();
    let (five, ten, eleven) = (&ids[0], &ids[1], &ids[2]);
    let expected: BTreeSet<String> = [
        format!("{LISTS}{five}/full"),
        format!("{LISTS}{ten}/d-{five}"),
        format!("{LISTS}{eleven}/d-{ten}"),
    ]
    .into();
    assert_eq!(lists, expected, "exactly the kept paths");
    let objects = list_objects(&v2.mem);
    for (n, m) in kept.iter().enumerate() {
        let plan = path::plan(&objects, &m.id, &HashSet::new()).unwrap();
        assert_eq!(plan.objects.len(), n + 1, "{}", m.id);
        assert!(!plan.is_long(m.chunks), "{}", m.id);
        restores(&owner, m, &made[[5, 10, 11][n]].1).await;
    }
    assert_eq!(
        packs(&v2.mem),
        want_packs,
        "dead packs gone, live ones kept"
    );
    let keys = owner.keyset().unwrap();
    let read = VerifyOptions {
        data: Some(ReadData::Snapshots(keys.data().unwrap())),
        ..Default::default()
    };
    let check = owner.verify(&keys.metadata_key(), &read).await.unwrap();
    assert!(check.ok(), "{check:?}");

    let before = v2.mem.keys();
    let again = writer.prune_v2(&policy(2, 1)).await.unwrap();
    assert_eq!(
        (
            again.shortcuts_written,
            again.packs_deleted,
            again.lists_deleted
        ),
        (0, 0, 0)
    );
    let after: Vec<String> = v2.mem.keys();
    assert_eq!(before, after, "a second prune changes nothing");
}

fn at(minutes: i64) -> DateTime<Utc> {
    "2026-12-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::minutes(minutes)
}

/// Two genuine snapshots and three forged newer ones (a signer the
/// keyring never listed, no signature, a changed body), all of the same
/// keyring: with keep_last 2 the genuine ones are the ones kept (a forgery
/// counts for nothing), the forged manifests, their list objects, index
/// files and packs are deleted and reported, and both genuine snapshots
/// still restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_ignores_forged_newer_snapshots() {
    let v2 = V2::new().await;
    let by_writer = Seal::of(&v2.writer_keys);
    let text = |s: &str| vec![file("f.bin", s.as_bytes(), 5)];
    let first = write(
        &v2.repo,
        &v2.writer_keys,
        Snap::new("app", at(0), text("genuine one"), by_writer.clone()),
    )
    .await;
    let second = Snap::new("app", at(1), text("genuine two"), by_writer).delta_from(&first);
    let second = write(&v2.repo, &v2.writer_keys, second).await;
    let altered = |from: &str, to: &str| Seal::Altered {
        by: v2.writer_signer(),
        from: from.into(),
        to: to.into(),
    };
    let forge =
        |n: i64, seal: Seal| Snap::new("app", at(10 + n), text(&format!("forged {n}")), seal);
    let mut changed = forge(2, altered("test-host", "evil-host"));
    changed.list = altered("f.bin", "g.bin");
    changed.index = altered(" 0 ", " 1 "); // the first chunk's offset
    let mut forged = Vec::new();
    for snap in [
        forge(0, Seal::By(v2.stranger())),
        forge(1, Seal::Unsigned),
        changed,
    ] {
        forged.push(write(&v2.repo, &v2.writer_keys, snap).await);
    }
    let owner = opened(&v2, v2.mem.clone(), true).await;
    let genuine_packs = packs_of(&owner, &[&first.manifest, &second.manifest]).await;
    assert_eq!(packs(&v2.mem).len(), 5);

    let report = owner.prune_v2(&keep_last(2)).await.unwrap();
    let verdicts: Vec<(&str, bool)> = (report.snapshots.iter())
        .map(|v| (v.manifest.id.as_str(), v.keep))
        .collect();
    assert_eq!(
        verdicts,
        [
            (second.manifest.id.as_str(), true),
            (first.manifest.id.as_str(), true)
        ]
    );
    let mut deleted: Vec<&str> = report
        .rejected_deleted
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    deleted.sort();
    let manifests: Vec<String> = forged.iter().map(|w| w.manifest.key()).collect();
    for key in &manifests {
        assert!(
            deleted.contains(&key.as_str()),
            "{key} not reported: {deleted:?}"
        );
        assert!(!v2.mem.keys().contains(key), "{key} is still there");
    }
    assert_eq!(
        deleted.iter().filter(|k| k.starts_with("index/")).count(),
        3,
        "{deleted:?}"
    );
    for w in &forged {
        assert!(
            !v2.mem.keys().contains(&w.list_key),
            "{} is still there",
            w.list_key
        );
    }
    assert_eq!(
        packs(&v2.mem),
        genuine_packs,
        "the forgeries' packs are gone"
    );
    let keys = owner.keyset().unwrap();
    let text_of = |w: &support::v2::Written| w.manifest.id.clone();
    assert_eq!(
        signed_ids(&owner).await,
        [text_of(&first), text_of(&second)]
    );
    let dir = tempfile::tempdir().unwrap();
    let all = owner.snapshots_v2(keys).await.unwrap();
    assert_eq!(all.snapshots.len(), 2, "only the genuine ones are left");
    for (s, want) in all.snapshots.iter().zip(["genuine two", "genuine one"]) {
        let to = dir.path().join(&s.manifest.id);
        owner
            .restore_v2(keys, s, &to, &RestoreOptions::default())
            .await
            .unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), want.as_bytes());
    }
}

/// A rejected manifest that claims a keyring newer than the one this host
/// verified may be a genuine snapshot of a writer this host does not know
/// yet: prune deletes nothing, names it, and says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_stops_at_a_snapshot_of_a_newer_keyring() {
    let v2 = V2::new().await;
    let seal = Seal::of(&v2.writer_keys);
    let files = vec![file("f.bin", b"genuine", 4)];
    write(
        &v2.repo,
        &v2.writer_keys,
        Snap::new("app", at(0), files.clone(), seal.clone()),
    )
    .await;
    let older = write(
        &v2.repo,
        &v2.writer_keys,
        Snap::new("app", at(1), files, seal),
    )
    .await;
    let mut newer = older.manifest.clone();
    newer.id = support::v2::snapshot_id(at(5));
    newer.keyring += 1;
    put_manifest(
        &v2.repo,
        &v2.writer_keys,
        &newer.key(),
        &newer,
        &Seal::By(v2.stranger()),
    )
    .await;
    let owner = opened(&v2, v2.mem.clone(), true).await;
    let before = v2.mem.keys();
    for dry_run in [true, false] {
        let opts = PruneOptions {
            dry_run,
            ..keep_last(1)
        };
        let e = owner.prune_v2(&opts).await.unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(&e, Error::Corrupt { key, .. } if *key == newer.key()),
            "{e:?}"
        );
        assert!(
            text.contains("newer than the keyring this host verified"),
            "{text}"
        );
        assert!(text.contains("prune deletes nothing"), "{text}");
    }
    let after: Vec<String> = (v2.mem.keys().into_iter())
        .filter(|k| !k.starts_with("locks/"))
        .collect();
    assert_eq!(after, before, "nothing deleted or written");
    assert!(after.contains(&format!("{SNAPSHOTS}{}", older.manifest.id)));
}

/// A recipient that is not the owner cannot sign: prune refuses before it
/// takes a lock or reads anything, saying what to configure.
#[tokio::test]
async fn a_host_that_cannot_sign_does_not_prune() {
    let v2 = V2::new().await;
    let colleague = support::v2::identity();
    let public = colleague.to_public();
    let opts = Default::default();
    (backup_core::keyadmin::add_recipient(&v2.repo, &v2.owner, &public, "colleague", &opts).await)
        .unwrap();
    let repo = v2.open_as(v2.mem.clone(), holding(&colleague)).await;
    let e = repo.prune_v2(&keep_last(1)).await.unwrap_err();
    assert!(matches!(e, Error::Key(_)), "{e:?}");
    assert!(e.to_string().contains("encryption.writer_key_file"), "{e}");
}

/// Prune cut off after each of its writes and deletes in turn (shortcuts,
/// manifests, lists, index files, packs): every kept snapshot still
/// restores byte for byte, and the next prune finishes to the same result
/// as an uninterrupted one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_prune_killed_after_any_step_loses_nothing_and_the_next_one_finishes() {
    let v2 = V2::new().await;
    let writer = opened(&v2, v2.mem.clone(), false).await;
    let dir = tempfile::tempdir().unwrap();
    let made = backups(&writer, dir.path(), 6, &[2]).await;
    let opts = keep_last(1);

    let whole = copy_of(&v2.mem).await;
    let report = opened(&v2, whole.clone(), false)
        .await
        .prune_v2(&opts)
        .await
        .unwrap();
    assert!(
        report.shortcuts_written > 0 && report.packs_deleted > 0,
        "{report:?}"
    );
    let kept: Vec<&(ManifestV2, Vec<u8>)> = vec![&made[2], &made[5]];
    let expected: Vec<String> = kept.iter().map(|(m, _)| m.id.clone()).collect();
    let base: HashSet<String> = v2.mem.keys().into_iter().collect();
    let now: HashSet<String> = whole.keys().into_iter().collect();
    let mutations = base
        .symmetric_difference(&now)
        .filter(|k| !k.starts_with("locks/"))
        .count();
    assert!(mutations >= 8, "only {mutations} steps to cut prune at");

    for after in 0..mutations {
        let copy = copy_of(&v2.mem).await;
        let dying = Arc::new(Wrapped(DiesAfter::new(copy.clone(), after)));
        let cut = opened(&v2, dying, false).await.prune_v2(&opts).await;
        assert!(
            cut.is_err(),
            "cut after {after} of {mutations} steps, prune said it succeeded"
        );
        let owner = opened(&v2, copy.clone(), true).await;
        for (m, bytes) in &kept {
            restores(&owner, m, bytes).await;
        }
        let finished: PruneReport = opened(&v2, copy.clone(), false)
            .await
            .prune_v2(&opts)
            .await
            .unwrap();
        assert!(finished.rejected_deleted.is_empty(), "cut after {after}");
        assert_eq!(signed_ids(&owner).await, expected, "cut after {after}");
        assert_eq!(
            packs(&copy),
            packs(&whole),
            "cut after {after}: other packs left"
        );
        for (m, bytes) in &kept {
            restores(&owner, m, bytes).await;
        }
    }
}

/// Bundles no keyring names (a killed `key add` or init leaves one; a
/// copy of a real one under another name is the same) are deleted; the
/// named ones stay, and owner and writer still open the repository.
#[tokio::test]
async fn prune_deletes_key_bundles_the_keyring_does_not_name() {
    use backup_core::storage::{bytes_stream, PutMode, Storage};
    let v2 = V2::new().await;
    let writer = opened(&v2, v2.mem.clone(), false).await;
    let dir = tempfile::tempdir().unwrap();
    let made = backups(&writer, dir.path(), 1, &[]).await;
    let named: BTreeSet<String> = (v2.mem.keys().into_iter())
        .filter(|k| k.starts_with("keys/"))
        .collect();
    let copy = backup_core::storage::collect_bytes(
        v2.mem.get(named.iter().next().unwrap()).await.unwrap(),
    )
    .await
    .unwrap();
    let stray = "keys/0001/0123456789abcdef0123456789abcdef-00000000";
    (v2.mem.put(stray, bytes_stream(copy), PutMode::Create).await).unwrap();

    let dry = writer
        .prune_v2(&PruneOptions {
            dry_run: true,
            ..policy(5, 0)
        })
        .await
        .unwrap();
    assert_eq!(dry.bundles_deleted, 1);
    assert!(
        v2.mem.keys().contains(&stray.to_string()),
        "a dry run deletes nothing"
    );
    let report = writer.prune_v2(&policy(5, 0)).await.unwrap();
    assert_eq!(report.bundles_deleted, 1);
    let left: BTreeSet<String> = (v2.mem.keys().into_iter())
        .filter(|k| k.starts_with("keys/"))
        .collect();
    assert_eq!(left, named);
    let owner = opened(&v2, v2.mem.clone(), true).await;
    restores(&owner, &made[0].0, &made[0].1).await;
    opened(&v2, v2.mem.clone(), false).await;
}

/// A key change that lands after prune opened the target (its keyring is
/// then not the newest) stops the prune before it deletes anything: the
/// bundles the newer keyring names are not "unnamed".
#[tokio::test]
async fn prune_stops_when_the_keys_changed_after_it_opened_the_target() {
    let v2 = V2::new().await;
    let writer = opened(&v2, v2.mem.clone(), false).await;
    let dir = tempfile::tempdir().unwrap();
    backups(&writer, dir.path(), 2, &[]).await;
    let newcomer = support::v2::identity().to_public();
    let opts = backup_core::keyadmin::AdminOptions::default();
    backup_core::keyadmin::add_recipient(&v2.repo, &v2.owner, &newcomer, "late", &opts)
        .await
        .unwrap();
    let before = v2.mem.keys();
    let e = writer.prune_v2(&policy(1, 0)).await.unwrap_err();
    assert!(e.to_string().contains("run it again"), "{e}");
    assert_eq!(v2.mem.keys(), before, "nothing deleted");
    let fresh = opened(&v2, v2.mem.clone(), false).await;
    let report = fresh.prune_v2(&policy(1, 0)).await.unwrap();
    assert_eq!(report.bundles_deleted, 0, "the new bundle is named");
}
