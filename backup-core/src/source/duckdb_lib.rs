//! Real DuckDB, loaded at run time from `libduckdb.so`, to check restored
//! DuckDB databases by opening them.
//!
//! Why loaded, not linked: the `duckdb` crate compiles DuckDB's C++ sources
//! into every build (tens of minutes on a 2-core machine, for every developer
//! and CI run, and ~40 MiB in every binary) while only a restore of a DuckDB
//! snapshot needs it; backing up needs no DuckDB code at all (see
//! `source::duckdb`). The library is found at `$OFFSITE_LIBDUCKDB`, else by
//! the system's loader as `libduckdb.so` (`libduckdb.dylib` on macOS): DuckDB
//! publishes it as `libduckdb-linux-amd64.zip`, and the npm package
//! `@duckdb/node-bindings-linux-x64` ships it too (scripts/install-test-deps.sh).
//!
//! Only DuckDB's stable C API is used (`duckdb_open_ext`, `duckdb_query` and
//! the `duckdb_result` accessors), which every 1.x release exports.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::sync::OnceLock;

use crate::error::{Error, Result};

type Handle = *mut c_void;

/// `duckdb_result` of the C API: its layout is part of DuckDB's stable ABI.
#[repr(C)]
struct RawResult {
    deprecated_column_count: u64,
    deprecated_row_count: u64,
    deprecated_rows_changed: u64,
    deprecated_columns: *mut c_void,
    deprecated_error_message: *mut c_char,
    internal_data: *mut c_void,
}

struct Api {
    _lib: libloading::Library,
    create_config: unsafe extern "C" fn(*mut Handle) -> c_int,
    set_config: unsafe extern "C" fn(Handle, *const c_char, *const c_char) -> c_int,
    destroy_config: unsafe extern "C" fn(*mut Handle),
    open_ext: unsafe extern "C" fn(*const c_char, *mut Handle, Handle, *mut *mut c_char) -> c_int,
    close: unsafe extern "C" fn(*mut Handle),
    connect: unsafe extern "C" fn(Handle, *mut Handle) -> c_int,
    disconnect: unsafe extern "C" fn(*mut Handle),
    query: unsafe extern "C" fn(Handle, *const c_char, *mut RawResult) -> c_int,
    destroy_result: unsafe extern "C" fn(*mut RawResult),
    result_error: unsafe extern "C" fn(*mut RawResult) -> *const c_char,
    row_count: unsafe extern "C" fn(*mut RawResult) -> u64,
    column_count: unsafe extern "C" fn(*mut RawResult) -> u64,
    value_varchar: unsafe extern "C" fn(*mut RawResult, u64, u64) -> *mut c_char,
    free: unsafe extern "C" fn(*mut c_void),
    library_version: unsafe extern "C" fn() -> *const c_char,
}

// SAFETY: the function pointers stay valid while `_lib` is loaded, which is
// for the life of the process (the Api lives in a static); DuckDB's C API is
// thread-safe for distinct handles.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

fn library_name() -> std::ffi::OsString {
    std::env::var_os("OFFSITE_LIBDUCKDB").unwrap_or_else(|| {
        if cfg!(target_os = "macos") {
            "libduckdb.dylib".into()
        } else {
            "libduckdb.so".into()
        }
    })
}

fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| load().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::DuckdbUnavailable(e.clone()))
}

fn load() -> std::result::Result<Api, libloading::Error> {
    let name = library_name();
    // SAFETY: loading DuckDB runs only its own static initialisers.
    let lib = unsafe { libloading::Library::new(&name)? };
    // SAFETY: each symbol is declared with its C API signature.
    unsafe {
        Ok(Api {
            create_config: *lib.get(b"duckdb_create_config\0")?,
            set_config: *lib.get(b"duckdb_set_config\0")?,
            destroy_config: *lib.get(b"duckdb_destroy_config\0")?,
            open_ext: *lib.get(b"duckdb_open_ext\0")?,
            close: *lib.get(b"duckdb_close\0")?,
            connect: *lib.get(b"duckdb_connect\0")?,
            disconnect: *lib.get(b"duckdb_disconnect\0")?,
            query: *lib.get(b"duckdb_query\0")?,
            destroy_result: *lib.get(b"duckdb_destroy_result\0")?,
            result_error: *lib.get(b"duckdb_result_error\0")?,
            row_count: *lib.get(b"duckdb_row_count\0")?,
            column_count: *lib.get(b"duckdb_column_count\0")?,
            value_varchar: *lib.get(b"duckdb_value_varchar\0")?,
            free: *lib.get(b"duckdb_free\0")?,
            library_version: *lib.get(b"duckdb_library_version\0")?,
            _lib: lib,
        })
    }
}

/// The loaded DuckDB's version, e.g. "v1.4.2".
pub fn version() -> Result<String> {
    let api = api()?;
    // SAFETY: returns a static NUL-terminated string.
    Ok(unsafe { CStr::from_ptr((api.library_version)()) }
        .to_string_lossy()
        .into_owned())
}

/// An open DuckDB database with one connection.
pub struct Database {
    api: &'static Api,
    path: std::path::PathBuf,
    db: Handle,
    conn: Handle,
}

// SAFETY: the handles are used from one thread at a time (&mut self / Drop).
unsafe impl Send for Database {}

fn c_string(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Source {
        path: s.into(),
        message: "contains a NUL byte".into(),
    })
}

impl Database {
    /// Opens `path`; `read_only` takes DuckDB's shared lock instead of its
    /// exclusive one and never writes to the file.
    pub fn open(path: &Path, read_only: bool) -> Result<Database> {
        let api = api()?;
        let err = |message: String| Error::Source {
            path: path.to_path_buf(),
            message,
        };
        let cpath = c_string(&path.to_string_lossy())?;
        let mut config: Handle = std::ptr::null_mut();
        let mut db: Handle = std::ptr::null_mut();
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: out-pointers point at live locals; the config is destroyed
        // after open copied it; the error string is freed with duckdb_free.
        let rc = unsafe {
            if (api.create_config)(&mut config) != 0 {
                return Err(err("DuckDB could not create a configuration".into()));
            }
            let mode = if read_only { "READ_ONLY" } else { "READ_WRITE" };
            let (k, v) = (c_string("access_mode")?, c_string(mode)?);
            (api.set_config)(config, k.as_ptr(), v.as_ptr());
            let rc = (api.open_ext)(cpath.as_ptr(), &mut db, config, &mut error);
            (api.destroy_config)(&mut config);
            rc
        };
        if rc != 0 {
            let message = if error.is_null() {
                "DuckDB cannot open it".to_string()
            } else {
                // SAFETY: DuckDB gave us a NUL-terminated string to free.
                let m = unsafe { CStr::from_ptr(error) }
                    .to_string_lossy()
                    .into_owned();
                unsafe { (api.free)(error.cast()) };
                m
            };
            return Err(err(message));
        }
        let mut conn: Handle = std::ptr::null_mut();
        // SAFETY: `db` is open; `conn` is a live out-pointer.
        if unsafe { (api.connect)(db, &mut conn) } != 0 {
            unsafe { (api.close)(&mut db) };
            return Err(err("DuckDB cannot connect to it".into()));
        }
        Ok(Database {
            api,
            path: path.to_path_buf(),
            db,
            conn,
        })
    }

    /// Runs `sql`, returning every row's columns as text (NULL as None).
    pub fn query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let csql = c_string(sql)?;
        // SAFETY: a zeroed duckdb_result is what the C API expects as output.
        let mut res: RawResult = unsafe { std::mem::zeroed() };
        let rc = unsafe { (self.api.query)(self.conn, csql.as_ptr(), &mut res) };
        let out = if rc != 0 {
            // SAFETY: the result holds an error string until destroyed.
            let p = unsafe { (self.api.result_error)(&mut res) };
            let m = if p.is_null() {
                "query failed".to_string()
            } else {
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            };
            Err(self.error(sql, m))
        } else {
            let rows = unsafe { (self.api.row_count)(&mut res) };
            let cols = unsafe { (self.api.column_count)(&mut res) };
            let mut out = Vec::with_capacity(rows as usize);
            for r in 0..rows {
                let mut row = Vec::with_capacity(cols as usize);
                for c in 0..cols {
                    // SAFETY: in-range indexes; the string is ours to free.
                    let p = unsafe { (self.api.value_varchar)(&mut res, c, r) };
                    if p.is_null() {
                        row.push(None);
                    } else {
                        row.push(Some(
                            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned(),
                        ));
                        unsafe { (self.api.free)(p.cast()) };
                    }
                }
                out.push(row);
            }
            Ok(out)
        };
        // SAFETY: destroyed exactly once.
        unsafe { (self.api.destroy_result)(&mut res) };
        out
    }

    /// Runs `sql` and returns the first column of the first row as an integer.
    pub fn query_i64(&mut self, sql: &str) -> Result<i64> {
        let rows = self.query(sql)?;
        rows.first()
            .and_then(|r| r.first())
            .and_then(|v| v.as_deref())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.error(sql, "expected an integer".into()))
    }

    fn error(&self, sql: &str, message: String) -> Error {
        Error::Source {
            path: self.path.clone(),
            message: format!("{message} (running {sql})"),
        }
    }

    /// Runs statements that return nothing of interest.
    pub fn execute(&mut self, sql: &str) -> Result<()> {
        self.query(sql).map(|_| ())
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // SAFETY: both handles are open and closed exactly once.
        unsafe {
            (self.api.disconnect)(&mut self.conn);
            (self.api.close)(&mut self.db);
        }
    }
}

/// Tells a version mismatch from damage after DuckDB failed to open `path`.
///
/// DuckDB's C API reports why an open failed only as text. A file written
/// by a newer DuckDB fails with "Trying to read a database file with version
/// number N, but we can only read ..."; when the message says so and the
/// file's own header is intact (see [`super::duckdb::header`]), the failure
/// is [`Error::DuckdbVersion`], naming both versions. Anything else is
/// returned as it was.
pub fn explain_open_failure(path: &Path, e: Error) -> Error {
    let Error::Source { message, .. } = &e else {
        return e;
    };
    if !message.contains("version number") {
        return e;
    }
    let Some(h) = super::duckdb::header(path) else {
        return e;
    };
    Error::DuckdbVersion {
        path: path.to_path_buf(),
        storage_version: h.storage_version,
        written_by: h.written_by.unwrap_or_else(|| "an unknown release".into()),
        library: version().unwrap_or_else(|_| "?".into()),
        message: message.lines().next().unwrap_or_default().to_string(),
    }
}

/// Folds a database's `.wal` into the file (DuckDB's `CHECKPOINT`, which
/// removes the `.wal`). Only for a database no other process has open.
pub fn checkpoint(path: &Path) -> Result<()> {
    let mut db = Database::open(path, false)?;
    db.execute("CHECKPOINT")
}

/// What a check of a restored database found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub tables: u64,
    pub rows: u64,
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Opens `path` read-only with DuckDB (which replays its .wal in memory) and
/// counts the rows of every table, so every table's storage is read.
pub fn check(path: &Path) -> Result<Checked> {
    let mut db = Database::open(path, true)?;
    let tables = db.query(
        "SELECT schema_name, table_name FROM duckdb_tables() \
         WHERE database_name = current_database() ORDER BY 1, 2",
    )?;
    let mut rows = 0u64;
    for t in &tables {
        let (Some(schema), Some(name)) = (&t[0], &t[1]) else {
            continue;
        };
        let n = db.query_i64(&format!(
            "SELECT count(*) FROM {}.{}",
            quote(schema),
            quote(name)
        ))?;
        rows += n as u64;
    }
    Ok(Checked {
        tables: tables.len() as u64,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_counts_a_good_database_and_rejects_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.duckdb");
        {
            let mut db = Database::open(&path, false).unwrap();
            db.execute(
                "CREATE TABLE t(i INTEGER, s VARCHAR);
                 INSERT INTO t SELECT i, repeat('x', 100) FROM range(50000) r(i);
                 CREATE SCHEMA other; CREATE TABLE other.u(i INTEGER); INSERT INTO other.u VALUES (1);",
            )
            .unwrap();
        }
        assert_eq!(
            check(&path).unwrap(),
            Checked {
                tables: 2,
                rows: 50_001
            }
        );

        // Keep the header, lose the rest: DuckDB must refuse it.
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.duckdb");
        std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
        assert!(check(&cut).is_err());
        assert!(version().unwrap().starts_with('v'));
    }
}
