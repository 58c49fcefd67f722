//! A command's standard output as a backup stream (`pg_dump`, `mysqldump`…).
//! The command starts on the first read, so several dumps of one run never
//! hold their databases open at once, and its exit status is part of the
//! stream: end of output from a command that failed or was killed is an
//! error, never a short but valid-looking dump.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Mutex;

/// Commands running now, so a signal handler can stop them: a dump that
/// hangs must not keep an interrupted backup (and its hooks) waiting.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn running() -> std::sync::MutexGuard<'static, Vec<u32>> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends `signal` to every command a [`CommandReader`] is reading now, and
/// to everything it started (`sh -c 'pg_dump | gzip'`): each command runs in
/// a process group of its own.
pub fn signal_running(signal: nix::sys::signal::Signal) {
    for pid in running().iter() {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(*pid as i32), signal);
    }
}

/// Forgets a child before it is reaped, so its pid (and process group id)
/// is never signalled after it could be reused.
fn forget(child: &Child) {
    running().retain(|p| *p != child.id());
}

/// Reads a command's standard output; see the module docs.
pub struct CommandReader {
    argv: Vec<String>,
    child: Option<(Child, ChildStdout)>,
    finished: bool,
}

impl CommandReader {
    /// A reader for `argv` (program and arguments); nothing runs yet.
    pub fn new(argv: Vec<String>) -> CommandReader {
        CommandReader {
            argv,
            child: None,
            finished: false,
        }
    }

    /// The command as a user would type it, for messages.
    pub fn shown(&self) -> String {
        self.argv.join(" ")
    }

    fn start(&mut self) -> io::Result<()> {
        let (prog, args) = self
            .argv
            .split_first()
            .ok_or_else(|| io::Error::other("empty command"))?;
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting `{}`: {e}", self.shown())))?;
        // The pipe was asked for just above.
        let out = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no pipe"))?;
        super::widen_pipe(&out);
        running().push(child.id());
        self.child = Some((child, out));
        Ok(())
    }

    /// Waits for the command at the end of its output; its failure is ours.
    fn finish(&mut self) -> io::Result<()> {
        self.finished = true;
        let Some((mut child, out)) = self.child.take() else {
            return Ok(());
        };
        drop(out);
        forget(&child);
        let status = child.wait()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "command `{}` failed ({status}); no snapshot committed",
                self.shown()
            )))
        }
    }
}

impl Read for CommandReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        if self.child.is_none() {
            self.start()?;
        }
        let n = match self.child.as_mut() {
            Some((_, out)) => out.read(buf)?,
            None => 0,
        };
        if n == 0 && !buf.is_empty() {
            self.finish()?;
        }
        Ok(n)
    }
}

impl Drop for CommandReader {
    /// A backup that stops early does not leave its dump running.
    fn drop(&mut self) {
        if let Some((mut child, out)) = self.child.take() {
            drop(out);
            forget(&child);
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn output_of_a_good_command() {
        let mut r = CommandReader::new(argv(&["sh", "-c", "printf hello"]));
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn failure_after_output_is_an_error() {
        let mut r = CommandReader::new(argv(&["sh", "-c", "printf part; exit 3"]));
        let mut s = Vec::new();
        let e = r.read_to_end(&mut s).unwrap_err();
        assert!(e.to_string().contains("exit status: 3"), "{e}");
    }

    #[test]
    fn killed_command_is_an_error() {
        let mut r = CommandReader::new(argv(&["sh", "-c", "kill -9 $$"]));
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("signal: 9"), "{e}");
    }

    #[test]
    fn missing_program_is_named() {
        let mut r = CommandReader::new(argv(&["/nonexistent/dumper"]));
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dumper"), "{e}");
    }
}
