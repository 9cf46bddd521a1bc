//! The bounded queue between the global logger and the event loop.
//!
//! The `log` facade is global and must be `Sync`, so the logger the host installs pushes
//! formatted lines here; the relay's loop drains them to operators who asked for the log.
//! This mutex is the only lock in mcrelay, held for a push or a drain, never across I/O.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// One formatted log line and its level.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// Its level.
    pub level: log::Level,
    /// `<timestamp> <LEVEL> <text>`.
    pub text: String,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<LogLine>,
    dropped: u64,
}

/// Cloneable handle; cheap to push from any thread.
#[derive(Clone)]
pub struct LogTap {
    inner: Arc<Mutex<Queue>>,
    cap: usize,
}

impl std::fmt::Debug for LogTap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogTap {{ cap: {} }}", self.cap)
    }
}

impl LogTap {
    /// A queue holding at most `cap` lines; beyond that new lines are dropped and counted.
    pub fn new(cap: usize) -> Self {
        LogTap {
            inner: Arc::new(Mutex::new(Queue::default())),
            cap: cap.max(1),
        }
    }

    /// Queue a line (dropped and counted when the queue is full).
    pub fn push(&self, level: log::Level, text: String) {
        let Ok(mut q) = self.inner.lock() else { return };
        if q.lines.len() >= self.cap {
            q.dropped += 1;
        } else {
            q.lines.push_back(LogLine { level, text });
        }
    }

    /// Move every queued line into `out`; returns how many were dropped since the last drain.
    pub fn drain_into(&self, out: &mut Vec<LogLine>) -> u64 {
        let Ok(mut q) = self.inner.lock() else {
            return 0;
        };
        out.extend(q.lines.drain(..));
        std::mem::take(&mut q.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_counts_drops() {
        let t = LogTap::new(2);
        for i in 0..5 {
            t.push(log::Level::Info, format!("l{i}"));
        }
        let mut v = Vec::new();
        assert_eq!(t.drain_into(&mut v), 3);
        assert_eq!(v.len(), 2);
        assert_eq!(t.drain_into(&mut v), 0);
    }
}
