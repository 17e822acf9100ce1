//! `offsite`: the command-line front end. It parses arguments and
//! configuration, opens the configured targets, calls backup-core's
//! operations and prints their results. No backup logic lives here.

mod cmd_repair;
mod commands;
mod config;
mod demo;
mod hooks;
mod output;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "offsite",
    version,
    about = "Encrypted, deduplicated, verified backups of SQLite databases and files"
)]
struct Cli {
    /// Config file [default: $OFFSITE_CONFIG, else ./offsite.toml]
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug). Also OFFSITE_LOG=debug.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new age identity (the key that restores) and print its recipient.
    Keygen {
        /// Where to write the identity [default: print it to stdout]
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Snapshot every source (or one) to every target (or one).
    Backup {
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        target: Option<String>,
        /// Label the snapshot (repeatable).
        #[arg(long)]
        tag: Vec<String>,
        /// Print a JSON array of results instead of summary lines.
        #[arg(long)]
        json: bool,
    },
    /// List snapshots, newest first.
    Snapshots {
        #[arg(long)]
        source: Option<String>,
        /// Target to list [default: the first that answers]
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot to a path, verified before it is put in place.
    Restore(RestoreArgs),
    /// Check each target's credentials and permissions (put, list, get, delete a probe object).
    Targets {
        #[command(subcommand)]
        command: TargetsCommand,
    },
    /// Salvage a damaged SQLite database into a new file; the original is never changed.
    Repair {
        /// The damaged database.
        path: PathBuf,
        /// Where to write the salvage (must not exist) [default: PATH.recovered-<time>.db]
        #[arg(long)]
        to: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Try offsite on a sample database, with a local target: no setup needed.
    Demo {
        /// Directory for the demo's database, key, config and backups.
        #[arg(long, default_value = "offsite-demo")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum TargetsCommand {
    /// Probe every target (or one) and report one line each.
    Check {
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["latest", "snapshot", "at"])))]
pub struct RestoreArgs {
    #[arg(long)]
    pub source: String,
    /// The newest snapshot.
    #[arg(long)]
    pub latest: bool,
    /// A snapshot id (or a unique part of one).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// The newest snapshot taken at or before TIME (RFC 3339, or "YYYY-MM-DD[ HH:MM[:SS]]" local time).
    #[arg(long)]
    pub at: Option<String>,
    /// Where to write the database (or directory, for file sources).
    #[arg(long)]
    pub to: PathBuf,
    /// Replace an existing PATH; the old file and its -wal/-shm are moved aside, not deleted.
    #[arg(long)]
    pub force: bool,
    /// Target to restore from [default: the first that answers]
    #[arg(long)]
    pub target: Option<String>,
    /// Identity file [default: encryption.identity_file]
    #[arg(long, short = 'i')]
    pub identity: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("OFFSITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config_path = config::config_path(cli.config.as_deref());
    let result = runtime.block_on(async {
        match cli.command {
            Command::Keygen { output } => commands::keygen(output.as_deref()),
            Command::Backup {
                source,
                target,
                tag,
                json,
            } => {
                let cfg = config::load(&config_path)?;
                commands::backup(&cfg, source.as_deref(), target.as_deref(), tag, json).await
            }
            Command::Snapshots {
                source,
                target,
                json,
            } => {
                let cfg = config::load(&config_path)?;
                commands::snapshots(&cfg, source.as_deref(), target.as_deref(), json).await
            }
            Command::Restore(args) => {
                let cfg = config::load(&config_path)?;
                commands::restore(&cfg, &args).await
            }
            Command::Targets {
                command: TargetsCommand::Check { target, json },
            } => {
                let cfg = config::load(&config_path)?;
                commands::targets_check(&cfg, target.as_deref(), json).await
            }
            Command::Repair { path, to, json } => cmd_repair::run(&path, to.as_deref(), json).await,
            Command::Demo { dir } => demo::run(&dir).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => commands::report(&e),
    }
}
