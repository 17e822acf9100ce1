//! Consistent snapshots of a live SQLite database.
//!
//! The database is opened read-only and every page is read through the
//! `sqlite_dbpage` virtual table inside one read transaction. In WAL mode that
//! transaction sees one committed state while writers go on committing (they
//! append to the WAL; our snapshot is unaffected), and no temporary copy is
//! written anywhere. In rollback-journal mode SQLite's own locking makes a
//! writer wait (its busy timeout) while the pages are read.
//!
//! Never: open the database writable, copy the .db/-wal/-shm files, or
//! checkpoint the WAL.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::{Entry, SourceInfo, Visitor};
use crate::error::{Error, Result};

fn sql_error(path: &Path, e: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if f.code == rusqlite::ErrorCode::NotADatabase {
            return Error::NotSqlite(path.to_path_buf());
        }
    }
    Error::Source {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Opens a database read-only, for snapshots and checks.
pub fn open_read_only(path: &Path) -> Result<Connection> {
    let meta = std::fs::metadata(path).map_err(|e| Error::Source {
        path: path.to_path_buf(),
        message: format!("cannot read the database: {e}"),
    })?;
    if !meta.is_file() {
        return Err(Error::Source {
            path: path.to_path_buf(),
            message: "not a regular file".into(),
        });
    }
    // Check the header before SQLite sees the file: opening a non-database
    // that has a -wal beside it would make SQLite create a -shm there.
    if meta.len() > 0 && !has_sqlite_header(path) {
        return Err(Error::NotSqlite(path.to_path_buf()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql_error(path, e))?;
    conn.busy_timeout(std::time::Duration::from_secs(60))
        .map_err(|e| sql_error(path, e))?;
    Ok(conn)
}

pub(crate) fn has_sqlite_header(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| &magic == b"SQLite format 3\0")
}

pub fn read(path: &Path, integrity_check: bool, visitor: &mut dyn Visitor) -> Result<SourceInfo> {
    let conn = open_read_only(path)?;
    conn.execute_batch("BEGIN")
        .map_err(|e| sql_error(path, e))?;
    let info = read_in(&conn, path, integrity_check, visitor)?;
    conn.execute_batch("COMMIT")
        .map_err(|e| sql_error(path, e))?;
    Ok(info)
}

/// [`read`] on `conn`, which is inside a read transaction (begun or not
/// yet by a first read): the replicator's held transaction
/// ([`crate::replicate`]) reads its base snapshot this way.
pub fn read_in(
    conn: &Connection,
    path: &Path,
    integrity_check: bool,
    visitor: &mut dyn Visitor,
) -> Result<SourceInfo> {
    let err = |e| sql_error(path, e);
    // The first read starts the read transaction: from here on every statement
    // sees the same committed state.
    let (page_size, page_count): (u32, i64) = conn
        .query_row(
            "SELECT page_size, page_count FROM pragma_page_size, pragma_page_count",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(err)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "database".into());
    visitor.entry(&Entry::File {
        path: name,
        mode: file_mode(path),
        size: page_size as u64 * page_count as u64,
        mtime: 0,
    })?;
    {
        let mut stmt = conn
            .prepare("SELECT pgno, data FROM sqlite_dbpage('main') ORDER BY pgno")
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(_, Some(ref m)) if m.contains("no such table") => {
                    Error::Source {
                        path: path.to_path_buf(),
                        message: "this build's SQLite lacks sqlite_dbpage \
                                  (build with LIBSQLITE3_FLAGS=-DSQLITE_ENABLE_DBPAGE_VTAB)"
                            .into(),
                    }
                }
                e => err(e),
            })?;
        let mut rows = stmt.query([]).map_err(err)?;
        let mut expected = 1i64;
        while let Some(row) = rows.next().map_err(err)? {
            let pgno: i64 = row.get(0).map_err(err)?;
            let data = row
                .get_ref(1)
                .map_err(err)?
                .as_blob()
                .map_err(|e| Error::Source {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
            if pgno != expected || data.len() != page_size as usize {
                return Err(Error::Source {
                    path: path.to_path_buf(),
                    message: format!("unexpected page {pgno} of {} bytes", data.len()),
                });
            }
            visitor.chunk(data)?;
            expected += 1;
        }
        if expected - 1 != page_count {
            return Err(Error::Source {
                path: path.to_path_buf(),
                message: format!("read {} pages of {page_count}", expected - 1),
            });
        }
    }
    // Still inside the read transaction: the check sees exactly the pages
    // just read (design 5.2), at the cost of holding the transaction (and
    // so the WAL's checkpoint) that much longer.
    let integrity = integrity_check
        .then(|| check_rows(conn).map_err(err))
        .transpose()?;
    Ok(SourceInfo {
        page_size: Some(page_size),
        integrity,
    })
}

/// `PRAGMA integrity_check` on `conn`: SQLite's complaints, none when ok.
fn check_rows(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let rows: Vec<String> = conn
        .prepare("PRAGMA integrity_check")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(if rows == ["ok"] { Vec::new() } else { rows })
}

#[cfg(unix)]
fn file_mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644)
}

#[cfg(not(unix))]
fn file_mode(_: &Path) -> u32 {
    0o644
}

/// Runs `PRAGMA integrity_check` on a database file offsite itself wrote
/// (a restored copy), returning SQLite's complaints if any.
pub fn integrity_check(path: &Path) -> Result<Vec<String>> {
    // Read-write so SQLite can create and remove the copy's own -wal/-shm; this
    // is never called on a live database.
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| sql_error(path, e))?;
    check_rows(&conn).map_err(|e| sql_error(path, e))
}

/// Runs a drill's smoke query on a restored copy and returns the first column
/// of the first row as an integer (`None` when the query returns no rows).
///
/// The copy is opened read-only and with `query_only`, so a query that tries
/// to write fails instead of changing the restored data.
pub fn smoke_query(path: &Path, sql: &str) -> Result<Option<i64>> {
    let conn = open_read_only(path)?;
    let err = |e| sql_error(path, e);
    conn.pragma_update(None, "query_only", true).map_err(err)?;
    let mut stmt = conn.prepare(sql).map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;
    let Some(row) = rows.next().map_err(err)? else {
        return Ok(None);
    };
    let value = match row.get_ref(0).map_err(err)? {
        rusqlite::types::ValueRef::Integer(i) => i,
        rusqlite::types::ValueRef::Real(f) => f as i64,
        other => {
            return Err(Error::Source {
                path: path.to_path_buf(),
                message: format!(
                    "smoke query {sql:?}: the first column is {:?}, not a number",
                    other.data_type()
                ),
            })
        }
    };
    Ok(Some(value))
}
