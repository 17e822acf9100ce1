//! Format 2 repositories for the read-side tests: a repository made by
//! `init` on an in-memory target with an owner and a writer, and snapshots
//! written straight from the format encoders (packs with
//! `pack2::encode_pack`, a signed index file, a full list or a delta, a
//! signed manifest), since the v2 backup is another branch's.
//!
//! Every object is written under the keys of a [`KeySet`] (its recipients,
//! its chunk key K) and sealed as a [`Seal`] says: genuinely by a signer,
//! or forged (signed under another object's key, or with no signature line
//! at all). A forger with a key the keyring does not list, or a removed
//! writer's key, is just a `Seal::By` with that signer.
//!
//! Like the rest of `support`, it builds and never asserts what a test
//! relies on (it panics only when asked to forge what cannot be forged:
//! an alteration of text the object does not hold).

use std::sync::Arc;

use backup_core::chunk::{ChunkHasher, ChunkId};
use backup_core::codec;
use backup_core::keyadmin::{self, AdminOptions, Owner};
use backup_core::keys::{generate_identity, Identities, WriterKey};
use backup_core::keyset::{Holding, KeySet};
use backup_core::repo::format::list2::object::{encode_delta, encode_full};
use backup_core::repo::format::list2::{Delta, ListState, Named};
use backup_core::repo::format::pack2::{encode_pack, IndexFile, PackInfo};
use backup_core::repo::init::init;
use backup_core::repo::{Access, ManifestV2, Repository};
use backup_core::sign::Signer;
use backup_core::source::{Entry, SourceKind};
use backup_core::storage::memory::MemoryStorage;
use backup_core::storage::{PutMode, Storage};
use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};

/// A format 2 repository on an in-memory target, with its owner and one
/// writer ("app-1"), and the key sets each opens.
pub struct V2 {
    pub mem: Arc<MemoryStorage>,
    pub repo: Repository,
    pub owner: Owner,
    pub owner_keys: KeySet,
    pub writer: WriterKey,
    pub writer_keys: KeySet,
}

pub fn identity() -> age::x25519::Identity {
    let (text, _) = generate_identity();
    Identities::parse(&text, "test").unwrap().x25519()[0].clone()
}

/// The holding of `id`, as a host with that identity file has it.
pub fn holding(id: &age::x25519::Identity) -> Holding {
    use age::secrecy::ExposeSecret;
    let text = id.to_string().expose_secret().to_string();
    Holding::Identities(Identities::parse(&text, "test").unwrap())
}

impl V2 {
    /// A fresh repository: `init` by a new owner, then `writer add app-1`.
    pub async fn new() -> V2 {
        let owner = Owner::new(identity());
        let mem = Arc::new(MemoryStorage::default());
        init(&[mem.clone() as Arc<dyn Storage>], &owner, &[], None)
            .await
            .unwrap();
        let repo = Repository::open_v2(mem.clone()).await.unwrap();
        let writer = WriterKey::generate();
        keyadmin::add_writer(&repo, &owner, "app-1", &writer.public(), &opts())
            .await
            .unwrap();
        let owner_keys = owner_keys(&repo, &owner).await;
        let writer_keys = KeySet::open(
            &repo,
            &owner.public(),
            &Holding::Writer(writer.clone()),
            None,
        )
        .await
        .unwrap();
        V2 {
            mem,
            repo,
            owner,
            owner_keys,
            writer,
            writer_keys,
        }
    }

    /// `writer remove app-1` as of `since`; the owner's key set is opened
    /// again (the remove started a new generation).
    pub async fn remove_writer(&mut self, since: DateTime<Utc>) {
        keyadmin::remove_writer(&self.repo, &self.owner, "app-1", Some(since), &opts())
            .await
            .unwrap();
        self.owner_keys = owner_keys(&self.repo, &self.owner).await;
    }

    /// The writer's signer (also after it was removed: what a thief of
    /// its key holds).
    pub fn writer_signer(&self) -> Signer {
        Signer::writer(&self.writer, self.owner_keys.id().clone())
    }

    /// `storage` (this repository, or a copy of it) opened with the keys
    /// `holding` gives, trusting this repository's owner.
    pub async fn open_as(&self, storage: Arc<dyn Storage>, holding: Holding) -> Repository {
        let trust = self.owner.public();
        let access = Access {
            trust,
            holding,
            memory: None,
        };
        Repository::open_with(storage, Some(&access)).await.unwrap()
    }

    /// A signer of this key set's id that the keyring does not list.
    pub fn stranger(&self) -> Signer {
        Signer::writer(&WriterKey::generate(), self.owner_keys.id().clone())
    }

    /// The repository opened with the owner's identity (or the writer's
    /// key), as a host configured with it opens it.
    pub async fn opened(&self, as_writer: bool) -> Repository {
        let holding = match as_writer {
            true => Holding::Writer(self.writer.clone()),
            false => holding(self.owner.identity()),
        };
        let access = Access {
            trust: self.owner.public(),
            holding,
            memory: None,
        };
        Repository::open_with(self.mem.clone(), Some(&access))
            .await
            .unwrap()
    }
}

fn opts() -> AdminOptions {
    AdminOptions::default()
}

async fn owner_keys(repo: &Repository, owner: &Owner) -> KeySet {
    KeySet::open(repo, &owner.public(), &holding(owner.identity()), None)
        .await
        .unwrap()
}

/// How an object is sealed.
#[derive(Clone, Debug)]
pub enum Seal {
    /// Signed by this signer under the object's own key: genuine when the
    /// keyring trusts the signer.
    By(Signer),
    /// Signed by this signer under another object key, stored under its
    /// own: a moved object.
    Under(Signer, String),
    /// Signed by this signer, then the first `from` in the signed text
    /// replaced by `to`: an object changed after it was signed.
    Altered {
        by: Signer,
        from: String,
        to: String,
    },
    /// No signature line.
    Unsigned,
}

impl Seal {
    /// The signer of `keys` (writer or owner).
    pub fn of(keys: &KeySet) -> Seal {
        Seal::By(keys.signer().expect("a key set that signs").clone())
    }

    /// `body` stored under `key`, sealed this way, to `keys`' current M.
    pub fn encode(&self, key: &str, body: Vec<u8>, keys: &KeySet) -> Vec<u8> {
        let plain = match self {
            Seal::By(s) => s.seal(key, body).unwrap(),
            Seal::Under(s, other) => s.seal(other, body).unwrap(),
            Seal::Altered { by, from, to } => {
                let signed = String::from_utf8(by.seal(key, body).unwrap()).unwrap();
                assert!(signed.contains(from.as_str()), "{key} holds no {from:?}");
                signed.replacen(from.as_str(), to, 1).into_bytes()
            }
            Seal::Unsigned => body,
        };
        let m = keys.metadata_recipient();
        codec::encode(&plain, &[&m as &dyn age::Recipient], 6).unwrap()
    }
}

/// One file of a snapshot: its entry and its chunks' bytes, in order.
pub type FileData = (Entry, Vec<Vec<u8>>);

/// A file entry of `data` cut into chunks of `chunk` bytes.
pub fn file(path: &str, data: &[u8], chunk: usize) -> FileData {
    let entry = Entry::File {
        path: path.into(),
        mode: 0o644,
        size: data.len() as u64,
        mtime: 1_764_000_000,
    };
    (entry, data.chunks(chunk).map(<[u8]>::to_vec).collect())
}

/// The list state of `files` under `keys`' chunk key.
pub fn state_of(keys: &KeySet, files: &[FileData]) -> ListState {
    let hasher = ChunkHasher::Keyed(keys.chunk_key());
    let mut state = ListState::default();
    for (entry, chunks) in files {
        let ids = (chunks.iter()).map(|c| (hasher.id(c), c.len() as u32));
        state.insert(entry.clone(), ids.collect()).unwrap();
    }
    state
}

/// What a snapshot is made of, and how each of its objects is sealed.
pub struct Snap {
    pub id: String,
    pub source: String,
    pub kind: SourceKind,
    pub finished: DateTime<Utc>,
    pub files: Vec<FileData>,
    /// The snapshot whose state its list is a delta from; `None`: a full list.
    pub parent: Option<(String, ListState)>,
    pub manifest: Seal,
    pub list: Seal,
    pub index: Seal,
    pub page_size: Option<u32>,
}

impl Snap {
    /// A snapshot of `files` taken at `finished`, every object sealed by `seal`.
    pub fn new(source: &str, finished: DateTime<Utc>, files: Vec<FileData>, seal: Seal) -> Snap {
        Snap {
            id: snapshot_id(finished),
            source: source.into(),
            kind: SourceKind::Files,
            finished,
            files,
            parent: None,
            manifest: seal.clone(),
            list: seal.clone(),
            index: seal,
            page_size: None,
        }
    }

    /// A delta from `parent` (its id and state) instead of a full list.
    pub fn delta_from(mut self, parent: &Written) -> Snap {
        self.parent = Some((parent.manifest.id.clone(), parent.state.clone()));
        self
    }
}

/// A snapshot as written.
#[derive(Clone, Debug)]
pub struct Written {
    pub manifest: ManifestV2,
    pub state: ListState,
    /// The key of its list object.
    pub list_key: String,
}

/// A snapshot id for `t`: `<%Y%m%dT%H%M%SZ>-<8 random hex>`.
pub fn snapshot_id(t: DateTime<Utc>) -> String {
    format!(
        "{}-{:08x}",
        t.format("%Y%m%dT%H%M%SZ"),
        rand::random::<u32>()
    )
}

/// Writes `snap` into `repo` under `keys` (recipients, chunk key): one pack
/// holding its chunks, an index file naming it, its list, its manifest,
/// in the order a backup writes them.
pub async fn write(repo: &Repository, keys: &KeySet, snap: Snap) -> Written {
    let state = state_of(keys, &snap.files);
    write_pack(repo, keys, &snap.files, &snap.index).await;
    let list_key = write_list(
        repo,
        keys,
        &snap.id,
        &state,
        snap.parent.as_ref(),
        &snap.list,
    )
    .await;
    let manifest = manifest_of(keys, &snap, &state);
    put_manifest(repo, keys, &manifest.key(), &manifest, &snap.manifest).await;
    Written {
        manifest,
        state,
        list_key,
    }
}

/// The manifest of `snap`, whose list is `state`.
pub fn manifest_of(keys: &KeySet, snap: &Snap, state: &ListState) -> ManifestV2 {
    let size: u64 = (snap.files.iter())
        .flat_map(|(_, c)| c.iter().map(|c| c.len() as u64))
        .sum();
    ManifestV2 {
        id: snap.id.clone(),
        source: snap.source.clone(),
        kind: snap.kind,
        host: "test-host".into(),
        writer: "app-1".into(),
        started: snap.finished - Duration::seconds(3),
        finished: snap.finished,
        size,
        files: snap.files.len() as u64,
        chunks: state.chunk_count(),
        new_bytes: size,
        uploaded_bytes: size,
        list_blake3: state.list_blake3(),
        parent: snap.parent.as_ref().map(|(id, _)| id.clone()),
        generation: keys.generation(),
        keyring: keys.keyring().serial() as u32,
        page_size: snap.page_size,
        tags: vec![],
        tool: "offsite test".into(),
    }
}

/// One pack of `files`' chunks (each once) and a signed index file naming it.
pub async fn write_pack(repo: &Repository, keys: &KeySet, files: &[FileData], index: &Seal) {
    let hasher = ChunkHasher::Keyed(keys.chunk_key());
    let mut seen = std::collections::HashSet::new();
    let (mut plain, mut chunks) = (Vec::new(), Vec::<(ChunkId, u32)>::new());
    for c in files.iter().flat_map(|(_, c)| c) {
        let id = hasher.id(c);
        if seen.insert(id) {
            plain.extend_from_slice(c);
            chunks.push((id, c.len() as u32));
        }
    }
    if chunks.is_empty() {
        return;
    }
    let name = hex::encode(rand::random::<[u8; 32]>());
    let pack = format!("packs/{}/{name}", &name[..2]);
    let info = PackInfo::from_chunks(&pack, &chunks).unwrap();
    let signer = keys.signer().expect("a key set that signs");
    let mut encoder = codec::Encoder::new(3).unwrap();
    let (d, m) = (keys.data_recipient().unwrap(), keys.metadata_recipient());
    let object = encode_pack(&mut encoder, &plain, &info, &pack, signer, &d, &m).unwrap();
    put(repo, &pack, object).await;
    let key = format!("index/{}", hex::encode(rand::random::<[u8; 16]>()));
    let file = IndexFile::new(&key, vec![(pack, info)]).unwrap();
    let object = match index {
        Seal::By(s) => file.encode(&key, s, &m).unwrap(),
        _ => index.encode(&key, file.write(), keys),
    };
    put(repo, &key, object).await;
}

/// The list object of snapshot `id` for `state`: a delta from `parent`
/// when given, else a full list. Returns its key.
pub async fn write_list(
    repo: &Repository,
    keys: &KeySet,
    id: &str,
    state: &ListState,
    parent: Option<&(String, ListState)>,
    seal: &Seal,
) -> String {
    let m = keys.metadata_recipient();
    let (key, body, genuine) = match parent {
        None => {
            let key = format!("lists/{id}/full");
            let encoded = |s: &Signer| encode_full(id, state, s, &m).unwrap();
            (key, state.write_full(), encoded_if_by(seal, encoded))
        }
        Some((from, parent_state)) => {
            let named = Named {
                snapshot: from.clone(),
                list_blake3: parent_state.list_blake3(),
            };
            let delta = Delta::diff(named, parent_state, id, state);
            let encoded = |s: &Signer| encode_delta(&delta, s, &m).unwrap();
            (
                format!("lists/{id}/d-{from}"),
                delta.write(),
                encoded_if_by(seal, encoded),
            )
        }
    };
    let object = genuine.unwrap_or_else(|| seal.encode(&key, body, keys));
    put(repo, &key, object).await;
    key
}

/// The format's own encoder when the seal is a plain signature (so the
/// genuine objects are exactly what the encoders write).
fn encoded_if_by(seal: &Seal, encode: impl FnOnce(&Signer) -> Vec<u8>) -> Option<Vec<u8>> {
    match seal {
        Seal::By(s) => Some(encode(s)),
        _ => None,
    }
}

/// Writes (or, for a forgery over a genuine object, replaces) `key`.
pub async fn put(repo: &Repository, key: &str, object: Vec<u8>) {
    repo.put_bytes(key, Bytes::from(object), PutMode::Overwrite)
        .await
        .unwrap();
}

/// `manifest` sealed as `seal` says, written under `key` (its own or another).
pub async fn put_manifest(
    repo: &Repository,
    keys: &KeySet,
    key: &str,
    manifest: &ManifestV2,
    seal: &Seal,
) {
    let object = match seal {
        Seal::By(s) if key == manifest.key() => {
            manifest.encode(s, &keys.metadata_recipient()).unwrap()
        }
        _ => seal.encode(key, manifest.to_body(), keys),
    };
    put(repo, key, object).await;
}

/// The stored bytes of `key` in `mem` (panics when absent).
pub fn object(mem: &MemoryStorage, key: &str) -> Vec<u8> {
    let mut out = None;
    mem.tamper(key, |d| out = Some(d.clone()));
    out.unwrap_or_else(|| panic!("{key} is not stored"))
}

/// A SQLite database of `rows` rows at `dir/name`, and its bytes.
pub fn database(dir: &std::path::Path, name: &str, rows: usize) -> (std::path::PathBuf, Vec<u8>) {
    let db = dir.join(name);
    super::add_rows(
        &db,
        "CREATE TABLE IF NOT EXISTS tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT)",
        "INSERT INTO tasks VALUES (?1, ?2, ?3)",
        0..rows,
        |i| (i as i64, format!("task {i}"), "x".repeat(i % 700)),
    );
    let bytes = std::fs::read(&db).unwrap();
    (db, bytes)
}

/// A snapshot of a SQLite database's bytes, page by page, as a backup
/// of source `app` lists it.
pub fn sqlite_snap(bytes: &[u8], finished: DateTime<Utc>, seal: Seal) -> Snap {
    let mut snap = Snap::new("app", finished, vec![file("app.db", bytes, 4096)], seal);
    snap.kind = SourceKind::Sqlite;
    snap.page_size = Some(4096);
    snap
}
