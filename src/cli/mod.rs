//! The command-line front end: reads the passphrase, opens the repository,
//! runs one command and prints its result, as text or JSON. The only user of
//! `anyhow`. Exit codes: 0 ok, 1 error, 2 usage, 3 finished with entries left
//! out, 4 wrong passphrase or refused key file, 5 damaged repository data,
//! 6 another run of the same job holds its lock, 128+N stopped by signal N.

#[macro_use]
mod output;
mod args;
mod backup;
mod damaged;
mod rollback;

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{CommandFactory, FromArgMatches};
use serde_json::json;

use args::{Cli, Command, IdentityCommand, InitArgs, KeyCommand};
use coffer::chunk::ChunkerParams;
use coffer::format::config::Settings;
use coffer::format::keyfile::KdfParams;
use coffer::format::tree::{Node, NodeKind};
use coffer::net::client::{Remote, RemoteStore, RemoteUrl};
use coffer::net::{Fingerprint, Identity};
use coffer::repo::restore::{self, RestoreOptions};
use coffer::repo::{check, default_cache_dir, diff, InitOptions, Repository, Snapshot};
use coffer::store::LocalStore;
use coffer::store::Store;
use coffer::{Error, ErrorKind};
use damaged::{cmd_forget_damaged, cmd_forget_damaged_on_server};

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
    for id in ["repo", "identity", "server_fingerprint", "cache_dir"] {
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

/// Reads a passphrase from `file` (a job file's `password_file`), else the
/// named variables, or prompts on a terminal.
fn passphrase(
    var: &str,
    file_var: &str,
    file: Option<&Path>,
    prompt: &str,
    confirm: bool,
) -> Result<Vec<u8>> {
    // A job file's own passphrase file first: its repository is the file's.
    let file = match (file, std::env::var(var), std::env::var_os(file_var)) {
        (Some(f), _, _) => Some((f.to_path_buf(), "password_file ".to_string())),
        (None, Ok(p), _) => return Ok(p.into_bytes()),
        (None, Err(_), Some(f)) => Some((PathBuf::from(f), format!("{file_var}="))),
        (None, Err(_), None) => None,
    };
    if let Some((f, what)) = file {
        let s = std::fs::read(&f).with_context(|| format!("reading {what}{}", f.display()))?;
        let s = s.strip_suffix(b"\n").unwrap_or(&s);
        return Ok(s.to_vec());
    }
    if !io::stdin().is_terminal() {
        bail!("no passphrase: set {var} or {file_var}, or run on a terminal");
    }
    let p = rpassword::prompt_password(prompt)?;
    if confirm && rpassword::prompt_password("Repeat passphrase: ")? != p {
        bail!("passphrases do not match");
    }
    Ok(p.into_bytes())
}

fn repo_arg(cli: &Cli) -> Result<&str> {
    let r = cli
        .repo
        .as_deref()
        .ok_or_else(|| anyhow!("no repository: give --repo or set COFFER_REPO"))?;
    check_scheme(r)?;
    Ok(r)
}

/// Refuses a repository in a scheme coffer does not speak (`s3://…`,
/// restic's `sftp:…` or `rest:…`): taken as a path, it would become a local
/// directory named after the scheme.
fn check_scheme(r: &str) -> Result<()> {
    const FOREIGN: [&str; 9] = [
        "sftp:", "rest:", "s3:", "b2:", "azure:", "gs:", "swift:", "rclone:", "ssh:",
    ];
    let scheme = match r.find("://") {
        Some(i) if !r.starts_with("quic://") => Some(&r[..i + 1]),
        Some(_) => None,
        None => FOREIGN.iter().copied().find(|f| r.starts_with(f)),
    };
    match scheme {
        Some(s) => Err(Usage(format!(
            "repository {r:?}: coffer does not speak {s:?}; give a local directory (write ./{r} for a directory of that name) or quic://HOST:PORT/NAMESPACE"
        ))
        .into()),
        None => Ok(()),
    }
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
    let store = RemoteStore::connect(&url, Identity::load(id)?, Fingerprint::parse(fp)?)?;
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
    let pw = passphrase(
        "COFFER_PASSWORD",
        "COFFER_PASSWORD_FILE",
        cli.password_file.as_deref(),
        "Repository passphrase: ",
        false,
    )?;
    let cache = cli.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let notice = Arc::new(|m: &str| eprintln!("coffer: {m}"));
    Ok(Repository::open_store_with(store, &pw, &cache, notice)?)
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
    let written = serde_json::to_writer_pretty(&mut out, v)
        .map_err(io::Error::from)
        .and_then(|()| writeln!(out));
    if let Err(e) = written {
        output::note_stdout_error(e);
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Init(a) => cmd_init(&cli, a),
        Command::Backup(a) => backup::cmd_backup(&cli, a),
        Command::Snapshots {
            strict,
            accept_rollback,
        } => cmd_snapshots(&cli, *strict, *accept_rollback),
        Command::Ls { snap, path } => cmd_ls(&cli, snap, path.as_deref()),
        Command::Restore {
            snap,
            target,
            paths,
        } => cmd_restore(&cli, snap, target, paths),
        Command::Dump { snap, path } => cmd_dump(&cli, snap, path),
        Command::Diff { snap1, snap2 } => cmd_diff(&cli, snap1, snap2),
        Command::Stats { snap } => cmd_stats(&cli, snap.as_deref()),
        Command::Check { read_data } => cmd_check(&cli, *read_data),
        Command::Key(k) => cmd_key(&cli, k),
        Command::Identity(i) => cmd_identity(&cli, i),
        Command::Forget {
            snaps,
            damaged,
            config,
            namespace,
            allow_root,
        } => match (damaged, config, namespace) {
            (true, Some(c), Some(ns)) => {
                cmd_forget_damaged_on_server(&cli, c, ns, snaps, *allow_root)
            }
            (true, _, _) => cmd_forget_damaged(&cli, snaps),
            _ => cmd_forget(&cli, snaps),
        },
        Command::Lock { snap, days, hold } => cmd_lock(&cli, snap, *days, *hold),
        Command::Scrub {
            config,
            rate_mb,
            allow_root,
        } => cmd_scrub(&cli, config.as_deref(), *rate_mb, *allow_root),
        Command::Prune { config, allow_root } => cmd_prune(&cli, config.as_deref(), *allow_root),
        Command::Serve {
            config,
            allow_root,
            accept_rollback,
        } => cmd_serve(config, *allow_root, accept_rollback),
    }
}

fn cmd_init(cli: &Cli, a: &InitArgs) -> Result<()> {
    let choices = init_choices(a)?;
    let r = repo_arg(cli)?;
    let created = !r.starts_with("quic://") && !Path::new(r).exists();
    let res = init_with(cli, choices);
    if res.is_err() && created {
        // A failed init leaves no skeleton behind for the next one to trip on.
        let _ = std::fs::remove_dir_all(r);
    }
    res
}

/// What `init` was asked for: options, retention rules, parity.
type InitChoices = (
    InitOptions,
    coffer::retention::Policy,
    coffer::scrub::ParityConfig,
);

fn init_with(cli: &Cli, (opts, policy, parity): InitChoices) -> Result<()> {
    let (store, exists) = store(cli, true)?;
    if exists {
        bail!("{} holds a repository already", repo_arg(cli)?);
    }
    let pw = passphrase(
        "COFFER_PASSWORD",
        "COFFER_PASSWORD_FILE",
        None,
        "New repository passphrase: ",
        true,
    )?;
    if pw.is_empty() {
        bail!("refusing an empty passphrase");
    }
    if !repo_arg(cli)?.starts_with("quic://") {
        let local = LocalStore::open_dir(Path::new(repo_arg(cli)?))?;
        if policy != coffer::retention::Policy::default() {
            local.write_policy(&policy)?;
        }
        if parity != coffer::scrub::ParityConfig::default() {
            local.write_parity(&parity)?;
        }
    }
    let id = Repository::init_store(store.as_ref(), &pw, &opts)?;
    if cli.json {
        print_json(&json!({"id": id.to_hex(), "repo": repo_arg(cli)?}))?;
    } else if !cli.quiet {
        outln!("created repository {} at {}", id.short(), repo_arg(cli)?);
    }
    Ok(())
}

/// What `init` was asked for, checked before anything is created: a
/// rejected choice is a usage error (exit 2) that leaves no directory.
fn init_choices(a: &InitArgs) -> Result<InitChoices> {
    let d = Settings::default();
    let settings = Settings {
        chunker: ChunkerParams {
            min: a.chunk_min.unwrap_or(d.chunker.min),
            avg: a.chunk_avg.unwrap_or(d.chunker.avg),
            max: a.chunk_max.unwrap_or(d.chunker.max),
        },
        image_block: a.image_block.unwrap_or(d.image_block),
        pack_size: a.pack_size.unwrap_or(d.pack_size),
        compression: a.compression.unwrap_or(d.compression),
    };
    let opts = InitOptions {
        kdf: KdfParams {
            memory_kib: a.kdf_memory_kib,
            iterations: a.kdf_iterations,
            parallelism: KdfParams::DEFAULT.parallelism,
        },
        settings,
        host: host(),
        now: now_ns() / 1_000_000_000,
    };
    let usage = |e: String| anyhow::Error::new(Usage(e));
    opts.settings.validate().map_err(|e| usage(e.to_string()))?;
    opts.kdf.check().map_err(|e| usage(e.to_string()))?;
    let policy = coffer::retention::Policy {
        lock_secs: a.lock_days as i64 * coffer::retention::DAY_SECS,
        retention_secs: a.retention_days as i64 * coffer::retention::DAY_SECS,
        ..Default::default()
    };
    policy.validate().map_err(usage)?;
    let parity = coffer::scrub::ParityConfig::parse(&a.parity).map_err(usage)?;
    Ok((opts, policy, parity))
}

fn snapshot_json(s: &Snapshot) -> serde_json::Value {
    let r = &s.record;
    let st = s.stamp.as_ref();
    json!({
        "received": st.map(|t| coffer::retention::fmt_time(t.received)),
        "locked_until": st.map(|t| coffer::retention::fmt_time(t.locked_until)),
        "expires": st.map(|t| coffer::retention::fmt_time(t.expires)),
        "hold": st.map(|t| t.hold),
        "id": s.id.to_hex(), "short_id": s.id.short(), "time": fmt_time(r.time_ns),
        "host": r.host, "user": r.user, "source": r.source, "paths": r.paths, "tags": r.tags,
        "tree": r.tree.to_hex(), "packs": s.packs.len(), "stats": r.stats,
    })
}

/// Names each snapshot that does not open, on standard error, with what
/// can be done about it.
fn report_unopened(unopened: &[(coffer::id::SnapshotId, Error)]) {
    for (id, e) in unopened {
        errln!("coffer: warning: {e}; listed apart (`coffer forget --damaged {id}` removes it)");
    }
}

fn cmd_snapshots(cli: &Cli, strict: bool, accept_rollback: bool) -> Result<()> {
    let repo = open(cli)?;
    // Locked before the listing: a forget by this client cannot cross it.
    let seen = (!accept_rollback).then(|| rollback::lock(&repo)).flatten();
    let all = repo.snapshots()?;
    let snaps = &all.good;
    report_unopened(&all.unopened);
    let listed = all
        .good
        .iter()
        .map(|s| s.id)
        .chain(all.unopened.iter().map(|(id, _)| *id))
        .collect();
    let gone = match accept_rollback {
        true => {
            rollback::accept(&repo, &listed, snaps)?;
            Vec::new()
        }
        false => rollback::watch(seen, &listed, rollback::sightings(snaps)),
    };
    let strict_fail = || -> Result<()> {
        if strict && !all.unopened.is_empty() {
            return Err(Incomplete(format!("{} snapshots do not open", all.unopened.len())).into());
        }
        if strict && !gone.is_empty() {
            return Err(
                Incomplete(format!("{} snapshots seen before are gone", gone.len())).into(),
            );
        }
        Ok(())
    };
    if cli.json {
        print_json(&serde_json::Value::Array(
            snaps.iter().map(snapshot_json).collect(),
        ))?;
        return strict_fail();
    }
    if cli.quiet {
        // Ids alone, one a line, for scripts.
        for s in snaps {
            outln!("{}", s.id);
        }
        return strict_fail();
    }
    outln!(
        "{:<8}  {:<20}  {:<16}  {:>10}  paths",
        "id",
        "time",
        "host",
        "size"
    );
    for s in snaps {
        let r = &s.record;
        let tags = if r.tags.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.tags.join(","))
        };
        outln!(
            "{:<8}  {:<20}  {:<16}  {:>10}  {}{}",
            s.id.short(),
            fmt_time(r.time_ns),
            r.host,
            fmt_bytes(r.stats.bytes),
            r.paths.join(" "),
            tags
        );
    }
    match all.unopened.len() {
        0 => outln!("{} snapshots", snaps.len()),
        n => outln!("{} snapshots ({n} more do not open)", snaps.len()),
    }
    strict_fail()
}

fn kind_name(k: Option<NodeKind>) -> &'static str {
    match k {
        Some(NodeKind::File) => "file",
        Some(NodeKind::Dir) => "dir",
        Some(NodeKind::Symlink) => "symlink",
        Some(NodeKind::Chardev) => "chardev",
        Some(NodeKind::Blockdev) => "blockdev",
        Some(NodeKind::Fifo) => "fifo",
        Some(NodeKind::Socket) => "socket",
        None => "unknown",
    }
}

fn cmd_ls(cli: &Cli, snap: &str, path: Option<&str>) -> Result<()> {
    let repo = open(cli)?;
    let mut cache = repo.cache()?;
    repo.sync_cache(&mut cache)?;
    let s = repo.find_snapshot(snap)?;
    let start = path.unwrap_or("/");
    let node = repo.find_node(&cache, &s, start)?;
    let mut rows = Vec::new();
    let base = format!("/{}", start.trim_matches('/'));
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut visit = |n: &Node, p: &str| -> Result<()> {
        if cli.json {
            rows.push(json!({"path": p, "type": kind_name(n.kind), "size": n.size, "mode": format!("{:o}", n.mode),
                             "uid": n.uid, "gid": n.gid, "mtime": fmt_time(n.mtime_ns)}));
        } else {
            writeln!(
                out,
                "{:<7} {:>5o} {:>12} {}  {}",
                kind_name(n.kind),
                n.mode,
                n.size,
                fmt_time(n.mtime_ns),
                p
            )?;
        }
        Ok(())
    };
    fn walk(
        repo: &Repository,
        cache: &coffer::cache::Cache,
        n: &Node,
        p: &str,
        visit: &mut dyn FnMut(&Node, &str) -> Result<()>,
    ) -> Result<()> {
        if let Some(sub) = &n.subtree {
            for c in repo.load_tree(cache, sub)?.nodes {
                let cp = format!(
                    "{}/{}",
                    p.trim_end_matches('/'),
                    String::from_utf8_lossy(&c.name)
                );
                visit(&c, &cp)?;
                walk(repo, cache, &c, &cp, visit)?;
            }
        }
        Ok(())
    }
    if node.kind != Some(NodeKind::Dir) {
        visit(&node, &base)?;
    } else {
        walk(&repo, &cache, &node, &base, &mut visit)?;
    }
    out.flush()?;
    drop(out);
    if cli.json {
        print_json(&serde_json::Value::Array(rows))?;
    }
    Ok(())
}

fn cmd_restore(cli: &Cli, snap: &str, target: &Path, paths: &[String]) -> Result<()> {
    let repo = open(cli)?;
    let s = repo.find_snapshot(snap)?;
    let opts = RestoreOptions {
        target: target.to_path_buf(),
        include: paths.to_vec(),
        owners: nix::unistd::geteuid().is_root(),
    };
    let started = std::time::Instant::now();
    let st = with_cache_rebuilt(
        &repo,
        || restore::restore(&repo, &s, &opts),
        |st| !st.errors.is_empty(),
    )?;
    for w in &st.warnings {
        errln!("coffer: warning: {w}");
    }
    for e in &st.errors {
        errln!("coffer: error: {e}");
    }
    if cli.json {
        print_json(
            &json!({"snapshot": s.id.to_hex(), "files": st.files, "dirs": st.dirs, "others": st.others,
                           "bytes": st.bytes, "errors": st.errors, "warnings": st.warnings,
                           "seconds": started.elapsed().as_secs_f64()}),
        )?;
    } else if !cli.quiet {
        outln!(
            "restored snapshot {} to {}: {} files, {} dirs, {} in {:.1}s",
            s.id.short(),
            target.display(),
            st.files,
            st.dirs,
            fmt_bytes(st.bytes),
            started.elapsed().as_secs_f64()
        );
    }
    if !st.errors.is_empty() {
        return Err(Damaged(format!("{} entries could not be restored", st.errors.len())).into());
    }
    Ok(())
}

fn cmd_dump(cli: &Cli, snap: &str, path: &str) -> Result<()> {
    let repo = open(cli)?;
    let mut cache = repo.cache()?;
    repo.sync_cache(&mut cache)?;
    let s = repo.find_snapshot(snap)?;
    let node = repo.find_node(&cache, &s, path)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 20, stdout.lock());
    match restore::dump(&repo, &cache, &node, &mut out) {
        Err(Error::RawIo(e)) => Err(e.into()),
        r => r.map(|_| ()).map_err(Into::into),
    }
}

fn cmd_diff(cli: &Cli, a: &str, b: &str) -> Result<()> {
    let repo = open(cli)?;
    let mut cache = repo.cache()?;
    repo.sync_cache(&mut cache)?;
    let (sa, sb) = (repo.find_snapshot(a)?, repo.find_snapshot(b)?);
    let changes = diff::diff(&repo, &cache, &sa.record.tree, &sb.record.tree)?;
    if cli.json {
        return print_json(&serde_json::to_value(&changes)?);
    }
    for c in &changes {
        outln!("{}  {}", c.change, c.path);
    }
    Ok(())
}

fn cmd_stats(cli: &Cli, snap: Option<&str>) -> Result<()> {
    let repo = open(cli)?;
    if let Some(sp) = snap {
        let s = repo.find_snapshot(sp)?;
        if cli.json {
            return print_json(&snapshot_json(&s));
        }
        let st = &s.record.stats;
        outln!("snapshot {} ({})", s.id.short(), fmt_time(s.record.time_ns));
        outln!(
            "  files {}  dirs {}  others {}",
            st.files,
            st.dirs,
            st.others
        );
        outln!(
            "  processed {}  new {}  stored {}",
            fmt_bytes(st.bytes),
            fmt_bytes(st.new_bytes),
            fmt_bytes(st.new_pack_bytes)
        );
        outln!("  references {} packs", s.packs.len());
        return Ok(());
    }
    let snaps = repo.store().list_snapshots()?.len();
    let (mut packs, mut bytes) = (0u64, 0u64);
    repo.store().for_each_pack(&mut |_, size| {
        packs += 1;
        bytes += size;
        Ok(())
    })?;
    if cli.json {
        return print_json(
            &json!({"snapshots": snaps, "packs": packs, "pack_bytes": bytes, "repository": repo.id().to_hex()}),
        );
    }
    outln!("repository {}", repo.id().short());
    outln!("  snapshots {snaps}");
    outln!("  packs {packs} ({})", fmt_bytes(bytes));
    Ok(())
}

fn cmd_check(cli: &Cli, read_data: bool) -> Result<()> {
    let repo = open(cli)?;
    let gone = rollback::watch_listing(&repo)?;
    let mut rep = with_cache_rebuilt(
        &repo,
        || check::check(&repo, read_data),
        |rep| !rep.errors.is_empty(),
    )?;
    rep.errors.extend(rollback::problems(&gone));
    if cli.json {
        print_json(&serde_json::to_value(&rep)?)?;
    } else {
        for e in &rep.errors {
            errln!("coffer: damaged: {e}");
        }
        for w in &rep.foreign_packs {
            errln!("coffer: warning: {w}");
        }
        if !cli.quiet {
            outln!(
                "checked {} snapshots, {} trees, {} chunk references{}: {}",
                rep.snapshots,
                rep.trees,
                rep.chunks,
                if read_data {
                    format!(
                        ", read {} packs and {} blobs",
                        rep.packs_read, rep.blobs_read
                    )
                } else {
                    String::new()
                },
                if rep.errors.is_empty() {
                    "no problems".to_string()
                } else {
                    format!("{} problems", rep.errors.len())
                }
            );
        }
    }
    if !rep.errors.is_empty() {
        return Err(Damaged(format!("check found {} problems", rep.errors.len())).into());
    }
    Ok(())
}

fn cmd_key(cli: &Cli, k: &KeyCommand) -> Result<()> {
    let repo = open(cli)?;
    let new_pw = || {
        passphrase(
            "COFFER_NEW_PASSWORD",
            "COFFER_NEW_PASSWORD_FILE",
            None,
            "New passphrase: ",
            true,
        )
    };
    let add_key = |pw: &[u8], memory_kib: u32, iterations: u32| -> Result<String> {
        let params = KdfParams {
            memory_kib,
            iterations,
            parallelism: KdfParams::DEFAULT.parallelism,
        };
        Ok(repo.add_key(pw, params, host(), now_ns() / 1_000_000_000)?)
    };
    match k {
        KeyCommand::Add {
            kdf_memory_kib,
            kdf_iterations,
        } => {
            let name = add_key(&new_pw()?, *kdf_memory_kib, *kdf_iterations)?;
            if cli.json {
                print_json(&json!({"id": name}))?;
            } else if !cli.quiet {
                outln!("added key {name}");
            }
        }
        KeyCommand::List => {
            let keys = repo.list_keys()?;
            if cli.json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|(n, k)| json!({"id": n, "current": n == repo.key_name(), "host": k.host,
                                         "created": fmt_time(k.created * 1_000_000_000), "kdf": k.params}))
                    .collect();
                return print_json(&serde_json::Value::Array(v));
            }
            for (n, k) in keys {
                let cur = if n == repo.key_name() { "*" } else { " " };
                outln!(
                    "{cur} {n}  {}  {}  argon2id m={}KiB t={}",
                    fmt_time(k.created * 1_000_000_000),
                    k.host,
                    k.params.memory_kib,
                    k.params.iterations
                );
            }
        }
        KeyCommand::Remove { id } => {
            let name = repo.remove_key(id)?;
            if !cli.quiet {
                outln!("removed key {name}");
            }
        }
        KeyCommand::Passwd {
            kdf_memory_kib,
            kdf_iterations,
        } => {
            let name = add_key(&new_pw()?, *kdf_memory_kib, *kdf_iterations)?;
            repo.store().remove_key(repo.key_name())?;
            if !cli.quiet {
                outln!(
                    "passphrase changed: key {} replaced by {name}",
                    repo.key_name()
                );
            }
        }
    }
    Ok(())
}

fn cmd_identity(cli: &Cli, i: &IdentityCommand) -> Result<()> {
    let (fp, path) = match i {
        IdentityCommand::New { out } => {
            let (id, pem) = Identity::generate()?;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(out)
                .with_context(|| {
                    format!(
                        "creating {} (an existing identity is never overwritten)",
                        out.display()
                    )
                })?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()?;
            (id.fingerprint(), out)
        }
        IdentityCommand::Show { file } => (Identity::load(file)?.fingerprint(), file),
    };
    if cli.json {
        print_json(&json!({"fingerprint": fp.to_string(), "file": path}))
    } else {
        outln!("{fp}");
        Ok(())
    }
}

fn cmd_serve(config: &Path, allow_root: bool, accept_rollback: &[String]) -> Result<()> {
    if nix::unistd::geteuid().is_root() && !allow_root {
        bail!("refusing to run as root: run the server as a dedicated user (or pass --allow-root)");
    }
    let cfg = coffer::net::config::ServerConfig::load(config)?;
    // Before listening: a namespace put back from an older copy is not served.
    let verdict = rollback_verdict(&cfg, accept_rollback, &user())?;
    for a in &verdict.accepted {
        errln!("coffer serve: accepted (logged in its operator.log): {a}");
    }
    if !verdict.refused.is_empty() {
        let lines: Vec<String> = verdict.refused.iter().map(|r| r.to_string()).collect();
        bail!("{}", lines.join("\n"));
    }
    coffer::net::log::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (ep, addr) = coffer::net::server::endpoint(&cfg)?;
        let metrics = coffer::net::watch::bind_metrics(&cfg).await?;
        outln!("coffer serve: listening on {addr}");
        if let Some(m) = &metrics {
            outln!("coffer serve: metrics on http://{}/metrics", m.local_addr()?);
        }
        io::stdout().flush()?;
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        };
        coffer::net::server::serve(cfg, ep, metrics, shutdown).await?;
        Ok(())
    })
}

fn cmd_forget(cli: &Cli, snaps: &[String]) -> Result<()> {
    let repo = open(cli)?;
    let mut forgets = rollback::Forgets::start(&repo);
    let mut failed = 0;
    for spec in snaps {
        // Not opened: a snapshot that does not open can be forgotten too
        // (when its lock allows).
        let id = repo.resolve_snapshot(spec)?;
        forgets.before(id);
        let res = repo.store().forget(&id);
        forgets.after(id, res.is_ok());
        match res {
            Ok(()) => {
                if !cli.quiet {
                    outln!("forgot snapshot {}", id.short());
                }
            }
            Err(e) => {
                errln!("coffer: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} snapshots were not forgotten");
    }
    Ok(())
}

fn cmd_lock(cli: &Cli, snap: &str, days: Option<u32>, hold: bool) -> Result<()> {
    let repo = open(cli)?;
    let s = repo.find_snapshot(snap)?;
    let until = now_ns() / 1_000_000_000 + days.unwrap_or(0) as i64 * coffer::retention::DAY_SECS;
    let st = repo.store().lock(&s.id, until, hold)?;
    if cli.json {
        return print_json(
            &json!({"id": s.id.to_hex(), "locked_until": coffer::retention::fmt_time(st.locked_until),
                                  "expires": coffer::retention::fmt_time(st.expires), "hold": st.hold}),
        );
    }
    if !cli.quiet {
        outln!(
            "snapshot {} locked until {}, expires {}{}",
            s.id.short(),
            coffer::retention::fmt_time(st.locked_until),
            coffer::retention::fmt_time(st.expires),
            if st.hold { ", on legal hold" } else { "" }
        );
    }
    Ok(())
}

fn cmd_prune(cli: &Cli, config: Option<&Path>, allow_root: bool) -> Result<()> {
    if config.is_some() && nix::unistd::geteuid().is_root() && !allow_root {
        bail!("refusing to prune a server's data as root: run as the server's user (or pass --allow-root)");
    }
    let reports = match config {
        Some(c) => coffer::net::server::prune_config(&coffer::net::config::ServerConfig::load(c)?)?,
        None => {
            let r = repo_arg(cli)?;
            if r.starts_with("quic://") {
                bail!("a server prunes on its own schedule; its operator can run `coffer prune --config SERVER_CONFIG`");
            }
            vec![(r.to_string(), LocalStore::open(Path::new(r))?.prune()?)]
        }
    };
    if cli.json {
        let v: Vec<_> = reports
            .iter()
            .map(|(n, r)| json!({"repository": n, "report": r}))
            .collect();
        print_json(&serde_json::Value::Array(v))?;
    }
    let (mut clock, mut unreadable) = (false, 0);
    for (name, r) in &reports {
        if let Some(why) = &r.refused {
            errln!("coffer: {name}: {why}");
            // A refusal names its cause: unreadable snapshots, or the clock
            // (or a namespace whose commits went back).
            if r.unreadable.is_empty() {
                clock = true;
            }
            unreadable += r.unreadable.len();
        }
        if cli.json || cli.quiet {
            continue;
        }
        if !r.unreadable.is_empty() {
            outln!(
                "{name}: {} snapshots expired, {} kept; no pack collected ({} snapshots unreadable)",
                r.snapshots_removed.len(),
                r.snapshots_kept,
                r.unreadable.len()
            );
            continue;
        }
        outln!(
            "{name}: {} snapshots expired, {} kept; {} packs ({}) collected, {} kept{}",
            r.snapshots_removed.len(),
            r.snapshots_kept,
            r.packs_removed,
            fmt_bytes(r.bytes_freed),
            r.packs_kept,
            match r.tmp_removed {
                0 => String::new(),
                n => format!("; {n} stale temporary files removed"),
            }
        );
    }
    if clock {
        bail!(
            "nothing was deleted where the clock could not be trusted or the namespace went back"
        );
    }
    if unreadable > 0 {
        return Err(Damaged(format!(
            "{unreadable} snapshots could not be read, so no pack was collected in their repository"
        ))
        .into());
    }
    Ok(())
}

fn cmd_scrub(
    cli: &Cli,
    config: Option<&Path>,
    rate_mb: Option<u64>,
    allow_root: bool,
) -> Result<()> {
    use coffer::scrub::{scrub, ScrubOptions};
    if config.is_some() && nix::unistd::geteuid().is_root() && !allow_root {
        bail!("refusing to scrub a server's data as root: run as the server's user (or pass --allow-root)");
    }
    let opts = ScrubOptions {
        rate: rate_mb.map(|r| r * 1_000_000),
        restart: false,
    };
    // Namespaces whose commit counter went back (with --config).
    let mut back = Vec::new();
    let targets: Vec<(String, LocalStore)> = match config {
        Some(c) => {
            let cfg = coffer::net::config::ServerConfig::load(c)?;
            back = rollback_verdict(&cfg, &[], "")?.refused;
            let mut seen = std::collections::HashSet::new();
            let mut v = Vec::new();
            for cl in cfg.validated_clients()? {
                if seen.insert(cl.namespace.clone()) {
                    v.push((
                        cl.namespace.clone(),
                        coffer::net::server::namespace_store(
                            &cfg.data,
                            &cl.namespace,
                            cl.policy,
                            cfg.parity_config(),
                        )?,
                    ));
                }
            }
            v
        }
        None => {
            let r = repo_arg(cli)?;
            if r.starts_with("quic://") {
                bail!("a server scrubs its own data; its operator can run `coffer scrub --config SERVER_CONFIG`");
            }
            vec![(r.to_string(), LocalStore::open(Path::new(r))?)]
        }
    };
    let mut reports = Vec::new();
    let mut unrepairable = 0;
    for (name, store) in &targets {
        let r = scrub(store, store.parity(), &opts)?;
        unrepairable += r.unrepairable.len();
        if !cli.json && !cli.quiet {
            outln!(
                "{name}: checked {} packs and {} parity files ({} blocks, {}): {} damaged blocks, {} repaired in {} packs, {} unrepairable",
                r.packs_checked,
                r.parity_checked,
                r.blocks_checked,
                fmt_bytes(r.bytes_read),
                r.damaged_blocks,
                r.repaired_blocks,
                r.repaired_packs.len(),
                r.unrepairable.len()
            );
        }
        for u in &r.unrepairable {
            let snaps: Vec<String> = u.snapshots.iter().map(|s| s.short()).collect();
            errln!(
                "coffer: {name}: pack {} is damaged beyond repair ({}); snapshots affected: {}",
                u.pack,
                u.reason,
                if snaps.is_empty() {
                    "none".into()
                } else {
                    snaps.join(" ")
                }
            );
        }
        reports.push(json!({"repository": name, "report": r}));
    }
    if cli.json {
        print_json(&serde_json::Value::Array(reports))?;
    }
    for r in &back {
        errln!("coffer: {r}");
    }
    if unrepairable > 0 || !back.is_empty() {
        return Err(Damaged(format!(
            "{unrepairable} packs could not be repaired, {} namespaces went back to an older copy",
            back.len()
        ))
        .into());
    }
    Ok(())
}

/// Compares the commit counter of every namespace of a server config with
/// the highest seen (see `coffer::net::rollback`); a counter that could not
/// be checked is named in a warning.
fn rollback_verdict(
    cfg: &coffer::net::config::ServerConfig,
    accept: &[String],
    by: &str,
) -> Result<coffer::net::rollback::Verdict> {
    let mut names: Vec<String> = cfg
        .validated_clients()?
        .into_iter()
        .map(|c| c.namespace)
        .collect();
    names.sort();
    names.dedup();
    let v = coffer::net::rollback::verify(&cfg.data, &names, accept, by)?;
    for (ns, e) in &v.unchecked {
        errln!("coffer: warning: namespace {ns}: commit counter not checked: {e}");
    }
    Ok(v)
}
