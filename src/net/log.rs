//! The server's logs: `tracing` events, one line each on standard error with
//! `key=value` fields. On a terminal they are coloured; elsewhere they are
//! not; under systemd (standard error is the journal stream named by
//! `JOURNAL_STREAM`) lines carry no timestamp (the journal adds its own) and
//! start with a `<N>` syslog priority, so `journalctl -p warning` works.
//! The client commands print as before: only `coffer serve` installs this.

use std::io::IsTerminal;

use tracing::{Level, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The syslog priority of a level, as journald reads it from a `<N>` prefix.
pub fn syslog_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Whether standard error is the journal stream `JOURNAL_STREAM` names
/// (`DEVICE:INODE`); a variable inherited by a child of the service (whose
/// stderr was redirected) does not count, as systemd's documentation advises.
// libc's dev_t and ino_t are u64 here, narrower elsewhere.
#[allow(clippy::unnecessary_cast)]
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    match nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&std::io::stderr())) {
        Ok(st) => dev.parse() == Ok(st.st_dev as u64) && ino.parse() == Ok(st.st_ino as u64),
        Err(_) => false,
    }
}

/// Journald's format: `<N>` then the event without time or colour.
struct Journald(Format<Full, ()>);

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        write!(
            writer,
            "<{}>{}",
            syslog_priority(event.metadata().level()),
            one_line(&line)
        )
    }
}

/// An event as one journal entry: journald starts an entry at each line
/// feed, so those inside the text are written `\n` (and `\r` likewise).
fn one_line(formatted: &str) -> String {
    let body = formatted.strip_suffix('\n').unwrap_or(formatted);
    let mut out = body.replace('\r', "\\r").replace('\n', "\\n");
    if body.len() != formatted.len() {
        out.push('\n');
    }
    out
}

/// Installs the server's log subscriber (once; later calls do nothing).
/// `COFFER_LOG` sets the level: `error`, `warn`, `info` (default) or `debug`.
pub fn init() {
    let level = std::env::var("COFFER_LOG")
        .ok()
        .and_then(|l| l.parse::<Level>().ok())
        .unwrap_or(Level::INFO);
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    if stderr_is_journal() {
        let format = Format::default()
            .without_time()
            .with_target(false)
            .with_ansi(false);
        let _ = builder
            .with_ansi(false)
            .fmt_fields(DefaultFields::new())
            .event_format(Journald(format))
            .try_init();
    } else {
        let _ = builder
            .with_ansi(colour_wanted(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR"),
            ))
            .try_init();
    }
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to
/// anything non-empty (<https://no-color.org>).
pub fn colour_wanted(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_turns_colour_off_even_on_a_terminal() {
        assert!(colour_wanted(true, None));
        assert!(
            colour_wanted(true, Some("".into())),
            "empty NO_COLOR is unset"
        );
        assert!(!colour_wanted(true, Some("1".into())));
        assert!(!colour_wanted(false, None), "no colour into a file or pipe");
    }

    #[test]
    fn priorities_match_syslog() {
        assert_eq!(syslog_priority(&Level::ERROR), 3);
        assert_eq!(syslog_priority(&Level::WARN), 4);
        assert_eq!(syslog_priority(&Level::INFO), 6);
        assert_eq!(syslog_priority(&Level::DEBUG), 7);
    }

    #[test]
    fn an_event_is_one_journal_line() {
        assert_eq!(one_line("a\nb: c\r\nd\n"), "a\\nb: c\\r\\nd\n");
        assert_eq!(one_line("plain\n"), "plain\n");
        assert_eq!(one_line("no end"), "no end");
    }
}
