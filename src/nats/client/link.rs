//! The connection state machine: attempt, handshake (INFO, then CONNECT/PING answered by
//! PONG), the link's own PINGs, lame duck, closing, and when the next attempt goes to which
//! server. It decides; the client writes the bytes and keeps the counters.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::config::NatsConfig;
use super::errors::DisconnectReason;
use super::events::NatsState;
use super::servers::{Backoff, Merged, ServerList};

/// Longest wait, after a lame-duck move was due, for the transmit buffer to drain to the old
/// server before the link is closed anyway.
pub const LAME_DUCK_DRAIN: Duration = Duration::from_secs(1);
/// A link must stay up this long for its loss to earn an immediate reconnect; a shorter one
/// counts as a failed attempt (a server that accepts and drops cannot make us spin).
pub const STABLE_LINK: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
enum Conn {
    Waiting {
        at: Instant,
    },
    Connecting {
        deadline: Instant,
    },
    AwaitInfo {
        deadline: Instant,
    },
    AwaitPong {
        deadline: Instant,
    },
    Up {
        since: Instant,
        next_ping: Instant,
        pings_out: u32,
        lame_duck_at: Option<Instant>,
        draining_until: Option<Instant>,
    },
    Closing {
        reason: DisconnectReason,
        /// `Some(since)` when the link had completed its handshake.
        up_since: Option<Instant>,
    },
    Closed,
}

/// How a link, or an attempt, ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ended {
    /// Why ([`DisconnectReason::Closed`]: for good, no attempt follows).
    pub(super) reason: DisconnectReason,
    /// The handshake had completed.
    pub(super) was_up: bool,
    /// The server it was with.
    pub(super) server: Option<SocketAddr>,
}

/// What an INFO asks of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InfoStep {
    /// Nothing (or the link is closing: TLS required).
    Nothing,
    /// The first INFO: write the handshake (CONNECT, SUBs, PING).
    Handshake,
    /// The server announced lame duck (now closing, or leaving after a delay once up).
    LameDuck,
}

/// What a timer tick asks of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tick {
    /// Nothing to send.
    Idle,
    /// Send our PING; `missed`: the previous one went unanswered.
    Ping {
        /// The previous PING went unanswered.
        missed: bool,
    },
    /// Too many PINGs unanswered: the link is closing.
    Stale,
}

/// Where the connection is, which server it is with, and when the next attempt is due.
#[derive(Debug)]
pub(super) struct Link {
    conn: Conn,
    servers: ServerList,
    backoff: Backoff,
    connect_timeout: Duration,
    ping_interval: Duration,
    max_pings_out: u32,
    lame_duck_jitter: Duration,
}

impl Link {
    /// The first attempt is due at `now`; `seed` drives the jitter.
    pub(super) fn new(cfg: &NatsConfig, now: Instant, seed: u64) -> Self {
        Link {
            conn: Conn::Waiting { at: now },
            servers: ServerList::new(&cfg.servers),
            backoff: Backoff::new(cfg.reconnect_base, cfg.reconnect_max, seed),
            connect_timeout: cfg.connect_timeout,
            ping_interval: cfg.ping_interval,
            max_pings_out: cfg.max_pings_out,
            lame_duck_jitter: cfg.lame_duck_jitter,
        }
    }

    // ------------------------------------------------------------ socket events

    /// The server to open a TCP connection to, when an attempt is due.
    pub(super) fn poll_connect(&mut self, now: Instant) -> Option<SocketAddr> {
        let Conn::Waiting { at } = self.conn else {
            return None;
        };
        if now < at {
            return None;
        }
        let server = self.servers.pick()?;
        self.conn = Conn::Connecting {
            deadline: now + self.connect_timeout,
        };
        Some(server)
    }

    /// The TCP connection is up: `true` when an attempt was waiting for it (the client then
    /// starts the connection afresh).
    pub(super) fn connected(&mut self) -> bool {
        let Conn::Connecting { deadline } = self.conn else {
            return false;
        };
        self.conn = Conn::AwaitInfo { deadline };
        true
    }

    /// The socket is gone: how the link ended (`None`: there was none), and the next
    /// attempt scheduled, at once for a link that was up long enough or left a lame duck,
    /// else after the back-off.
    pub(super) fn disconnected(&mut self, now: Instant) -> Option<Ended> {
        let (reason, up_since) = match &self.conn {
            Conn::Waiting { .. } | Conn::Closed => return None,
            Conn::Connecting { .. } | Conn::AwaitInfo { .. } | Conn::AwaitPong { .. } => {
                (DisconnectReason::Io, None)
            }
            Conn::Up { since, .. } => (DisconnectReason::Io, Some(*since)),
            Conn::Closing { reason, up_since } => (reason.clone(), *up_since),
        };
        let was_up = up_since.is_some();
        let server = self.servers.current();
        if reason == DisconnectReason::Closed {
            self.conn = Conn::Closed;
            return Some(Ended {
                reason,
                was_up,
                server,
            });
        }
        self.servers.advance();
        let stable = up_since.is_some_and(|t| now.saturating_duration_since(t) >= STABLE_LINK);
        let at = if stable || (was_up && reason == DisconnectReason::LameDuck) {
            // A link that was up: the next server at once.
            self.backoff.reset();
            now
        } else {
            now + self.backoff.failed()
        };
        self.conn = Conn::Waiting { at };
        Some(Ended {
            reason,
            was_up,
            server,
        })
    }

    /// Stop for good: `true` when there was no socket (closed at once), else the socket is
    /// to be closed first.
    pub(super) fn close(&mut self) -> bool {
        let up_since = match &mut self.conn {
            Conn::Closed => return false,
            Conn::Closing { reason, .. } => {
                *reason = DisconnectReason::Closed;
                return false;
            }
            Conn::Waiting { .. } => {
                self.conn = Conn::Closed;
                return true;
            }
            Conn::Up { since, .. } => Some(*since),
            Conn::Connecting { .. } | Conn::AwaitInfo { .. } | Conn::AwaitPong { .. } => None,
        };
        self.conn = Conn::Closing {
            reason: DisconnectReason::Closed,
            up_since,
        };
        false
    }

    /// Ask for the socket to be closed, unless there is none or it is already closing.
    pub(super) fn close_link(&mut self, reason: DisconnectReason) {
        let up_since = match self.conn {
            Conn::Up { since, .. } => Some(since),
            Conn::Connecting { .. } | Conn::AwaitInfo { .. } | Conn::AwaitPong { .. } => None,
            Conn::Waiting { .. } | Conn::Closing { .. } | Conn::Closed => return,
        };
        self.conn = Conn::Closing { reason, up_since };
    }

    // ------------------------------------------------------------ server operations

    /// An INFO arrived (`tls_required`, `ldm` from it).
    pub(super) fn on_info(&mut self, now: Instant, tls_required: bool, ldm: bool) -> InfoStep {
        match &mut self.conn {
            Conn::AwaitInfo { deadline } => {
                if tls_required {
                    self.close_link(DisconnectReason::TlsRequired);
                    InfoStep::Nothing
                } else if ldm {
                    self.close_link(DisconnectReason::LameDuck);
                    InfoStep::LameDuck
                } else {
                    self.conn = Conn::AwaitPong {
                        deadline: *deadline,
                    };
                    InfoStep::Handshake
                }
            }
            Conn::AwaitPong { .. } if ldm => {
                self.close_link(DisconnectReason::LameDuck);
                InfoStep::LameDuck
            }
            Conn::Up { lame_duck_at, .. } if ldm && lame_duck_at.is_none() => {
                *lame_duck_at = Some(now + self.backoff.jitter(self.lame_duck_jitter));
                InfoStep::LameDuck
            }
            _ => InfoStep::Nothing,
        }
    }

    /// A PONG arrived: `true` when it completed the handshake (the link is up).
    pub(super) fn on_pong(&mut self, now: Instant) -> bool {
        match &mut self.conn {
            Conn::AwaitPong { .. } => {
                self.conn = Conn::Up {
                    since: now,
                    next_ping: now + self.ping_interval,
                    pings_out: 0,
                    lame_duck_at: None,
                    draining_until: None,
                };
                true
            }
            Conn::Up { pings_out, .. } => {
                *pings_out = 0;
                false
            }
            _ => false,
        }
    }

    // ------------------------------------------------------------ timers

    /// When [`on_timeout`](Self::on_timeout) (or, while waiting,
    /// [`poll_connect`](Self::poll_connect)) is next due.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        match &self.conn {
            Conn::Waiting { at } => Some(*at),
            Conn::Connecting { deadline }
            | Conn::AwaitInfo { deadline }
            | Conn::AwaitPong { deadline } => Some(*deadline),
            Conn::Up {
                next_ping,
                lame_duck_at,
                draining_until,
                ..
            } => {
                let ldm = draining_until.or(*lame_duck_at);
                Some(ldm.map_or(*next_ping, |t| t.min(*next_ping)))
            }
            Conn::Closing { .. } | Conn::Closed => None,
        }
    }

    /// Run what is due: the connect timeout, the lame-duck move, our PING (or declare the
    /// link dead). Harmless early or repeated.
    pub(super) fn on_timeout(&mut self, now: Instant) -> Tick {
        match &mut self.conn {
            Conn::Connecting { deadline }
            | Conn::AwaitInfo { deadline }
            | Conn::AwaitPong { deadline } => {
                if now >= *deadline {
                    self.close_link(DisconnectReason::ConnectTimeout);
                }
                Tick::Idle
            }
            Conn::Up {
                next_ping,
                pings_out,
                lame_duck_at,
                draining_until,
                ..
            } => {
                if draining_until.is_none() && lame_duck_at.is_some_and(|t| now >= t) {
                    *draining_until = Some(now + LAME_DUCK_DRAIN);
                }
                if draining_until.is_some_and(|t| now >= t) {
                    self.close_link(DisconnectReason::LameDuck);
                    return Tick::Idle;
                }
                if now < *next_ping {
                    return Tick::Idle;
                }
                let missed = *pings_out > 0;
                if *pings_out >= self.max_pings_out {
                    self.close_link(DisconnectReason::StaleConnection);
                    return Tick::Stale;
                }
                *pings_out += 1;
                *next_ping = now + self.ping_interval;
                Tick::Ping { missed }
            }
            Conn::Waiting { .. } | Conn::Closing { .. } | Conn::Closed => Tick::Idle,
        }
    }

    // ------------------------------------------------------------ questions

    /// Where the client is.
    pub(super) fn state(&self) -> NatsState {
        match self.conn {
            Conn::Waiting { .. } => NatsState::Waiting,
            Conn::Connecting { .. } => NatsState::Connecting,
            Conn::AwaitInfo { .. } | Conn::AwaitPong { .. } => NatsState::Handshaking,
            Conn::Up { .. } => NatsState::Connected,
            Conn::Closing { .. } => NatsState::Closing,
            Conn::Closed => NatsState::Closed,
        }
    }

    /// A socket that takes input and control operations: handshaking or up.
    pub(super) fn is_open(&self) -> bool {
        matches!(
            self.conn,
            Conn::AwaitInfo { .. } | Conn::AwaitPong { .. } | Conn::Up { .. }
        )
    }

    /// No INFO yet on this connection.
    pub(super) fn awaiting_info(&self) -> bool {
        matches!(self.conn, Conn::AwaitInfo { .. })
    }

    /// CONNECT has gone out: a new SUB or UNSUB is sent at once.
    pub(super) fn handshake_sent(&self) -> bool {
        matches!(self.conn, Conn::AwaitPong { .. } | Conn::Up { .. })
    }

    /// Publishes go straight to the transmit buffer (else they queue): up, and not leaving
    /// a lame duck.
    pub(super) fn writes_direct(&self) -> bool {
        matches!(
            self.conn,
            Conn::Up {
                draining_until: None,
                ..
            }
        )
    }

    /// Leaving a lame duck: the link closes once the transmit buffer is empty.
    pub(super) fn draining(&self) -> bool {
        matches!(
            self.conn,
            Conn::Up {
                draining_until: Some(_),
                ..
            }
        )
    }

    /// The socket is to be closed.
    pub(super) fn wants_close(&self) -> bool {
        matches!(self.conn, Conn::Closing { .. })
    }

    /// Closed for good.
    pub(super) fn is_closed(&self) -> bool {
        matches!(self.conn, Conn::Closed)
    }

    /// The server in use, or tried last.
    pub(super) fn server(&self) -> Option<SocketAddr> {
        self.servers.current()
    }

    /// The server of the established link.
    pub(super) fn connected_server(&self) -> Option<SocketAddr> {
        match self.conn {
            Conn::Up { .. } => self.servers.current(),
            _ => None,
        }
    }

    /// Every server that may be tried.
    pub(super) fn servers(&self) -> &ServerList {
        &self.servers
    }

    /// Add discovered servers (`connect_urls`).
    pub(super) fn merge_servers(&mut self, urls: &[SocketAddr]) -> Merged {
        self.servers.merge(urls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn cfg() -> NatsConfig {
        NatsConfig {
            servers: vec![addr(1), addr(2)],
            max_pings_out: 2,
            ..NatsConfig::default()
        }
    }

    /// Through the handshake to Up with the first due server.
    fn up(l: &mut Link, now: Instant) -> SocketAddr {
        let now = now.max(l.poll_timeout().unwrap());
        let s = l.poll_connect(now).unwrap();
        assert!(l.connected());
        assert_eq!(l.on_info(now, false, false), InfoStep::Handshake);
        assert!(l.handshake_sent());
        assert!(l.on_pong(now));
        assert_eq!(l.state(), NatsState::Connected);
        s
    }

    #[test]
    fn an_attempt_is_due_at_once_and_bounded_by_the_connect_timeout() {
        let t0 = Instant::now();
        let c = cfg();
        let mut l = Link::new(&c, t0, 1);
        assert_eq!(l.poll_timeout(), Some(t0));
        assert_eq!(l.poll_connect(t0), Some(addr(1)));
        assert_eq!(l.poll_connect(t0), None, "one attempt at a time");
        assert!(l.connected());
        assert!(!l.connected());
        assert!(l.awaiting_info() && l.is_open() && !l.handshake_sent());
        let deadline = t0 + c.connect_timeout;
        assert_eq!(l.poll_timeout(), Some(deadline));
        assert_eq!(
            l.on_timeout(deadline - Duration::from_millis(1)),
            Tick::Idle
        );
        assert!(!l.wants_close());
        l.on_timeout(deadline);
        assert!(l.wants_close());
        let end = l.disconnected(deadline).unwrap();
        assert_eq!(
            end,
            Ended {
                reason: DisconnectReason::ConnectTimeout,
                was_up: false,
                server: Some(addr(1)),
            }
        );
        // A failure: the back-off (100 ms base, equal jitter), then the next server.
        let wait = l.poll_timeout().unwrap() - deadline;
        assert!(
            wait >= c.reconnect_base / 2 && wait <= c.reconnect_base,
            "{wait:?}"
        );
        assert_eq!(l.poll_connect(deadline), None);
        assert_eq!(l.poll_connect(deadline + wait), Some(addr(2)));
    }

    #[test]
    fn pings_until_too_many_go_unanswered() {
        let t0 = Instant::now();
        let c = cfg();
        let mut l = Link::new(&c, t0, 1);
        up(&mut l, t0);
        let mut now = t0;
        now += c.ping_interval;
        assert_eq!(l.poll_timeout(), Some(now));
        assert_eq!(l.on_timeout(now), Tick::Ping { missed: false });
        assert_eq!(l.on_timeout(now), Tick::Idle, "not twice");
        assert!(!l.on_pong(now), "a PONG once up completes nothing");
        now += c.ping_interval;
        assert_eq!(l.on_timeout(now), Tick::Ping { missed: false });
        now += c.ping_interval;
        assert_eq!(l.on_timeout(now), Tick::Ping { missed: true });
        now += c.ping_interval;
        assert_eq!(l.on_timeout(now), Tick::Stale);
        assert!(l.wants_close());
        let end = l.disconnected(now).unwrap();
        assert_eq!(end.reason, DisconnectReason::StaleConnection);
        assert!(end.was_up);
        assert_eq!(
            l.poll_timeout(),
            Some(now),
            "a stable link: the next server at once"
        );
    }

    #[test]
    fn a_short_link_backs_off_like_a_failure() {
        let t0 = Instant::now();
        let mut l = Link::new(&cfg(), t0, 1);
        up(&mut l, t0);
        let now = t0 + STABLE_LINK - Duration::from_millis(1);
        assert!(l.disconnected(now).unwrap().was_up);
        assert!(l.poll_timeout().unwrap() > now);
    }

    #[test]
    fn lame_duck_waits_its_jitter_then_drains_then_leaves() {
        let t0 = Instant::now();
        let c = NatsConfig {
            lame_duck_jitter: Duration::from_secs(2),
            ping_interval: Duration::from_secs(60),
            ..cfg()
        };
        let mut l = Link::new(&c, t0, 5);
        up(&mut l, t0);
        assert_eq!(l.on_info(t0, false, true), InfoStep::LameDuck);
        assert_eq!(l.on_info(t0, false, true), InfoStep::Nothing, "noted once");
        let at = l.poll_timeout().unwrap();
        assert!(at <= t0 + c.lame_duck_jitter);
        assert!(l.writes_direct(), "publishes flow until the move");
        l.on_timeout(at);
        assert!(l.draining() && !l.writes_direct() && !l.wants_close());
        assert_eq!(l.poll_timeout(), Some(at + LAME_DUCK_DRAIN));
        l.on_timeout(at + LAME_DUCK_DRAIN);
        assert!(l.wants_close());
        let end = l.disconnected(at + LAME_DUCK_DRAIN).unwrap();
        assert_eq!(end.reason, DisconnectReason::LameDuck);
        assert_eq!(l.poll_connect(at + LAME_DUCK_DRAIN), Some(addr(2)));
    }

    #[test]
    fn info_before_the_handshake_can_refuse_it() {
        let t0 = Instant::now();
        let mut l = Link::new(&cfg(), t0, 1);
        l.poll_connect(t0).unwrap();
        l.connected();
        assert_eq!(l.on_info(t0, true, false), InfoStep::Nothing);
        assert!(l.wants_close());
        assert_eq!(
            l.disconnected(t0).unwrap().reason,
            DisconnectReason::TlsRequired
        );
        let t1 = l.poll_timeout().unwrap();
        l.poll_connect(t1).unwrap();
        l.connected();
        assert_eq!(l.on_info(t1, false, true), InfoStep::LameDuck);
        assert!(l.wants_close());
    }

    #[test]
    fn close_is_final_with_or_without_a_socket() {
        let t0 = Instant::now();
        let mut l = Link::new(&cfg(), t0, 1);
        assert!(l.close(), "no socket: closed at once");
        assert!(l.is_closed());
        assert_eq!(l.poll_timeout(), None);
        assert_eq!(l.poll_connect(t0), None);
        assert_eq!(l.disconnected(t0), None);

        let mut l = Link::new(&cfg(), t0, 1);
        up(&mut l, t0);
        l.close_link(DisconnectReason::OutputOverflow);
        assert!(!l.close(), "a socket to close first");
        let end = l.disconnected(t0).unwrap();
        assert_eq!(end.reason, DisconnectReason::Closed, "close() wins");
        assert!(l.is_closed());
        assert_eq!(l.poll_connect(t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn stale_events_change_nothing() {
        let t0 = Instant::now();
        let mut l = Link::new(&cfg(), t0, 1);
        assert!(!l.connected());
        assert!(!l.on_pong(t0));
        assert_eq!(l.on_info(t0, false, true), InfoStep::Nothing);
        assert_eq!(l.disconnected(t0), None);
        l.close_link(DisconnectReason::Io);
        assert_eq!(l.state(), NatsState::Waiting);
    }
}
