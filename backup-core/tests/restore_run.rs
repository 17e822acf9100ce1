//! A whole restore run ([`backup_core::restore_run`]) on real SQLite files
//! and in-memory targets: when the restore hooks run and what their failure
//! means, the snapshot chosen across targets, and `--all` going on past a
//! source that fails.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use backup_core::backup::BackupOptions;
use backup_core::each::{PlannedTarget, SharedError};
use backup_core::error::chain_text;
use backup_core::keys::{Identities, Keys};
use backup_core::repo::{Repository, Selector, PRE_RESTORE_TAG};
use backup_core::restore_run::{
    self, Outcome, PlannedRestore, PreRestore, RestoreError, RestoreEvent, RestoreObserver,
    RestorePlan, RestoreReport, RestoreRunOptions,
};
use backup_core::run::{Hook, Hooks};
use backup_core::source::SourceKind;
use backup_core::storage::memory::MemoryStorage;
use backup_core::Error;

mod support;
use support::{add_rows, integrity, keypair_and_recipient, memory_repo_for, row_count, sqlite};

/// A SQLite database at `path` holding `rows` rows (and no others).
fn make_db(path: &Path, rows: usize) {
    add_rows(
        path,
        "CREATE TABLE IF NOT EXISTS t (n INTEGER, pad TEXT); DELETE FROM t;",
        "INSERT INTO t VALUES (?1, hex(randomblob(200)))",
        0..rows,
        |n| [n as i64],
    );
}

fn rows(path: &Path) -> i64 {
    row_count(path, "t")
}

/// One hook call: the source, the hook, its `errors`, and the rows in the
/// source's database at that moment (`None`: no database there).
type Call = (String, Hook, Option<String>, Option<i64>);

/// Hooks that are configured for `has`, fail for `fail`, and record each
/// call with what the database held when it ran.
#[derive(Default)]
struct Recorder {
    paths: Vec<(String, PathBuf)>,
    has: Vec<Hook>,
    fail: Vec<Hook>,
    calls: Mutex<Vec<Call>>,
}

impl Recorder {
    fn calls(&self) -> Vec<(String, Hook)> {
        let calls = self.calls.lock().unwrap();
        calls.iter().map(|c| (c.0.clone(), c.1)).collect()
    }
}

impl Hooks for Recorder {
    fn has(&self, _source: &str, hook: Hook) -> bool {
        self.has.contains(&hook)
    }

    fn run(&self, source: &str, hook: Hook, errors: Option<&str>) -> Result<(), String> {
        let path = self.paths.iter().find(|(s, _)| s == source).map(|p| &p.1);
        let held = path.filter(|p| p.exists()).map(|p| rows(p));
        let call = (source.to_string(), hook, errors.map(String::from), held);
        self.calls.lock().unwrap().push(call);
        if self.fail.contains(&hook) {
            return Err(format!("source {source:?}: {} hook failed", hook.name()));
        }
        Ok(())
    }
}

/// The events, in words.
#[derive(Default)]
struct Events(Mutex<Vec<String>>);

impl RestoreObserver for Events {
    fn event(&self, event: RestoreEvent<'_>) {
        let line = match event {
            RestoreEvent::TargetPassedOver { source, error } => {
                format!("{source}: passed over: {}", chain_text(error))
            }
            RestoreEvent::Downloading {
                source, snapshot, ..
            } => format!("{source}: downloading {snapshot}"),
            RestoreEvent::Downloaded { source } => format!("{source}: downloaded"),
            RestoreEvent::NoPreRestoreSnapshot { source, .. } => {
                format!("{source}: no pre-restore")
            }
            RestoreEvent::Finished(r) => format!("{}: finished ok={}", r.source, r.ok()),
        };
        self.0.lock().unwrap().push(line);
    }
}

/// A repository on an in-memory store holding one snapshot of each source.
struct Fixture {
    dir: tempfile::TempDir,
    keys: Keys,
    recipient: String,
    ids: Identities,
    repo: Repository,
}

impl Fixture {
    async fn new() -> Fixture {
        let (keys, ids, recipient) = keypair_and_recipient();
        let (_, repo) = memory_repo_for(&keys).await;
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            keys,
            recipient,
            ids,
            repo,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `name`'s database with `rows` rows, backed up.
    async fn backed_up(&self, name: &str, rows: usize) -> String {
        let path = self.path(&format!("{name}.db"));
        make_db(&path, rows);
        let opts = BackupOptions::default();
        let s = self
            .repo
            .backup(&self.keys, &sqlite(name, &path), &opts)
            .await;
        s.unwrap().manifest.id
    }

    fn target(&self, name: &str) -> PlannedTarget {
        PlannedTarget {
            name: name.into(),
            repo: Ok(self.repo.clone()),
        }
    }

    /// Every named source back to its own path from the one target, with
    /// `--force` and a pre-restore snapshot.
    fn plan(&self, sources: &[&str]) -> RestorePlan {
        let sources = sources
            .iter()
            .map(|name| {
                let path = self.path(&format!("{name}.db"));
                PlannedRestore {
                    spec: sqlite(name, &path),
                    to: path,
                }
            })
            .collect();
        // The repository's own recipients (another set would be refused).
        let keys = Keys::from_recipients(std::slice::from_ref(&self.recipient)).unwrap();
        RestorePlan {
            sources,
            selector: Selector::Latest,
            targets: vec![self.target("mem")],
            fallbacks: Vec::new(),
            options: RestoreRunOptions {
                force: true,
                check_database: true,
                force_database_check: false,
                test: false,
                pre_restore: Some(PreRestore {
                    keys: Ok(keys),
                    options: BackupOptions::default(),
                }),
            },
        }
    }

    fn recorder(&self, names: &[&str], has: &[Hook], fail: &[Hook]) -> Arc<Recorder> {
        Arc::new(Recorder {
            paths: names
                .iter()
                .map(|n| (n.to_string(), self.path(&format!("{n}.db"))))
                .collect(),
            has: has.to_vec(),
            fail: fail.to_vec(),
            calls: Mutex::default(),
        })
    }

    async fn run(&self, plan: RestorePlan, hooks: Arc<Recorder>) -> (RestoreReport, Vec<String>) {
        let events = Events::default();
        let report = restore_run::run(plan, &self.ids, hooks, &events).await;
        (report, events.0.into_inner().unwrap())
    }

    async fn pre_restore_snapshots(&self) -> usize {
        let all = self.repo.snapshots(&self.ids).await.unwrap();
        let pre = all
            .iter()
            .filter(|m| m.tags.iter().any(|t| t == PRE_RESTORE_TAG));
        pre.count()
    }

    /// The files in the fixture's directory.
    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

const BOTH: [Hook; 2] = [Hook::BeforeRestore, Hook::AfterRestore];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_restore_stops_the_app_for_the_switch_only_and_can_be_undone() {
    let fx = Fixture::new().await;
    let good = fx.backed_up("app", 50).await;
    let db = fx.path("app.db");
    make_db(&db, 7); // what went wrong since
    let hooks = fx.recorder(&["app"], &BOTH, &[]);
    let (report, events) = fx.run(fx.plan(&["app"]), hooks.clone()).await;

    assert!(report.ok(), "{report:?}");
    assert_eq!(report.failure_summary(), None);
    let calls = hooks.calls.lock().unwrap().clone();
    // before_restore once the snapshot is downloaded and verified, with the
    // old database still in place; after_restore with the restored one.
    assert_eq!(
        calls,
        vec![
            ("app".into(), Hook::BeforeRestore, None, Some(7)),
            ("app".into(), Hook::AfterRestore, None, Some(50)),
        ]
    );
    assert_eq!(
        events,
        vec![
            format!("app: downloading {good}"),
            "app: downloaded".into(),
            "app: finished ok=true".into()
        ]
    );
    let Outcome::Restored { restored, .. } = &report.sources[0].outcome else {
        panic!("{report:?}")
    };
    assert_eq!(restored.manifest.id, good);
    assert_eq!(restored.target, "mem");
    assert_eq!(rows(&db), 50);
    assert_eq!(integrity(&db), "ok");
    // The replaced database was snapshotted first, and moved aside whole.
    assert!(restored.pre_restore.is_some());
    assert_eq!(fx.pre_restore_snapshots().await, 1);
    assert_eq!(restored.summary.moved_aside.len(), 1);
    assert_eq!(rows(&restored.summary.moved_aside[0]), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_before_restore_changes_nothing_and_after_restore_does_not_run() {
    let fx = Fixture::new().await;
    fx.backed_up("app", 50).await;
    let db = fx.path("app.db");
    make_db(&db, 7);
    let before = fx.files();
    let hooks = fx.recorder(&["app"], &BOTH, &[Hook::BeforeRestore]);
    let (report, _) = fx.run(fx.plan(&["app"]), hooks.clone()).await;

    assert!(!report.ok());
    assert_eq!(report.not_restored(), vec!["app"]);
    match &report.sources[0].outcome {
        Outcome::Failed {
            error: RestoreError::BeforeRestore(m),
            after_restore: None,
        } => assert!(m.contains("before_restore hook failed"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(hooks.calls(), vec![("app".into(), Hook::BeforeRestore)]);
    // Untouched: same rows, nothing moved aside or left staged, no snapshot.
    assert_eq!(rows(&db), 7);
    assert_eq!(integrity(&db), "ok");
    assert_eq!(fx.files(), before);
    assert_eq!(fx.pre_restore_snapshots().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_restore_runs_with_the_error_when_the_switch_is_refused() {
    let fx = Fixture::new().await;
    fx.backed_up("app", 50).await;
    let db = fx.path("app.db");
    make_db(&db, 7);
    // Another process has the database open (the app the hook did not stop).
    let mut holder = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec 3<\"$0\"; exec sleep 60")
        .arg(&db)
        .spawn()
        .expect("sh");
    while backup_core::restore::check_not_in_use(&db, SourceKind::Sqlite).is_ok() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let hooks = fx.recorder(&["app"], &BOTH, &[]);
    let (report, _) = fx.run(fx.plan(&["app"]), hooks.clone()).await;
    holder.kill().unwrap();
    holder.wait().unwrap();

    match &report.sources[0].outcome {
        Outcome::Failed {
            error: RestoreError::Restore(Error::InUse { .. }),
            after_restore: None,
        } => {}
        other => panic!("{other:?}"),
    }
    let calls = hooks.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].1, Hook::AfterRestore);
    let error = calls[1]
        .2
        .as_deref()
        .expect("OFFSITE_ERROR for after_restore");
    assert!(error.contains(&db.display().to_string()), "{error}");
    assert_eq!(rows(&db), 7);
    assert_eq!(fx.pre_restore_snapshots().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_after_restore_fails_the_source_that_was_restored() {
    let fx = Fixture::new().await;
    fx.backed_up("app", 50).await;
    let hooks = fx.recorder(&["app"], &BOTH, &[Hook::AfterRestore]);
    let (report, _) = fx.run(fx.plan(&["app"]), hooks).await;

    match &report.sources[0].outcome {
        Outcome::Restored {
            after_restore: Some(m),
            ..
        } => assert!(m.contains("after_restore"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        report.failure_summary().as_deref(),
        Some("1 of 1 sources were not restored: app")
    );
    assert_eq!(integrity(&fx.path("app.db")), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_sources_go_on_past_one_that_fails_and_the_verdict_names_it() {
    let fx = Fixture::new().await;
    fx.backed_up("one", 10).await;
    fx.backed_up("three", 30).await;
    // "two" has no snapshot; all three databases are gone (a rebuilt server).
    for name in ["one", "two", "three"] {
        let _ = std::fs::remove_file(fx.path(&format!("{name}.db")));
    }
    let hooks = fx.recorder(&["one", "two", "three"], &BOTH, &[]);
    let (report, events) = fx
        .run(fx.plan(&["one", "two", "three"]), hooks.clone())
        .await;

    assert_eq!(report.not_restored(), vec!["two"]);
    assert_eq!(
        report.failure_summary().as_deref(),
        Some("1 of 3 sources were not restored: two")
    );
    match &report.sources[1].outcome {
        Outcome::Failed {
            error: RestoreError::Choice { targets, error },
            ..
        } => {
            assert_eq!(targets, &["mem".to_string()]);
            assert!(matches!(error, Error::SnapshotNotFound(_)), "{error}");
        }
        other => panic!("{other:?}"),
    }
    let finished: Vec<&String> = events.iter().filter(|e| e.contains("finished")).collect();
    assert_eq!(
        finished,
        [
            "one: finished ok=true",
            "two: finished ok=false",
            "three: finished ok=true"
        ]
    );
    assert_eq!(rows(&fx.path("one.db")), 10);
    assert_eq!(rows(&fx.path("three.db")), 30);
    assert_eq!(integrity(&fx.path("three.db")), "ok");
    assert!(!fx.path("two.db").exists());
    // Nothing was replaced: no pre-restore snapshot. The failed source's
    // hooks never ran (it failed before the download).
    assert_eq!(fx.pre_restore_snapshots().await, 0);
    let calls = hooks.calls();
    assert!(calls.iter().all(|(s, _)| s != "two"), "{calls:?}");
    assert_eq!(calls.len(), 4, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_target_is_passed_over_and_the_next_one_restores() {
    let fx = Fixture::new().await;
    fx.backed_up("app", 20).await;
    let elsewhere = fx.path("elsewhere.db");
    let mut plan = fx.plan(&["app"]);
    plan.sources[0].to = elsewhere.clone();
    let down: SharedError = Arc::new(std::io::Error::other("target \"down\": unreachable"));
    let empty = Arc::new(MemoryStorage::default());
    Repository::open_or_init(empty.clone(), &fx.keys)
        .await
        .unwrap();
    plan.targets = vec![
        PlannedTarget {
            name: "down".into(),
            repo: Err(down),
        },
        PlannedTarget {
            name: "empty".into(),
            repo: Ok(Repository::open(empty).await.unwrap()),
        },
        fx.target("mem"),
    ];
    let hooks = fx.recorder(&["app"], &BOTH, &[]);
    let (report, events) = fx.run(plan, hooks.clone()).await;

    assert!(report.ok(), "{report:?}");
    assert_eq!(events[0], "app: passed over: target \"down\": unreachable");
    let Outcome::Restored { restored, .. } = &report.sources[0].outcome else {
        panic!("{report:?}")
    };
    assert_eq!(restored.target, "mem");
    assert_eq!(rows(&elsewhere), 20);
    assert_eq!(integrity(&elsewhere), "ok");
    // Restored elsewhere: the application was left alone.
    assert!(hooks.calls().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_readable_target_fails_with_each_ones_error_and_a_test_touches_nothing() {
    let fx = Fixture::new().await;
    fx.backed_up("app", 20).await;
    let db = fx.path("app.db");
    make_db(&db, 3);
    let down = |m: &str| -> SharedError { Arc::new(std::io::Error::other(m.to_string())) };
    let mut plan = fx.plan(&["app"]);
    plan.targets = vec![
        PlannedTarget {
            name: "a".into(),
            repo: Err(down("a is down")),
        },
        PlannedTarget {
            name: "b".into(),
            repo: Err(down("b is down")),
        },
    ];
    let hooks = fx.recorder(&["app"], &BOTH, &[]);
    let (report, _) = fx.run(plan, hooks.clone()).await;
    let Outcome::Failed { error, .. } = &report.sources[0].outcome else {
        panic!("{report:?}")
    };
    assert_eq!(
        chain_text(error.as_error()),
        "no target could be read (also: b is down): a is down"
    );

    // --test: restored into a directory of its own, checked, removed; the
    // database and the application are left alone.
    let mut plan = fx.plan(&["app"]);
    plan.options.test = true;
    plan.options.force = false;
    let (report, _) = fx.run(plan, hooks.clone()).await;
    let Outcome::Restored { restored, .. } = &report.sources[0].outcome else {
        panic!("{report:?}")
    };
    assert!(!restored.summary.path.starts_with(fx.dir.path()));
    assert!(!restored.summary.path.exists());
    assert_eq!(rows(&db), 3);
    assert!(hooks.calls().is_empty());
    assert_eq!(fx.pre_restore_snapshots().await, 0);
}
