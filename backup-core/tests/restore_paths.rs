//! Restore against hostile chunk lists: whatever a snapshot's list says,
//! nothing is written (or chmod'ed, or opened) outside the destination.
//!
//! Anyone holding the public recipients can write a list, so these tests
//! build real snapshots and then rewrite their lists (and, where the content
//! changes, the manifest's checksum) the way such an attacker would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use backup_core::backup::BackupOptions;
use backup_core::keys::{Identities, Keys};
use backup_core::repo::{Manifest, Repository};
use backup_core::restore::RestoreOptions;
use backup_core::source::SourceKind;
use backup_core::storage::PutMode;
use backup_core::Error;
use rusqlite::Connection;

mod support;
use support::{memory_repo, source};

struct Crafted {
    dir: tempfile::TempDir,
    repo: Repository,
    keys: Keys,
    ids: Identities,
    manifest: Manifest,
}

impl Crafted {
    /// A real snapshot of the tree `make` builds under `<dir>/src`.
    async fn snapshot(kind: SourceKind, make: impl FnOnce(&Path) -> PathBuf) -> Crafted {
        let dir = tempfile::tempdir().unwrap();
        let path = make(dir.path());
        let (keys, ids, _, repo) = memory_repo().await;
        let manifest = repo
            .backup(
                &keys,
                &source("src", kind, &path),
                &BackupOptions::default(),
            )
            .await
            .unwrap()
            .manifest;
        // An "outside" directory with a file an attacker would like to replace.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("pwned"), b"precious, not to be overwritten").unwrap();
        Crafted {
            dir,
            repo,
            keys,
            ids,
            manifest,
        }
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    fn dest(&self) -> PathBuf {
        self.dir.path().join("restore/out")
    }

    async fn list(&self) -> String {
        let plain = self
            .repo
            .get_metadata(&self.manifest.list, &self.ids)
            .await
            .unwrap();
        String::from_utf8(plain).unwrap()
    }

    /// Replaces the snapshot's list with `edit(list)`, as an attacker with
    /// the recipients can.
    async fn rewrite(&self, edit: impl FnOnce(String) -> String) {
        let list = edit(self.list().await);
        let body = Repository::encode_metadata(&self.keys, list.as_bytes()).unwrap();
        self.repo
            .put_bytes(&self.manifest.list, body, PutMode::Overwrite)
            .await
            .unwrap();
    }

    async fn restore(&self, manifest: &Manifest) -> Result<(), Error> {
        self.repo
            .restore(
                &self.ids,
                manifest,
                &self.dest(),
                &RestoreOptions::default(),
            )
            .await
            .map(|_| ())
    }

    /// Every file, directory and link under the outside directory, with its
    /// content (or link target) and mode.
    fn outside_state(&self) -> BTreeMap<PathBuf, (String, u32)> {
        state_of(&self.outside())
    }

    /// Asserts that the restore failed naming `what`, wrote nothing outside,
    /// and left no destination and no staging files.
    fn assert_refused(
        &self,
        result: Result<(), Error>,
        what: &str,
        before: &BTreeMap<PathBuf, (String, u32)>,
    ) {
        let e = result.expect_err("the restore must refuse this list");
        assert!(
            matches!(e, Error::UnsafeEntry { .. }),
            "refused with the wrong error: {e}"
        );
        let msg = e.to_string();
        assert!(msg.contains(what), "{msg}");
        assert_eq!(&self.outside_state(), before, "nothing outside changed");
        assert!(
            std::fs::symlink_metadata(self.dest()).is_err(),
            "no destination"
        );
        let parent = self.dest().parent().unwrap().to_path_buf();
        let left: Vec<_> = std::fs::read_dir(&parent)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "staging left behind: {left:?}");
    }
}

fn state_of(root: &Path) -> BTreeMap<PathBuf, (String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode();
            let content = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                stack.push(p.clone());
                "dir".into()
            } else {
                String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()
            };
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), (content, mode));
        }
    }
    out
}

/// A files snapshot of `src/lnk/pwned` (17 bytes) and `src/keep.txt`.
async fn tree_with_lnk_dir() -> Crafted {
    Crafted::snapshot(SourceKind::Files, |dir| {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("lnk")).unwrap();
        std::fs::write(src.join("lnk/pwned"), b"pwned by a list!\n").unwrap();
        std::fs::write(src.join("keep.txt"), b"ordinary file").unwrap();
        src
    })
    .await
}

fn replace_line(list: &str, starts: &str, with: &str) -> String {
    let mut found = false;
    let out: Vec<String> = list
        .lines()
        .map(|l| {
            if l.starts_with(starts) {
                found = true;
                with.to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(found, "no line starting {starts:?} in\n{list}");
    out.join("\n") + "\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_under_an_absolute_symlink_is_refused_and_nothing_is_written_outside() {
    let c = tree_with_lnk_dir().await;
    let outside = c.outside().display().to_string();
    c.rewrite(|l| replace_line(&l, "D 755 lnk", &format!("L lnk {outside}")))
        .await;
    let before = c.outside_state();
    let r = c.restore(&c.manifest).await;
    c.assert_refused(r, "lnk/pwned", &before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_under_a_relative_symlink_leading_out_is_refused() {
    let c = tree_with_lnk_dir().await;
    // <dir>/restore/out/lnk -> ../../outside is <dir>/outside.
    c.rewrite(|l| replace_line(&l, "D 755 lnk", "L lnk ../../outside"))
        .await;
    let before = c.outside_state();
    let r = c.restore(&c.manifest).await;
    c.assert_refused(r, "lnk/pwned", &before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_after_a_link_of_the_same_name_is_refused() {
    let c = tree_with_lnk_dir().await;
    let outside = c.outside().display().to_string();
    c.rewrite(|l| replace_line(&l, "D 755 lnk", &format!("L lnk {outside}\nD 777 lnk")))
        .await;
    let before = c.outside_state();
    let r = c.restore(&c.manifest).await;
    c.assert_refused(r, "lnk", &before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_under_a_link_is_refused() {
    let c = tree_with_lnk_dir().await;
    let outside = c.outside().display().to_string();
    c.rewrite(|l| {
        let l = replace_line(&l, "D 755 lnk", &format!("L lnk {outside}\nD 755 lnk/sub"));
        l.replace("lnk/pwned", "lnk/sub/pwned")
    })
    .await;
    let before = c.outside_state();
    let r = c.restore(&c.manifest).await;
    c.assert_refused(r, "lnk/sub", &before);
    assert!(!c.outside().join("sub").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_under_a_file_and_duplicate_entries_are_refused() {
    let c = tree_with_lnk_dir().await;
    let orig = c.list().await;
    c.rewrite(|l| replace_line(&l, "D 755 lnk", "F 644 0 0 lnk"))
        .await;
    let before = c.outside_state();
    let r = c.restore(&c.manifest).await;
    c.assert_refused(r, "lnk/pwned", &before);

    // The same file twice: a link could be swapped in between the two.
    let file: Vec<&str> = orig
        .lines()
        .skip_while(|x| !x.starts_with("F 644 17"))
        .take(2)
        .collect();
    let twice = format!("{orig}{}\n", file.join("\n"));
    c.rewrite(|_| twice).await;
    let r = c.restore(&c.manifest).await;
    c.assert_refused(r, "lnk/pwned", &before);

    // A link over a file the list already wrote.
    let outside = c.outside().display().to_string();
    c.rewrite(|_| format!("{orig}L keep.txt {outside}/pwned\n"))
        .await;
    let r = c.restore(&c.manifest).await;
    c.assert_refused(r, "keep.txt", &before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_pointing_anywhere_are_restored_as_links_and_nothing_is_followed() {
    use std::os::unix::fs::PermissionsExt;
    let c = Crafted::snapshot(SourceKind::Files, |dir| {
        let src = dir.join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), b"data").unwrap();
        // Absolute and `..` targets are legitimate content.
        std::os::unix::fs::symlink(dir.join("outside/pwned"), src.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", src.join("d/up")).unwrap();
        src
    })
    .await;
    std::fs::set_permissions(
        c.outside().join("pwned"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let before = c.outside_state();
    c.restore(&c.manifest).await.unwrap();
    assert_eq!(c.outside_state(), before, "nothing outside changed");
    let dest = c.dest();
    assert_eq!(
        std::fs::read_link(dest.join("abs")).unwrap(),
        c.outside().join("pwned")
    );
    assert_eq!(
        std::fs::read_link(dest.join("d/up")).unwrap(),
        Path::new("../../outside")
    );
    assert_eq!(std::fs::read(dest.join("d/f")).unwrap(), b"data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_snapshot_with_a_side_file_or_a_link_is_refused() {
    let c = Crafted::snapshot(SourceKind::Sqlite, |dir| {
        let db = dir.join("app.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        db
    })
    .await;
    let before = c.outside_state();
    // A -wal restored beside the database would be replayed into it.
    c.rewrite(|l| format!("{l}F 644 0 0 app.db-wal\n")).await;
    let r = c.restore(&c.manifest).await;
    c.assert_refused(r, "app.db-wal", &before);

    // A database that is a link: every later step would follow it.
    let outside = c.outside().display().to_string();
    c.rewrite(|_| format!("offsite-list 1\nL app.db {outside}/pwned\n"))
        .await;
    let mut m = c.manifest.clone();
    m.sha256 = hex_sha256(b"");
    let r = c.restore(&m).await;
    c.assert_refused(r, "app.db", &before);
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
