//! `offsite keygen`: a new age identity, written owner-only.

use std::path::Path;

use anyhow::{bail, Context, Result};
use backup_core::keys::{generate_identity, OwnerKey};

use crate::output;

pub fn keygen(output: Option<&Path>) -> Result<()> {
    let (secret, recipient) = generate_identity();
    match output {
        Some(path) => {
            if path.exists() {
                bail!(
                    "{} already exists; refusing to overwrite an identity (choose another -o)",
                    path.display()
                );
            }
            write_private(path, secret.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote the identity to {}", path.display());
        }
        None => {
            print!("{secret}");
            // Here the output is the product: a secret nobody read is no identity.
            if output::stdout_closed() {
                bail!("the identity could not be written to stdout, so none was kept; run again, or use -o FILE");
            }
        }
    }
    eprintln!(
        "Keep a copy of the identity somewhere other than the backed-up server (a password \
         manager, a printed copy): without it no backup can be restored.\n\
         Put the recipient in encryption.recipients on backup hosts:"
    );
    println!("{recipient}");
    // The identity text is its last line (comments first).
    let line = secret.lines().last().unwrap_or_default();
    let identity: age::x25519::Identity = line.parse().map_err(|e: &str| anyhow::anyhow!(e))?;
    // On stderr: stdout stays the recipient alone, which scripts read.
    eprintln!(
        "owner key, for encryption.owner_key on other hosts (format 2): {}",
        OwnerKey::from_identity(&identity).public()
    );
    Ok(())
}

/// Writes a file readable only by its owner, failing if it exists.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(data)?;
    f.sync_all()
}
