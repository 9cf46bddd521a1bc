//! The control-port line protocol (docs/control.md): parse a line, run it against the core,
//! format the reply.
//!
//! Pure: no sockets. Every reply is a list of lines followed by a terminator line, `OK` or
//! `ERR <reason>`. Asynchronous log lines start with `LOG ` and nothing else does. The driver
//! only moves lines between connections and [`Operator::run_line`].

mod command;
mod exec;
mod format;

pub use command::{Command, HELP, parse};
pub use exec::{
    AUTH_BACKOFF_FIRST, AUTH_BACKOFF_MAX, AUTH_CHECKS_PER_SEC, AUTH_FORGET, AUTH_FREE_FAILURES,
    CONTROL_COUNTERS, Context, ControlCounters, ControlState, MAX_AUTH_FAILURES, Operator, Reply,
    Timeouts, max_log_level,
};
pub use format::{
    format_clients, format_config, format_control_metrics, format_control_stats, format_help,
    format_metrics, format_peers, format_remote_clients, format_stats,
};

/// Longest command line accepted (bytes, without the newline).
pub const MAX_LINE: usize = 1024;
