//! Where the repository passphrase comes from. One function owns the
//! precedence, first found:
//!
//! 1. the command line: `--password-command CMD` or `--password-file FILE`
//!    (not both);
//! 2. a job file's `password_file` (`backup --config`);
//! 3. the environment: `COFFER_PASSWORD_COMMAND`, `COFFER_PASSWORD_FILE` or
//!    `COFFER_PASSWORD` (more than one is refused as ambiguous);
//! 4. a prompt, on a terminal.
//!
//! A command is split into words as a shell would (quotes, backslashes) but
//! run without one; write `sh -c '…'` for a pipeline. Its standard output's
//! first line is the passphrase; a command that fails (non-zero, killed, not
//! found) is an error naming it. A file's one trailing newline is dropped.
//! An empty passphrase is refused, whatever its source.

use std::io::{self, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use super::{Cli, Usage};

/// The lines `--help` ends with.
pub const HELP: &str = "\
Passphrase, first found: --password-command or --password-file; a job file's
password_file (backup --config); COFFER_PASSWORD_COMMAND, COFFER_PASSWORD_FILE
or COFFER_PASSWORD (the passphrase itself, visible in /proc; only one of the
three); else a prompt on a terminal. A command runs without a shell (write
sh -c '…' for one); its output's first line is the passphrase. An empty
passphrase is refused.";

/// One source of a passphrase, with where it was named (for messages).
enum Source {
    Command(String, &'static str),
    File(PathBuf, &'static str),
    Value(String, &'static str),
    Prompt,
}

/// The repository passphrase, from the first source found (see the module
/// documentation); `prompt` and `confirm` serve a terminal.
pub(super) fn passphrase(cli: &Cli, prompt: &str, confirm: bool) -> Result<Vec<u8>> {
    let given = |id: &str| !cli.from_env.iter().any(|e| e == id);
    let command = cli
        .password_command
        .as_ref()
        .filter(|_| given("password_command"));
    let file = cli
        .password_file
        .as_ref()
        .filter(|_| given("password_file"));
    let source = match (command, file) {
        (Some(_), Some(_)) => {
            return Err(Usage("give --password-command or --password-file, not both".into()).into())
        }
        (Some(c), None) => Source::Command(c.clone(), "--password-command"),
        (None, Some(f)) => Source::File(f.clone(), "--password-file"),
        (None, None) => match &cli.job_password_file {
            Some(f) => Source::File(f.clone(), "the job file's password_file"),
            None => environment(
                "COFFER_PASSWORD_COMMAND",
                "COFFER_PASSWORD_FILE",
                "COFFER_PASSWORD",
            )?,
        },
    };
    read(source, prompt, confirm)
}

/// A new passphrase for `key add` and `key passwd`, from
/// `COFFER_NEW_PASSWORD_COMMAND`, `COFFER_NEW_PASSWORD_FILE`,
/// `COFFER_NEW_PASSWORD` (only one) or a prompt; never empty.
pub(super) fn new_passphrase() -> Result<Vec<u8>> {
    let source = environment(
        "COFFER_NEW_PASSWORD_COMMAND",
        "COFFER_NEW_PASSWORD_FILE",
        "COFFER_NEW_PASSWORD",
    )?;
    read(source, "New passphrase: ", true)
}

/// The one source the environment names, or the prompt.
fn environment(command: &'static str, file: &'static str, value: &'static str) -> Result<Source> {
    let mut found = Vec::new();
    if let Some(c) = std::env::var_os(command) {
        found.push(Source::Command(c.to_string_lossy().into_owned(), command));
    }
    if let Some(f) = std::env::var_os(file) {
        found.push(Source::File(PathBuf::from(f), file));
    }
    if let Some(v) = std::env::var_os(value) {
        found.push(Source::Value(v.to_string_lossy().into_owned(), value));
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(Source::name).collect();
        bail!(
            "the passphrase is named twice in the environment ({}): unset all but one",
            names.join(", ")
        );
    }
    Ok(found.pop().unwrap_or(Source::Prompt))
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Source::Command(_, n) | Source::File(_, n) | Source::Value(_, n) => n,
            Source::Prompt => "the prompt",
        }
    }
}

fn read(source: Source, prompt: &str, confirm: bool) -> Result<Vec<u8>> {
    let (pw, what) = match &source {
        Source::Command(cmd, from) => (run(cmd, from)?, format!("{from} `{cmd}`")),
        Source::File(f, from) => (file(f, from)?, format!("{from} {}", f.display())),
        Source::Value(v, from) => (v.clone().into_bytes(), from.to_string()),
        Source::Prompt => {
            if !io::stdin().is_terminal() {
                bail!("no passphrase: give --password-command or --password-file, set COFFER_PASSWORD_COMMAND, COFFER_PASSWORD_FILE or COFFER_PASSWORD, or run on a terminal");
            }
            let p = rpassword::prompt_password(prompt)?;
            if confirm && rpassword::prompt_password("Repeat passphrase: ")? != p {
                bail!("passphrases do not match");
            }
            (p.into_bytes(), "the prompt".to_string())
        }
    };
    if pw.is_empty() {
        bail!("refusing an empty passphrase (from {what})");
    }
    Ok(pw)
}

fn file(f: &Path, from: &str) -> Result<Vec<u8>> {
    let s = std::fs::read(f).with_context(|| format!("reading {from} {}", f.display()))?;
    let s = s.strip_suffix(b"\n").unwrap_or(&s);
    Ok(s.to_vec())
}

/// Runs a password command; its standard output's first line.
fn run(cmd: &str, from: &str) -> Result<Vec<u8>> {
    let named = || format!("{from} `{cmd}`");
    let argv = shell_words::split(cmd).with_context(|| format!("splitting {}", named()))?;
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| anyhow!("{} names no program", named()))?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {}", named()))?;
    // A passphrase is short: at most 64 KiB is read, the rest drained.
    let mut out = Vec::new();
    let mut stdout = child.stdout.take().expect("piped");
    let read = stdout.by_ref().take(64 << 10).read_to_end(&mut out);
    let _ = io::copy(&mut stdout, &mut io::sink());
    let status = child
        .wait()
        .with_context(|| format!("waiting for {}", named()))?;
    read.with_context(|| format!("reading the output of {}", named()))?;
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&status) {
        bail!("{} was killed by signal {sig}", named());
    }
    if !status.success() {
        bail!("{} failed: {status}", named());
    }
    let line = out.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
}
