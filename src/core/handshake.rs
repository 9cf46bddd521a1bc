//! The handshake before a session exists (protocol.md §3): HELLO → COOKIE, KEY_REQUEST →
//! PUBLIC_KEY, REGISTER → queued RSA work → a [`Registration`].
//!
//! Cheapest check first, state change last: a HELLO costs one HMAC and no state; a
//! KEY_REQUEST or REGISTER is dropped unless its cookie verifies (MAC, age, bound to the
//! sender's address); a REGISTER must then be unused, of the modulus size, fit under
//! `max_clients`, the pending queue and the handshake budget before it is queued; only then
//! is its cookie marked used. The RSA decryption runs later ([`Handshake::decrypt`]), a few
//! per loop turn, so relaying keeps priority.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::Input;
use super::outbox::Outbox;
use super::ratelimit::{HandshakeBudget, SourceKey, source_key};
use super::stats::{DropReason, Stats, Telemetry};
use crate::config::Config;
use crate::crypto::cookie::{CookieError, CookieJar};
use crate::crypto::fernet::FernetKey;
use crate::crypto::key::ServerKey;
use crate::crypto::rng::Rng;
use crate::wire::{self, COOKIE_LEN, MAX_NAME, Outer, RejectCode, TLV_HEADER};

/// A REGISTER that passed every cheap check and waits for its RSA decryption.
#[derive(Debug)]
pub(crate) struct PendingReg {
    pub(crate) from: SocketAddr,
    /// Protocol version bound in the REGISTER's cookie.
    pub(crate) version: u16,
    pub(crate) ciphertext: Vec<u8>,
    /// When it arrived (monitoring: the handshake-duration histogram).
    pub(crate) arrived: Instant,
}

impl PendingReg {
    /// Length of the REGISTER datagram it came in (for the anti-amplification cap).
    pub(crate) fn request_len(&self) -> usize {
        self.ciphertext.len() + TLV_HEADER + COOKIE_LEN
    }
}

/// A decrypted, validated registration: the relay turns it into a session.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) from: SocketAddr,
    pub(crate) version: u16,
    pub(crate) key: FernetKey,
    pub(crate) name: Option<String>,
}

/// Why a queued registration was refused (counted, and answered with a REJECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) drop: DropReason,
    pub(crate) code: RejectCode,
    pub(crate) reason: &'static str,
}

/// What the relay knows about the sender of a REGISTER when it checks it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RegisterContext {
    /// The address already has a session (a re-registration).
    pub(crate) has_session: bool,
    /// The relay is at `max_clients`.
    pub(crate) full: bool,
    /// The sender's source is at `max_clients_per_source`.
    pub(crate) source_full: bool,
    /// The relay key's modulus size: the only valid ciphertext length.
    pub(crate) modulus_len: usize,
}

/// NO_SESSION notices per second, all addresses together (each address: one a second).
const NOTICES_PER_SEC: u32 = 100;

/// Cookies, the single-use set, the RSA budget and the queue of pending registrations.
#[derive(Debug)]
pub(crate) struct Handshake {
    cookies: CookieJar,
    used: HashSet<[u8; 16]>,
    used_order: VecDeque<([u8; 16], Instant)>,
    budget: HandshakeBudget,
    /// Rate of NO_SESSION notices, per source and in total.
    notices: HandshakeBudget,
    pending: VecDeque<PendingReg>,
    /// Places in `pending` per source.
    queued: HashMap<SourceKey, usize>,
    max_pending: usize,
    cookie_lifetime: Duration,
    cookie_rotation: Duration,
    admission: Option<HashMap<String, String>>,
    start: Instant,
}

/// Queue a REJECT no larger than 3× the request (anti-amplification, protocol.md §8).
pub(crate) fn reject(
    out: &mut Outbox,
    stats: &mut Stats,
    to: SocketAddr,
    code: RejectCode,
    reason: &str,
    request_len: usize,
) {
    let budget = (request_len * 3).saturating_sub(TLV_HEADER + 2);
    let mut reason = &reason.as_bytes()[..reason.len().min(budget).min(wire::MAX_REJECT_REASON)];
    while std::str::from_utf8(reason).is_err() {
        reason = &reason[..reason.len() - 1];
    }
    out.push(
        to,
        &Outer::Reject {
            code: code as u16,
            reason,
        },
        stats,
    );
}

impl Handshake {
    pub(crate) fn new(cfg: &Config, rng: &mut Rng, now: Instant) -> Self {
        let mut secret = || {
            let mut s = [0u8; 32];
            rng.fill(&mut s);
            s
        };
        let (s1, s2) = (secret(), secret());
        Handshake {
            cookies: CookieJar::new(
                s1,
                s2,
                cfg.cookie_rotation.as_millis() as u64,
                cfg.cookie_lifetime.as_millis() as u64,
            ),
            used: HashSet::new(),
            used_order: VecDeque::new(),
            budget: HandshakeBudget::new(
                cfg.handshakes_per_sec,
                cfg.handshakes_per_source_per_sec,
                now,
                rng.next_u64(),
            ),
            notices: HandshakeBudget::new(NOTICES_PER_SEC, 1, now, rng.next_u64()),
            pending: VecDeque::new(),
            queued: HashMap::new(),
            max_pending: cfg.max_pending_registrations,
            cookie_lifetime: cfg.cookie_lifetime,
            cookie_rotation: cfg.cookie_rotation,
            admission: cfg.admission.clone(),
            start: now,
        }
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_millis() as u64
    }

    /// Registrations waiting for RSA.
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// How often [`Handshake::rotate`] must run.
    pub(crate) fn rotation(&self) -> Duration {
        self.cookie_rotation
    }

    /// A sealed datagram or fragment from an address without a session: count it and, at a
    /// bounded rate, say so (a 4-byte NO_SESSION, smaller than anything that earns it), so a
    /// client whose session is gone (a timeout, a relay restart) registers again.
    pub(crate) fn no_session(&mut self, inp: Input, out: &mut Outbox, tel: &mut Telemetry) {
        tel.dropped(inp.now, inp.from, DropReason::UnknownSender);
        if self.notices.try_spend(inp.from.ip(), inp.now).is_ok()
            && out.push(inp.from, &Outer::NoSession, &mut tel.stats)
        {
            tel.stats.no_session_notices += 1;
        }
    }

    /// HELLO: answer COOKIE (or REJECT(1)); no state, no RSA.
    pub(crate) fn on_hello(
        &self,
        inp: Input,
        (min, max): (u16, u16),
        out: &mut Outbox,
        tel: &mut Telemetry,
    ) {
        let Input { now, from, len } = inp;
        let lo = min.max(wire::VERSION_MIN);
        let hi = max.min(wire::VERSION_MAX);
        if lo > hi {
            tel.dropped(now, from, DropReason::UnsupportedVersion);
            let reason = format!(
                "relay speaks versions {}..={}",
                wire::VERSION_MIN,
                wire::VERSION_MAX
            );
            return reject(
                out,
                &mut tel.stats,
                from,
                RejectCode::UnsupportedVersion,
                &reason,
                len,
            );
        }
        // hi <= VERSION_MAX, which fits the cookie's version byte.
        let cookie = self.cookies.mint(from, self.now_ms(now), hi as u8);
        let answer = Outer::Cookie {
            version: hi,
            cookie: &cookie,
        };
        if out.push(from, &answer, &mut tel.stats) {
            tel.stats.cookies_sent += 1;
        }
    }

    /// Verify a cookie from `from`; on failure count it and answer REJECT(2).
    /// Returns the cookie's MAC (its single-use identity) and the version it binds.
    pub(crate) fn check_cookie(
        &self,
        inp: Input,
        cookie: &[u8; COOKIE_LEN],
        out: &mut Outbox,
        tel: &mut Telemetry,
    ) -> Option<([u8; 16], u16)> {
        let Input { now, from, len } = inp;
        match self.cookies.verify(from, cookie, self.now_ms(now)) {
            Ok((mac, version)) => Some((mac, u16::from(version))),
            Err(e) => {
                let d = match e {
                    CookieError::Expired => DropReason::ExpiredCookie,
                    CookieError::BadMac => DropReason::BadCookie,
                };
                tel.dropped(now, from, d);
                // Safe to answer: the REJECT is small and goes to whoever claims the address.
                let why = "bad or expired cookie: send HELLO";
                reject(out, &mut tel.stats, from, RejectCode::BadCookie, why, len);
                None
            }
        }
    }

    /// REGISTER: every cheap check, then queue it for RSA.
    pub(crate) fn on_register(
        &mut self,
        inp: Input,
        (cookie, ct): (&[u8; COOKIE_LEN], &[u8]),
        cx: RegisterContext,
        out: &mut Outbox,
        tel: &mut Telemetry,
    ) {
        let Some((mac, version)) = self.check_cookie(inp, cookie, out, tel) else {
            return;
        };
        let Input { now, from, len } = inp;
        let mut refuse = |tel: &mut Telemetry, d, code, why: &str| {
            tel.dropped(now, from, d);
            reject(out, &mut tel.stats, from, code, why, len);
        };
        if self.used.contains(&mac) {
            let why = "cookie already used: send HELLO";
            return refuse(tel, DropReason::CookieReused, RejectCode::CookieReused, why);
        }
        if ct.len() != cx.modulus_len {
            tel.stats.handshakes_failed += 1;
            let why = "ciphertext length != modulus size";
            let (d, code) = (DropReason::BadRegistration, RejectCode::BadRegistration);
            return refuse(tel, d, code, why);
        }
        // Full: say so before spending an RSA decryption (the cookie validated the address).
        // With admission names, a full relay still decrypts (within the budget): the
        // registrant may be a name whose older session it replaces (protocol.md §9); the
        // same checks run again once the name is known.
        let named = self.admission.is_some();
        if !cx.has_session && cx.full && !named {
            tel.stats.handshakes_failed += 1;
            let (d, code) = (DropReason::RelayFull, RejectCode::RelayFull);
            return refuse(tel, d, code, "relay full");
        }
        if !cx.has_session && cx.source_full && !named {
            tel.stats.handshakes_failed += 1;
            let (d, code) = (DropReason::SourceFull, RejectCode::RelayFull);
            return refuse(tel, d, code, "too many sessions from this address");
        }
        let victim = if self.pending.len() >= self.max_pending {
            match self.victim_for(from) {
                Some(i) => Some(i),
                None => return tel.dropped(now, from, DropReason::HandshakeQueueFull),
            }
        } else {
            None
        };
        // Taking another's place adds no RSA work: only the source's own budget is charged.
        let spent = match victim {
            Some(_) => self.budget.try_spend_replacing(from.ip(), now),
            None => self.budget.try_spend(from.ip(), now),
        };
        if spent.is_err() {
            return tel.dropped(now, from, DropReason::HandshakeBudget);
        }
        if let Some(evicted) = victim.and_then(|i| self.pending.remove(i)) {
            self.unqueue(&evicted);
            tel.dropped(now, evicted.from, DropReason::HandshakeQueueFull);
        }
        self.remember(now, mac);
        *self.queued.entry(source_key(from.ip())).or_default() += 1;
        self.pending.push_back(PendingReg {
            from,
            version,
            ciphertext: ct.to_vec(),
            arrived: now,
        });
    }

    /// A full queue is shared fairly between sources: a REGISTER from a source holding fewer
    /// places than another (by more than one) takes the newest place of the source holding
    /// the most. A flood from many addresses then cannot keep a newcomer out of the queue; its
    /// wait is bounded by the queue's length, not by luck (issue 12, finding 5). Returns the
    /// index of that place.
    fn victim_for(&self, from: SocketAddr) -> Option<usize> {
        let mine = self
            .queued
            .get(&source_key(from.ip()))
            .copied()
            .unwrap_or(0);
        let (&most, &n) = self.queued.iter().max_by_key(|&(_, n)| *n)?;
        if n <= mine + 1 {
            return None;
        }
        self.pending
            .iter()
            .rposition(|p| source_key(p.from.ip()) == most)
    }

    fn unqueue(&mut self, reg: &PendingReg) {
        let k = source_key(reg.from.ip());
        if let Some(n) = self.queued.get_mut(&k) {
            *n -= 1;
            if *n == 0 {
                self.queued.remove(&k);
            }
        }
    }

    fn remember(&mut self, now: Instant, mac: [u8; 16]) {
        // Forget cookies that can no longer verify anyway; the set stays bounded by the
        // handshake budget × cookie lifetime.
        let keep = self.cookie_lifetime + Duration::from_secs(1);
        while let Some(&(old, at)) = self.used_order.front() {
            if now.saturating_duration_since(at) <= keep {
                break;
            }
            self.used.remove(&old);
            self.used_order.pop_front();
        }
        self.used.insert(mac);
        self.used_order.push_back((mac, now));
    }

    /// The oldest registration waiting for RSA.
    pub(crate) fn pop_pending(&mut self) -> Option<PendingReg> {
        let reg = self.pending.pop_front()?;
        self.unqueue(&reg);
        Some(reg)
    }

    /// Forget every waiting registration (shutdown).
    pub(crate) fn clear_pending(&mut self) {
        self.pending.clear();
        self.queued.clear();
    }

    /// The expensive step: RSA-OAEP, then the Fernet key and the admission check.
    pub(crate) fn decrypt(
        &self,
        key: &ServerKey,
        reg: &PendingReg,
    ) -> Result<Registration, Refusal> {
        let refuse = |drop, code, reason| Refusal { drop, code, reason };
        let bad = |reason| {
            refuse(
                DropReason::BadRegistration,
                RejectCode::BadRegistration,
                reason,
            )
        };
        let plain = key
            .oaep_decrypt(&reg.ciphertext)
            .map_err(|_| bad("RSA-OAEP decryption failed"))?;
        let (key_text, suffix) = plain.split_at(plain.len().min(44));
        let fernet =
            FernetKey::from_base64(key_text).map_err(|_| bad("not a 44-byte Fernet key"))?;
        let name = self.admit(suffix).map_err(|()| {
            refuse(
                DropReason::NotAdmitted,
                RejectCode::NotAdmitted,
                "admission token missing or wrong",
            )
        })?;
        Ok(Registration {
            from: reg.from,
            version: reg.version,
            key: fernet,
            name,
        })
    }

    /// Check the optional `\n name token` suffix against the admission list.
    fn admit(&self, suffix: &[u8]) -> Result<Option<String>, ()> {
        let Some(list) = &self.admission else {
            return Ok(None);
        };
        let rest = suffix.strip_prefix(b"\n").ok_or(())?;
        let text = std::str::from_utf8(rest).map_err(|_| ())?;
        let (name, token) = text.split_once(' ').ok_or(())?;
        let want = list.get(name).ok_or(())?;
        if name.len() <= MAX_NAME && bool::from(want.as_bytes().ct_eq(token.as_bytes())) {
            Ok(Some(name.to_string()))
        } else {
            Err(())
        }
    }

    /// Replace the cookie secret if its period is over (the previous one stays valid).
    pub(crate) fn rotate(&mut self, now: Instant, rng: &mut Rng) {
        let now_ms = self.now_ms(now);
        self.cookies.maybe_rotate(now_ms, || {
            let mut s = [0u8; 32];
            rng.fill(&mut s);
            s
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::key;

    struct T {
        hs: Handshake,
        out: Outbox,
        tel: Telemetry,
        now: Instant,
        from: SocketAddr,
    }

    fn t(cfg: &Config) -> T {
        let now = Instant::now();
        T {
            hs: Handshake::new(cfg, &mut Rng::from_seed([3; 32]), now),
            out: Outbox::new(1 << 20),
            tel: Telemetry::new(now),
            now,
            from: SocketAddr::from(([127, 0, 0, 1], 4000)),
        }
    }

    const OPEN: RegisterContext = RegisterContext {
        has_session: false,
        full: false,
        source_full: false,
        modulus_len: 256,
    };

    impl T {
        fn hello(&mut self, min: u16, max: u16) -> Vec<u8> {
            let inp = Input {
                now: self.now,
                from: self.from,
                len: 64,
            };
            self.hs
                .on_hello(inp, (min, max), &mut self.out, &mut self.tel);
            self.take_last()
        }
        fn take_last(&mut self) -> Vec<u8> {
            let last = self.out.transmits().last().map(|(_, d)| d.to_vec());
            let n = self.out.transmits().count();
            self.out.advance(n, 0, &mut self.tel.stats);
            last.unwrap_or_default()
        }
        fn cookie(&mut self, version: u16) -> [u8; COOKIE_LEN] {
            // A cookie is a function of address and millisecond: step the clock so that
            // each one is new.
            self.now += Duration::from_millis(1);
            let d = self.hello(1, version);
            match Outer::parse(&d) {
                Ok(Outer::Cookie { version: v, cookie }) => {
                    assert_eq!(v, version);
                    *cookie
                }
                other => panic!("expected COOKIE, got {other:?}"),
            }
        }
        fn register(&mut self, cookie: &[u8; COOKIE_LEN], ct: &[u8], cx: RegisterContext) {
            let inp = Input {
                now: self.now,
                from: self.from,
                len: 280,
            };
            self.hs
                .on_register(inp, (cookie, ct), cx, &mut self.out, &mut self.tel);
        }
        fn reject_code(&mut self) -> Option<u16> {
            match Outer::parse(&self.take_last()) {
                Ok(Outer::Reject { code, .. }) => Some(code),
                _ => None,
            }
        }
    }

    #[test]
    fn hello_picks_the_highest_common_version_or_rejects() {
        let mut t = t(&Config::default());
        t.cookie(2);
        t.cookie(1);
        t.hello(7, 9);
        assert_eq!(t.tel.stats.drops(DropReason::UnsupportedVersion), 1);
        assert_eq!(t.tel.stats.cookies_sent, 2);
        t.hello(7, 9);
    }

    #[test]
    fn a_forged_cookie_is_rejected_before_anything_else() {
        let mut t = t(&Config::default());
        let mut c = t.cookie(2);
        c[10] ^= 1;
        t.register(&c, &[0; 256], OPEN);
        assert_eq!(t.reject_code(), Some(RejectCode::BadCookie as u16));
        assert_eq!(t.tel.stats.drops(DropReason::BadCookie), 1);
        assert_eq!(t.hs.pending_len(), 0);
    }

    #[test]
    fn a_cookie_is_single_use_and_checks_run_in_order() {
        let mut t = t(&Config::default());
        let c = t.cookie(2);
        t.register(&c, &[0; 100], OPEN);
        assert_eq!(t.reject_code(), Some(RejectCode::BadRegistration as u16));
        t.register(&c, &[0; 256], RegisterContext { full: true, ..OPEN });
        assert_eq!(t.reject_code(), Some(RejectCode::RelayFull as u16));
        // Neither consumed the cookie: this one is queued.
        t.register(&c, &[0; 256], OPEN);
        assert_eq!(t.hs.pending_len(), 1);
        assert_eq!(t.hs.pop_pending().map(|p| p.version), Some(2));
        t.register(&c, &[0; 256], OPEN);
        assert_eq!(t.reject_code(), Some(RejectCode::CookieReused as u16));
    }

    #[test]
    fn a_full_queue_is_shared_fairly_between_sources() {
        let cfg = Config {
            max_pending_registrations: 4,
            ..Config::default()
        };
        let mut t = t(&cfg);
        let from = |t: &mut T, last: u8| {
            t.from = SocketAddr::from(([127, 0, 0, last], 4000));
            let c = t.cookie(2);
            t.register(&c, &[last; 256], OPEN);
        };
        // One source fills the queue; a second takes a place, then another; a third too.
        for _ in 0..4 {
            from(&mut t, 1);
        }
        from(&mut t, 2);
        from(&mut t, 2);
        assert_eq!(
            t.tel.stats.drops(DropReason::HandshakeQueueFull),
            2,
            "two of 1's evicted"
        );
        from(&mut t, 2); // 2 and 2: no more room for 2
        assert_eq!(t.tel.stats.drops(DropReason::HandshakeQueueFull), 3);
        from(&mut t, 3);
        assert_eq!(t.hs.pending_len(), 4);
        let order: Vec<u8> = std::iter::from_fn(|| t.hs.pop_pending())
            .map(|p| p.ciphertext[0])
            .collect();
        // FIFO order kept; 3 took the newest place of 1 or 2 (both held two).
        assert!(order == [1, 2, 2, 3] || order == [1, 1, 2, 3], "{order:?}");
        assert!(
            t.hs.queued.is_empty(),
            "the per-source counts follow the queue"
        );
    }

    #[test]
    fn the_queue_and_the_budget_bound_rsa_work() {
        let cfg = Config {
            max_pending_registrations: 2,
            handshakes_per_source_per_sec: 3,
            ..Config::default()
        };
        let mut t = t(&cfg);
        for _ in 0..3 {
            let c = t.cookie(2);
            t.register(&c, &[0; 256], OPEN);
        }
        assert_eq!(t.hs.pending_len(), 2);
        assert_eq!(t.tel.stats.drops(DropReason::HandshakeQueueFull), 1);
        t.hs.clear_pending();
        for _ in 0..2 {
            let c = t.cookie(2);
            t.register(&c, &[0; 256], OPEN);
        }
        assert_eq!(
            t.tel.stats.drops(DropReason::HandshakeBudget),
            1,
            "3 per second"
        );
    }

    #[test]
    fn decrypt_validates_the_key_and_the_admission_token() {
        let server = ServerKey::from_pkcs8_pem(include_str!("../../fuzz/relay_key.pem"))
            .expect("the committed test key");
        let (public, _) = key::public_key_from_pem(server.public_pem().as_bytes()).expect("pem");
        let admission = HashMap::from([("alice".to_string(), "s3cret".to_string())]);
        let t = t(&Config {
            admission: Some(admission),
            ..Config::default()
        });
        let fernet = FernetKey::from_bytes(&[6; 32]).to_base64();
        let reg = |suffix: &[u8]| {
            let mut plain = fernet.to_vec();
            plain.extend_from_slice(suffix);
            PendingReg {
                from: t.from,
                version: 2,
                ciphertext: key::oaep_encrypt(&public, &plain).expect("encrypt"),
                arrived: t.now,
            }
        };
        let ok =
            t.hs.decrypt(&server, &reg(b"\nalice s3cret"))
                .expect("admitted");
        assert_eq!(ok.name.as_deref(), Some("alice"));
        assert!(ok.key.ct_eq(&FernetKey::from_bytes(&[6; 32])));
        let no = t.hs.decrypt(&server, &reg(b"\nalice wrong")).unwrap_err();
        assert_eq!(no.code, RejectCode::NotAdmitted);
        let garbage = PendingReg {
            from: t.from,
            version: 2,
            ciphertext: vec![1; 256],
            arrived: t.now,
        };
        assert_eq!(
            t.hs.decrypt(&server, &garbage).unwrap_err().drop,
            DropReason::BadRegistration
        );
    }

    #[test]
    fn rejects_never_exceed_three_times_the_request() {
        let mut out = Outbox::new(1 << 16);
        let mut stats = Stats::default();
        let to = SocketAddr::from(([127, 0, 0, 1], 1));
        reject(
            &mut out,
            &mut stats,
            to,
            RejectCode::BadCookie,
            &"é".repeat(80),
            10,
        );
        let (_, d) = out.transmits().next().expect("queued");
        assert!(d.len() <= 30, "{}", d.len());
        assert!(matches!(Outer::parse(d), Ok(Outer::Reject { .. })));
    }
}
