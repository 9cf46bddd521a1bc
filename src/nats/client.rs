//! [`NatsClient`]: the sans-IO NATS client. No sockets, no clock reads, RNG seeded by the
//! caller. See the [module docs](super) for the call order and `docs/nats-client.md` for the
//! states, timers and bounds.
//!
//! The client routes between parts that each own their state:
//!
//! * [`link`]: the connection state machine (attempt, handshake, PINGs, lame duck, close)
//!   with the server list and the reconnect back-off ([`servers`]);
//! * [`subs`]: the subscriptions, re-sent in every handshake;
//! * [`outbound`]: the transmit buffer and the bounded publish queue;
//! * [`inbound`]: the parser and what a `MSG` or `-ERR` means;
//! * [`events`], [`errors`], [`config`]: what the host sees, is refused and can say.

mod config;
mod errors;
mod events;
mod inbound;
mod link;
mod outbound;
mod servers;
mod subs;

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use super::json::{self, ServerInfo};
use super::proto::{self, ABS_MAX_PAYLOAD, RawMsg, ServerOp};
use events::EventQueue;
use inbound::{Inbound, Next, Undeliverable};
use link::{InfoStep, Link, Tick};
use outbound::Outbound;
use subs::Subscriptions;

pub use config::{MAX_CREDENTIAL_LEN, MAX_NAME_LEN, NatsAuth, NatsConfig, NatsConfigError};
pub use errors::{DisconnectReason, NatsError};
pub use events::{MAX_EVENTS, NatsEvent, NatsMsg, NatsState, NatsStats};
pub use link::{LAME_DUCK_DRAIN, STABLE_LINK};
pub use servers::MAX_SERVERS;
pub use subs::MAX_SUBSCRIPTIONS;

/// The sans-IO NATS client. See the [module docs](super).
pub struct NatsClient {
    cfg: NatsConfig,
    link: Link,
    inbound: Inbound,
    /// The current server's latest `INFO`, while a link exists.
    info: Option<ServerInfo>,
    subs: Subscriptions,
    out: Outbound,
    events: EventQueue,
    stats: NatsStats,
}

/// No buffers: the transmit buffer holds the CONNECT line, credentials included.
impl fmt::Debug for NatsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsClient")
            .field("state", &self.state())
            .field("server", &self.link.server())
            .field("servers", &self.link.servers().len())
            .field("subscriptions", &self.subs.len())
            .field("transmit_bytes", &self.out.held())
            .field("pending_bytes", &self.out.pending_bytes())
            .field("config", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl NatsClient {
    /// A client that will try its first server at once. `seed` drives the jitter.
    pub fn new(cfg: NatsConfig, now: Instant, seed: u64) -> Result<Self, NatsConfigError> {
        cfg.validate()?;
        Ok(NatsClient {
            link: Link::new(&cfg, now, seed),
            out: Outbound::new(cfg.max_transmit_bytes, cfg.max_pending_bytes),
            cfg,
            inbound: Inbound::default(),
            info: None,
            subs: Subscriptions::default(),
            events: EventQueue::default(),
            stats: NatsStats::default(),
        })
    }

    // ------------------------------------------------------------ connection lifecycle

    /// If an attempt is due, the server to open a TCP connection to now; then report
    /// [`handle_connected`](Self::handle_connected) or
    /// [`handle_disconnected`](Self::handle_disconnected).
    #[must_use]
    pub fn poll_connect(&mut self, now: Instant) -> Option<SocketAddr> {
        let server = self.link.poll_connect(now)?;
        self.stats.connect_attempts += 1;
        Some(server)
    }

    /// The TCP connection from [`poll_connect`](Self::poll_connect) is established.
    pub fn handle_connected(&mut self, _now: Instant) {
        if self.link.connected() {
            self.inbound.reset();
            self.out.clear_transmit();
        }
    }

    /// The socket is gone: EOF, an error, a refused connect, or the host closed it after
    /// [`wants_close`](Self::wants_close). Schedules the next attempt.
    pub fn handle_disconnected(&mut self, now: Instant) {
        let Some(end) = self.link.disconnected(now) else {
            return;
        };
        self.stats.lost_transmit_bytes += self.out.end_link() as u64;
        self.inbound.reset();
        self.info = None;
        if end.was_up {
            self.stats.disconnects += 1;
        } else {
            self.stats.connect_failures += 1;
        }
        let closed = end.reason == DisconnectReason::Closed;
        if let Some(server) = end.server {
            let reason = end.reason;
            self.push_event(if end.was_up {
                NatsEvent::Disconnected { server, reason }
            } else {
                NatsEvent::ConnectFailed { server, reason }
            });
        }
        if closed {
            self.out.drop_queue();
        }
    }

    /// The client wants the host to close the socket now (dead link, fatal `-ERR`, protocol
    /// error, lame duck, timeout, [`close`](Self::close)); the host then calls
    /// [`handle_disconnected`](Self::handle_disconnected).
    pub fn wants_close(&self) -> bool {
        self.link.wants_close()
    }

    /// Stop for good: the link (if any) is to be closed, no reconnection follows, queued
    /// publishes are discarded.
    pub fn close(&mut self) {
        if self.link.close() {
            self.out.drop_queue();
        }
    }

    /// Bytes read from the socket. Messages are handed to `on_msg` as they complete (they
    /// borrow `bytes` or the parser's buffer: copy what you keep). The callback cannot call
    /// back into the client; queue what it wants to publish and do it afterwards.
    pub fn handle_input(
        &mut self,
        now: Instant,
        bytes: &[u8],
        on_msg: &mut dyn FnMut(NatsMsg<'_>),
    ) {
        if !self.link.is_open() {
            return;
        }
        let mut inbound = std::mem::take(&mut self.inbound);
        let parsed = inbound.feed(bytes, &mut |op| {
            self.on_op(now, op, on_msg);
            // An INFO may have changed max_payload: it bounds the next MSG already.
            Next {
                max_payload: self.out.max_payload(),
                more: self.link.is_open(),
            }
        });
        self.inbound = inbound;
        if let Err(e) = parsed {
            self.stats.protocol_errors += 1;
            self.link.close_link(DisconnectReason::Protocol(e));
        }
    }

    fn on_op(&mut self, now: Instant, op: ServerOp<'_>, on_msg: &mut dyn FnMut(NatsMsg<'_>)) {
        match op {
            ServerOp::Info(text) => self.on_info(now, text),
            ServerOp::Msg(m) => self.on_msg(m, on_msg),
            ServerOp::HMsg { .. } => self.stats.dropped_hmsg += 1,
            ServerOp::Ping => {
                self.stats.pings_answered += 1;
                self.push_control(proto::PONG);
            }
            ServerOp::Pong => self.on_pong(now),
            ServerOp::Ok => {}
            ServerOp::Err(message) => self.on_err(message),
        }
    }

    fn on_msg(&mut self, m: RawMsg<'_>, on_msg: &mut dyn FnMut(NatsMsg<'_>)) {
        if self.link.awaiting_info() {
            self.stats.protocol_errors += 1;
            return self
                .link
                .close_link(DisconnectReason::Unexpected("MSG before INFO"));
        }
        match inbound::deliverable(m, self.subs.contains(m.sid)) {
            Ok(msg) => {
                self.stats.msgs_in += 1;
                self.stats.bytes_in += msg.payload.len() as u64;
                on_msg(msg);
            }
            Err(Undeliverable::UnknownSid) => self.stats.dropped_unknown_sid += 1,
            Err(Undeliverable::BadSubject) => self.stats.dropped_bad_subject += 1,
        }
    }

    fn on_info(&mut self, now: Instant, text: &str) {
        let info = match json::parse_info(text) {
            Ok(i) => i,
            Err(e) => {
                self.stats.protocol_errors += 1;
                return self.link.close_link(DisconnectReason::BadInfo(e));
            }
        };
        self.stats.skipped_urls += u64::from(info.skipped_urls);
        if self.cfg.discover {
            self.merge_servers(&info.connect_urls);
        }
        if let Some(mp) = info.max_payload {
            let mp = usize::try_from(mp)
                .unwrap_or(usize::MAX)
                .min(ABS_MAX_PAYLOAD);
            self.out.set_max_payload(mp);
        }
        let server = self.link.server();
        match self.link.on_info(now, info.tls_required, info.ldm) {
            InfoStep::Handshake => {
                self.out
                    .write_handshake(&self.cfg.name, &self.cfg.auth, &self.subs);
                self.stats.pings_sent += 1;
            }
            InfoStep::LameDuck => {
                self.stats.lame_duck += 1;
                if let Some(server) = server {
                    self.push_event(NatsEvent::LameDuck { server });
                }
            }
            InfoStep::Nothing => {}
        }
        self.info = Some(info);
    }

    fn merge_servers(&mut self, urls: &[SocketAddr]) {
        let m = self.link.merge_servers(urls);
        self.stats.skipped_urls += m.skipped as u64;
        self.stats.servers_over_cap += m.over_cap as u64;
        if m.added > 0 {
            self.stats.discovered_servers += m.added as u64;
            self.push_event(NatsEvent::DiscoveredServers { added: m.added });
        }
    }

    fn on_pong(&mut self, now: Instant) {
        self.stats.pongs_received += 1;
        if !self.link.on_pong(now) {
            return;
        }
        if self.stats.connects > 0 {
            self.stats.reconnects += 1;
        }
        self.stats.connects += 1;
        if let Some(server) = self.link.server() {
            self.push_event(NatsEvent::Connected { server });
        }
        self.refill();
    }

    fn on_err(&mut self, message: &str) {
        self.stats.server_errors += 1;
        let fatal = inbound::is_fatal(message);
        if let Some(server) = self.link.server() {
            self.push_event(NatsEvent::ServerError {
                server,
                message: message.to_string(),
                fatal,
            });
        }
        if fatal {
            self.stats.fatal_server_errors += 1;
            self.link
                .close_link(DisconnectReason::ServerError(message.to_string()));
        }
    }

    // ------------------------------------------------------------ timers

    /// When [`handle_timeout`](Self::handle_timeout) (or, while waiting,
    /// [`poll_connect`](Self::poll_connect)) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.link.poll_timeout()
    }

    /// Run what is due: connect timeout, our PING (or declare the link dead), the lame-duck
    /// move. Harmless when called early or repeatedly.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.link.on_timeout(now) {
            Tick::Idle => {}
            Tick::Ping { missed } => {
                self.stats.pongs_missed += u64::from(missed);
                self.stats.pings_sent += 1;
                self.push_control(proto::PING);
            }
            Tick::Stale => {
                self.stats.pongs_missed += 1;
                self.stats.stale_connections += 1;
            }
        }
        self.check_drained();
    }

    // ------------------------------------------------------------ output

    /// Bytes to write to the socket, in order.
    pub fn transmit(&self) -> &[u8] {
        self.out.transmit()
    }

    /// `n` bytes of [`transmit`](Self::transmit) were written.
    pub fn advance_transmit(&mut self, n: usize) {
        self.out.advance(n);
        self.refill();
        self.check_drained();
    }

    /// The most [`transmit`](Self::transmit) holds: `max_transmit_bytes` of publishes (or
    /// one publish, when larger: up to the server's `max_payload`), plus the handshake and a
    /// headroom for control operations. A server that does not read while PINGing us (its
    /// PONGs pile up) is disconnected at this limit.
    pub fn transmit_limit(&self) -> usize {
        self.out.limit()
    }

    /// A control operation, on a socket that takes them; one past the limit closes the
    /// link (the server does not read).
    fn push_control(&mut self, bytes: &[u8]) {
        if self.link.is_open() && self.out.control(bytes).is_err() {
            self.overflow();
        }
    }

    fn overflow(&mut self) {
        self.stats.output_overflows += 1;
        self.link.close_link(DisconnectReason::OutputOverflow);
    }

    /// Move queued publishes to the transmit buffer while it has room.
    fn refill(&mut self) {
        if self.link.writes_direct() {
            self.out.flush_queue(&mut self.stats);
        }
        self.out.trim_queue();
    }

    /// Lame duck: once the transmit buffer has drained, leave.
    fn check_drained(&mut self) {
        if self.link.draining() && self.out.held() == 0 {
            self.link.close_link(DisconnectReason::LameDuck);
        }
    }

    // ------------------------------------------------------------ application calls

    /// Publish `payload` on `subject`. Goes to the transmit buffer when the link is up and the
    /// buffer has room, else to the bounded queue (dropping the oldest queued publishes to
    /// make room, counted), which is flushed after the next handshake.
    pub fn publish(&mut self, subject: &str, payload: &[u8]) -> Result<(), NatsError> {
        self.publish_inner(subject, None, payload)
    }

    /// [`publish`](Self::publish) with a reply subject.
    pub fn publish_with_reply(
        &mut self,
        subject: &str,
        reply: &str,
        payload: &[u8],
    ) -> Result<(), NatsError> {
        self.publish_inner(subject, Some(reply), payload)
    }

    fn publish_inner(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
    ) -> Result<(), NatsError> {
        if self.link.is_closed() {
            return Err(NatsError::Closed);
        }
        let direct = self.link.writes_direct();
        self.out
            .publish((subject, reply), payload, direct, &mut self.stats)
    }

    /// Subscribe to `subject` (wildcards allowed). Remembered: re-sent after every reconnect.
    pub fn subscribe(&mut self, subject: &str) -> Result<u64, NatsError> {
        self.subscribe_inner(subject, None)
    }

    /// Subscribe as a member of queue group `queue`.
    pub fn subscribe_queue(&mut self, subject: &str, queue: &str) -> Result<u64, NatsError> {
        self.subscribe_inner(subject, Some(queue))
    }

    fn subscribe_inner(&mut self, subject: &str, queue: Option<&str>) -> Result<u64, NatsError> {
        if self.link.is_closed() {
            return Err(NatsError::Closed);
        }
        let sid = self.subs.add(subject, queue)?;
        if self.link.handshake_sent() && self.out.sub(subject, queue, sid).is_err() {
            self.overflow();
        }
        Ok(sid)
    }

    /// Drop a subscription (unknown ids are ignored).
    pub fn unsubscribe(&mut self, sid: u64) {
        if self.subs.remove(sid) && self.link.handshake_sent() && self.out.unsub(sid).is_err() {
            self.overflow();
        }
    }

    // ------------------------------------------------------------ observation

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<NatsEvent> {
        self.events.pop()
    }

    fn push_event(&mut self, e: NatsEvent) {
        if self.events.push(e) {
            self.stats.events_dropped += 1;
        }
    }

    /// Where the client is.
    pub fn state(&self) -> NatsState {
        self.link.state()
    }

    /// Counters.
    pub fn stats(&self) -> &NatsStats {
        &self.stats
    }

    /// Every server the client may try: the configured ones, then the discovered ones.
    pub fn servers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.link.servers().iter()
    }

    /// The server of the established link.
    pub fn connected_server(&self) -> Option<SocketAddr> {
        self.link.connected_server()
    }

    /// The current server's `INFO` (from its latest `INFO`), while a link exists.
    pub fn server_info(&self) -> Option<&ServerInfo> {
        self.info.as_ref()
    }

    /// The `max_payload` in force (the latest a server announced, else the NATS default).
    pub fn max_payload(&self) -> usize {
        self.out.max_payload()
    }

    /// Bytes of publishes waiting in the queue: at most `max_pending_bytes`, or one publish
    /// when that is larger.
    pub fn pending_bytes(&self) -> usize {
        self.out.pending_bytes()
    }

    /// Publishes waiting in the queue.
    pub fn pending_messages(&self) -> usize {
        self.out.pending_messages()
    }

    /// Drop every publish waiting in the queue (counted in `dropped_queue_full`); returns
    /// how many. What is already in the transmit buffer stays. For a host whose queued
    /// messages have gone stale (federation: peers have declared this relay lost).
    pub fn discard_pending(&mut self) -> usize {
        let n = self.out.discard_pending();
        self.stats.dropped_queue_full += n as u64;
        n
    }

    /// Active subscriptions: (sid, subject).
    pub fn subscriptions(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        self.subs.iter()
    }

    /// The parser's buffer capacity (memory held for partial input).
    pub fn input_buffer_capacity(&self) -> usize {
        self.inbound.capacity()
    }
}

#[cfg(test)]
mod tests;
