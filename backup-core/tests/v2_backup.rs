//! The format 2 backup (docs/design/format-v2.md, 4.2 to 4.6 and 5.1) on
//! in-memory repositories made by `init`, backed up by a writer added with
//! `keyadmin::add_writer`, from real SQLite databases: what it stores
//! (signed deltas against the parent, full lists when the chain is long,
//! keyed ids, packs with trailers, signed index files and manifests), what
//! it costs in metadata, who may run it, which key generation it writes
//! under, and what an interrupted one leaves. Objects are checked by
//! decoding them with the format functions.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use backup_core::backup::{backup_many_v2, BackupOptions, BackupSummary};
use backup_core::chunk::ChunkId;
use backup_core::codec;
use backup_core::keyadmin::{self, AdminOptions, Owner};
use backup_core::keys::{Identities, SignerPublic, WriterKey};
use backup_core::keyset::{Holding, KeySet};
use backup_core::repo::format::list2::object::{decode as decode_list, ListObject};
use backup_core::repo::format::pack2::{open_pack, IndexFile};
use backup_core::repo::init::init;
use backup_core::repo::{Access, ManifestV2, Repository, INDEX, LISTS, PACKS, SNAPSHOTS};
use backup_core::sign::Signer;
use backup_core::storage::memory::MemoryStorage;
use backup_core::storage::testing::FaultyStorage;
use backup_core::storage::{RetryPolicy, Storage};
use support::add_tasks as add_rows;
use support::v2::{holding, identity, object};

/// A format 2 repository with an owner and the writer "app-1", and a
/// SQLite database to back up.
struct Fixture {
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    mem: Arc<MemoryStorage>,
    owner: Owner,
    writer: WriterKey,
}

impl Fixture {
    async fn new(rows: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        add_rows(&db, 0, rows);
        let owner = Owner::new(identity());
        let mem = Arc::new(MemoryStorage::default());
        init(&[mem.clone() as Arc<dyn Storage>], &owner, &[], None)
            .await
            .unwrap();
        let writer = WriterKey::generate();
        let repo = Repository::open_v2(mem.clone()).await.unwrap();
        keyadmin::add_writer(&repo, &owner, "app-1", &writer.public(), &admin())
            .await
            .unwrap();
        Fixture {
            _dir: dir,
            db,
            mem,
            owner,
            writer,
        }
    }

    /// The repository as the writer opens it for a backup (keys read now).
    async fn writer_repo(&self, storage: Arc<dyn Storage>) -> Repository {
        let access = Access {
            trust: self.owner.public(),
            holding: Holding::Writer(self.writer.clone()),
            memory: None,
        };
        Repository::open_with(storage, Some(&access))
            .await
            .unwrap()
            .with_retry(RetryPolicy::fast())
    }

    /// The owner's key set: every generation's D and M.
    async fn owner_keys(&self) -> KeySet {
        let repo = Repository::open_v2(self.mem.clone()).await.unwrap();
        KeySet::open(
            &repo,
            &self.owner.public(),
            &holding(self.owner.identity()),
            None,
        )
        .await
        .unwrap()
    }

    async fn backup(&self) -> BackupSummary<ManifestV2> {
        let repo = self.writer_repo(self.mem.clone()).await;
        backup_many_v2(&[&repo], &support::sqlite("app", &self.db), &opts())
            .await
            .unwrap()
            .pop()
            .unwrap()
            .unwrap()
    }

    fn keys(&self) -> HashSet<String> {
        self.mem.keys().into_iter().collect()
    }
}

fn admin() -> AdminOptions {
    AdminOptions::default()
}

fn opts() -> BackupOptions {
    // Several packs per backup, so index files are written mid-run too.
    support::pack_size(256 << 10)
}

/// Rewrites the body of `n` random rows of `rows`.
fn change_rows(path: &Path, rows: usize, n: usize) {
    let c = rusqlite::Connection::open(path).unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for _ in 0..n {
        let id = rand::random::<u64>() as usize % rows;
        tx.execute(
            "UPDATE tasks SET body = ?1 WHERE id = ?2",
            (hex::encode(rand::random::<[u8; 48]>()), id as i64),
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// The manifest `snapshots/<id>` decoded with `ids`, and its signer.
fn manifest(
    mem: &MemoryStorage,
    ks: &KeySet,
    ids: &Identities,
    id: &str,
) -> (ManifestV2, SignerPublic) {
    let key = format!("{SNAPSHOTS}{id}");
    let raw = object(mem, &key);
    ManifestV2::decode(&key, &raw, ids.iter(), &ks.verifier()).unwrap()
}

/// The keys of the list objects of snapshot `id`.
fn lists_of(mem: &MemoryStorage, id: &str) -> Vec<String> {
    support::keys_under(mem, &format!("{LISTS}{id}/"))
}

/// The first `page` bytes pages of the file at `path`, keyed with `ks`.
fn page_ids(path: &Path, ks: &KeySet, page: usize) -> Vec<(ChunkId, u32)> {
    let data = std::fs::read(path).unwrap();
    data.chunks(page)
        .map(|p| (ChunkId::keyed(&ks.chunk_key(), p), p.len() as u32))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_writes_a_signed_delta_against_its_parent() {
    let f = Fixture::new(3_000).await;
    let first = f.backup().await.manifest;
    assert_eq!(first.parent, None, "the first backup has no parent");
    assert_eq!(
        lists_of(&f.mem, &first.id),
        [format!("{LISTS}{}/full", first.id)]
    );
    change_rows(&f.db, 3_000, 10);
    let second = f.backup().await.manifest;
    let delta_key = format!("{LISTS}{}/d-{}", second.id, first.id);
    assert_eq!(
        lists_of(&f.mem, &second.id),
        std::slice::from_ref(&delta_key)
    );

    let ks = f.owner_keys().await;
    let ids = ks.data().unwrap();
    let (stored, signer) = manifest(&f.mem, &ks, &ids, &second.id);
    assert_eq!(stored, second, "the manifest stored is the one returned");
    assert_eq!(signer, SignerPublic::Writer(f.writer.public()));
    assert_eq!(stored.writer, "app-1");
    assert_eq!(stored.parent.as_deref(), Some(first.id.as_str()));
    assert_eq!((stored.generation, stored.keyring), (1, 2));
    assert_eq!(stored.size, std::fs::metadata(&f.db).unwrap().len());

    let raw = object(&f.mem, &delta_key);
    let (list, signer) = decode_list(&delta_key, &raw, ids.iter(), &ks.verifier()).unwrap();
    assert_eq!(signer, SignerPublic::Writer(f.writer.public()));
    let ListObject::Delta(delta) = list else {
        panic!("{delta_key} is not a delta")
    };
    assert_eq!(delta.from().snapshot, first.id);
    assert_eq!(delta.from().list_blake3, first.list_blake3);
    assert_eq!(delta.to().list_blake3, second.list_blake3);

    // The list rebuilt through the delta is the database's pages, keyed.
    let repo = Repository::open_v2(f.mem.clone()).await.unwrap();
    let state = repo.list_state(&ks, &second).await.unwrap();
    assert_eq!(state.list_blake3(), second.list_blake3);
    let node = state.nodes().next().unwrap();
    let page = second.page_size.unwrap() as usize;
    assert_eq!(node.chunks, page_ids(&f.db, &ks, page));
    assert_ne!(
        node.chunks[0].0,
        ChunkId::of(&std::fs::read(&f.db).unwrap()[..page]),
        "ids are keyed, not plain BLAKE3"
    );

    // Only changed pages were stored again, each found in a signed index
    // file and in a pack whose DATA decodes to it.
    let index = repo.index_v2(&ks).await.unwrap();
    assert!(index.rejected.is_empty() && index.unreadable.is_empty());
    let all: usize = node.chunks.len();
    assert!(
        second.new_bytes < (all as u64 * page as u64) / 4,
        "{second:?}"
    );
    for (id, _) in &node.chunks {
        assert!(index.index.usable(id), "chunk {id} is indexed");
    }
    for pack in support::keys_under(&f.mem, PACKS) {
        let raw = object(&f.mem, &pack);
        let opened = open_pack(&pack, &raw, ids.iter(), &ks.verifier()).unwrap();
        assert_eq!(opened.signer, SignerPublic::Writer(f.writer.public()));
        let plain = codec::decode(opened.data, ids.iter(), &pack).unwrap();
        opened
            .info
            .check_decoded(&pack, plain.len() as u64)
            .unwrap();
        for (id, off, len) in opened.info.entries() {
            let chunk = &plain[*off as usize..(*off + *len) as usize];
            assert_eq!(ChunkId::keyed(&ks.chunk_key(), chunk), *id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_metadata_is_o_changed() {
    const ROWS: usize = 30_000;
    let f = Fixture::new(ROWS).await;
    f.backup().await;
    let before = f.keys();
    change_rows(&f.db, ROWS, ROWS / 100);
    let second = f.backup().await.manifest;
    let ks = f.owner_keys().await;
    let ids = ks.data().unwrap();
    let new: Vec<String> = f.keys().difference(&before).cloned().collect();
    let size = |k: &str| object(&f.mem, k).len() as u64;
    let of = |prefix: &str| -> u64 {
        new.iter()
            .filter(|k| k.starts_with(prefix))
            .map(|k| size(k))
            .sum()
    };
    let (index, list, manifest, packs) = (of(INDEX), of(LISTS), of(SNAPSHOTS), of(PACKS));
    let mut trailers = 0;
    for pack in new.iter().filter(|k| k.starts_with(PACKS)) {
        let raw = object(&f.mem, pack);
        let opened = open_pack(pack, &raw, ids.iter(), &ks.verifier()).unwrap();
        trailers += raw.len() as u64 - opened.data.len() as u64;
    }
    let metadata = index + list + trailers + manifest;
    println!(
        "database {} B, {} pages; after a 1% row change: packs {packs} B (trailers {trailers} B), \
         index {index} B, list {list} B, manifest {manifest} B; metadata / packs = {:.3}",
        second.size,
        second.chunks,
        metadata as f64 / packs as f64
    );
    assert!(second.parent.is_some(), "the list is a delta");
    assert!(
        metadata * 4 <= packs,
        "metadata {metadata} B is more than a quarter of packs {packs} B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_chain_makes_a_full_list() {
    let f = Fixture::new(20_000).await;
    let mut made = Vec::new();
    for _ in 0..18 {
        change_rows(&f.db, 20_000, 1);
        made.push(f.backup().await.manifest);
    }
    let full = |m: &ManifestV2| lists_of(&f.mem, &m.id) == [format!("{LISTS}{}/full", m.id)];
    // 1 full list and 15 deltas: a path of 16 objects, the most allowed.
    assert!(full(&made[0]));
    for (n, m) in made.iter().enumerate().take(16).skip(1) {
        let d = format!("{LISTS}{}/d-{}", m.id, made[n - 1].id);
        assert_eq!(lists_of(&f.mem, &m.id), [d], "backup {n}");
        assert_eq!(m.parent.as_deref(), Some(made[n - 1].id.as_str()));
    }
    // A 17th object on the path would make it long: a full list.
    assert!(
        full(&made[16]),
        "backup 16: {:?}",
        lists_of(&f.mem, &made[16].id)
    );
    assert_eq!(made[16].parent, None);
    // The chain starts again from it.
    assert_eq!(made[17].parent.as_deref(), Some(made[16].id.as_str()));
    let ks = f.owner_keys().await;
    let repo = Repository::open_v2(f.mem.clone()).await.unwrap();
    for m in &made {
        let state = repo.list_state(&ks, m).await.unwrap();
        assert_eq!(state.list_blake3(), m.list_blake3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorised_writer_does_not_back_up() {
    let f = Fixture::new(500).await;
    let before = f.keys();
    // A writer key the owner never added gets no key set, so no repository
    // to back up to.
    let access = Access {
        trust: f.owner.public(),
        holding: Holding::Writer(WriterKey::generate()),
        memory: None,
    };
    let e = Repository::open_with(f.mem.clone(), Some(&access))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("offsite writer add"), "{e}");
    // Opened without keys, or by a recipient that cannot sign: refused,
    // and nothing is written (not even a lock).
    let spec = support::sqlite("app", &f.db);
    let keyless = Repository::open_v2(f.mem.clone()).await.unwrap();
    let colleague = identity();
    let repo = Repository::open_v2(f.mem.clone()).await.unwrap();
    keyadmin::add_recipient(&repo, &f.owner, &colleague.to_public(), "c", &admin())
        .await
        .unwrap();
    let before_reader = f.keys();
    assert!(before_reader.is_superset(&before));
    let reader = Repository::open_with(
        f.mem.clone(),
        Some(&Access {
            trust: f.owner.public(),
            holding: holding(&colleague),
            memory: None,
        }),
    )
    .await
    .unwrap();
    let results = backup_many_v2(&[&keyless, &reader], &spec, &opts())
        .await
        .unwrap();
    let e0 = results[0].as_ref().unwrap_err().to_string();
    let e1 = results[1].as_ref().unwrap_err().to_string();
    assert!(e0.contains("writer_key_file"), "{e0}");
    assert!(e1.contains("writer_key_file"), "{e1}");
    assert_eq!(f.keys(), before_reader, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_data_uses_the_current_generation() {
    let f = Fixture::new(2_000).await;
    f.backup().await;
    let old = f.owner_keys().await;
    let old_ids = old.data().unwrap();
    let colleague = identity();
    let repo = Repository::open_v2(f.mem.clone()).await.unwrap();
    keyadmin::add_recipient(&repo, &f.owner, &colleague.to_public(), "c", &admin())
        .await
        .unwrap();
    keyadmin::remove_recipient(
        &repo,
        &f.owner,
        &colleague.to_public().to_string(),
        &admin(),
    )
    .await
    .unwrap();
    let before = f.keys();
    change_rows(&f.db, 2_000, 50);
    let second = f.backup().await.manifest;
    assert_eq!(second.generation, 2);
    let ks = f.owner_keys().await;
    let ids = ks.data().unwrap();
    let new: Vec<String> = f.keys().difference(&before).cloned().collect();
    let mut seen = HashSet::new();
    for key in &new {
        let raw = object(&f.mem, key);
        let prefix = [SNAPSHOTS, LISTS, INDEX, PACKS]
            .into_iter()
            .find(|p| key.starts_with(p));
        let Some(prefix) = prefix else { continue };
        seen.insert(prefix);
        let (v, ov) = (ks.verifier(), old.verifier());
        let (now, then) = match prefix {
            p if p == SNAPSHOTS => (
                ManifestV2::decode(key, &raw, ids.iter(), &v).is_ok(),
                ManifestV2::decode(key, &raw, old_ids.iter(), &ov).is_ok(),
            ),
            p if p == LISTS => (
                decode_list(key, &raw, ids.iter(), &v).is_ok(),
                decode_list(key, &raw, old_ids.iter(), &ov).is_ok(),
            ),
            p if p == INDEX => (
                IndexFile::decode(key, &raw, ids.iter(), &v).is_ok(),
                IndexFile::decode(key, &raw, old_ids.iter(), &ov).is_ok(),
            ),
            _ => {
                let opened = open_pack(key, &raw, ids.iter(), &v).unwrap();
                let data_now = codec::decode(opened.data, ids.iter(), key).is_ok();
                let data_then = codec::decode(opened.data, old_ids.iter(), key).is_ok();
                let meta_then = open_pack(key, &raw, old_ids.iter(), &ov).is_ok();
                (data_now, data_then || meta_then)
            }
        };
        assert!(now, "{key} opens with generation 2's keys");
        assert!(!then, "{key} must not open with generation 1's keys alone");
    }
    assert_eq!(
        seen.len(),
        4,
        "a manifest, a list, an index file and packs: {new:?}"
    );
}

/// Fails every put from the `n`-th on (a crash), for n = 0, 1, ...: no
/// new snapshot appears, everything the next backup trusts (snapshots,
/// index files, lists) still reads, every indexed pack is there; then a
/// healthy backup succeeds on top of what the interrupted ones left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_v2_backup_leaves_nothing_visible() {
    let f = Fixture::new(10_000).await;
    let first = f.backup().await.manifest;
    // A few changed pages, so the next list is a delta; small packs, so
    // there are several of them.
    change_rows(&f.db, 10_000, 30);
    let small_packs = support::pack_size(16 << 10);
    let ks = f.owner_keys().await;
    let spec = support::sqlite("app", &f.db);
    let plain = Repository::open_v2(f.mem.clone()).await.unwrap();
    let mut n = 0;
    let done = loop {
        let mut faulty = FaultyStorage::new(f.mem.clone());
        faulty.abort_after = Some(n);
        let repo = f.writer_repo(Arc::new(faulty)).await;
        let result = backup_many_v2(&[&repo], &spec, &small_packs)
            .await
            .unwrap()
            .pop()
            .unwrap();
        if let Ok(s) = result {
            break s.manifest;
        }
        let all = plain.snapshots_v2(&ks).await.unwrap();
        let listed: Vec<&str> = all
            .snapshots
            .iter()
            .map(|s| s.manifest.id.as_str())
            .collect();
        assert_eq!(
            listed,
            [first.id.as_str()],
            "crash after {n} puts: snapshots"
        );
        assert!(
            all.unreadable.is_empty(),
            "crash after {n} puts: {:?}",
            all.unreadable
        );
        let index = plain.index_v2(&ks).await.unwrap();
        assert!(
            index.rejected.is_empty() && index.unreadable.is_empty(),
            "crash after {n}"
        );
        for pack in &index.index.packs {
            assert!(
                f.mem.keys().contains(pack),
                "crash after {n}: indexed {pack} is missing"
            );
        }
        let state = plain.list_state(&ks, &first).await.unwrap();
        assert_eq!(state.list_blake3(), first.list_blake3);
        n += 1;
        assert!(n < 200, "the backup never succeeded");
    };
    println!("a healthy backup after {n} interrupted ones");
    // The lock, several packs, an index file, the list, the manifest.
    assert!(n > 5, "only {n} puts before the backup succeeded");
    assert_eq!(done.parent.as_deref(), Some(first.id.as_str()));
    let state = plain.list_state(&ks, &done).await.unwrap();
    let page = done.page_size.unwrap() as usize;
    assert_eq!(
        state.nodes().next().unwrap().chunks,
        page_ids(&f.db, &ks, page)
    );
}

/// Two targets of one key set: the parent is the newest snapshot both
/// hold, so a snapshot only one of them has is never a parent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parent_is_a_snapshot_every_target_holds() {
    let f = Fixture::new(2_000).await;
    // Two targets initialised together, with the fixture's writer.
    let other = Arc::new(MemoryStorage::default());
    let owner = &f.owner;
    let a = Arc::new(MemoryStorage::default());
    init(
        &[
            a.clone() as Arc<dyn Storage>,
            other.clone() as Arc<dyn Storage>,
        ],
        owner,
        &[],
        None,
    )
    .await
    .unwrap();
    for mem in [&a, &other] {
        let repo = Repository::open_v2(mem.clone()).await.unwrap();
        keyadmin::add_writer(&repo, owner, "app-1", &f.writer.public(), &admin())
            .await
            .unwrap();
    }
    let spec = support::sqlite("app", &f.db);
    let (ra, rb) = (
        f.writer_repo(a.clone()).await,
        f.writer_repo(other.clone()).await,
    );
    let both = |rs: Vec<Result<BackupSummary<ManifestV2>, backup_core::Error>>| -> Vec<ManifestV2> {
        rs.into_iter().map(|r| r.unwrap().manifest).collect()
    };
    let first = both(backup_many_v2(&[&ra, &rb], &spec, &opts()).await.unwrap());
    assert_eq!(first[0].id, first[1].id, "one snapshot on both");
    change_rows(&f.db, 2_000, 5);
    let only_a = both(backup_many_v2(&[&ra], &spec, &opts()).await.unwrap());
    assert_eq!(only_a[0].parent.as_deref(), Some(first[0].id.as_str()));
    change_rows(&f.db, 2_000, 5);
    let third = both(backup_many_v2(&[&ra, &rb], &spec, &opts()).await.unwrap());
    for (m, mem) in third.iter().zip([&a, &other]) {
        assert_eq!(m.parent.as_deref(), Some(first[0].id.as_str()), "{m:?}");
        assert_eq!(
            lists_of(mem, &m.id),
            [format!("{LISTS}{}/d-{}", m.id, first[0].id)]
        );
    }
}

/// A pinned format 2 backup writes `pins/<id>`: version 2, to M.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_v2_backup_writes_a_version_2_pin() {
    let f = Fixture::new(500).await;
    let repo = f.writer_repo(f.mem.clone()).await;
    let pinned = BackupOptions {
        pin: true,
        ..opts()
    };
    let spec = support::sqlite("app", &f.db);
    let m = backup_many_v2(&[&repo], &spec, &pinned)
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
        .manifest;
    let key = format!("pins/{}", m.id);
    let ks = f.owner_keys().await;
    let plain = codec::decode(&object(&f.mem, &key), ks.data().unwrap().iter(), &key);
    let record: serde_json::Value = serde_json::from_slice(&plain.unwrap()).unwrap();
    assert_eq!(record["version"], 2);
    assert_eq!(record["snapshot"], m.id.as_str());
}

/// Deduplication trusts only signed index files: once the only index file
/// naming the stored chunks is re-signed by a key the keyring does not
/// list, the next backup stores every chunk again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_index_files_are_deduplicated_against() {
    let f = Fixture::new(2_000).await;
    let first = f.backup().await.manifest;
    let ks = f.owner_keys().await;
    let ids = ks.data().unwrap();
    let stranger = Signer::writer(&WriterKey::generate(), ks.id().clone());
    for key in support::keys_under(&f.mem, INDEX) {
        let (file, _) =
            IndexFile::decode(&key, &object(&f.mem, &key), ids.iter(), &ks.verifier()).unwrap();
        let forged_key = format!("{INDEX}{}", hex::encode(rand::random::<[u8; 16]>()));
        let forged = file
            .encode(&forged_key, &stranger, &ks.metadata_recipient())
            .unwrap();
        f.mem.delete(&key).await.unwrap();
        support::v2::put(
            &Repository::open_v2(f.mem.clone()).await.unwrap(),
            &forged_key,
            forged,
        )
        .await;
    }
    let again = f.backup().await.manifest;
    assert_eq!(again.new_bytes, first.size, "every chunk was stored again");
    let repo = Repository::open_v2(f.mem.clone()).await.unwrap();
    let index = repo.index_v2(&ks).await.unwrap();
    assert!(
        !index.rejected.is_empty(),
        "the forged index files are rejected"
    );
    let state = repo.list_state(&ks, &again).await.unwrap();
    for (id, _) in state.nodes().flat_map(|n| &n.chunks) {
        assert!(index.index.usable(id), "{id} is in a signed index file");
    }
}

/// A files source: directories, files and a symlink in the list state,
/// each file's chunks its bytes keyed; an appended file makes a delta.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_files_tree_backs_up_entry_by_entry() {
    let f = Fixture::new(1).await;
    let (_tmp, data) = support::data_dir();
    std::fs::create_dir(data.join("sub")).unwrap();
    // Big enough (about 300 chunks) that a delta is cheaper than a full list.
    let big: Vec<u8> = (0..5_000_000u32)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    std::fs::write(data.join("sub/big.bin"), &big).unwrap();
    std::fs::write(data.join("a.txt"), b"hello").unwrap();
    std::os::unix::fs::symlink("a.txt", data.join("link")).unwrap();
    let spec = support::files("docs", &data);
    let repo = f.writer_repo(f.mem.clone()).await;
    let run = || async {
        backup_many_v2(&[&repo], &spec, &opts())
            .await
            .unwrap()
            .pop()
            .unwrap()
            .unwrap()
            .manifest
    };
    let first = run().await;
    let mut more = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("sub/big.bin"))
        .unwrap();
    std::io::Write::write_all(&mut more, &[9u8; 50_000]).unwrap();
    let second = run().await;
    assert_eq!(second.parent.as_deref(), Some(first.id.as_str()));
    let ks = f.owner_keys().await;
    let plain = Repository::open_v2(f.mem.clone()).await.unwrap();
    let state = plain.list_state(&ks, &second).await.unwrap();
    let paths: Vec<String> = state
        .nodes()
        .map(|n| match &n.entry {
            backup_core::source::Entry::File { path, .. }
            | backup_core::source::Entry::Dir { path, .. }
            | backup_core::source::Entry::Symlink { path, .. } => path.clone(),
        })
        .collect();
    assert_eq!(paths, ["a.txt", "link", "sub", "sub/big.bin"]);
    let big_node = state.nodes().last().unwrap();
    let bytes = std::fs::read(data.join("sub/big.bin")).unwrap();
    let mut at = 0usize;
    for (id, len) in &big_node.chunks {
        let piece = &bytes[at..at + *len as usize];
        assert_eq!(*id, ChunkId::keyed(&ks.chunk_key(), piece));
        at += *len as usize;
    }
    assert_eq!(at, bytes.len());
    assert!(
        second.new_bytes < bytes.len() as u64 / 2,
        "only the tail is new: {second:?}"
    );
}

/// A parent whose list cannot be rebuilt (its list object is damaged) is
/// no base for a delta: the backup writes a full list, which restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_whose_list_cannot_be_rebuilt_gets_a_full_list() {
    let f = Fixture::new(2_000).await;
    let first = f.backup().await.manifest;
    support::flip_middle_byte(&f.mem, &format!("{LISTS}{}/full", first.id));
    change_rows(&f.db, 2_000, 5);
    let second = f.backup().await.manifest;
    assert_eq!(second.parent, None);
    assert_eq!(
        lists_of(&f.mem, &second.id),
        [format!("{LISTS}{}/full", second.id)]
    );
    let ks = f.owner_keys().await;
    let repo = Repository::open_v2(f.mem.clone()).await.unwrap();
    let state = repo.list_state(&ks, &second).await.unwrap();
    let page = second.page_size.unwrap() as usize;
    assert_eq!(
        state.nodes().next().unwrap().chunks,
        page_ids(&f.db, &ks, page)
    );
}
