//! Salvage of a damaged SQLite database into a new, healthy file.
//!
//! How: the damaged file (and its -wal or -journal, so committed work in them
//! is not lost) is copied into a private directory beside the output, and
//! every table of the copy is read row by row into a new database built from
//! the original schema. Where a read fails on a damaged b-tree page, the scan
//! probes forward by rowid (doubling the step, then bisecting back) to the
//! first row it can read again, so one bad page costs the rows on that page,
//! not the rest of the table. Indexes are created before the rows arrive
//! (inserts that would break a UNIQUE or NOT NULL constraint are dropped, as
//! damaged data), views and triggers after them (so triggers do not fire
//! during the salvage). The result must pass `PRAGMA integrity_check` before
//! it is linked into place under a name that must not exist yet.
//!
//! Why not SQLite's recovery extension (`ext/recover`, what the shell's
//! `.recover` runs): it is not part of the amalgamation that rusqlite bundles,
//! no maintained crate ships it, and the `sqlite3` shell of Debian 12 and
//! Ubuntu (the systems offsite targets) is built without the `sqlite_dbpage`
//! table that `.recover` needs, so it fails on every database there. This
//! salvage needs nothing but the bundled SQLite. What it cannot do that
//! `.recover` does: rebuild rows from pages no longer linked into any b-tree
//! (`lost_and_found`), or read a database whose schema page is destroyed.
//!
//! Never: open the damaged file for writing, or write anything beside it
//! other than the new output.

use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::types::Value;
use rusqlite::{params_from_iter, Connection};

use crate::error::{Error, Result};
use crate::source::sqlite;

/// Rows salvaged from one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub name: String,
    /// Rows written to the new database.
    pub recovered: u64,
    /// `count(*)` in the damaged database, when SQLite could count them.
    pub original: Option<u64>,
    /// Whether damaged pages were met (and skipped) while reading it.
    pub damaged: bool,
}

/// A schema object that could not be recreated in the new database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub kind: String,
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct RepairReport {
    pub input: PathBuf,
    pub output: PathBuf,
    pub tables: Vec<TableReport>,
    pub skipped: Vec<Skipped>,
}

/// Where `offsite repair` writes by default: beside the input,
/// `PATH.recovered-<UTC time>.db`.
pub fn default_output(input: &Path, now: chrono::DateTime<chrono::Utc>) -> PathBuf {
    let mut name = input.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".recovered-{}.db", now.format("%Y%m%dT%H%M%SZ")));
    input.with_file_name(name)
}

/// Salvages `input` into the new file `output`. Blocking.
pub fn repair(input: &Path, output: &Path) -> Result<RepairReport> {
    check_input(input)?;
    if std::fs::symlink_metadata(output).is_ok() {
        return Err(Error::TargetExists(output.to_path_buf()));
    }
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let work = tempfile::Builder::new()
        .prefix(".offsite-repair-")
        .tempdir_in(&parent)
        .map_err(|e| {
            Error::io(
                format!("creating a work directory in {}", parent.display()),
                e,
            )
        })?;
    let copy = work.path().join("damaged.db");
    copy_with_journals(input, &copy)?;
    let staged = work.path().join("recovered.db");

    let src = Connection::open(&copy).map_err(|e| source_error(input, e))?;
    let schema = read_schema(&src).map_err(|e| Error::Source {
        path: input.to_path_buf(),
        message: format!("the schema is unreadable, nothing can be salvaged: {e}"),
    })?;
    let out_err = |e: rusqlite::Error| Error::Source {
        path: output.to_path_buf(),
        message: e.to_string(),
    };
    let dst = Connection::open(&staged).map_err(out_err)?;
    let (tables, skipped) = salvage(&src, &dst, &schema).map_err(out_err)?;
    drop(dst);
    drop(src);

    let problems = sqlite::integrity_check(&staged)?;
    if !problems.is_empty() {
        return Err(Error::Verification(format!(
            "the salvaged database fails integrity_check: {}",
            problems.join("; ")
        )));
    }
    let f = std::fs::File::open(&staged).map_err(|e| Error::io("reopening the salvage", e))?;
    f.sync_all()
        .map_err(|e| Error::io("syncing the salvage", e))?;
    // A hard link fails if `output` appeared meanwhile: never overwrite.
    // Filesystems without hard links (FAT) get a rename after a last check.
    match std::fs::hard_link(&staged, output) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::TargetExists(output.to_path_buf()))
        }
        Err(_) if std::fs::symlink_metadata(output).is_err() => {
            std::fs::rename(&staged, output)
                .map_err(|e| Error::io(format!("writing {}", output.display()), e))?;
        }
        Err(_) => return Err(Error::TargetExists(output.to_path_buf())),
    }
    if let Ok(d) = std::fs::File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(RepairReport {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        tables,
        skipped,
    })
}

fn check_input(input: &Path) -> Result<()> {
    let meta = std::fs::metadata(input).map_err(|e| Error::Source {
        path: input.to_path_buf(),
        message: format!("cannot read the database: {e}"),
    })?;
    if !meta.is_file() {
        return Err(Error::Source {
            path: input.to_path_buf(),
            message: "not a regular file".into(),
        });
    }
    let mut magic = [0u8; 16];
    let mut f = std::fs::File::open(input).map_err(|e| Error::Source {
        path: input.to_path_buf(),
        message: format!("cannot read the database: {e}"),
    })?;
    if f.read_exact(&mut magic).is_err() || &magic != b"SQLite format 3\0" {
        return Err(Error::NotSqlite(input.to_path_buf()));
    }
    Ok(())
}

/// Copies the database and whichever of its -wal / -journal exist, so the
/// copy opens to the same committed state the original would.
fn copy_with_journals(input: &Path, copy: &Path) -> Result<()> {
    let cp = |from: &Path, to: &Path| {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| Error::io(format!("copying {}", from.display()), e))
    };
    cp(input, copy)?;
    for suffix in ["-wal", "-journal"] {
        let side = with_suffix(input, suffix);
        if side.is_file() {
            cp(&side, &with_suffix(copy, suffix))?;
        }
    }
    Ok(())
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn source_error(path: &Path, e: rusqlite::Error) -> Error {
    Error::Source {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

struct SchemaObject {
    kind: String,
    name: String,
    sql: String,
}

struct Schema {
    objects: Vec<SchemaObject>,
    /// Tables SQLite maintains for a virtual table (FTS shadow tables): they
    /// are rebuilt by recreating the virtual table and copying its rows.
    shadow: Vec<String>,
    pragmas: Vec<(&'static str, Value)>,
}

fn read_schema(src: &Connection) -> rusqlite::Result<Schema> {
    let mut stmt = src.prepare(
        "SELECT type, name, sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY rowid",
    )?;
    let objects = stmt
        .query_map([], |r| {
            Ok(SchemaObject {
                kind: r.get(0)?,
                name: r.get(1)?,
                sql: r.get(2)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let shadow = src
        .prepare("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'shadow'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    let mut pragmas = Vec::new();
    // Settings apps depend on (user_version drives most migration tools).
    for p in [
        "page_size",
        "auto_vacuum",
        "encoding",
        "user_version",
        "application_id",
    ] {
        if let Ok(v) = src.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, Value>(0)) {
            pragmas.push((p, v));
        }
    }
    Ok(Schema {
        objects,
        shadow,
        pragmas,
    })
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn pragma_literal(v: &Value) -> String {
    match v {
        Value::Integer(i) => i.to_string(),
        Value::Text(s) => format!("'{}'", s.replace('\'', "''")),
        _ => "0".into(),
    }
}

fn salvage(
    src: &Connection,
    dst: &Connection,
    schema: &Schema,
) -> rusqlite::Result<(Vec<TableReport>, Vec<Skipped>)> {
    // Page size, auto_vacuum and encoding only take effect before the first table.
    for (p, v) in &schema.pragmas {
        dst.execute_batch(&format!("PRAGMA {p} = {}", pragma_literal(v)))?;
    }
    dst.execute_batch("BEGIN")?;
    let mut skipped = Vec::new();
    let mut created = Vec::new();
    let skip = |o: &SchemaObject, e: rusqlite::Error| Skipped {
        kind: o.kind.clone(),
        name: o.name.clone(),
        reason: e.to_string(),
    };
    let is_internal = |o: &SchemaObject| {
        o.name.starts_with("sqlite_") || schema.shadow.iter().any(|s| s == &o.name)
    };
    for o in schema.objects.iter().filter(|o| o.kind == "table") {
        if is_internal(o) {
            continue;
        }
        match dst.execute_batch(&o.sql) {
            Ok(()) => created.push(o),
            Err(e) => skipped.push(skip(o, e)),
        }
    }
    for o in schema.objects.iter().filter(|o| o.kind == "index") {
        if let Err(e) = dst.execute_batch(&o.sql) {
            skipped.push(skip(o, e));
        }
    }
    let mut tables = Vec::new();
    for o in created {
        tables.push(copy_table(src, dst, o)?);
    }
    copy_sequences(src, dst)?;
    for o in schema
        .objects
        .iter()
        .filter(|o| o.kind == "view" || o.kind == "trigger")
    {
        if let Err(e) = dst.execute_batch(&o.sql) {
            skipped.push(skip(o, e));
        }
    }
    dst.execute_batch("COMMIT")?;
    Ok((tables, skipped))
}

fn copy_table(
    src: &Connection,
    dst: &Connection,
    table: &SchemaObject,
) -> rusqlite::Result<TableReport> {
    let original = src
        .query_row(
            &format!("SELECT count(*) FROM {}", quote(&table.name)),
            [],
            |r| r.get::<_, i64>(0),
        )
        .ok()
        .map(|n| n as u64);
    // Generated and hidden columns (table_xinfo's `hidden` > 0) are computed,
    // not stored: they are neither read nor inserted.
    let columns: Vec<String> = dst
        .prepare("SELECT name FROM pragma_table_xinfo(?1) WHERE hidden = 0 ORDER BY cid")
        .and_then(|mut s| {
            s.query_map([&table.name], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })?;
    let cols = columns
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ");
    let upper = table.sql.to_ascii_uppercase();
    let tail = &upper[upper.rfind(')').unwrap_or(0)..];
    let virtual_table = upper.trim_start().starts_with("CREATE VIRTUAL");
    let without_rowid = tail.contains("WITHOUT") && tail.contains("ROWID");
    let rowid = !(virtual_table || without_rowid);
    let mut report = TableReport {
        name: table.name.clone(),
        recovered: 0,
        original,
        damaged: false,
    };
    let mut copier = Copier {
        src,
        dst,
        table: quote(&table.name),
        cols,
        n: columns.len(),
        report: &mut report,
    };
    if rowid {
        copier.by_rowid()?;
    } else {
        copier.in_order()?;
    }
    Ok(report)
}

struct Copier<'a> {
    src: &'a Connection,
    dst: &'a Connection,
    table: String,
    cols: String,
    n: usize,
    report: &'a mut TableReport,
}

/// Why a scan stopped early: the source failed (damage), with the last rowid
/// read before it; or the destination failed, which is fatal.
enum Stop {
    Damaged(Option<i64>),
    Fatal(rusqlite::Error),
}

impl Copier<'_> {
    fn insert_sql(&self, with_rowid: bool) -> String {
        let marks = vec!["?"; self.n + usize::from(with_rowid)].join(", ");
        let cols = if with_rowid {
            format!("_rowid_, {}", self.cols)
        } else {
            self.cols.clone()
        };
        format!(
            "INSERT OR IGNORE INTO {} ({cols}) VALUES ({marks})",
            self.table
        )
    }

    /// Tables without a rowid, and virtual tables: read in order, up to the
    /// first damaged page.
    fn in_order(&mut self) -> rusqlite::Result<()> {
        let sql = format!("SELECT {} FROM {}", self.cols, self.table);
        let insert = self.insert_sql(false);
        let mut ins = self.dst.prepare(&insert)?;
        let mut read = || -> std::result::Result<(), Stop> {
            let mut stmt = self.src.prepare(&sql).map_err(|_| Stop::Damaged(None))?;
            let mut rows = stmt.query([]).map_err(|_| Stop::Damaged(None))?;
            loop {
                let row = match rows.next() {
                    Ok(Some(r)) => r,
                    Ok(None) => return Ok(()),
                    Err(_) => return Err(Stop::Damaged(None)),
                };
                let values = (0..self.n)
                    .map(|i| row.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(|_| Stop::Damaged(None))?;
                let added = ins.execute(params_from_iter(values)).map_err(Stop::Fatal)?;
                self.report.recovered += added as u64;
            }
        };
        match read() {
            Ok(()) => Ok(()),
            Err(Stop::Damaged(_)) => {
                self.report.damaged = true;
                Ok(())
            }
            Err(Stop::Fatal(e)) => Err(e),
        }
    }

    /// Rowid tables: scan in rowid order; past each damaged stretch, resume at
    /// the first rowid that reads again.
    fn by_rowid(&mut self) -> rusqlite::Result<()> {
        let mut from = i64::MIN;
        loop {
            match self.scan(from) {
                Ok(()) => return Ok(()),
                Err(Stop::Fatal(e)) => return Err(e),
                Err(Stop::Damaged(last)) => {
                    self.report.damaged = true;
                    // Strictly after the last row read (or after `from`, if
                    // none was), so every round makes progress.
                    let after = last.unwrap_or(from);
                    match self.resume_point(after) {
                        Some(next) => from = next,
                        None => return Ok(()),
                    }
                }
            }
        }
    }

    fn scan(&mut self, from: i64) -> std::result::Result<(), Stop> {
        let sql = format!(
            "SELECT _rowid_, {} FROM {} WHERE _rowid_ >= ?1 ORDER BY _rowid_",
            self.cols, self.table
        );
        let mut ins = self
            .dst
            .prepare_cached(&self.insert_sql(true))
            .map_err(Stop::Fatal)?;
        let mut last: Option<i64> = None;
        let mut stmt = self.src.prepare(&sql).map_err(|_| Stop::Damaged(None))?;
        let mut rows = stmt.query([from]).map_err(|_| Stop::Damaged(None))?;
        loop {
            let row = match rows.next() {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(_) => return Err(Stop::Damaged(last)),
            };
            let values = (0..=self.n)
                .map(|i| row.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(|_| Stop::Damaged(last))?;
            let Value::Integer(rowid) = values[0] else {
                return Err(Stop::Damaged(last));
            };
            // A damaged page can yield rowids out of order; they are kept
            // (the insert ignores duplicates) but never move the resume point back.
            if last.is_none_or(|l| rowid > l) {
                last = Some(rowid);
            }
            let added = ins.execute(params_from_iter(values)).map_err(Stop::Fatal)?;
            self.report.recovered += added as u64;
        }
    }

    /// Whether a read starting at `from` gets past its first row.
    fn readable_from(&self, from: i64) -> bool {
        let sql = format!(
            "SELECT _rowid_, {} FROM {} WHERE _rowid_ >= ?1 ORDER BY _rowid_ LIMIT 1",
            self.cols, self.table
        );
        let Ok(mut stmt) = self.src.prepare(&sql) else {
            return false;
        };
        let Ok(mut rows) = stmt.query([from]) else {
            return false;
        };
        match rows.next() {
            Ok(Some(row)) => (0..=self.n).all(|i| row.get::<_, Value>(i).is_ok()),
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// The smallest rowid after `after` from which reading works again:
    /// double the step until a read succeeds, then bisect back.
    fn resume_point(&self, after: i64) -> Option<i64> {
        let mut bad = after;
        let mut step: i64 = 1;
        let good = loop {
            let probe = after.checked_add(step)?;
            if self.readable_from(probe) {
                break probe;
            }
            bad = probe;
            step = step.checked_mul(2).unwrap_or(i64::MAX);
        };
        let (mut bad, mut good) = (bad, good);
        while good - bad > 1 {
            let mid = bad + (good - bad) / 2;
            if self.readable_from(mid) {
                good = mid;
            } else {
                bad = mid;
            }
        }
        Some(good)
    }
}

/// AUTOINCREMENT counters: never lower than in the original, so ids of
/// deleted rows are not handed out again.
fn copy_sequences(src: &Connection, dst: &Connection) -> rusqlite::Result<()> {
    let exists: bool = dst.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE name = 'sqlite_sequence'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(());
    }
    let Ok(mut stmt) = src.prepare("SELECT name, seq FROM sqlite_sequence") else {
        return Ok(());
    };
    let Ok(rows) = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))) else {
        return Ok(());
    };
    for (name, seq) in rows.map_while(|r| r.ok()) {
        let updated = dst.execute(
            "UPDATE sqlite_sequence SET seq = max(seq, ?2) WHERE name = ?1",
            (&name, seq),
        )?;
        if updated == 0 {
            dst.execute(
                "INSERT INTO sqlite_sequence(name, seq) VALUES (?1, ?2)",
                (&name, seq),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROWS: i64 = 5_000;

    fn make_db(path: &Path) {
        let c = Connection::open(path).unwrap();
        c.execute_batch(
            "PRAGMA user_version = 7;
             CREATE TABLE users(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL);
             CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT, body TEXT);
             CREATE TABLE tags(name TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID;
             CREATE VIEW long_tasks AS SELECT id FROM tasks WHERE length(body) > 10;
             CREATE TRIGGER touch AFTER DELETE ON users BEGIN DELETE FROM tags; END;",
        )
        .unwrap();
        let tx = c.unchecked_transaction().unwrap();
        for i in 0..50 {
            tx.execute("INSERT INTO users(name) VALUES (?1)", [format!("user {i}")])
                .unwrap();
            tx.execute("INSERT INTO tags VALUES (?1, ?2)", (format!("tag {i}"), i))
                .unwrap();
        }
        for i in 0..ROWS {
            tx.execute(
                "INSERT INTO tasks(title, body) VALUES (?1, ?2)",
                (format!("task {i}"), format!("body {i} ").repeat(20)),
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }

    fn page_count(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len() / 4096
    }

    /// Overwrites whole pages with garbage, as a torn write or a bad disk would.
    fn smash_pages(path: &Path, pages: &[u64]) {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        for p in pages {
            f.seek(SeekFrom::Start((p - 1) * 4096)).unwrap();
            f.write_all(&[0xde; 4096]).unwrap();
        }
    }

    fn count(path: &Path, table: &str) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn damaged_pages_cost_only_their_rows_and_the_original_is_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        make_db(&db);
        let n = page_count(&db);
        smash_pages(&db, &[n / 2, n / 2 + 1, n * 3 / 4]);
        let broken = Connection::open(&db).unwrap();
        assert!(
            broken
                .query_row("SELECT count(*) FROM tasks", [], |r| r.get::<_, i64>(0))
                .is_err(),
            "the test database must really be damaged"
        );
        drop(broken);
        let before = std::fs::read(&db).unwrap();

        let out = dir.path().join("out.db");
        let report = repair(&db, &out).unwrap();

        assert_eq!(std::fs::read(&db).unwrap(), before, "original unchanged");
        let tasks = report.tables.iter().find(|t| t.name == "tasks").unwrap();
        assert!(tasks.damaged);
        assert_eq!(tasks.original, None, "a damaged table cannot be counted");
        assert!(
            tasks.recovered >= ROWS as u64 * 9 / 10 && tasks.recovered < ROWS as u64,
            "recovered {} of {ROWS}",
            tasks.recovered
        );
        assert_eq!(count(&out, "tasks"), tasks.recovered as i64);
        let users = report.tables.iter().find(|t| t.name == "users").unwrap();
        assert_eq!(
            (users.recovered, users.original, users.damaged),
            (50, Some(50), false)
        );
        assert_eq!(count(&out, "tags"), 50);
        assert!(sqlite::integrity_check(&out).unwrap().is_empty());
        let c = Connection::open(&out).unwrap();
        let (last, body): (i64, String) = c
            .query_row(
                "SELECT id, body FROM tasks ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(last, ROWS, "rows after the damage are recovered");
        assert_eq!(body, format!("body {} ", ROWS - 1).repeat(20));
        let version: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 7);
        assert!(report.skipped.is_empty(), "{:?}", report.skipped);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }

    #[test]
    fn a_healthy_database_comes_back_whole_with_its_schema() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        make_db(&db);
        let out = dir.path().join("out.db");
        let report = repair(&db, &out).unwrap();
        for t in &report.tables {
            assert_eq!(Some(t.recovered), t.original, "{t:?}");
            assert!(!t.damaged);
        }
        let c = Connection::open(&out).unwrap();
        let views: i64 = c
            .query_row("SELECT count(*) FROM long_tasks", [], |r| r.get(0))
            .unwrap();
        assert_eq!(views, ROWS);
        c.execute("DELETE FROM users WHERE id = 1", []).unwrap();
        assert_eq!(count(&out, "tags"), 0, "the trigger was recreated");
        let seq: i64 = Connection::open(&out)
            .unwrap()
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'users'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seq, 50);
    }

    #[test]
    fn rows_committed_only_to_the_wal_are_salvaged_too() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        make_db(&db);
        let live = Connection::open(&db).unwrap();
        live.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             INSERT INTO users(name) VALUES ('only in the wal');",
        )
        .unwrap();
        let wal = with_suffix(&db, "-wal");
        let (db_bytes, wal_bytes) = (std::fs::read(&db).unwrap(), std::fs::read(&wal).unwrap());

        let out = dir.path().join("out.db");
        let report = repair(&db, &out).unwrap();
        let users = report.tables.iter().find(|t| t.name == "users").unwrap();
        assert_eq!(users.recovered, 51);
        assert_eq!(std::fs::read(&db).unwrap(), db_bytes);
        assert_eq!(std::fs::read(&wal).unwrap(), wal_bytes);
        drop(live);
    }

    #[test]
    fn refuses_what_is_not_sqlite_missing_or_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello, this is not a database at all").unwrap();
        let out = dir.path().join("out.db");
        assert!(matches!(repair(&text, &out), Err(Error::NotSqlite(p)) if p == text));
        let missing = dir.path().join("missing.db");
        let err = repair(&missing, &out).unwrap_err();
        assert!(err.to_string().contains("missing.db"), "{err}");
        let db = dir.path().join("app.db");
        make_db(&db);
        std::fs::write(&out, "mine").unwrap();
        assert!(matches!(repair(&db, &out), Err(Error::TargetExists(_))));
        assert_eq!(std::fs::read(&out).unwrap(), b"mine");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 3, "nothing else was written");
    }

    #[test]
    fn default_output_sits_beside_the_input() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            default_output(Path::new("/srv/app/app.db"), t),
            PathBuf::from("/srv/app/app.db.recovered-20261123T120000Z.db")
        );
    }
}
