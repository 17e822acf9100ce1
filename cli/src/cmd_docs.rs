//! `offsite completions SHELL` and `offsite man`: shell completions
//! (clap_complete) and man pages (clap_mangen), generated from the same clap
//! definition that parses the arguments, so they cannot drift from it. Never
//! needs or reads a config file.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// Writes the completion script for `shell` to stdout.
pub fn completions(shell: Shell) -> Result<()> {
    let mut cmd = crate::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "offsite", &mut script);
    print!("{}", String::from_utf8_lossy(&script));
    Ok(())
}

/// Writes offsite(1) to stdout, or with `dir` one page per command to DIR
/// (offsite.1, offsite-backup.1, offsite-targets-check.1, ...).
pub fn man(dir: Option<&Path>) -> Result<()> {
    let cmd = crate::Cli::command();
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
            eprintln!("wrote the man pages to {}", dir.display());
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .context("rendering the man page")?;
            print!("{}", String::from_utf8_lossy(&page));
        }
    }
    Ok(())
}
