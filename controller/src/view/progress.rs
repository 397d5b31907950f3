//! Progress of long commands on stderr: on a terminal, one status line redrawn in place under
//! the events; otherwise plain log lines (the status at most every few seconds).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PLAIN_STATUS_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    terminal: bool,
    last_plain_status: Mutex<Option<Instant>>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            last_plain_status: Mutex::new(None),
        }
    }

    /// Something that happened: always printed on a line of its own.
    pub fn event(&self, message: &str) {
        let mut stderr = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(stderr, "\r\x1b[K");
        }
        let _ = writeln!(stderr, "shiftctl: {message}");
    }

    /// How things stand now: redrawn in place on a terminal, else logged now and then.
    pub fn status(&self, message: &str) {
        let mut stderr = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(stderr, "\r\x1b[K{message}");
            let _ = stderr.flush();
            return;
        }
        let mut last = self.last_plain_status.lock().expect("progress lock");
        if last.is_none_or(|at| at.elapsed() >= PLAIN_STATUS_EVERY) {
            *last = Some(Instant::now());
            let _ = writeln!(stderr, "shiftctl: {message}");
        }
    }

    /// Ends a redrawn status line.
    pub fn finish(&self) {
        if self.terminal {
            let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
        }
    }
}
