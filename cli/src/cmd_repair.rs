//! `offsite repair PATH [--to OUT] [--json]`: salvage a damaged SQLite
//! database into a new file (see backup_core::repair for how, and why not the
//! shell's `.recover`). Needs no configuration; never changes PATH.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::json;

pub async fn run(path: &Path, to: Option<&Path>, as_json: bool) -> Result<()> {
    let output = to
        .map(Path::to_path_buf)
        .unwrap_or_else(|| backup_core::repair::default_output(path, chrono::Utc::now()));
    let input: PathBuf = path.to_path_buf();
    let out = output.clone();
    let report =
        tokio::task::spawn_blocking(move || backup_core::repair::repair(&input, &out)).await??;
    if as_json {
        let tables: Vec<_> = report
            .tables
            .iter()
            .map(|t| {
                json!({"name": t.name, "recovered": t.recovered, "original": t.original, "damaged": t.damaged})
            })
            .collect();
        let skipped: Vec<_> = report
            .skipped
            .iter()
            .map(|s| json!({"kind": s.kind, "name": s.name, "error": s.reason}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "path": report.input,
                "output": report.output,
                "integrity_check": "ok",
                "tables": tables,
                "skipped": skipped,
            }))?
        );
        return Ok(());
    }
    println!(
        "salvaged {} into {} (integrity_check ok; the original was not changed)",
        report.input.display(),
        report.output.display()
    );
    let width = report
        .tables
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "{:<width$}  {:>10}  {:>10}",
        "TABLE", "RECOVERED", "ORIGINAL"
    );
    for t in &report.tables {
        println!(
            "{:<width$}  {:>10}  {:>10}{}",
            t.name,
            t.recovered,
            t.original
                .map_or_else(|| "unknown".to_string(), |n| n.to_string()),
            if t.damaged {
                "  damaged pages skipped"
            } else {
                ""
            }
        );
    }
    for s in &report.skipped {
        println!("not recreated: {} {}: {}", s.kind, s.name, s.reason);
    }
    Ok(())
}
