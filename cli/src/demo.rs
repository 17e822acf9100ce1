//! `offsite demo`: the embedded default. Creates a sample SQLite database, an
//! identity, a config with a local target, and runs the real commands on
//! them: backup, list, restore (verified). Run it twice to see a second
//! backup upload only what changed. Touches nothing outside its directory.

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::Connection;

use crate::{cmd_backup, cmd_keygen, cmd_restore, cmd_snapshots, config, RestoreArgs};

const ROWS: i64 = 50_000;

pub async fn run(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = dir.join("app.db");
    let key = dir.join("key.txt");
    let cfg_path = dir.join("offsite.toml");

    if !key.exists() {
        let (secret, _) = backup_core::keys::generate_identity();
        cmd_keygen::write_private(&key, secret.as_bytes()).context("writing the demo identity")?;
    }
    let recipient = std::fs::read_to_string(&key)?
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .context("demo key.txt has no public key line")?;
    if !cfg_path.exists() {
        std::fs::write(
            &cfg_path,
            format!(
                "# Written by `offsite demo`. Paths are relative to this file.\n\
                 [encryption]\n\
                 recipients = [\"{recipient}\"]\n\
                 identity_file = \"key.txt\"\n\n\
                 [[sources]]\nname = \"app\"\nkind = \"sqlite\"\npath = \"app.db\"\n\n\
                 [[targets]]\nname = \"local\"\nkind = \"local\"\npath = \"backups\"\n"
            ),
        )?;
    }
    let fresh = !db.exists();
    simulate_app(&db, fresh).context("writing the sample database")?;
    println!(
        "== {} sample database {} ({} rows of tasks)",
        if fresh {
            "created"
        } else {
            "changed 1% of the rows of"
        },
        db.display(),
        ROWS
    );

    let cfg = config::load(&cfg_path)?;
    println!("\n== offsite --config {} backup", cfg_path.display());
    cmd_backup::backup(&cfg, None, None, Vec::new(), false, false).await?;
    println!("\n== offsite --config {} snapshots", cfg_path.display());
    cmd_snapshots::snapshots(&cfg, None, None, false).await?;
    let to = dir.join("restored.db");
    println!(
        "\n== offsite --config {} restore --source app --latest --to {} --force --no-pre-restore-snapshot",
        cfg_path.display(),
        to.display()
    );
    let args = RestoreArgs {
        source: Some("app".into()),
        all: false,
        latest: true,
        snapshot: None,
        at: None,
        to: Some(to.clone()),
        force: true,
        // The demo's own scratch copy: moving it aside is enough.
        no_pre_restore_snapshot: true,
        no_database_check: false,
        database_check: false,
        allow_unsigned: false,
        test: false,
        target: None,
        identity: None,
        json: false,
    };
    cmd_restore::restore(&cfg, &args).await?;
    let count: i64 =
        Connection::open(&to)?.query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))?;
    println!(
        "\nrestored copy has {count} tasks. Run `offsite demo` again to see an incremental backup,"
    );
    println!("and look at {} for a config to adapt.", cfg_path.display());
    Ok(())
}

/// Creates the sample database, or changes about 1% of its rows, like a day
/// of an application's activity.
fn simulate_app(db: &Path, fresh: bool) -> rusqlite::Result<()> {
    let c = Connection::open(db)?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    if fresh {
        c.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT NOT NULL, notes TEXT, meta TEXT, updated INTEGER);
             CREATE INDEX tasks_updated ON tasks(updated);",
        )?;
        let tx = c.unchecked_transaction()?;
        {
            let mut ins = tx.prepare(
                "INSERT INTO tasks(title, notes, meta, updated) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for i in 0..ROWS {
                ins.execute((
                    format!("Task {i}: follow up with customer #{}", i % 977),
                    format!("Notes for task {i}. ").repeat(1 + (i % 7) as usize),
                    format!(
                        r#"{{"priority":{},"labels":["ops","q{}"],"owner":"user{}"}}"#,
                        i % 5,
                        i % 4,
                        i % 50
                    ),
                    1_700_000_000 + i,
                ))?;
            }
        }
        tx.commit()?;
    } else {
        c.execute(
            "UPDATE tasks SET notes = notes || ' (edited)', updated = updated + 1 WHERE id IN
             (SELECT id FROM tasks ORDER BY random() LIMIT (SELECT count(*) / 100 FROM tasks))",
            [],
        )?;
    }
    Ok(())
}
