//! Command-line arguments, as clap parses them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// coffer: encrypted, deduplicating backups.
#[derive(Parser, Debug, Clone)]
#[command(name = "coffer", version, about, long_about = None, after_help = super::secret::HELP)]
pub struct Cli {
    /// Repository: a local directory (or quic://HOST:PORT/NAMESPACE).
    #[arg(long, global = true, env = "COFFER_REPO")]
    pub repo: Option<String>,
    /// A job file (as `backup --config` takes) whose repository, passphrase
    /// file, identity, pin and cache serve this command; an option given on
    /// the command line wins over it, and it wins over `COFFER_*` variables.
    #[arg(long, global = true, env = "COFFER_PROFILE", value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing on success.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Where the local cache lives (default: ~/.cache/coffer).
    #[arg(long, global = true, env = "COFFER_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// This client's identity file (for quic:// repositories).
    #[arg(long, global = true, env = "COFFER_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// The server's certificate fingerprint to pin (for quic:// repositories).
    #[arg(long, global = true, env = "COFFER_SERVER_FINGERPRINT")]
    pub server_fingerprint: Option<String>,
    /// Give up connecting to a quic:// server after this long (e.g. "10s").
    #[arg(long, global = true, env = "COFFER_CONNECT_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub connect_timeout: std::time::Duration,
    /// When the connection to a quic:// server is lost (a restart), keep
    /// trying to reconnect for this long, then fail ("0" never tries).
    #[arg(long, global = true, env = "COFFER_RECONNECT_FOR", default_value = "5m",
          value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub reconnect_for: std::time::Duration,
    /// Read at most this many KiB per second from a quic:// server (restore,
    /// dump, mount, check --read-data, …).
    #[arg(long, global = true, env = "COFFER_LIMIT_DOWNLOAD", value_name = "KIB",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub limit_download: Option<u64>,
    /// Run this to get the passphrase (first line of its output; no shell
    /// unless `sh -c '…'`).
    #[arg(
        long,
        global = true,
        env = "COFFER_PASSWORD_COMMAND",
        hide_env_values = true,
        value_name = "CMD"
    )]
    pub password_command: Option<String>,
    /// Read the passphrase from this file (one trailing newline dropped).
    #[arg(long, global = true, env = "COFFER_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Passphrase file named by a job config (over the environment, under
    /// the command line; see `secret`).
    #[arg(skip)]
    pub job_password_file: Option<PathBuf>,
    /// Which of the global options above came from a `COFFER_*` variable
    /// rather than the command line (a job file wins over those).
    #[arg(skip)]
    pub from_env: Vec<String>,
    /// The snapshot filter of the command (`--host`, `--tag`, `--path`).
    #[arg(skip)]
    pub filter: coffer::repo::filter::SnapshotFilter,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Create a new repository.
    Init(InitArgs),
    /// Back up files, a stream or a disk image.
    Backup(Box<BackupArgs>),
    /// List snapshots (those that do not open are named on standard error).
    Snapshots {
        /// Exit 3 when some snapshot does not open (damaged, or not sealed
        /// with this repository's key).
        #[arg(long)]
        strict: bool,
        /// Accept the repository as it is now: snapshots this client saw
        /// that are gone (rolled back, or forgotten by another client) are
        /// no longer reported.
        #[arg(long)]
        accept_rollback: bool,
        /// List in groups: any of `host`, `paths`, `tags`, comma-separated.
        #[arg(long, value_name = "host,paths,tags")]
        group_by: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// List the entries of a snapshot.
    Ls {
        /// Snapshot id prefix or `latest`, optionally `:SUBPATH` (relative
        /// to the snapshot's root).
        snap: String,
        /// A path inside the snapshot.
        path: Option<String>,
        /// Long listing: type and permissions, owner, group, size, mtime,
        /// link target.
        #[arg(short, long)]
        long: bool,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Restore a snapshot, or some paths of it, into a directory.
    Restore {
        /// Snapshot id prefix or `latest`, optionally `:SUBPATH`: that
        /// subtree's contents are restored into the target.
        snap: String,
        /// Directory to restore into.
        #[arg(long)]
        target: PathBuf,
        /// Paths inside the snapshot to restore (all when none).
        paths: Vec<String>,
        #[command(flatten)]
        opts: RestoreArgs,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Write a file of a snapshot to standard output, or a directory as a
    /// tar stream.
    Dump {
        /// Snapshot id prefix or `latest`, optionally `:SUBPATH` (then PATH
        /// may be left out).
        snap: String,
        /// The file's or directory's path inside the snapshot.
        path: Option<String>,
        /// The archive format of a directory (`tar`, the default; a file
        /// goes out raw unless this is given).
        #[arg(long, value_parser = ["tar"])]
        archive: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Browse the snapshots as a read-only file system (FUSE) mounted on
    /// DIR: `ids/`, `hosts/HOST/TIME`, `tags/TAG/TIME`, `latest/HOST`.
    /// Runs until Ctrl-C, SIGTERM or `fusermount3 -u DIR`.
    Mount(MountArgs),
    /// Show what changed between two snapshots (each may be `SNAP:SUBPATH`).
    Diff {
        /// The older snapshot.
        snap1: String,
        /// The newer snapshot.
        snap2: String,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Search snapshots for entries by name or path (glob patterns).
    ///
    /// Prints snapshot, time, type, size, mtime and path, one line a hit,
    /// oldest snapshot first (`--json`: one array). Trees that snapshots
    /// share are read once.
    Find(FindArgs),
    /// Show repository figures.
    Stats {
        /// One snapshot's figures instead.
        snap: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Verify the repository.
    Check {
        /// Also read and decrypt every pack.
        #[arg(long)]
        read_data: bool,
    },
    /// Manage key files (passphrases).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Remove snapshots (refused inside their lock window and on legal
    /// hold). A server's operator: `--config FILE --namespace NS ID…`, no
    /// key needed, logged in the namespace's operator.log.
    Forget {
        /// Snapshot id prefixes or `latest` (with --config: hex id
        /// prefixes, each naming one snapshot of the namespace; all are
        /// checked before any is removed).
        #[arg(required = true)]
        snaps: Vec<String>,
        /// Remove snapshots that do not open, whatever their lock and legal
        /// hold say (logged): for a local repository with its passphrase
        /// (a snapshot that opens is refused), or as a server's operator
        /// with --config and --namespace (no key there to tell).
        #[arg(long)]
        damaged: bool,
        #[command(flatten)]
        operator: OperatorArgs,
        #[command(flatten)]
        filter: FilterArgs,
    },
    /// Extend a snapshot's lock or put it on legal hold (never shortens),
    /// or release a legal hold (the lock window stays): a local
    /// repository's passphrase holder, or a server's operator with
    /// `--config FILE --namespace NS`; logged in operator.log. A client of
    /// a server cannot release a hold.
    Lock(LockArgs),
    /// Show or change a local repository's retention rules (no key needed;
    /// logged in its operator.log). A server's are in its config.
    Policy(PolicyArgs),
    /// Remove expired snapshots that no keep rule names and the packs no
    /// snapshot needs (no key needed): `--repo PATH` for a local
    /// repository, `--config FILE` for every namespace of a server, as its
    /// operator.
    Prune {
        /// A server config: prune its data directory.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Delete nothing: list every snapshot with the rule that keeps it
        /// or the reason it would go, and the packs and bytes that would be
        /// freed.
        #[arg(long)]
        dry_run: bool,
        /// With --config: run even as root (files it creates would be root's).
        #[arg(long)]
        allow_root: bool,
    },
    /// Show whether deletion is frozen because the clock jumped, or (with
    /// --accept-now) acknowledge the clock as correct now, logged: `--repo
    /// PATH`, or `--config FILE` for every namespace of a server (no key
    /// needed). Exits 3 while frozen.
    Clock {
        /// A server config: every namespace of its data directory.
        #[arg(long)]
        config: Option<PathBuf>,
        /// With --config: this namespace only.
        #[arg(long, requires = "config")]
        namespace: Option<String>,
        /// The clock is right now: lift the freeze and take now as the
        /// latest time seen (also when it is earlier).
        #[arg(long)]
        accept_now: bool,
        /// With --config: run even as root.
        #[arg(long)]
        allow_root: bool,
    },
    /// Verify every block of every pack and parity file, repair damage from
    /// parity (no key needed): `--repo PATH`, or `--config FILE` for every
    /// namespace of a server.
    Scrub {
        /// A server config: scrub its data directory.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Read at most this many MB per second.
        #[arg(long)]
        rate_mb: Option<u64>,
        /// With --config: run even as root.
        #[arg(long)]
        allow_root: bool,
        /// With --config: put packs the scrub finds beyond repair (damaged
        /// past the parity budget, or lost) back from this replica
        /// (`HOST:PORT`), checked against their names.
        #[arg(long, requires_all = ["config", "replica_fingerprint", "identity"], value_name = "HOST:PORT")]
        from_replica: Option<String>,
        /// The replica's server fingerprint (with --from-replica).
        #[arg(long, requires = "from_replica")]
        replica_fingerprint: Option<String>,
        /// An identity the replica lists as a client of each namespace
        /// (read-only will do), for --from-replica.
        #[arg(long, requires = "from_replica")]
        identity: Option<PathBuf>,
    },
    /// Copy the namespaces a replica server pulls (`[[replicate]]` in its
    /// config) from their primaries now, rather than at `serve`'s next
    /// hourly run (no key needed). Exits 1 when a copy failed, 3 when a
    /// snapshot was refused.
    Replicate {
        /// The replica's server config.
        #[arg(long)]
        config: PathBuf,
        /// This namespace only.
        #[arg(long)]
        namespace: Option<String>,
        /// Run even as root (files it creates would be root's).
        #[arg(long)]
        allow_root: bool,
    },
    /// Manage TLS identities (key and self-signed certificate).
    #[command(subcommand)]
    Identity(IdentityCommand),
    /// Print a completion script for a shell (e.g. `source <(coffer
    /// completions bash)`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write a manual page for every command into a directory
    /// (`coffer.1`, `coffer-backup.1`, …).
    Man {
        /// The directory (made if missing).
        dir: PathBuf,
    },
    /// Run the repository server.
    Serve {
        /// Server config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Run even as root (not recommended: use a dedicated user).
        #[arg(long)]
        allow_root: bool,
        /// Serve this namespace although its commit counter went back (its
        /// directory was put back from an older copy; without this its
        /// clients are refused), and take its counter as it is now
        /// (repeatable).
        #[arg(long, value_name = "NAMESPACE")]
        accept_rollback: Vec<String>,
        /// Before serving, copy every namespace's objects back from the
        /// bucket of `[storage]` into the data directory (a server whose
        /// disk was lost or replaced), then serve. Needs `kind = "s3"`.
        #[arg(long)]
        rebuild: bool,
    },
}

/// Acting as a server's operator on one namespace of its config.
#[derive(Args, Debug, Clone)]
pub struct OperatorArgs {
    /// A server config: act as its operator on one of its namespaces (no
    /// key needed; run as the server's user).
    #[arg(long, requires = "namespace")]
    pub config: Option<PathBuf>,
    /// With --config: the namespace.
    #[arg(long, requires = "config")]
    pub namespace: Option<String>,
    /// With --config: run even as root.
    #[arg(long)]
    pub allow_root: bool,
}

/// `coffer policy`: each option given replaces that rule; none: show them.
#[derive(Args, Debug, Clone, Default)]
pub struct PolicyArgs {
    /// Lock window for new snapshots, in days.
    #[arg(long)]
    pub lock_days: Option<u32>,
    /// Retention of new snapshots, in days.
    #[arg(long)]
    pub retention_days: Option<u32>,
    /// Newest snapshots of each backup job that time alone never removes (at least 1).
    #[arg(long)]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N days that have one.
    #[arg(long)]
    pub keep_daily: Option<u32>,
    /// ... of each of the last N ISO weeks.
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    /// ... of each of the last N months.
    #[arg(long)]
    pub keep_monthly: Option<u32>,
    /// ... of each of the last N years.
    #[arg(long)]
    pub keep_yearly: Option<u32>,
}

/// How `restore` treats the target (docs/operations.md, Restore).
#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// Restore only entries matching this glob (repeatable), matched
    /// against the path below the restored root; a pattern without `/`
    /// matches a name at any depth; a matching directory takes its subtree.
    #[arg(long = "include", value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Leave out entries matching this glob (repeatable), as --include.
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// What to do with an entry already in the target: always,
    /// if-changed (content or metadata differ), if-newer, never.
    #[arg(long, default_value = "if-changed", value_parser = str::parse::<coffer::repo::restore_plan::Overwrite>)]
    pub overwrite: coffer::repo::restore_plan::Overwrite,
    /// Remove what the snapshot does not have, inside the restored paths.
    #[arg(long)]
    pub delete: bool,
    /// List what would change (`+` new, `M` replaced, `-` deleted, `!`
    /// refused) and touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Read every written file back and compare it with the snapshot.
    #[arg(long)]
    pub verify: bool,
    /// The format a disk image snapshot is written in: raw (sparse), or
    /// qcow2 (`NAME.qcow2`, through `qemu-img convert`).
    #[arg(long, value_enum, default_value = "raw")]
    pub format: super::disk_format::DiskFormat,
}

/// Where and how `mount` mounts.
#[derive(Args, Debug, Clone)]
pub struct MountArgs {
    /// An existing directory to mount on.
    pub dir: PathBuf,
    /// Let other users see the mount (the kernel then checks each entry's
    /// stored mode and owner); not root: needs `user_allow_other` in
    /// /etc/fuse.conf.
    #[arg(long)]
    pub allow_other: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Which snapshots a command considers; `latest` is the newest of them.
#[derive(Args, Debug, Clone, Default)]
pub struct FilterArgs {
    /// Only snapshots of this host (repeatable: any of them).
    #[arg(long = "host", id = "filter_hosts", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only snapshots with every tag of this comma-separated set
    /// (repeatable: any of the sets).
    #[arg(long = "tag", id = "filter_tags", value_name = "TAG[,TAG…]")]
    pub tags: Vec<String>,
    /// Only snapshots whose sources include this path (repeatable: all).
    #[arg(long = "path", id = "filter_paths", value_name = "PATH")]
    pub paths: Vec<String>,
}

impl FilterArgs {
    /// The library's filter.
    pub fn filter(&self) -> coffer::repo::filter::SnapshotFilter {
        coffer::repo::filter::SnapshotFilter {
            hosts: self.hosts.clone(),
            tags: self.tags.clone(),
            paths: self.paths.clone(),
        }
    }
}

/// `coffer find`.
#[derive(Args, Debug, Clone)]
pub struct FindArgs {
    /// Glob patterns: without `/` an entry's name, with `/` its whole path
    /// (`*` within one component, `**` across; relative: at any depth).
    #[arg(required = true, value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// Match every pattern against the whole path, `*` crossing `/` (as
    /// `find -path`).
    #[arg(long = "path")]
    pub whole_path: bool,
    /// Letters match either case.
    #[arg(long, short = 'i')]
    pub ignore_case: bool,
    /// Only the N newest snapshots with a match.
    #[arg(long, short = 'N', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub newest: Option<u64>,
    /// Search only this snapshot (id prefix or `latest`; repeatable).
    #[arg(long = "snapshot", short = 's', value_name = "SNAP")]
    pub snaps: Vec<String>,
    /// Only snapshots of this host (repeatable: any of them).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only snapshots with every tag of this comma-separated set
    /// (repeatable: any of the sets).
    #[arg(long = "tag", value_name = "TAG[,TAG…]")]
    pub tags: Vec<String>,
    /// Only snapshots whose sources include this path (repeatable: all);
    /// the `--path` of other commands (here `--path` reads whole paths).
    #[arg(long = "source-path", value_name = "PATH")]
    pub source_paths: Vec<String>,
}

impl FindArgs {
    /// The library's snapshot filter.
    pub fn filter(&self) -> coffer::repo::filter::SnapshotFilter {
        coffer::repo::filter::SnapshotFilter {
            hosts: self.hosts.clone(),
            tags: self.tags.clone(),
            paths: self.source_paths.clone(),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct LockArgs {
    /// Snapshot id prefix or `latest` (with --config: a hex id prefix).
    pub snap: String,
    /// Lock it for this many days from now.
    #[arg(long)]
    pub days: Option<u32>,
    /// Put it on legal hold: never removed.
    #[arg(long)]
    pub hold: bool,
    /// Release its legal hold; its lock window stays (logged in
    /// operator.log). Not through a server: its operator does it with
    /// --config and --namespace.
    #[arg(long, conflicts_with = "hold")]
    pub release_hold: bool,
    #[command(flatten)]
    pub operator: OperatorArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
}

#[derive(Subcommand, Debug, Clone)]
pub enum IdentityCommand {
    /// Create a private key and self-signed certificate; prints the fingerprint.
    New {
        /// Where to write it (mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print an identity's fingerprint.
    Show {
        /// The identity file.
        file: PathBuf,
    },
}

#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// Argon2id memory in KiB (floor 19456).
    #[arg(long, default_value_t = 32768)]
    pub kdf_memory_kib: u32,
    /// Argon2id iterations (floor 2).
    #[arg(long, default_value_t = 4)]
    pub kdf_iterations: u32,
    /// Minimum chunk size in bytes.
    #[arg(long)]
    pub chunk_min: Option<u32>,
    /// Average chunk size in bytes (a power of two).
    #[arg(long)]
    pub chunk_avg: Option<u32>,
    /// Maximum chunk size in bytes.
    #[arg(long)]
    pub chunk_max: Option<u32>,
    /// Block size for images and sparse files.
    #[arg(long)]
    pub image_block: Option<u32>,
    /// Target pack size in bytes.
    #[arg(long)]
    pub pack_size: Option<u32>,
    /// Default zstd level (0 = off).
    #[arg(long)]
    pub compression: Option<i32>,
    /// Lock window of a local repository, in days.
    #[arg(long, default_value_t = 30)]
    pub lock_days: u32,
    /// Retention of a local repository, in days.
    #[arg(long, default_value_t = 30)]
    pub retention_days: u32,
    /// Newest snapshots of each backup job (host and paths) that time
    /// alone never removes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_last: u32,
    /// Also keep the newest snapshot of each of the last N days that have one.
    #[arg(long, default_value_t = 0)]
    pub keep_daily: u32,
    /// ... of each of the last N ISO weeks.
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: u32,
    /// ... of each of the last N months.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: u32,
    /// ... of each of the last N years.
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: u32,
    /// Parity of a local repository: K packs per stripe + M parity files.
    #[arg(long, default_value = "10+2")]
    pub parity: String,
}

#[derive(Args, Debug, Clone)]
pub struct BackupArgs {
    /// Files and directories to back up.
    pub paths: Vec<PathBuf>,
    /// A job file (TOML): repository, sources, hooks; one run at a time.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read the data to back up from standard input.
    #[arg(long)]
    pub stdin: bool,
    /// File name for data from standard input or a command.
    #[arg(long)]
    pub stdin_name: Option<String>,
    /// Run this command and back up its standard output; a failure of the
    /// command fails the backup.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD")]
    pub stdin_from_command: Option<Vec<String>>,
    /// Back up a disk image or block device, or the disk an NBD server
    /// exports (`nbd+unix:///EXPORT?socket=PATH`, `nbd://HOST:PORT/EXPORT`:
    /// e.g. `qemu-nbd -r` of a qcow2), whose zero ranges are never read.
    #[arg(long, value_name = "DEVICE_FILE_OR_NBD_URI")]
    pub image: Option<PathBuf>,
    /// With an NBD --image: read only the extents this dirty bitmap
    /// (`qemu-nbd -B NAME`) reports dirty, and take the clean ones from the
    /// newest snapshot of the same disk that started it (--start-bitmap).
    /// Without such a snapshot, or when the size changed, the whole disk
    /// is read, with a notice.
    #[arg(long, value_name = "NAME", requires = "image")]
    pub changed_bitmap: Option<String>,
    /// Record that dirty bitmap NAME starts at this backup (the hook
    /// created or cleared it at the instant of the disk snapshot read).
    #[arg(long, value_name = "NAME", requires = "image")]
    pub start_bitmap: Option<String>,
    /// A token for this start of the bitmap (the hook makes one each time
    /// it clears the bitmap, e.g. a timestamp), recorded with it.
    #[arg(long, value_name = "TOKEN", requires = "start_bitmap")]
    pub start_token: Option<String>,
    /// The token the --changed-bitmap bitmap started with: a parent that
    /// recorded another token is not trusted (a full read instead).
    #[arg(long, value_name = "TOKEN", requires = "changed_bitmap")]
    pub changed_token: Option<String>,
    /// With --changed-bitmap: read this percent of the blocks the bitmap
    /// calls clean and compare them with the parent's; a difference (a
    /// bitmap that missed a write) makes the backup read the whole disk.
    #[arg(long, value_name = "PERCENT", requires = "changed_bitmap", default_value_t = 0.0,
          value_parser = parse_percent)]
    pub verify_clean: f64,
    /// With --changed-bitmap: take clean extents from this snapshot (id
    /// prefix) rather than the newest that started the bitmap.
    #[arg(long, value_name = "SNAP", requires = "changed_bitmap")]
    pub parent: Option<String>,
    /// Leave out entries matching this pattern (repeatable), as in a
    /// .gitignore: without `/` a name at any depth, with `/` a path below
    /// the backed-up path, `dir/` directories only, `!` keeps again
    /// (docs/operations.md, Excludes).
    #[arg(long, short = 'e', value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Patterns to leave out, one a line of FILE; blank lines and `#`
    /// comments skipped (repeatable).
    #[arg(long, value_name = "FILE")]
    pub exclude_file: Vec<PathBuf>,
    /// As --exclude, letters matching either case (repeatable).
    #[arg(long, value_name = "PATTERN")]
    pub iexclude: Vec<String>,
    /// As --exclude-file, letters matching either case (repeatable).
    #[arg(long, value_name = "FILE")]
    pub iexclude_file: Vec<PathBuf>,
    /// Leave out the content of directories holding a valid CACHEDIR.TAG
    /// (the tag itself is kept).
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out the content of directories holding an entry named NAME
    /// (which is kept; repeatable).
    #[arg(long, value_name = "NAME")]
    pub exclude_if_present: Vec<String>,
    /// Leave out files larger than SIZE (e.g. 10M, 1GiB: powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = coffer::repo::exclude::parse_size)]
    pub exclude_larger_than: Option<u64>,
    /// Back up the paths listed in FILE, one a line, each trimmed; blank
    /// lines and `#` comments skipped; `-`: standard input (repeatable,
    /// with or instead of PATHS).
    #[arg(long, value_name = "FILE")]
    pub files_from: Vec<PathBuf>,
    /// As --files-from, every line taken as it is (only empty lines
    /// skipped).
    #[arg(long, value_name = "FILE")]
    pub files_from_verbatim: Vec<PathBuf>,
    /// As --files-from, paths separated by NUL bytes (`find -print0`).
    #[arg(long, value_name = "FILE")]
    pub files_from_raw: Vec<PathBuf>,
    /// Stay on the file system of each path.
    #[arg(long, short = 'x')]
    pub one_file_system: bool,
    /// Tag the snapshot (repeatable).
    #[arg(long)]
    pub tag: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long)]
    pub host: Option<String>,
    /// The backup job this snapshot belongs to, for retention: the server
    /// keeps each job's newest snapshots however old. Default: the host and
    /// the source paths (an image's --name in place of its path). Set it
    /// when a source's name changes from run to run (a dated dump name, a
    /// dated device snapshot), or every run is a job of its own and kept.
    #[arg(long)]
    pub job: Option<String>,
    /// Read every file, ignoring the files cache.
    #[arg(long)]
    pub no_files_cache: bool,
    /// Walk and read the sources and report what would be new, writing
    /// nothing: no pack, no snapshot, no parity, no files-cache record.
    /// The hooks still run (a pre hook may be what makes the source).
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// With --json: JSON lines, a `{"type":"status",…}` line each second
    /// while the backup runs, then the `{"type":"summary",…}` line (or an
    /// `{"error":…}` line).
    #[arg(long)]
    pub json_progress: bool,
    /// zstd level for this backup.
    #[arg(long)]
    pub compression: Option<i32>,
    /// Upload at most this many KiB per second.
    #[arg(long, value_name = "KIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit_upload: Option<u64>,
    /// Run this (with /bin/sh -c) before the backup, e.g. to create a
    /// device snapshot; the backup does not run if it fails.
    #[arg(long, value_name = "CMD")]
    pub pre: Option<String>,
    /// Run this (with /bin/sh -c) after the backup whatever happened: on
    /// success, failure, SIGINT or SIGTERM, e.g. to release the snapshot.
    #[arg(long, value_name = "CMD")]
    pub post: Option<String>,
    /// -v: list each file as it is saved (new or modified), and print the
    /// one-line summary even when a --config run is not on a terminal (cron
    /// mails any output); -vv: every file with its status (new, modified,
    /// unchanged, linked). Not with --json.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Subcommand, Debug, Clone)]
pub enum KeyCommand {
    /// Add a passphrase (from COFFER_NEW_PASSWORD_COMMAND, COFFER_NEW_PASSWORD_FILE
    /// or COFFER_NEW_PASSWORD, only one, or a prompt).
    Add {
        /// Argon2id memory in KiB.
        #[arg(long, default_value_t = 32768)]
        kdf_memory_kib: u32,
        /// Argon2id iterations.
        #[arg(long, default_value_t = 4)]
        kdf_iterations: u32,
    },
    /// List key files.
    List,
    /// Remove a key file by id prefix.
    Remove {
        /// Key id prefix.
        id: String,
    },
    /// Change the passphrase in use: add the new one, remove the old key file.
    Passwd {
        /// Argon2id memory in KiB.
        #[arg(long, default_value_t = 32768)]
        kdf_memory_kib: u32,
        /// Argon2id iterations.
        #[arg(long, default_value_t = 4)]
        kdf_iterations: u32,
    },
}

/// A percentage, 0 to 100.
fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage from 0 to 100")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks its definitions (unique names, valid relations) only
    /// when a command is parsed: every subcommand is checked here at once.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
