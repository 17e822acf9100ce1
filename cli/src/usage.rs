//! Usage and configuration mistakes: the errors that exit with code 2.
//!
//! The exit code is decided by the type of an error in the chain, never by
//! its text: a [`Usage`] raised (or added as context) here in the binary, or
//! one of backup-core's errors that can only come from what the user wrote
//! ([`Error::Key`]: a recipient, identity file or passphrase that is not
//! one). Everything else is an operation that failed: exit code 1.

use std::path::PathBuf;

use backup_core::Error;

#[derive(Debug, thiserror::Error)]
pub enum Usage {
    /// Context over whatever is wrong in a config file (its cause follows).
    #[error("invalid config {}", .0.display())]
    Config(PathBuf),
    /// A flag, name or setting that cannot be used, with what to do instead.
    #[error("{0}")]
    Mistake(String),
}

/// A usage mistake with its message, as an error to return.
pub fn mistake(message: impl Into<String>) -> anyhow::Error {
    Usage::Mistake(message.into()).into()
}

/// True when `e` is a usage or configuration mistake.
pub fn is_usage(e: &anyhow::Error) -> bool {
    // `downcast_ref` also finds a `Usage` added as context; `chain` finds
    // errors that are the source of another.
    e.downcast_ref::<Usage>().is_some() || e.chain().any(is_one)
}

/// [`is_usage`] for an error outside an anyhow chain (a target's failure
/// in a per-target report): it or one of its causes is a mistake.
pub fn is_mistake(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |c| c.source()).any(is_one)
}

/// Whether this one error (not its causes) is a usage or configuration mistake.
fn is_one(c: &(dyn std::error::Error + 'static)) -> bool {
    c.is::<Usage>()
        || matches!(
            c.downcast_ref::<Error>(),
            Some(
                Error::Key(_)
                    | Error::NoFormat2Keys { .. }
                    | Error::NoMetadataKey { .. }
                    | Error::NoOwnerToCreate { .. }
                    | Error::UnsignedFormat1 { .. }
                    | Error::NotFormat1 { .. }
            )
        )
}

/// The process exit code for a failed command.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if is_usage(e) {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_type_decides_not_the_text() {
        let config = Err::<(), _>(anyhow::anyhow!("backup.compression_level must be 1 to 19"))
            .context(Usage::Config(PathBuf::from("offsite.toml")))
            .unwrap_err();
        assert_eq!(exit_code(&config), 2);
        assert_eq!(
            format!("{config:#}"),
            "invalid config offsite.toml: backup.compression_level must be 1 to 19"
        );
        assert_eq!(exit_code(&config.context("daemon")), 2);
        let key = anyhow::Error::from(Error::Key("recipient \"x\": bad".into()))
            .context("encryption.recipients");
        assert_eq!(exit_code(&key), 2);
        assert_eq!(
            exit_code(&mistake("no source named \"x\"").context("restore")),
            2
        );
        // Text that looks like a config error is not one.
        assert_eq!(exit_code(&anyhow::anyhow!("invalid config: just words")), 1);
        assert_eq!(
            exit_code(&anyhow::Error::from(Error::SnapshotNotFound("id x".into()))),
            1
        );
    }
}
