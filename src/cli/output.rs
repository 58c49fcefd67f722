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
