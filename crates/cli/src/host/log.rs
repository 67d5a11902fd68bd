//! The host service's log: one line per event on stderr, `<level>: <message>`,
//! or, when stderr is the journal (`JOURNAL_STREAM` is set), the sd-daemon
//! priority prefix (`<3>` error, `<4>` warn, `<6>` info, `<7>` debug)
//! instead of the level word. Messages below the configured `log_level` are
//! dropped. Control characters in a message (a newline in a domain name, say)
//! are escaped, so one event is always one line.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// A log level, most severe first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something is wrong but the service goes on.
    Warn = 1,
    /// What the service did (a guest configured, a persist acknowledged).
    Info = 2,
    /// Details for debugging.
    Debug = 3,
}

impl Level {
    /// The word `log_level` uses and plain lines start with.
    pub const fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }

    /// The sd-daemon priority prefix (`sd-daemon(3)`).
    pub const fn journal_prefix(self) -> &'static str {
        match self {
            Level::Error => "<3>",
            Level::Warn => "<4>",
            Level::Info => "<6>",
            Level::Debug => "<7>",
        }
    }

    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Error,
            1 => Level::Warn,
            2 => Level::Info,
            _ => Level::Debug,
        }
    }
}

static MAX_LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static JOURNAL: AtomicBool = AtomicBool::new(false);

/// Sets the most verbose level written, and whether stderr is the journal
/// (from `JOURNAL_STREAM`).
pub fn init(max: Level) {
    MAX_LEVEL.store(max as u8, Ordering::Relaxed);
    JOURNAL.store(std::env::var_os("JOURNAL_STREAM").is_some(), Ordering::Relaxed);
}

/// Whether messages at `level` are written.
pub fn enabled(level: Level) -> bool {
    level <= Level::from_u8(MAX_LEVEL.load(Ordering::Relaxed))
}

/// The line for one event, with its newline.
pub fn format_line(level: Level, journal: bool, args: fmt::Arguments<'_>) -> String {
    let mut msg = String::new();
    let _ = msg.write_fmt(args);
    let mut line = String::with_capacity(msg.len() + 10);
    if journal {
        line.push_str(level.journal_prefix());
    } else {
        line.push_str(level.name());
        line.push_str(": ");
    }
    for c in msg.chars() {
        if c.is_control() {
            let _ = write!(line, "{}", c.escape_default());
        } else {
            line.push(c);
        }
    }
    line.push('\n');
    line
}

/// Writes one event at `level` if that level is enabled.
pub fn log(level: Level, args: fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let line = format_line(level, JOURNAL.load(Ordering::Relaxed), args);
    // One write per line, so threads' lines do not interleave; a failing
    // stderr has nowhere to be reported.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Logs at error level.
pub fn error(args: fmt::Arguments<'_>) {
    log(Level::Error, args);
}

/// Logs at warn level.
pub fn warn(args: fmt::Arguments<'_>) {
    log(Level::Warn, args);
}

/// Logs at info level.
pub fn info(args: fmt::Arguments<'_>) {
    log(Level::Info, args);
}

/// Logs at debug level.
pub fn debug(args: fmt::Arguments<'_>) {
    log(Level::Debug, args);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_journal_lines() {
        let name = "cryptod";
        assert_eq!(
            format_line(Level::Info, false, format_args!("{name} configured")),
            "info: cryptod configured\n"
        );
        assert_eq!(format_line(Level::Error, true, format_args!("x")), "<3>x\n");
        assert_eq!(format_line(Level::Warn, true, format_args!("x")), "<4>x\n");
        assert_eq!(format_line(Level::Info, true, format_args!("x")), "<6>x\n");
        assert_eq!(format_line(Level::Debug, true, format_args!("x")), "<7>x\n");
        assert_eq!(format_line(Level::Debug, false, format_args!("x")), "debug: x\n");
        assert_eq!(format_line(Level::Warn, false, format_args!("x")), "warn: x\n");
    }

    #[test]
    fn one_event_is_one_line() {
        let hostile = "evil\n<3>forged\r\x1b[2J";
        let line = format_line(Level::Info, true, format_args!("name {hostile}"));
        assert_eq!(line, "<6>name evil\\n<3>forged\\r\\u{1b}[2J\n");
        assert_eq!(line.matches('\n').count(), 1);
    }

    #[test]
    fn levels_filter() {
        init(Level::Warn);
        assert!(enabled(Level::Error));
        assert!(enabled(Level::Warn));
        assert!(!enabled(Level::Info));
        assert!(!enabled(Level::Debug));
        init(Level::Debug);
        assert!(enabled(Level::Debug));
        init(Level::Info);
        assert!(enabled(Level::Info));
        assert!(!enabled(Level::Debug));
    }
}
