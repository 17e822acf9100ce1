//! A hostile files snapshot through the binary: a list that makes `lnk` a
//! symlink to a directory outside the destination and then writes
//! `lnk/pwned` is refused with a clear error; nothing outside is written.
//! (backup-core/tests/restore_paths.rs covers the other shapes of list.)

use backup_core::codec;
use backup_core::keys::{Identities, Keys};
use backup_core::repo::Repository;

use crate::support::*;

#[test]
fn a_list_that_writes_through_a_symlink_is_refused_and_nothing_outside_changes() {
    let env = Env::with_sources(|dir| {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("lnk")).unwrap();
        std::fs::write(tree.join("lnk/pwned"), b"pwned by a list!\n").unwrap();
        format!(
            "[[sources]]\nname = \"tree\"\nkind = \"files\"\npath = \"{}\"\n",
            tree.display()
        )
    })
    // The crafted list is format 1's, which anyone holding the recipients
    // can write (format 2's signed one: backup-core's v2_read.rs).
    .format_1();
    env.ok(&["backup", "--source", "tree"]);
    let outside = env.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("pwned"), b"precious").unwrap();

    // Rewrite the list as anyone holding the recipients could.
    let snap = &snapshots(&env)[0];
    let key = format!("lists/{}", snap["id"].as_str().unwrap());
    let path = env.repo().join(&key);
    let ids = Identities::from_file(&env.key(), None).unwrap();
    let raw = std::fs::read(&path).unwrap();
    let list = String::from_utf8(codec::decode(&raw, ids.iter(), &key).unwrap()).unwrap();
    assert!(list.contains("\nD 755 lnk\n"), "{list}");
    let list = list.replace("\nD 755 lnk\n", &format!("\nL lnk {}\n", outside.display()));
    let config = std::fs::read_to_string(env.dir.path().join("offsite.toml")).unwrap();
    let recipient = config
        .split('"')
        .find(|s| s.starts_with("age1"))
        .unwrap()
        .to_string();
    let keys = Keys::from_recipients(&[recipient]).unwrap();
    std::fs::write(
        &path,
        Repository::encode_metadata(&keys, list.as_bytes()).unwrap(),
    )
    .unwrap();

    let to = env.dir.path().join("restored");
    let (code, out, err) = env.run(&[
        "restore",
        "--source",
        "tree",
        "--latest",
        "--to",
        to.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("lnk/pwned"), "{err}");
    assert!(err.contains("symlink"), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert_eq!(std::fs::read(outside.join("pwned")).unwrap(), b"precious");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    assert!(!to.exists());
    assert!(leftovers(env.dir.path()).is_empty());
}
