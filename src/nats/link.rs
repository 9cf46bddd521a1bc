//! [`NatsLink`]: a [`NatsClient`] on a mio [`TcpStream`], driven by the host's loop through
//! its [`Registry`] and one [`Token`].

use std::io::{self, Read, Write};
use std::time::Instant;

use log::debug;
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::client::{NatsClient, NatsError, NatsMsg};

/// Bytes read per readiness event (or timeout) before other sources get a turn. The link
/// then asks, through [`NatsLink::poll_timeout`], to be called again at once: mio is
/// edge-triggered, and a subscriber that stops reading makes the server stall publishers.
pub const READ_BUDGET: usize = 256 * 1024;
/// Size of one `read` (the link's one receive buffer, allocated once).
pub const READ_CHUNK: usize = 64 * 1024;
/// Most connection attempts started in one call (a refused connect schedules the next with
/// a back-off, so this is only a guard).
const CONNECTS_PER_CALL: usize = 4;

/// The mio adapter. See the [module docs](super) for how a host drives it.
pub struct NatsLink {
    client: NatsClient,
    token: Token,
    stream: Option<TcpStream>,
    /// The non-blocking connect has not completed yet.
    connecting: bool,
    /// The interest registered for `stream`.
    interest: Option<Interest>,
    /// The last read stopped at READ_BUDGET, not WouldBlock.
    read_more: bool,
    buf: Vec<u8>,
    /// An instant in the past: "call me at once".
    epoch: Instant,
    stopped: bool,
}

impl std::fmt::Debug for NatsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLink")
            .field("token", &self.token)
            .field("socket", &self.stream.is_some())
            .field("connecting", &self.connecting)
            .field("read_more", &self.read_more)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl NatsLink {
    /// Wrap `client`; `token` is the one token the host gives the link. Nothing is opened
    /// until the first [`handle_timeout`](Self::handle_timeout) (its
    /// [`poll_timeout`](Self::poll_timeout) is due at once).
    pub fn new(client: NatsClient, token: Token, now: Instant) -> Self {
        NatsLink {
            client,
            token,
            stream: None,
            connecting: false,
            interest: None,
            read_more: false,
            buf: vec![0; READ_CHUNK],
            epoch: now,
            stopped: false,
        }
    }

    /// The state machine (events, stats, state).
    pub fn client(&self) -> &NatsClient {
        &self.client
    }

    /// The state machine, to publish or subscribe. Output is written by the next
    /// [`handle_timeout`](Self::handle_timeout), which [`poll_timeout`](Self::poll_timeout)
    /// then asks for at once, or by [`flush`](Self::flush).
    pub fn client_mut(&mut self) -> &mut NatsClient {
        &mut self.client
    }

    /// Is `token` the link's?
    pub fn owns(&self, token: Token) -> bool {
        token == self.token
    }

    /// Handle a readiness event. Events for other tokens, stale events (a socket since
    /// replaced) and spurious ones are harmless.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        event: &Event,
        now: Instant,
        on_msg: &mut dyn FnMut(NatsMsg<'_>),
    ) {
        self.handle_ready(
            registry,
            event.token(),
            event.is_readable() || event.is_read_closed() || event.is_error(),
            event.is_writable() || event.is_write_closed(),
            now,
            on_msg,
        );
    }

    /// [`handle_event`](Self::handle_event) from plain flags.
    pub fn handle_ready(
        &mut self,
        registry: &Registry,
        token: Token,
        readable: bool,
        writable: bool,
        now: Instant,
        on_msg: &mut dyn FnMut(NatsMsg<'_>),
    ) {
        if !self.owns(token) || self.stopped || self.stream.is_none() {
            return;
        }
        if self.connecting {
            if !(readable || writable) {
                return;
            }
            match self.connect_result() {
                Ok(false) => return, // still in progress (a spurious event)
                Ok(true) => {
                    self.connecting = false;
                    self.client.handle_connected(now);
                }
                Err(e) => {
                    debug!("nats: connect failed: {e}");
                    self.drop_stream(registry, now);
                }
            }
        }
        if !self.connecting && self.stream.is_some() {
            self.read(registry, now, on_msg);
        }
        self.drive(registry, now);
    }

    /// Run the client's timers, continue a read cut short by the budget, close what the
    /// client wants closed, start a due connection attempt, write pending output. Harmless
    /// when called early.
    pub fn handle_timeout(
        &mut self,
        registry: &Registry,
        now: Instant,
        on_msg: &mut dyn FnMut(NatsMsg<'_>),
    ) {
        if self.stopped {
            return;
        }
        self.client.handle_timeout(now);
        if self.read_more && !self.connecting && self.stream.is_some() {
            self.read(registry, now, on_msg);
        }
        self.drive(registry, now);
    }

    /// [`NatsClient::publish`], writing to the socket at once when the transmit buffer is full
    /// (so a burst queues, and drops, only when the kernel will not take more). Small
    /// publishes are batched until the next turn.
    pub fn publish(
        &mut self,
        registry: &Registry,
        now: Instant,
        subject: &str,
        payload: &[u8],
    ) -> Result<(), NatsError> {
        if self.client.pending_messages() > 0 && !self.stopped {
            self.drive(registry, now);
        }
        let r = self.client.publish(subject, payload);
        if self.client.pending_messages() > 0 && !self.stopped {
            self.drive(registry, now);
        }
        r
    }

    /// Write pending output now (after publishing, instead of waiting for the next turn).
    pub fn flush(&mut self, registry: &Registry, now: Instant) {
        if !self.stopped {
            self.drive(registry, now);
        }
    }

    /// When the host must call [`handle_timeout`](Self::handle_timeout): an instant in the
    /// past means "at once" (unread input, output to write, a socket to close).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        let at_once = self.read_more
            || self.client.wants_close()
            || (self.stream.is_some()
                && !self.connecting
                && !self.client.transmit().is_empty()
                && !self.interest.is_some_and(|i| i.is_writable()));
        if at_once {
            return Some(self.epoch);
        }
        self.client.poll_timeout()
    }

    /// Close the socket, deregister it and stop the client for good. Idempotent.
    pub fn shutdown(&mut self, registry: &Registry, now: Instant) {
        if self.stopped {
            return;
        }
        self.client.close();
        // Best effort: what the kernel takes now is sent before the FIN.
        if let Some(s) = &mut self.stream
            && !self.connecting
        {
            let t = self.client.transmit();
            if !t.is_empty()
                && let Ok(n) = s.write(t)
            {
                self.client.advance_transmit(n);
            }
        }
        self.drop_stream(registry, now);
        self.stopped = true;
    }

    /// `Ok(true)` connected, `Ok(false)` still in progress.
    fn connect_result(&mut self) -> io::Result<bool> {
        let Some(s) = &self.stream else {
            return Ok(false);
        };
        if let Some(e) = s.take_error()? {
            return Err(e);
        }
        match s.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn read(&mut self, registry: &Registry, now: Instant, on_msg: &mut dyn FnMut(NatsMsg<'_>)) {
        self.read_more = false;
        let mut total = 0;
        let mut gone = false;
        if let Some(s) = &mut self.stream {
            loop {
                if total >= READ_BUDGET {
                    self.read_more = true;
                    break;
                }
                match s.read(&mut self.buf) {
                    Ok(0) => {
                        gone = true;
                        break;
                    }
                    Ok(n) => {
                        total += n;
                        let bytes = self.buf.get(..n).unwrap_or_default();
                        self.client.handle_input(now, bytes, on_msg);
                        if self.client.wants_close() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        debug!("nats: read: {e}");
                        gone = true;
                        break;
                    }
                }
            }
        }
        if gone {
            self.drop_stream(registry, now);
        }
    }

    /// Close, connect, write and set interest as the client's state requires.
    fn drive(&mut self, registry: &Registry, now: Instant) {
        for _ in 0..CONNECTS_PER_CALL {
            if self.client.wants_close() {
                self.drop_stream(registry, now);
            }
            if self.stream.is_some() {
                break;
            }
            let Some(addr) = self.client.poll_connect(now) else {
                break;
            };
            match TcpStream::connect(addr) {
                Ok(mut s) => {
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = registry.register(&mut s, self.token, interest) {
                        debug!("nats: register: {e}");
                        self.client.handle_disconnected(now);
                        continue;
                    }
                    let _ = s.set_nodelay(true);
                    self.stream = Some(s);
                    self.connecting = true;
                    self.interest = Some(interest);
                    break;
                }
                Err(e) => {
                    debug!("nats: connect to {addr}: {e}");
                    self.client.handle_disconnected(now);
                }
            }
        }
        if self.stream.is_none() || self.connecting {
            return;
        }
        let mut failed = false;
        if let Some(s) = &mut self.stream {
            loop {
                let t = self.client.transmit();
                if t.is_empty() {
                    break;
                }
                match s.write(t) {
                    Ok(0) => {
                        failed = true;
                        break;
                    }
                    Ok(n) => self.client.advance_transmit(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        debug!("nats: write: {e}");
                        failed = true;
                        break;
                    }
                }
            }
        }
        // Draining (lame duck) may have finished with that write.
        if failed || self.client.wants_close() {
            self.drop_stream(registry, now);
            return self.drive(registry, now);
        }
        let want = if self.client.transmit().is_empty() {
            Interest::READABLE
        } else {
            Interest::READABLE | Interest::WRITABLE
        };
        if self.interest != Some(want)
            && let Some(s) = &mut self.stream
        {
            if let Err(e) = registry.reregister(s, self.token, want) {
                debug!("nats: reregister: {e}");
                self.drop_stream(registry, now);
            } else {
                self.interest = Some(want);
            }
        }
    }

    fn drop_stream(&mut self, registry: &Registry, now: Instant) {
        if let Some(mut s) = self.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        self.connecting = false;
        self.interest = None;
        self.read_more = false;
        self.client.handle_disconnected(now);
    }
}
