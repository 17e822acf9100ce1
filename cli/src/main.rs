//! `offsite`: the command-line front end. It parses arguments and
//! configuration, opens the configured targets, calls backup-core's
//! operations and prints their results. No backup logic lives here.

// These shadow std's printing macros in every module of the crate (a
// `macro_rules!` defined before the `mod` lines is in scope in all of them),
// so that no output can panic on a closed stdout or stderr: see output.rs.
macro_rules! println {
    () => { $crate::output::print_out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::print_out(format_args!("{}\n", format_args!($($arg)*))) };
}
macro_rules! print {
    ($($arg:tt)*) => { $crate::output::print_out(format_args!($($arg)*)) };
}
macro_rules! eprintln {
    () => { $crate::output::print_err(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::print_err(format_args!("{}\n", format_args!($($arg)*))) };
}

mod cmd_backup;
mod cmd_config;
mod cmd_daemon;
mod cmd_docs;
mod cmd_drill;
mod cmd_init;
mod cmd_key;
mod cmd_keygen;
mod cmd_migrate;
mod cmd_pin;
mod cmd_prune;
mod cmd_repair;
mod cmd_replicate;
mod cmd_restore;
mod cmd_snapshots;
mod cmd_status;
mod cmd_targets;
mod cmd_verify;
mod cmd_writer;
mod config;
mod config_env;
mod config_retention;
mod demo;
mod errors;
mod hooks;
mod notify;
mod ops_config;
mod output;
mod per_target;
mod resolve;
mod serve;
mod state;
mod status_replication;
mod targets;
mod usage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use per_target::Unsigned;

#[derive(Parser)]
#[command(
    name = "offsite",
    version,
    about = "Encrypted, deduplicated, verified backups of SQLite databases and files"
)]
struct Cli {
    /// Config file [default: $OFFSITE_CONFIG, else ./offsite.toml, else /etc/offsite/offsite.toml]
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug). Also OFFSITE_LOG=debug.
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// No progress and no summaries on stdout; errors, warnings, --json and
    /// requested output (keygen, snapshots, config, completions, man) stay.
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    quiet: bool,
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
        /// Back up this source only [default: every source]
        #[arg(long)]
        source: Option<String>,
        /// Back up to this target only [default: every target]
        #[arg(long)]
        target: Option<String>,
        /// Label the snapshot (repeatable).
        #[arg(long)]
        tag: Vec<String>,
        /// Pin the new snapshots: prune never removes them (until `offsite unpin`).
        #[arg(long)]
        pin: bool,
        /// Print a JSON array of results instead of summary lines.
        #[arg(long)]
        json: bool,
    },
    /// List the snapshots of every target (or one), newest first.
    Snapshots {
        /// List this source's snapshots only [default: every source]
        #[arg(long)]
        source: Option<String>,
        /// Target to list [default: every target]
        #[arg(long)]
        target: Option<String>,
        /// Print a JSON array of snapshots instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Restore a snapshot of one source (or of every source with --all), verified before it is put in place.
    Restore(RestoreArgs),
    /// Remove the snapshots no [retention] rule keeps, then the data only they used.
    Prune(cmd_prune::PruneArgs),
    /// Keep a snapshot whatever the retention policy says.
    Pin(cmd_pin::PinArgs),
    /// Let retention apply to a pinned snapshot again.
    Unpin(cmd_pin::PinArgs),
    /// Remove stale repository locks (left by killed runs), or all with --all.
    Unlock(cmd_prune::UnlockArgs),
    /// Check that every snapshot is complete (--read-data: restorable, byte for byte).
    Verify(cmd_verify::VerifyArgs),
    /// Create a format 2 repository with a new key set on every (or one) empty target; needs the owner identity.
    Init {
        /// Create it on this target only [default: every target]
        #[arg(long)]
        target: Option<String>,
    },
    /// Move a format 1 repository to a new format 2 one (same snapshot ids, signed by the owner); needs the owner identity.
    Migrate(cmd_migrate::MigrateArgs),
    /// The recipients of format 2 repositories: list, add, remove.
    Key {
        #[command(subcommand)]
        command: cmd_key::KeyCommand,
    },
    /// Backup hosts' writer keys of format 2 repositories: keygen, list, add, remove.
    Writer {
        #[command(subcommand)]
        command: cmd_writer::WriterCommand,
    },
    /// Check each target's credentials and permissions (put, list, get, delete a probe object).
    Targets {
        #[command(subcommand)]
        command: TargetsCommand,
    },
    /// Restore drill: restore each source's newest snapshot to a scratch directory, check and time it.
    Drill {
        /// Drill this source only [default: every source]
        #[arg(long)]
        source: Option<String>,
        /// Restore from this target only [default: every target]
        #[arg(long)]
        target: Option<String>,
        /// Identity file [default: encryption.identity_file]
        #[arg(long, short = 'i')]
        identity: Option<PathBuf>,
        /// Use a format 1 target's snapshots, which nobody signed (anyone with write access
        /// to it could have written them) [default: the target's allow_unsigned]
        #[arg(long)]
        allow_unsigned: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Snapshots, sizes and ages per source and target; exit 1 when a [status] threshold is breached.
    Status {
        /// Print the report as JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Write node_exporter textfile metrics to FILE (atomically) [default: status.prometheus_file]
        #[arg(long, value_name = "FILE")]
        prometheus: Option<PathBuf>,
    },
    /// Run the [schedule] jobs at their cron times (and [replicate], [serve]) until SIGTERM or SIGINT.
    Daemon,
    /// Replicate the SQLite sources continuously (about a second of data loss at most) until SIGTERM or SIGINT.
    Replicate {
        /// Replicate this source only [default: every SQLite source]
        #[arg(long)]
        source: Option<String>,
    },
    /// Serve the JSON API (docs/api.md) on [serve] listen until SIGTERM or SIGINT.
    Serve {
        #[command(subcommand)]
        command: Option<ServeCommand>,
    },
    /// Salvage a damaged SQLite database into a new file; the original is never changed.
    Repair {
        /// The damaged database.
        path: PathBuf,
        /// Where to write the salvage (must not exist) [default: PATH.recovered-<time>.db]
        #[arg(long)]
        to: Option<PathBuf>,
        /// Print the salvage report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Try offsite on a sample database, with a local target: no setup needed.
    Demo {
        /// Directory for the demo's database, key, config and backups.
        #[arg(long, default_value = "offsite-demo")]
        dir: PathBuf,
    },
    /// Print the resolved configuration (secrets redacted), the file it came
    /// from and the OFFSITE_* variables that took part.
    Config {
        /// Print it as JSON: file, origin, environment and config.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script: `offsite completions bash > /etc/bash_completion.d/offsite`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page offsite(1) in roff, or write one page per command to --dir.
    Man {
        /// Write offsite.1, offsite-backup.1, ... to DIR instead of offsite(1) to stdout.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

impl Command {
    /// Whether the command reads the config file.
    fn needs_config(&self) -> bool {
        !matches!(
            self,
            Command::Keygen { .. }
                | Command::Repair { .. }
                | Command::Demo { .. }
                | Command::Completions { .. }
                | Command::Man { .. }
                | Command::Serve {
                    command: Some(ServeCommand::HashToken)
                }
        ) && !matches!(self, Command::Writer { command } if !command.needs_config())
    }

    /// Whether stdout is what the command was asked for (kept by --quiet)
    /// rather than a summary for people.
    fn stdout_is_product(&self) -> bool {
        match self {
            Command::Keygen { .. }
            | Command::Snapshots { .. }
            | Command::Config { .. }
            | Command::Completions { .. }
            | Command::Man { .. }
            | Command::Serve {
                command: Some(ServeCommand::HashToken),
            } => true,
            Command::Backup { json, .. }
            | Command::Drill { json, .. }
            | Command::Status { json, .. }
            | Command::Repair { json, .. }
            | Command::Targets {
                command: TargetsCommand::Check { json, .. },
            } => *json,
            Command::Restore(a) => a.json,
            Command::Key { command } => command.json(),
            Command::Writer { command } => command.stdout_is_product(),
            Command::Init { .. } | Command::Migrate(_) => false,
            Command::Prune(a) => a.json,
            Command::Verify(a) => a.json,
            Command::Pin(_) | Command::Unpin(_) | Command::Unlock(_) => false,
            Command::Daemon
            | Command::Replicate { .. }
            | Command::Demo { .. }
            | Command::Serve { command: None } => false,
        }
    }
}

#[derive(Subcommand)]
enum ServeCommand {
    /// Print a new random token, then the `sha256 = "..."` line of a [[serve.tokens]] entry for it.
    HashToken,
}

#[derive(Subcommand)]
enum TargetsCommand {
    /// Probe every target (or one) and report one line each.
    Check {
        /// Probe this target only [default: every target]
        #[arg(long)]
        target: Option<String>,
        /// Print the results as a JSON array.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["latest", "snapshot", "at"])))]
#[command(group(clap::ArgGroup::new("what").required(true).args(["source", "all"])))]
pub struct RestoreArgs {
    /// The source to restore (a name of [[sources]]).
    #[arg(long)]
    pub source: Option<String>,
    /// Every source of the config, each to the path in its `[[sources]]` entry
    /// (a rebuilt server in one command); with --latest or --at.
    #[arg(long, conflicts_with_all = ["snapshot", "to"])]
    pub all: bool,
    /// The newest snapshot, or the last replicated transaction when that is newer.
    #[arg(long)]
    pub latest: bool,
    /// A snapshot id (or a unique part of one).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// The newest snapshot taken at or before TIME (RFC 3339, or "YYYY-MM-DD[ HH:MM[:SS]]" local
    /// time); with replication, the state of the last transaction committed at or before it
    /// (a time to the second means the end of that second).
    #[arg(long)]
    pub at: Option<String>,
    /// Where to write the database file (or directory, for file sources)
    /// [default: the source's own path from the config].
    #[arg(long)]
    pub to: Option<PathBuf>,
    /// Replace an existing PATH: first snapshot it (tag "pre-restore"), then move it
    /// and its -wal/-shm aside, never deleting them.
    #[arg(long)]
    pub force: bool,
    /// With --force: skip the snapshot of the file being replaced (it is still moved aside).
    #[arg(long, requires = "force")]
    pub no_pre_restore_snapshot: bool,
    /// Skip the database's own check (SQLite integrity_check, DuckDB opening it), e.g. for a
    /// DuckDB file newer than the libduckdb here; the SHA-256 of the data is still verified.
    #[arg(long)]
    pub no_database_check: bool,
    /// Run the database check even when a signed record says it passed on this snapshot
    /// (format 2: by default a recorded integrity_check is not run again).
    #[arg(long, conflicts_with = "no_database_check")]
    pub database_check: bool,
    /// Use a format 1 target's snapshots, which nobody signed (anyone with write access
    /// to it could have written them) [default: the target's allow_unsigned]
    #[arg(long)]
    pub allow_unsigned: bool,
    /// Restore into a temporary directory, verify, and delete it: a check that touches nothing.
    #[arg(long, conflicts_with_all = ["to", "force"])]
    pub test: bool,
    /// Target to restore from [default: the one with the chosen snapshot,
    /// looking at every target]
    #[arg(long)]
    pub target: Option<String>,
    /// Identity file [default: encryption.identity_file]
    #[arg(long, short = 'i')]
    pub identity: Option<PathBuf>,
    /// Print the result as JSON.
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
        // Colour codes would garble journald and log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// glibc gives each thread that allocates its own arena and keeps freed
/// memory in it; with the runtime's and the decoders' threads that added
/// 10 to 20 MB of peak RSS to a restore, varying from run to run. And after
/// the first multi-MiB pack buffer is freed glibc raises its mmap threshold,
/// so later pack buffers come from the heap and stay resident: a fixed
/// threshold just below a pack buffer (4 MiB + slack) hands them back to the
/// kernel when freed, while smaller, reused buffers stay on the heap. On the
/// 1 GiB benchmark: peak RSS 80-90 -> about 60 MB, same time (a 256 KiB
/// threshold cost a second of page faults).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // SAFETY: called first thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    init(&cli);
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
    let located = match cli
        .command
        .needs_config()
        .then(|| config::locate(cli.config.as_deref()))
        .transpose()
    {
        Ok(l) => l,
        Err(e) => return errors::report(&e),
    };
    let result = runtime.block_on(dispatch(cli.command, located));
    // Do not wait on threads of a job the daemon abandoned at shutdown.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    let result = result.and_then(|()| match output::stdout_error() {
        Some(e) => Err(anyhow::Error::new(e).context("writing the output to stdout")),
        None => Ok(()),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => errors::report(&e),
    }
}

/// Logging and `--quiet`, before anything can print.
fn init(cli: &Cli) {
    // A daemon's log is its only output: say what runs when, by default.
    let daemon = matches!(
        cli.command,
        Command::Daemon | Command::Serve { command: None }
    );
    init_logging(cli.verbose.max(u8::from(daemon)));
    if cli.quiet {
        output::set_quiet(cli.command.stdout_is_product());
    }
}

/// Runs `command`; `located` is the config file, for the commands that
/// read one (see [`Command::needs_config`]).
async fn dispatch(command: Command, located: Option<config::Located>) -> anyhow::Result<()> {
    let Some(located) = located else {
        return without_config(command).await;
    };
    if let Command::Config { json } = command {
        // Shown as found, before (and whether or not) it loads.
        return cmd_config::run(&located, json);
    }
    let cfg = config::load(&located.path)?;
    if let Command::Serve { command: None } = command {
        return serve::run(cfg, located.path).await;
    }
    with_config(command, &cfg, &located.path).await
}

/// The commands that read no config file.
async fn without_config(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Keygen { output } => cmd_keygen::keygen(output.as_deref()),
        Command::Repair { path, to, json } => cmd_repair::run(&path, to.as_deref(), json).await,
        Command::Demo { dir } => demo::run(&dir).await,
        Command::Writer {
            command: cmd_writer::WriterCommand::Keygen { output },
        } => cmd_writer::keygen(&output),
        Command::Completions { shell } => cmd_docs::completions(shell),
        Command::Man { dir } => cmd_docs::man(dir.as_deref()),
        Command::Serve {
            command: Some(ServeCommand::HashToken),
        } => serve::hash_token(),
        _ => unreachable!("needs_config: this command reads the config file"),
    }
}

/// The commands that run on a loaded config (`config_path` is where it
/// came from).
async fn with_config(
    command: Command,
    cfg: &config::Config,
    config_path: &std::path::Path,
) -> anyhow::Result<()> {
    match command {
        Command::Backup {
            source,
            target,
            tag,
            pin,
            json,
        } => cmd_backup::backup(cfg, source.as_deref(), target.as_deref(), tag, pin, json).await,
        Command::Snapshots {
            source,
            target,
            json,
        } => cmd_snapshots::snapshots(cfg, source.as_deref(), target.as_deref(), json).await,
        Command::Restore(args) => cmd_restore::restore(cfg, &args).await,
        Command::Targets {
            command: TargetsCommand::Check { target, json },
        } => cmd_targets::targets_check(cfg, target.as_deref(), json).await,
        Command::Prune(args) => {
            let prune = cmd_prune::prune(cfg, config_path, &args);
            notify::around(&cfg.notify, notify::EventKind::Prune, prune).await
        }
        Command::Init { target } => cmd_init::run(cfg, target.as_deref()).await,
        Command::Migrate(args) => cmd_migrate::run(cfg, &args).await,
        Command::Key { command } => cmd_key::run(cfg, &command).await,
        Command::Writer { command } => cmd_writer::run(cfg, &command).await,
        Command::Pin(args) => cmd_pin::pin(cfg, &args).await,
        Command::Unpin(args) => cmd_pin::unpin(cfg, &args).await,
        Command::Unlock(args) => cmd_prune::unlock(cfg, &args).await,
        Command::Verify(args) => {
            let verify = cmd_verify::verify(cfg, &args);
            notify::around(&cfg.notify, notify::EventKind::Verify, verify).await
        }
        Command::Drill {
            source,
            target,
            identity,
            allow_unsigned,
            json,
        } => {
            let (source, target) = (source.as_deref(), target.as_deref());
            let unsigned = Unsigned::Refused { allow_unsigned };
            cmd_drill::run(cfg, source, target, identity.as_deref(), unsigned, json).await
        }
        Command::Status { json, prometheus } => {
            cmd_status::run(cfg, json, prometheus.as_deref()).await
        }
        Command::Daemon => cmd_daemon::run(cfg, config_path).await,
        Command::Replicate { source } => cmd_replicate::run(cfg, source.as_deref()).await,
        _ => unreachable!("without_config runs the commands that read no config file"),
    }
}
