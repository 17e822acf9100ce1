//! A local target on a real filesystem that fills up: an 8 MiB tmpfs
//! (backup_core's `SmallFs`; root or `unshare -rm` is needed, and the test
//! fails saying so otherwise). A backup of a ~40 MB database that cannot be
//! stored must exit non-zero saying the target is full, and must leave the
//! repository as it was: `snapshots` works, the earlier snapshot restores and
//! passes integrity_check, no temporary file is left; after room is made the
//! next backup succeeds with nothing repaired by hand.

use std::path::Path;
use std::process::Command;

use backup_core::storage::testing::SmallFs;
use rusqlite::Connection;

use crate::support::*;

const FS_SIZE: u64 = 8 << 20;
const LEVELS: u64 = 18;

fn tree_bytes(dir: &Path) -> u64 {
    find_files(dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status();
    assert!(status.unwrap().success(), "cp -a {from:?} {to:?}");
}

/// Restores `id` beside the test's files and checks it against `rows`.
fn restores_to(env: &Env, id: &str, rows: &[(i64, String, String)], case: &str) {
    let to = env.dir.path().join("check.db");
    let _ = std::fs::remove_file(&to);
    let (code, out, err) = env.run(&[
        "restore",
        "--source",
        "app",
        "--snapshot",
        id,
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{case}: restoring {id} failed:\n{out}\n{err}");
    assert_eq!(integrity(&to), "ok", "{case}: {id}");
    assert!(dump(&to) == rows, "{case}: {id} restored other rows");
    std::fs::remove_file(&to).unwrap();
}

#[test]
fn a_backup_onto_a_full_local_disk_fails_clearly_and_loses_nothing() {
    let mnt = tempfile::tempdir().unwrap();
    // Fail at once, saying how to run the test, where nothing can be mounted.
    drop(SmallFs::mount_on(mnt.path(), FS_SIZE));
    let repo = mnt.path().join("repo");
    let env = Env::with_target(repo.to_str().unwrap());
    // About 40 MB, compressing to a few MiB.
    env.make_db(&env.db(), 210_000);
    let size = std::fs::metadata(env.db()).unwrap().len();
    assert!(size > 35 << 20, "database of {size} bytes");

    // The earlier snapshot, made while `mnt` is a plain directory, is kept
    // aside and copied onto each fresh small filesystem.
    env.ok(&["backup"]);
    let first = snapshots(&env)[0]["id"].as_str().unwrap().to_string();
    let first_rows = dump(&env.db());
    let seed = env.dir.path().join("seed");
    std::fs::rename(&repo, &seed).unwrap();

    // A third of the rows change: the next backup needs a few MiB.
    Connection::open(env.db())
        .unwrap()
        .execute(
            "UPDATE tasks SET body = 'second ' || body WHERE id <= 70000",
            [],
        )
        .unwrap();
    let rows = dump(&env.db());
    let needed = {
        copy_tree(&seed, &repo);
        env.ok(&["backup"]);
        let grown = tree_bytes(&repo) - tree_bytes(&seed);
        std::fs::remove_dir_all(&repo).unwrap();
        grown
    };
    let seed_size = tree_bytes(&seed);
    assert!(
        seed_size + needed < FS_SIZE - (1 << 20),
        "the test needs both snapshots to fit in {FS_SIZE} bytes: {seed_size} + {needed}"
    );

    let mut report = Vec::new();
    for level in 0..LEVELS {
        let free = needed * level / LEVELS;
        let case = format!("{free} of the {needed} bytes needed free");
        let fs = SmallFs::mount_on(mnt.path(), FS_SIZE);
        copy_tree(&seed, &repo);
        let filler = fs.free().saturating_sub(free);
        std::fs::write(fs.path().join("filler"), vec![0u8; filler as usize]).unwrap();

        let (code, out, err) = env.run(&["backup"]);
        report.push(format!("{case}: exit {code}"));
        assert_ne!(code, 0, "{case}: backup exited 0:\n{out}\n{err}");
        assert!(
            err.contains(&format!("target local:{} is full: ", repo.display()))
                && err.contains(" free"),
            "{case}: no full-target message:\n{out}\n{err}"
        );
        let listed: Vec<String> = snapshots(&env)
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(listed, std::slice::from_ref(&first), "{case}: snapshots");
        restores_to(&env, &first, &first_rows, &case);
        assert_eq!(
            find_files(&repo.join(".tmp")),
            Vec::<std::path::PathBuf>::new(),
            "{case}: temporary files left"
        );

        // Room comes back: the next backup succeeds, nothing to repair.
        std::fs::remove_file(fs.path().join("filler")).unwrap();
        let out = env.ok(&["backup"]);
        assert!(out.contains("app -> local: snapshot"), "{case}: {out}");
        let newest = snapshots(&env)[0]["id"].as_str().unwrap().to_string();
        restores_to(&env, &newest, &rows, &case);
        drop(fs);
    }
    eprintln!("{}", report.join("\n"));
}
