//! The command-line front end: reads the passphrase, opens the repository,
//! runs one command and prints its result, as text or JSON. The only user of
//! `anyhow`. Exit codes: 0 ok, 1 error, 2 usage, 3 finished with entries left
//! out, 4 wrong passphrase or refused key file, 5 damaged repository data,
//! 6 another run of the same job holds its lock, 128+N stopped by signal N.

#[macro_use]
mod output;
mod args;
mod backup;
mod clock;
mod damaged;
mod disk_format;
mod docs;
mod exclude;
mod find;
mod forget;
mod keys;
mod ls;
mod mount;
mod operator;
mod replicate;
mod restore;
mod rollback;
mod secret;
mod server;

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{CommandFactory, FromArgMatches};
use serde_json::json;

use args::{Cli, Command, FilterArgs, IdentityCommand, InitArgs, KeyCommand};
use coffer::chunk::ChunkerParams;
use coffer::format::config::Settings;
use coffer::format::keyfile::KdfParams;
use coffer::format::tree::{Node, NodeKind};
use coffer::net::client::{Remote, RemoteStore, RemoteUrl};
use coffer::net::{Fingerprint, Identity};
use coffer::repo::{check, default_cache_dir, diff, InitOptions, Repository, Snapshot};
use coffer::store::LocalStore;
use coffer::store::Store;
use coffer::{Error, ErrorKind};
use damaged::{cmd_forget_damaged, cmd_forget_damaged_on_server};
use forget::{cmd_forget, cmd_lock};
use keys::{cmd_identity, cmd_init, cmd_key};
use ls::cmd_ls;
use restore::{cmd_check, cmd_diff, cmd_dump, cmd_restore, cmd_snapshots, cmd_stats};
use server::{cmd_policy, cmd_prune, cmd_scrub, cmd_serve};

/// An error whose type says the exit code (see `exit_code`): a newtype
/// around its message.
macro_rules! exit_error {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        struct $name(String);
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for $name {}
    };
}

exit_error!(
    /// A run that finished but left something out: exit 3.
    Incomplete
);
exit_error!(
    /// A command line that cannot be carried out as given, found after
    /// parsing (clap's own errors exit 2 too): exit 2, nothing changed.
    Usage
);
exit_error!(
    /// Problems found by check: exit 5.
    Damaged
);

/// Lifts the soft limit on open files to the hard one (at most 64 Ki): a
/// restore keeps a file open until its last chunk is written, and up to
/// about a thousand can be in flight; the usual soft limit is 1024.
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = hard.min(1 << 16);
        if soft < want {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, want, hard);
        }
    }
}

pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    // Global options are propagated to the subcommand's matches.
    let sub = matches.subcommand().map(|(_, m)| m).unwrap_or(&matches);
    for id in [
        "repo",
        "identity",
        "server_fingerprint",
        "cache_dir",
        "password_command",
        "password_file",
    ] {
        if sub.value_source(id) == Some(clap::parser::ValueSource::EnvVariable) {
            cli.from_env.push(id.to_string());
        }
    }
    let json = cli.json;
    raise_open_files();
    let res = run(cli).and_then(|()| match output::take_stdout_error() {
        Some(e) => Err(anyhow::Error::new(e).context("writing standard output")),
        None => Ok(()),
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A closed pipe (e.g. `coffer dump … | head`) is not an error.
            if let Some(ioe) = e.downcast_ref::<io::Error>() {
                if ioe.kind() == io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            errln!("coffer: error: {e:#}");
            let code = exit_code(&e);
            if json && !JSON_PRINTED.load(std::sync::atomic::Ordering::Relaxed) {
                // A script reading stdout gets an answer either way.
                let _ = print_json(&json!({"error": format!("{e:#}"), "exit_code": code}));
            }
            ExitCode::from(code)
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    let sig = backup::SIGNAL.load(std::sync::atomic::Ordering::SeqCst);
    if sig > 0 && !backup::COMMITTED.load(std::sync::atomic::Ordering::SeqCst) {
        return (128 + sig) as u8;
    }
    if e.downcast_ref::<backup::Busy>().is_some() {
        return 6;
    }
    if e.downcast_ref::<Incomplete>().is_some() {
        return 3;
    }
    if e.downcast_ref::<Damaged>().is_some() {
        return 5;
    }
    if e.downcast_ref::<Usage>().is_some() {
        return 2;
    }
    match e.downcast_ref::<Error>().map(|e| e.kind()) {
        Some(ErrorKind::Auth) => 4,
        Some(ErrorKind::Corrupt) => 5,
        Some(ErrorKind::Interrupted) => 130,
        _ => 1,
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Who runs this command, for an operator log: the account it runs as
/// (by uid, not `$USER`, which anyone can set), and the person behind it
/// when the system knows: the login uid the kernel keeps across `su`,
/// `sudo` and `runuser` (audit), and `SUDO_USER`.
fn who_runs() -> String {
    let uid = nix::unistd::getuid();
    let name = |uid: u32| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| format!("uid {uid}"))
    };
    let mut who = format!("{} (uid {uid})", name(uid.as_raw()));
    let login = std::fs::read_to_string("/proc/self/loginuid")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|l| *l != u32::MAX && *l != uid.as_raw());
    if let Some(l) = login {
        who.push_str(&format!(", logged in as {} (uid {l})", name(l)));
    }
    if let Ok(s) = std::env::var("SUDO_USER") {
        who.push_str(&format!(", SUDO_USER {s}"));
    }
    who
}

fn user() -> String {
    std::env::var("USER")
        .ok()
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_default()
}

fn fmt_time(ns: i64) -> String {
    coffer::retention::fmt_time(ns.div_euclid(1_000_000_000))
}

fn fmt_bytes(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn repo_arg(cli: &Cli) -> Result<&str> {
    let r = cli
        .repo
        .as_deref()
        .ok_or_else(|| anyhow!("no repository: give --repo or set COFFER_REPO"))?;
    check_scheme(r)?;
    Ok(r)
}

/// Refuses a repository (`--repo`, `COFFER_REPO` or a job's `repo =`) in a
/// scheme coffer does not speak, before anything is read or created: taken
/// as a path, `s3://bucket/x` or restic's `sftp:host:/x` would become a
/// local repository in a directory named `s3:` or `sftp:host:`.
fn check_scheme(r: &str) -> Result<()> {
    match foreign_scheme(r) {
        Some(s) => Err(Usage(format!(
            "repository {r:?}: coffer does not speak the {s} scheme; a repository is a local \
             directory or a coffer server, quic://HOST:PORT/NAMESPACE (see README). Object \
             stores are configured on the server ([storage] in its config). For a local \
             directory of that name, write ./{r}"
        ))
        .into()),
        None => Ok(()),
    }
}

/// The scheme of a repository string that names neither a local directory
/// nor a coffer server (`quic://`), or `None`. A URL is `SCHEME://…` with
/// an RFC 3986 scheme (a letter, then letters, digits, `+`, `-`, `.`), in
/// any case; restic's location prefixes (`sftp:`, `rest:`, `s3:`, …) need
/// no slashes. Anything else is a path, colons and all: `./a:b`,
/// `/tmp/x:y`, or `./s3://x`, the way to name a directory `s3:`.
fn foreign_scheme(r: &str) -> Option<&str> {
    const PREFIXES: [&str; 9] = [
        "sftp", "rest", "s3", "b2", "azure", "gs", "swift", "rclone", "ssh",
    ];
    if r.starts_with("quic://") {
        return None;
    }
    let (head, _) = r.split_once(':')?;
    let scheme = head.starts_with(|c: char| c.is_ascii_alphabetic())
        && head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let url = scheme && r[head.len()..].starts_with("://");
    let prefix = PREFIXES.iter().any(|p| head.eq_ignore_ascii_case(p));
    (url || prefix).then_some(head)
}

/// Connects to a `quic://` repository with the client's identity and pin.
fn remote(cli: &Cli, url: &str) -> Result<Arc<dyn Store>> {
    let url = RemoteUrl::parse(url)?;
    let id = cli
        .identity
        .as_deref()
        .ok_or_else(|| anyhow!("a quic:// repository needs --identity FILE or COFFER_IDENTITY"))?;
    let fp = cli.server_fingerprint.as_deref().ok_or_else(|| {
        anyhow!("a quic:// repository needs --server-fingerprint FP or COFFER_SERVER_FINGERPRINT")
    })?;
    let store = RemoteStore::connect_within(
        &url,
        Identity::load(id)?,
        Fingerprint::parse(fp)?,
        cli.connect_timeout,
    )?;
    let store = match cli.limit_download {
        Some(kib) => store.with_download_limit(kib * 1024),
        None => store,
    };
    let store = store.with_reconnect(cli.reconnect_for, output::reconnect_report(cli));
    Ok(Arc::new(Remote(Arc::new(store))))
}

/// The repository's store, and whether it holds a repository: a local
/// directory (its layout created when `create`), or a server namespace.
fn store(cli: &Cli, create: bool) -> Result<(Arc<dyn Store>, bool)> {
    let r = repo_arg(cli)?;
    if r.starts_with("quic://") {
        let s = remote(cli, r)?;
        let exists = match s.read_config() {
            Ok(_) => true,
            Err(Error::NotFound(_)) => false,
            Err(e) => return Err(e.into()),
        };
        return Ok((s, exists));
    }
    let path = PathBuf::from(r);
    if path.join("config").exists() {
        return Ok((Arc::new(LocalStore::open(&path)?), true));
    }
    if !create {
        bail!(
            "no repository at {} (run `coffer init` first)",
            path.display()
        );
    }
    let s = LocalStore::create(&path)
        .with_context(|| format!("creating a repository at {}", path.display()))?;
    Ok((Arc::new(s), false))
}

fn open_store(cli: &Cli, store: Arc<dyn Store>) -> Result<Repository> {
    let pw = secret::passphrase(cli, "Repository passphrase: ", false)?;
    open_with(cli, store, &pw)
}

/// Opens a repository with a passphrase already read.
fn open_with(cli: &Cli, store: Arc<dyn Store>, pw: &[u8]) -> Result<Repository> {
    let cache = cli.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let notice = Arc::new(|m: &str| errln!("coffer: {m}"));
    Ok(Repository::open_store_with(store, pw, &cache, notice)?)
}

/// Runs `op` again once, with a cache rebuilt from the repository, when it
/// failed on a cache database found damaged only while in use (the check at
/// open catches most damage before anything runs), or when it found damage
/// (`damaged`) through a cache it did not build itself: a wrong cache (a
/// blob row gone, or pointing elsewhere) must not be reported as damage of
/// an intact repository. For operations that can simply run again: they
/// wrote nothing a second run would mind.
fn with_cache_rebuilt<T>(
    repo: &Repository,
    op: impl Fn() -> coffer::Result<T>,
    damaged: impl Fn(&T) -> bool,
) -> Result<T> {
    let first = op();
    let suspect = match &first {
        Err(e) if coffer::cache_trust::is_damage(e) => Some(format!("{e}")),
        _ if repo.cache_rebuilt() => None,
        Err(e) if e.kind() == ErrorKind::Corrupt => Some(format!("{e}")),
        Ok(t) if damaged(t) => Some("damage was found through it".into()),
        _ => None,
    };
    match suspect {
        Some(why) => {
            repo.set_cache_aside(&Error::Corrupt(why))?;
            Ok(op()?)
        }
        None => Ok(first?),
    }
}

fn open(cli: &Cli) -> Result<Repository> {
    let (s, exists) = store(cli, false)?;
    if !exists {
        // A server namespace without a config: say so, not "object not found".
        bail!(
            "no repository at {} (run `coffer init` first)",
            repo_arg(cli)?
        );
    }
    open_store(cli, s)
}

/// Set by `backup --json-progress`: every JSON answer is one line.
static JSON_LINES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a JSON answer went to stdout (an error then adds none).
static JSON_PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints a JSON answer; a failure to write it is handled as for every
/// line of output (see `output`), so the command's own outcome stands.
fn print_json(v: &serde_json::Value) -> Result<()> {
    JSON_PRINTED.store(true, std::sync::atomic::Ordering::Relaxed);
    if output::stdout_closed() {
        return Ok(());
    }
    let mut out = io::stdout().lock();
    let written = match JSON_LINES.load(std::sync::atomic::Ordering::Relaxed) {
        true => serde_json::to_writer(&mut out, v),
        false => serde_json::to_writer_pretty(&mut out, v),
    }
    .map_err(io::Error::from)
    .and_then(|()| writeln!(out));
    if let Err(e) = written {
        output::note_stdout_error(e);
    }
    Ok(())
}

/// The snapshot filter a command was given, if it takes one.
fn filter_of(c: &Command) -> Option<&FilterArgs> {
    match c {
        Command::Snapshots { filter, .. }
        | Command::Ls { filter, .. }
        | Command::Restore { filter, .. }
        | Command::Dump { filter, .. }
        | Command::Diff { filter, .. }
        | Command::Stats { filter, .. }
        | Command::Forget { filter, .. } => Some(filter),
        Command::Lock(a) => Some(&a.filter),
        Command::Mount(a) => Some(&a.filter),
        _ => None,
    }
}

fn run(mut cli: Cli) -> Result<()> {
    if let Some(p) = cli.profile.clone() {
        let job = coffer::job::JobConfig::load_profile(&p)
            .with_context(|| format!("the profile --profile {}", p.display()))?;
        backup::apply_profile(&mut cli, &job);
    }
    if let Some(f) = filter_of(&cli.command) {
        cli.filter = f.filter();
    }
    if let Command::Find(a) = &cli.command {
        cli.filter = a.filter();
    }
    match &cli.command {
        Command::Init(a) => cmd_init(&cli, a),
        Command::Backup(a) => backup::cmd_backup(&cli, a),
        Command::Snapshots {
            strict,
            accept_rollback,
            group_by,
            ..
        } => cmd_snapshots(&cli, *strict, *accept_rollback, group_by.as_deref()),
        Command::Ls {
            snap, path, long, ..
        } => cmd_ls(&cli, snap, path.as_deref(), *long),
        Command::Restore {
            snap,
            target,
            paths,
            opts,
            ..
        } => cmd_restore(&cli, snap, target, paths, opts),
        Command::Dump {
            snap,
            path,
            archive,
            ..
        } => cmd_dump(&cli, snap, path.as_deref(), archive.is_some()),
        Command::Diff { snap1, snap2, .. } => cmd_diff(&cli, snap1, snap2),
        Command::Mount(a) => mount::cmd_mount(&cli, a),
        Command::Find(a) => find::cmd_find(&cli, a),
        Command::Completions { shell } => docs::cmd_completions(*shell),
        Command::Man { dir } => {
            let pages = docs::write_man_pages(dir)?;
            if cli.json {
                print_json(&json!(pages))?;
            } else if !cli.quiet {
                for p in pages {
                    outln!("{}", p.display());
                }
            }
            Ok(())
        }
        Command::Stats { snap, .. } => cmd_stats(&cli, snap.as_deref()),
        Command::Check { read_data } => cmd_check(&cli, *read_data),
        Command::Key(k) => cmd_key(&cli, k),
        Command::Identity(i) => cmd_identity(&cli, i),
        Command::Forget {
            snaps,
            damaged,
            operator: op,
            ..
        } => match (damaged, &op.config, &op.namespace) {
            (true, Some(c), Some(ns)) => {
                cmd_forget_damaged_on_server(&cli, c, ns, snaps, op.allow_root)
            }
            (true, _, _) => cmd_forget_damaged(&cli, snaps),
            (false, Some(c), Some(ns)) => {
                operator::cmd_forget_on_server(&cli, c, ns, snaps, op.allow_root)
            }
            _ => cmd_forget(&cli, snaps),
        },
        Command::Lock(a) => match (&a.operator.config, &a.operator.namespace) {
            (Some(c), Some(ns)) => operator::cmd_lock_on_server(&cli, c, ns, a),
            _ => cmd_lock(&cli, a),
        },
        Command::Scrub {
            config,
            rate_mb,
            allow_root,
            from_replica,
            replica_fingerprint,
            identity,
        } => {
            let from = match (from_replica, replica_fingerprint, identity) {
                (Some(r), Some(fp), Some(id)) => Some(coffer::net::replica::FetchFrom {
                    replica: r.clone(),
                    pin: Fingerprint::parse(fp)?,
                    identity: id.clone(),
                }),
                _ => None,
            };
            cmd_scrub(
                &cli,
                config.as_deref(),
                *rate_mb,
                *allow_root,
                from.as_ref(),
            )
        }
        Command::Policy(a) => cmd_policy(&cli, a),
        Command::Prune {
            config,
            dry_run,
            allow_root,
        } => cmd_prune(&cli, config.as_deref(), *dry_run, *allow_root),
        Command::Clock {
            config,
            namespace,
            accept_now,
            allow_root,
        } => clock::cmd_clock(
            &cli,
            config.as_deref(),
            namespace.as_deref(),
            *accept_now,
            *allow_root,
        ),
        Command::Replicate {
            config,
            namespace,
            allow_root,
        } => replicate::cmd_replicate(&cli, config, namespace.as_deref(), *allow_root),
        Command::Serve {
            config,
            allow_root,
            accept_rollback,
            rebuild,
        } => cmd_serve(config, *allow_root, accept_rollback, *rebuild),
    }
}

#[cfg(test)]
mod tests {
    use super::{check_scheme, foreign_scheme};

    #[test]
    fn local_paths_and_servers_have_no_foreign_scheme() {
        for r in [
            "/srv/backup/repo",
            "repo",
            "./a:b",
            "/tmp/x:y",
            "a:b",
            "backup:2024",
            "./s3://bucket/x",
            "./sftp:host:/x",
            "/tmp/a://b",
            "C:\\x",
            "s3",
            "quic://backup.internal:7443/vps-101",
            "quic://[::1]:7443/ns",
        ] {
            assert_eq!(foreign_scheme(r), None, "{r}");
            assert!(check_scheme(r).is_ok(), "{r}");
        }
    }

    #[test]
    fn urls_and_restic_prefixes_are_refused() {
        for (r, scheme) in [
            ("s3://bucket/x", "s3"),
            ("S3://bucket/x", "S3"),
            ("sftp://host/srv/repo", "sftp"),
            ("file:///srv/repo", "file"),
            ("https://host/repo", "https"),
            ("nbd+unix:///x", "nbd+unix"),
            ("QUIC://host:7443/ns", "QUIC"),
            ("rest:https://host:8000/", "rest"),
            ("sftp:user@host:/srv/repo", "sftp"),
            ("s3:s3.amazonaws.com/bucket", "s3"),
            ("b2:bucket:path", "b2"),
            ("azure:container:/", "azure"),
            ("gs:bucket:/", "gs"),
            ("swift:container:/", "swift"),
            ("rclone:remote:path", "rclone"),
            ("ssh:host", "ssh"),
            ("s3:", "s3"),
        ] {
            assert_eq!(foreign_scheme(r), Some(scheme), "{r}");
        }
    }

    #[test]
    fn the_refusal_names_the_scheme_and_the_way_out() {
        let e = check_scheme("s3://bucket/x").unwrap_err();
        assert!(e.downcast_ref::<super::Usage>().is_some(), "exit 2");
        let m = e.to_string();
        for part in [
            "\"s3://bucket/x\"",
            "does not speak the s3 scheme",
            "quic://HOST:PORT/NAMESPACE",
            "[storage]",
            "./s3://bucket/x",
        ] {
            assert!(m.contains(part), "{part:?} in {m}");
        }
        assert_eq!(foreign_scheme(&format!("./{}", "s3://bucket/x")), None);
    }
}
