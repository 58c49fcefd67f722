//! `coffer backup`: one run of a job, made for cron and systemd. The job
//! comes from arguments or a config file; a config run holds a lock so two
//! runs never overlap; `pre`/`post` hooks bracket the backup and `post` runs
//! whatever happens, SIGINT and SIGTERM included; a progress line shows only
//! on a terminal.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Seek, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;

use super::args::{BackupArgs, Cli};
use super::{
    fmt_bytes, fmt_time, host, now_ns, open_with, print_json, repo_arg, secret, store, user,
    Incomplete,
};
use coffer::job::{HookCommand, JobConfig};
use coffer::repo::backup::{self, BackupOptions, BackupSource, Progress};
use coffer::repo::exclude::ExcludeRules;
use coffer::repo::{default_cache_dir, InitOptions, Repository};
use coffer::store::LocalStore;

/// The signal that interrupted the run (0: none), for the exit code.
pub(super) static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// Set once the snapshot is saved: a later signal no longer means "nothing
/// committed".
pub(super) static COMMITTED: AtomicBool = AtomicBool::new(false);
/// Process group of the `pre` hook while it runs (0: none), so a signal
/// reaches it and `post` never runs beside it.
static PRE_PGID: AtomicI32 = AtomicI32::new(0);

/// Another run of the same job holds its lock: exit 6.
#[derive(Debug)]
pub(super) struct Busy(pub String);
impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Busy {}

/// How long a signalled run may take to stop before `post` runs anyway.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// Everything one run needs, from the arguments and the config file.
struct Job {
    sources: Vec<BackupSource>,
    excludes: ExcludeRules,
    one_file_system: bool,
    tags: Vec<String>,
    host: Option<String>,
    job: Option<String>,
    compression: Option<i32>,
    limit_kib: Option<u64>,
    pre: Option<HookCommand>,
    post: Option<HookCommand>,
    lock: Option<PathBuf>,
    /// A config run: quiet unless on a terminal, under journald or verbose.
    from_config: bool,
}

pub(super) fn cmd_backup(cli: &Cli, a: &BackupArgs) -> Result<()> {
    if a.json_progress && !cli.json {
        return Err(super::Usage("--json-progress goes with --json".into()).into());
    }
    let (cli, mut job) = match &a.config {
        Some(path) => from_config(cli, a, path)?,
        None => (cli.clone(), from_args(a)?),
    };
    if job.lock.is_none() && (job.pre.is_some() || job.post.is_some()) {
        // Two runs with the same hooks would fight over one device snapshot.
        let key = format!(
            "{}\0{}",
            job.pre.as_ref().map(|h| h.shown()).unwrap_or_default(),
            job.post.as_ref().map(|h| h.shown()).unwrap_or_default()
        );
        job.lock = Some(lock_path(&cli, "hooks", key.as_bytes()));
    }
    let _lock = match &job.lock {
        Some(p) => Some(RunLock::acquire(p, a.config.as_deref())?),
        None => None,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let post = Arc::new(Hook::new("post", job.post.clone()));
    // Held while `pre` runs: a forced `post` waits for it.
    let pre_phase = Arc::new(Mutex::new(()));
    watch_signals(cancel.clone(), post.clone(), pre_phase.clone())?;

    if let Some(pre) = &job.pre {
        let guard = pre_phase.lock().unwrap_or_else(|e| e.into_inner());
        let res = if cancel.load(Ordering::SeqCst) {
            Err(anyhow!("interrupted"))
        } else {
            run_hook("pre", pre, &[], Some(&PRE_PGID))
        };
        drop(guard);
        if let Err(e) = res {
            let res = post.run_once(&[("COFFER_RESULT", outcome(false, &cancel))]);
            return Err(with_post(
                e.context("pre hook failed; no backup taken"),
                res,
            ));
        }
    }
    let sources = job.sources.len();
    let res = run_backup(&cli, a, &mut job, cancel.clone());
    let result = outcome(res.is_ok(), &cancel);
    let snap = match &res {
        Ok(d) if !a.dry_run => d.out.id.to_hex(),
        _ => String::new(),
    };
    let post_res = post.run_once(&[("COFFER_RESULT", result), ("COFFER_SNAPSHOT", &snap)]);
    let done = match res {
        Ok(d) => d,
        Err(e) => return Err(with_post(e, post_res)),
    };
    // The summary first: the snapshot exists whatever `post` did.
    let reported = report(&cli, a, &job, sources, &done);
    if let Err(e) = post_res {
        // Saved whatever the hook did: exit 3, not "nothing committed".
        return Err(Incomplete(format!(
            "snapshot {} saved, but the post hook failed: {e:#}",
            done.out.id
        ))
        .into());
    }
    reported
}

/// `COFFER_RESULT` for the post hook.
fn outcome(ok: bool, cancel: &AtomicBool) -> &'static str {
    match ok {
        true => "ok",
        false if cancel.load(Ordering::SeqCst) => "interrupted",
        false => "failed",
    }
}

/// An error, with the post hook's failure added when it failed too.
fn with_post(e: anyhow::Error, post: Result<()>) -> anyhow::Error {
    match post {
        Ok(()) => e,
        Err(p) => e.context(format!("and the post hook failed: {p:#}")),
    }
}

fn from_args(a: &BackupArgs) -> Result<Job> {
    let modes = [
        !a.paths.is_empty() || super::exclude::lists_paths(a),
        a.stdin,
        a.stdin_from_command.is_some(),
        a.image.is_some(),
    ];
    if modes.iter().filter(|m| **m).count() != 1 {
        bail!(
            "give exactly one of: PATHS, --stdin, --stdin-from-command CMD, --image DEVICE, --config FILE"
        );
    }
    let sources = if let Some(cmd) = &a.stdin_from_command {
        let name = a
            .stdin_name
            .clone()
            .ok_or_else(|| anyhow!("--stdin-from-command needs --stdin-name"))?;
        if cmd.is_empty() {
            bail!("--stdin-from-command needs a command");
        }
        let argv = match cmd.split_first() {
            Some((dashes, rest)) if dashes == "--" && !rest.is_empty() => rest.to_vec(),
            _ => {
                refuse_swallowed_options(cmd)?;
                cmd.clone()
            }
        };
        vec![BackupSource::Command { name, argv }]
    } else if a.stdin {
        coffer::source::widen_pipe(io::stdin());
        vec![BackupSource::Stream {
            name: a.stdin_name.clone().unwrap_or_else(|| "stdin".into()),
            reader: Box::new(io::stdin()),
        }]
    } else if let Some(img) = &a.image {
        vec![BackupSource::Image {
            path: img.clone(),
            name: None,
        }]
    } else {
        let mut paths = a.paths.clone();
        paths.extend(super::exclude::listed_paths(
            &a.files_from,
            &a.files_from_verbatim,
            &a.files_from_raw,
        )?);
        vec![BackupSource::paths(paths)]
    };
    Ok(Job {
        sources,
        excludes: super::exclude::rules(&JobConfig::default(), a)?,
        one_file_system: a.one_file_system,
        tags: a.tag.clone(),
        host: a.host.clone(),
        job: a.job.clone(),
        compression: a.compression,
        limit_kib: a.limit_upload,
        pre: a.pre.clone().map(HookCommand::Shell),
        post: a.post.clone().map(HookCommand::Shell),
        lock: None,
        from_config: false,
    })
}

/// `--stdin-from-command` takes every word after it as the command, so
/// `… --stdin-from-command pg_dump app --post 'release'` would hand
/// `--post` to pg_dump and never run the hook. A word that names one of
/// `coffer backup`'s own options is refused, unless the command follows a
/// `--`, after which every word is the command's.
fn refuse_swallowed_options(cmd: &[String]) -> Result<()> {
    use clap::CommandFactory;
    let root = super::args::Cli::command();
    let Some(sub) = root.find_subcommand("backup") else {
        return Ok(());
    };
    let mut names = Vec::new();
    for arg in sub.get_arguments().chain(root.get_arguments()) {
        names.extend(arg.get_long().map(|l| format!("--{l}")));
        names.extend(arg.get_short().map(|c| format!("-{c}")));
    }
    let ours = cmd.iter().find(|w| {
        let flag = w.split('=').next().unwrap_or(w);
        names.iter().any(|n| n == flag)
    });
    match ours {
        Some(w) => Err(super::Usage(format!(
            "{w:?} comes after --stdin-from-command, so it would go to the command, not to coffer: \
             put coffer's options before --stdin-from-command, or write `--stdin-from-command -- CMD …` \
             if the command itself takes {w:?}"
        ))
        .into()),
        None => Ok(()),
    }
}

/// Takes the connection settings of a job file (repository, pin, identity,
/// cache, passphrase file) into `cli`. The file wins over a variable (one
/// exported for interactive use must not redirect the job); an option
/// given on the command line wins over the file.
pub(super) fn apply_profile(cli: &mut Cli, c: &JobConfig) {
    let from_env = cli.from_env.clone();
    let pick = |given: Option<String>, id: &str, file: &Option<String>| match file {
        Some(f) if given.is_none() || from_env.iter().any(|e| e == id) => Some(f.clone()),
        _ => given,
    };
    let path_of = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
    cli.repo = pick(cli.repo.clone(), "repo", &c.repo);
    cli.server_fingerprint = pick(
        cli.server_fingerprint.clone(),
        "server_fingerprint",
        &c.server_fingerprint,
    );
    cli.identity =
        pick(path_of(&cli.identity), "identity", &path_of(&c.identity)).map(PathBuf::from);
    cli.cache_dir =
        pick(path_of(&cli.cache_dir), "cache_dir", &path_of(&c.cache_dir)).map(PathBuf::from);
    if c.password_file.is_some() {
        cli.job_password_file = c.password_file.clone();
    }
}

/// The job of a config file; arguments and variables given win over it.
fn from_config(cli: &Cli, a: &BackupArgs, path: &Path) -> Result<(Cli, Job)> {
    if !a.paths.is_empty()
        || super::exclude::lists_paths(a)
        || a.stdin
        || a.stdin_from_command.is_some()
        || a.image.is_some()
    {
        bail!("--config takes its sources from the file: give no PATHS, --files-from, --stdin, --stdin-from-command or --image");
    }
    let c = JobConfig::load(path)?;
    let mut cli = cli.clone();
    apply_profile(&mut cli, &c);
    let mut sources = c
        .sources()
        .into_iter()
        .collect::<coffer::Result<Vec<_>>>()?;
    if c.lists_paths() {
        let paths =
            super::exclude::listed_paths(&c.files_from, &c.files_from_verbatim, &c.files_from_raw)?;
        sources.push(BackupSource::paths(paths));
    }
    let lock = match &c.lock_file {
        Some(l) => l.clone(),
        None => {
            let abs = std::fs::canonicalize(path)
                .with_context(|| format!("reading {}", path.display()))?;
            lock_path(&cli, "job", abs.as_os_str().as_encoded_bytes())
        }
    };
    let excludes = super::exclude::rules(&c, a)?;
    let mut tags = c.tags.clone();
    tags.extend(a.tag.iter().cloned());
    let job = Job {
        sources,
        excludes,
        one_file_system: c.one_file_system || a.one_file_system,
        tags,
        host: a.host.clone().or(c.host.clone()),
        job: a.job.clone().or(c.job.clone()),
        compression: a.compression.or(c.compression),
        limit_kib: a.limit_upload.or(c.limit_upload_kib),
        pre: a.pre.clone().map(HookCommand::Shell).or(c.pre.clone()),
        post: a.post.clone().map(HookCommand::Shell).or(c.post.clone()),
        lock: Some(lock),
        from_config: true,
    };
    Ok((cli, job))
}

/// A lock file in the cache directory, named after what it keeps apart.
fn lock_path(cli: &Cli, what: &str, key: &[u8]) -> PathBuf {
    let tag = blake3::hash(key).to_hex();
    let dir = cli.cache_dir.clone().unwrap_or_else(default_cache_dir);
    dir.join("locks")
        .join(format!("{what}-{}.lock", &tag[..16]))
}

fn run_backup(cli: &Cli, a: &BackupArgs, job: &mut Job, cancel: Arc<AtomicBool>) -> Result<Done> {
    // A repository that does not exist yet is created on first use, so one
    // command gives a new user a real backup.
    // The passphrase is read (and an empty one refused) before a new local
    // repository's directory is made.
    let r = repo_arg(cli)?;
    let new_local = !r.starts_with("quic://") && !Path::new(r).join("config").exists();
    let found = match new_local {
        true => None,
        false => Some(store(cli, false)?),
    };
    let exists = found.as_ref().is_some_and(|(_, e)| *e);
    let prompt = match exists {
        true => "Repository passphrase: ",
        false => "New repository passphrase: ",
    };
    if a.dry_run && !exists {
        bail!(
            "no repository at {r}: a dry run creates nothing (run `coffer init` or a backup first)"
        );
    }
    let pw = secret::passphrase(cli, prompt, !exists)?;
    let st = match found {
        Some((st, _)) => st,
        None => store(cli, true)?.0,
    };
    if !exists {
        let opts = InitOptions {
            host: host(),
            now: now_ns() / 1_000_000_000,
            ..Default::default()
        };
        let id = Repository::init_store(st.as_ref(), &pw, &opts)?;
        if !cli.quiet && !cli.json {
            errln!("created repository {} at {}", id.short(), repo_arg(cli)?);
        }
    }
    let repo = open_with(cli, st, &pw)?;
    // Warned now, so a backup that fails later still says it.
    let gone = super::rollback::watch_listing(&repo)?;
    // A local repository computes parity for full stripes during the
    // backup, and for the rest right after it.
    // A dry run leaves the store alone: no sweep, no parity.
    let local = match a.dry_run {
        true => None,
        false => LocalStore::open(Path::new(repo_arg(cli)?)).ok(),
    };
    // What killed runs left in tmp/ goes now, not after the grace period
    // (a crash loop must not fill the disk); live uploads are kept.
    match local.as_ref().map(|l| l.sweep_abandoned()) {
        Some(Ok((n, bytes))) if n > 0 && !cli.quiet => errln!(
            "coffer: removed {n} partial files ({}) that interrupted runs left in tmp/",
            fmt_bytes(bytes)
        ),
        Some(Err(e)) => errln!("coffer: warning: sweeping tmp/: {e}"),
        _ => {}
    }
    let mut protector = match &local {
        Some(l) => Some(coffer::scrub::Protector::start(
            LocalStore::open(l.root())?,
            l.parity(),
        )?),
        None => None,
    };
    let progress = Arc::new(Progress::default());
    let opts = BackupOptions {
        tags: job.tags.clone(),
        host: job.host.clone().unwrap_or_else(host),
        job: job.job.clone(),
        user: user(),
        time_ns: now_ns(),
        excludes: job.excludes.clone(),
        one_file_system: job.one_file_system,
        compression: job.compression,
        files_cache: !a.no_files_cache,
        cancel: Some(cancel),
        progress: Some(progress.clone()),
        upload_limit: job.limit_kib.map(|k| k.saturating_mul(1024)),
        rewrite_below: coffer::cache::REWRITE_BELOW_LIVE,
        durable_packs: protector.as_mut().and_then(|p| p.sender()),
        on_file: verbose_listing(cli, a.verbose),
        dry_run: a.dry_run,
        start_bitmap: a.start_bitmap.clone(),
        start_token: a.start_token.clone(),
        changed_token: a.changed_token.clone(),
        changed_bitmap: a.changed_bitmap.clone(),
        parent: a.parent.clone(),
        verify_clean: a.verify_clean,
    };
    let time_ns = opts.time_ns;
    let started = Instant::now();
    let bar = (!cli.quiet && !cli.json && io::stderr().is_terminal())
        .then(|| ProgressLine::start(progress.clone()));
    let status = (a.json_progress && cli.json).then(|| status_lines(progress.clone(), started));
    let sources = std::mem::take(&mut job.sources);
    let res = backup::backup(&repo, sources, opts);
    drop(bar);
    drop(status);
    // Saved: a signal from here on must not claim otherwise.
    if res.is_ok() && !a.dry_run {
        COMMITTED.store(true, Ordering::SeqCst);
    }
    // A failed or interrupted backup leaves its packs to the next protect.
    let protector = match (&res, protector) {
        (Err(_), Some(p)) => {
            p.abandon();
            None
        }
        (_, p) => p,
    };
    let mut out = match res {
        // Found only while in use (the check at open catches most damage):
        // this run's sources may not be readable twice, so the next run
        // starts from a cache rebuilt from the repository.
        Err(e) if coffer::cache_trust::is_damage(&e) => {
            repo.set_cache_aside(&e)?;
            return Err(anyhow!(e)
                .context("the cache was damaged; nothing committed, run the backup again"));
        }
        r => r?,
    };
    if a.dry_run {
        let _ = protector.map(|p| p.finish());
        return Ok(Done {
            out,
            gone: gone.len(),
            seconds: started.elapsed().as_secs_f64(),
            parity_seconds: 0.0,
            parity_io: (0, 0),
        });
    }
    // Recorded while the parity thread finishes the open stripe.
    let stamp = repo.store().stamp(&out.id).ok();
    super::rollback::record(
        &repo,
        coffer::repo::seen::SeenSnapshot {
            id: out.id,
            time_ns,
            expires: stamp.map(|t| t.expires),
            hold: stamp.is_some_and(|t| t.hold),
        },
    );
    let parity_started = Instant::now();
    let early = protector.map(|p| p.finish());
    // Bytes parity read and wrote.
    let mut parity_io = (0, 0);
    let mut count = |r: &coffer::scrub::ProtectReport| {
        parity_io.0 += r.parity_bytes_read;
        parity_io.1 += r.parity_bytes_written;
    };
    if let Some(local) = &local {
        match &early {
            Some(Ok(r)) => count(r),
            Some(Err(e)) => {
                errln!("coffer: warning: parity during the backup failed, computing it now: {e}")
            }
            None => {}
        }
        // Whatever the thread did not cover: packs of other writers. The
        // snapshot is committed already: a failure here is a warning with
        // its own exit code, never "nothing saved".
        match coffer::scrub::protect(local, local.parity()) {
            Ok(r) => count(&r),
            Err(e) => out.after_commit.push(format!(
                "parity could not be computed ({e}); the next backup or scrub computes it"
            )),
        }
    }
    Ok(Done {
        out,
        gone: gone.len(),
        seconds: started.elapsed().as_secs_f64(),
        parity_seconds: parity_started.elapsed().as_secs_f64(),
        parity_io,
    })
}

/// A finished backup and its timings.
struct Done {
    out: backup::BackupOutcome,
    /// Snapshots this client saw that are gone (named in a warning already).
    gone: usize,
    seconds: f64,
    parity_seconds: f64,
    /// Bytes of packs and parity files read by parity after the commit,
    /// and bytes written to parity files.
    parity_io: (u64, u64),
}

/// The summary: JSON, one line, or nothing (quiet, or a config run that
/// cron would mail).
fn report(cli: &Cli, a: &BackupArgs, job: &Job, sources: usize, done: &Done) -> Result<()> {
    let out = &done.out;
    let s = &out.stats;
    for w in out
        .notices
        .iter()
        .chain(&out.warnings)
        .chain(&out.exclude_warnings)
        .chain(&out.after_commit)
    {
        errln!("coffer: warning: {w}");
    }
    let unattended = job.from_config && !io::stdout().is_terminal() && !stdout_is_journal();
    if a.dry_run {
        return report_dry_run(cli, sources, done);
    }
    if cli.json {
        print_json(&json!({
            "type": "summary",
            "id": out.id.to_hex(),
            "short_id": out.id.short(),
            "files": s.files, "dirs": s.dirs, "others": s.others,
            "files_unchanged": s.files_unchanged,
            "bytes": s.bytes, "new_blobs": s.new_blobs, "new_bytes": s.new_bytes,
            "new_packs": s.new_packs, "new_pack_bytes": s.new_pack_bytes,
            "seconds": done.seconds, "parity_seconds": done.parity_seconds,
            "parity_bytes_read": done.parity_io.0,
            "parity_bytes_written": done.parity_io.1,
            "bytes_read": out.bytes_read,
            "sources": sources,
            "warnings": out.warnings, "exclude_warnings": out.exclude_warnings,
            "notices": out.notices, "after_commit": out.after_commit,
            "snapshots_gone": done.gone,
        }))?;
    } else if !cli.quiet && (!unattended || a.verbose > 0) {
        outln!(
            "snapshot {} saved: {} files, {} processed, {} new ({} stored) in {:.1}s",
            out.id.short(),
            s.files,
            fmt_bytes(s.bytes),
            fmt_bytes(s.new_bytes),
            fmt_bytes(s.new_pack_bytes),
            done.seconds
        );
    }
    if !out.warnings.is_empty() {
        return Err(Incomplete(format!(
            "snapshot {} saved, but {} entries could not be read",
            out.id.short(),
            out.warnings.len()
        ))
        .into());
    }
    if let Some(first) = out.after_commit.first() {
        return Err(Incomplete(format!("snapshot {} saved, but {first}", out.id)).into());
    }
    // Snapshots gone (warned above) fail `check`, not the backup: a nightly
    // job must not fail every night until someone accepts the repository.
    Ok(())
}

/// The summary of `--dry-run`: what was read and what would be new (before
/// compression: nothing was compressed). Unreadable entries still exit 3.
fn report_dry_run(cli: &Cli, sources: usize, done: &Done) -> Result<()> {
    let (out, s) = (&done.out, &done.out.stats);
    if cli.json {
        print_json(&json!({
            "type": "summary", "dry_run": true,
            "files": s.files, "dirs": s.dirs, "others": s.others,
            "files_unchanged": s.files_unchanged,
            "bytes": s.bytes, "new_blobs": s.new_blobs, "new_bytes": s.new_bytes,
            "seconds": done.seconds, "sources": sources, "bytes_read": out.bytes_read,
            "warnings": out.warnings, "exclude_warnings": out.exclude_warnings,
            "notices": out.notices,
        }))?;
    } else if !cli.quiet {
        outln!(
            "dry run: {} files ({} unchanged), {} processed; would add {} new in {} blobs (before compression); nothing written",
            s.files,
            s.files_unchanged,
            fmt_bytes(s.bytes),
            fmt_bytes(s.new_bytes),
            s.new_blobs
        );
    }
    if !out.warnings.is_empty() {
        return Err(Incomplete(format!(
            "dry run: {} entries could not be read",
            out.warnings.len()
        ))
        .into());
    }
    Ok(())
}

/// Whether standard output is journald's stream: `JOURNAL_STREAM` names
/// its device and inode (an inherited variable alone proves nothing).
fn stdout_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    match nix::sys::stat::fstat(1) {
        Ok(st) => dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino),
        Err(_) => false,
    }
}

/// Runs a hook to its end; its output goes to ours. In a process group of
/// its own, so a Ctrl-C at the terminal does not cut a cleanup short.
fn run_hook(
    which: &str,
    cmd: &HookCommand,
    env: &[(&str, &str)],
    pgid: Option<&AtomicI32>,
) -> Result<()> {
    let argv = cmd.argv();
    let mut child = Proc::new(&argv[0])
        .args(&argv[1..])
        .env("COFFER_HOOK", which)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(io::stderr())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {which} hook `{}`", cmd.shown()))?;
    if let Some(g) = pgid {
        g.store(child.id() as i32, Ordering::SeqCst);
    }
    let status = child.wait();
    if let Some(g) = pgid {
        g.store(0, Ordering::SeqCst);
    }
    let status = status.with_context(|| format!("waiting for {which} hook"))?;
    if !status.success() {
        bail!("{which} hook `{}` failed ({status})", cmd.shown());
    }
    Ok(())
}

/// A hook that runs at most once, from whichever thread gets there first:
/// the run's end or a signal that would not let the run end.
struct Hook {
    which: &'static str,
    cmd: Mutex<Option<HookCommand>>,
}

impl Hook {
    fn new(which: &'static str, cmd: Option<HookCommand>) -> Hook {
        Hook {
            which,
            cmd: Mutex::new(cmd),
        }
    }

    fn run_once(&self, env: &[(&str, &str)]) -> Result<()> {
        // Held while the hook runs: a second caller waits for it to finish.
        let mut slot = self.cmd.lock().unwrap_or_else(|e| e.into_inner());
        match slot.take() {
            Some(cmd) => run_hook(self.which, &cmd, env, None),
            None => Ok(()),
        }
    }
}

/// On SIGINT, SIGTERM or SIGHUP: ask the backup to stop, and pass the
/// signal on to the `pre` hook and the dump commands, so the run ends
/// cleanly (device closed) and then `post` runs. Should it not end within
/// [`STOP_GRACE`], or on a second signal, run `post` here (once `pre` has
/// ended) and exit.
fn watch_signals(cancel: Arc<AtomicBool>, post: Arc<Hook>, pre: Arc<Mutex<()>>) -> Result<()> {
    use nix::sys::signal::{killpg, Signal};
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    std::thread::spawn(move || {
        let Some(sig) = signals.forever().next() else {
            return;
        };
        SIGNAL.store(sig, Ordering::SeqCst);
        cancel.store(true, Ordering::SeqCst);
        let pre_pgid = PRE_PGID.load(Ordering::SeqCst);
        if pre_pgid > 0 {
            let _ = killpg(nix::unistd::Pid::from_raw(pre_pgid), Signal::SIGTERM);
        }
        coffer::source::command::signal_running(Signal::SIGTERM);
        if COMMITTED.load(Ordering::SeqCst) {
            errln!("coffer: signal {sig}: the snapshot is saved; finishing");
        } else {
            errln!("coffer: signal {sig}: stopping; no snapshot will be committed");
        }
        // A second signal, or the grace period, forces the end.
        let end = Instant::now() + STOP_GRACE;
        while Instant::now() < end && signals.pending().next().is_none() {
            std::thread::sleep(Duration::from_millis(100));
        }
        coffer::source::command::signal_running(Signal::SIGKILL);
        drop(pre.lock().unwrap_or_else(|e| e.into_inner()));
        if let Err(e) = post.run_once(&[("COFFER_RESULT", "interrupted")]) {
            errln!("coffer: error: {e:#}");
        }
        if COMMITTED.load(Ordering::SeqCst) {
            errln!("coffer: error: stopped by signal {sig} after the snapshot was saved");
        } else {
            errln!("coffer: error: interrupted; no snapshot committed");
        }
        std::process::exit(128 + sig);
    });
    Ok(())
}

/// One job's run lock: an flock, released by the kernel when the process
/// ends however it ends, holding a line that names its holder.
struct RunLock {
    _file: nix::fcntl::Flock<File>,
}

impl RunLock {
    fn acquire(path: &Path, config: Option<&Path>) -> Result<RunLock> {
        use nix::fcntl::{Flock, FlockArg};
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
                // One line is written; read no more than a line's worth.
                let mut holder = String::new();
                let _ = (&mut f).take(4096).read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "a process that is just starting"
                } else {
                    holder
                };
                return Err(Busy(format!(
                    "another run of this job is in progress ({holder}); lock file {}",
                    path.display()
                ))
                .into());
            }
            Err((_, e)) => bail!("locking {}: {e}", path.display()),
        };
        let line = format!(
            "pid {} on {}, started {}, config {}\n",
            std::process::id(),
            host(),
            fmt_time(now_ns()),
            config.map(|c| c.display().to_string()).unwrap_or_default()
        );
        file.set_len(0)?;
        file.rewind()?;
        file.write_all(line.as_bytes())?;
        Ok(RunLock { _file: file })
    }
}

/// `-v`: each file saved (new or modified) as a line `new PATH` or
/// `modified PATH`; `-vv`: every file, unchanged and linked ones too.
fn verbose_listing(cli: &Cli, level: u8) -> Option<backup::FileListener> {
    if level == 0 || cli.json || cli.quiet {
        return None;
    }
    Some(Arc::new(move |path: &Path, status: backup::FileStatus| {
        use backup::FileStatus::*;
        let word = match status {
            New => "new",
            Modified => "modified",
            Unchanged if level > 1 => "unchanged",
            Linked if level > 1 => "linked",
            _ => return,
        };
        outln!("{word:<9} {}", path.display());
    }))
}

/// Runs a closure every `period` on a thread of its own until dropped
/// (the drop waits for the thread, so nothing is printed after it).
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(period: Duration, mut f: impl FnMut() + Send + 'static) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut next = Instant::now();
            while !s.load(Ordering::SeqCst) {
                if Instant::now() >= next {
                    f();
                    next += period;
                }
                // Short naps: a drop is seen at once.
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Ticker {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `--json-progress`: a JSON status line on stdout each second, the first
/// after one second.
fn status_lines(p: Arc<Progress>, started: Instant) -> Ticker {
    super::JSON_LINES.store(true, Ordering::Relaxed);
    let mut first = true;
    Ticker::start(Duration::from_secs(1), move || {
        if std::mem::take(&mut first) {
            return;
        }
        let line = json!({"type": "status",
            "seconds": started.elapsed().as_secs_f64(),
            "files": p.files.load(Ordering::SeqCst),
            "bytes": p.bytes.load(Ordering::SeqCst)});
        outln!("{line}");
    })
}

/// A spinner line on stderr: files and bytes so far, and the rate.
struct ProgressLine {
    bar: indicatif::ProgressBar,
    ticker: Option<Ticker>,
}

impl ProgressLine {
    fn start(p: Arc<Progress>) -> ProgressLine {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed} {msg} {binary_bytes} read, {binary_bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        let b = bar.clone();
        let ticker = Ticker::start(Duration::from_millis(200), move || {
            b.set_position(p.bytes.load(Ordering::SeqCst));
            b.set_message(format!("{} files,", p.files.load(Ordering::SeqCst)));
            b.tick();
        });
        ProgressLine {
            bar,
            ticker: Some(ticker),
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        // The ticker stops before the line is cleared.
        drop(self.ticker.take());
        self.bar.finish_and_clear();
    }
}
