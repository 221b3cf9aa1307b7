//! The agent's recent log lines for `GET /api/v1/logs`: the log writer ([`Tee`]) writes each line
//! to stderr as before and keeps the last `log_lines` of them in memory ([`LineRing`]). Nothing
//! secret is logged (cloud secrets print as `***`; the API token is printed once on stderr, never
//! through the log).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Mutex, OnceLock};

/// A line longer than this is cut (a log line is a sentence, not a payload).
pub const MAX_LINE: usize = 2048;

/// The last `cap` lines. Pure.
#[derive(Debug)]
pub struct LineRing {
    cap: usize,
    lines: VecDeque<String>,
}

impl LineRing {
    pub fn new(cap: usize) -> LineRing {
        LineRing {
            cap: cap.max(1),
            lines: VecDeque::new(),
        }
    }

    pub fn push(&mut self, line: &str) {
        let mut line = line.trim_end_matches(['\n', '\r']).to_owned();
        if line.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push('…');
        }
        if self.lines.len() == self.cap {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    /// The newest `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<String> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines.iter().skip(skip).cloned().collect()
    }
}

static RING: OnceLock<Mutex<LineRing>> = OnceLock::new();

/// Starts keeping the last `cap` lines. Call before the first line is logged.
pub fn init(cap: usize) {
    let _ = RING.set(Mutex::new(LineRing::new(cap)));
}

pub fn last(n: usize) -> Vec<String> {
    RING.get().map_or_else(Vec::new, |r| {
        r.lock().unwrap_or_else(|p| p.into_inner()).last(n)
    })
}

/// `tracing_subscriber`'s writer: one [`TeeWriter`] per event.
pub struct Tee;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Tee {
    type Writer = TeeWriter;
    fn make_writer(&'a self) -> TeeWriter {
        TeeWriter(Vec::new())
    }
}

/// Collects one event's text; on drop writes it to stderr and keeps its lines.
pub struct TeeWriter(Vec<u8>);

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for TeeWriter {
    fn drop(&mut self) {
        let _ = std::io::stderr().write_all(&self.0);
        if let Some(r) = RING.get() {
            let text = String::from_utf8_lossy(&self.0);
            let mut ring = r.lock().unwrap_or_else(|p| p.into_inner());
            for line in text.lines().filter(|l| !l.is_empty()) {
                ring.push(line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_and_cuts_long_ones() {
        let mut r = LineRing::new(2);
        r.push("a\n");
        r.push("b");
        r.push("c");
        assert_eq!(r.last(10), ["b", "c"]);
        assert_eq!(r.last(1), ["c"]);
        assert!(r.last(0).is_empty());
        r.push(&"é".repeat(MAX_LINE));
        let l = &r.last(1)[0];
        assert!(l.len() <= MAX_LINE + '…'.len_utf8() && l.ends_with('…'));
    }
}
