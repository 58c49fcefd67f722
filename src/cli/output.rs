//! What the commands print. Owns standard output and standard error for
//! them: a pipe that closes (`coffer prune | head`) ends the printing, never
//! the command, so a prune or scrub still does all its work and exits with
//! its own code; `print!` would panic there (exit 101).

use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Set once standard output's reader went away: nothing more is written.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// A failure to write standard output other than a closed pipe (a full
/// disk behind a redirect): reported once the command is done.
static STDOUT_FAILED: Mutex<Option<io::Error>> = Mutex::new(None);

/// Writes one line to standard output; see the module doc for failures.
pub(crate) fn line(args: fmt::Arguments) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.write_all(b"\n")) {
        note_stdout_error(e);
    }
}

/// Records a failed write to standard output: a closed pipe silences the
/// rest; any other failure is kept for [`take_stdout_error`].
pub(crate) fn note_stdout_error(e: io::Error) {
    STDOUT_CLOSED.store(true, Ordering::Relaxed);
    if e.kind() != io::ErrorKind::BrokenPipe {
        // unwrap-free: a poisoned lock still holds the first error.
        let mut f = STDOUT_FAILED.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(e);
    }
}

/// Whether standard output's reader is gone: a listing may stop early.
pub(crate) fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// The first failure to write standard output that was not a closed pipe.
pub(crate) fn take_stdout_error() -> Option<io::Error> {
    STDOUT_FAILED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
}

/// Writes one line to standard error; a closed standard error loses the
/// line and nothing else.
pub(crate) fn err_line(args: fmt::Arguments) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|_| err.write_all(b"\n"));
}

/// What a command prints while it reconnects to a server: a line on
/// standard error per attempt and one when the connection stands again
/// (JSON objects under `--json`; nothing under `--quiet`, where the error
/// of a client that gave up is still printed).
pub(crate) fn reconnect_report(
    cli: &super::args::Cli,
) -> Option<coffer::net::reconnect::ReconnectReport> {
    use coffer::net::reconnect::ReconnectEvent;
    if cli.quiet {
        return None;
    }
    let json = cli.json;
    // Whole seconds, or milliseconds under one: "4m 59s", "500ms".
    let round = |d: std::time::Duration| {
        let d = match d.as_secs() {
            0 => std::time::Duration::from_millis(d.as_millis() as u64),
            s => std::time::Duration::from_secs(s),
        };
        humantime::format_duration(d).to_string()
    };
    Some(Box::new(move |e: &ReconnectEvent| match e {
        ReconnectEvent::Attempt(a) if json => err_line(format_args!(
            "{}",
            serde_json::json!({"type": "reconnect", "server": a.server, "attempt": a.attempt,
                "wait_secs": a.wait.as_secs_f64(), "left_secs": a.left.as_secs(), "reason": a.reason})
        )),
        ReconnectEvent::Attempt(a) => err_line(format_args!(
            "coffer: {}: {}; reconnect attempt {} in {}, giving up in {}",
            a.server,
            a.reason,
            a.attempt,
            round(a.wait),
            round(a.left)
        )),
        ReconnectEvent::Reconnected { server, attempts } if json => err_line(format_args!(
            "{}",
            serde_json::json!({"type": "reconnected", "server": server, "attempts": attempts})
        )),
        ReconnectEvent::Reconnected { server, attempts } => err_line(format_args!(
            "coffer: {server}: reconnected (attempt {attempts}); going on"
        )),
    }))
}

/// `println!` that survives a closed pipe.
macro_rules! outln {
    () => {
        $crate::cli::output::line(format_args!(""))
    };
    ($($t:tt)*) => {
        $crate::cli::output::line(format_args!($($t)*))
    };
}

/// `eprintln!` that survives a closed standard error.
macro_rules! errln {
    ($($t:tt)*) => {
        $crate::cli::output::err_line(format_args!($($t)*))
    };
}

#[cfg(test)]
mod tests {
    /// `print!` and friends panic on a closed pipe: every line of a command
    /// goes through this module instead.
    #[test]
    fn no_command_prints_past_this_module() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cli");
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.ends_with("output.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for bad in ["println!(", "print!(", "eprint!(", "eprintln!("] {
                assert!(
                    !text.contains(bad),
                    "{} uses {bad}: use outln!/errln!",
                    path.display()
                );
            }
        }
    }
}
