//! What the handshake learns of the relay and the datagrams it sends: HELLO (with the
//! versions offered), KEY_REQUEST, REGISTER (our channel key and admission, sealed to the
//! relay's RSA key), the pin check of PUBLIC_KEY, and the address relay datagrams must come
//! from. When each is sent is the session's and [`Attempt`](super::attempt::Attempt)'s.

use std::net::SocketAddr;

use rsa::PublicKey;

use super::super::ClientError;
use super::text;
use crate::crypto::fernet::FernetKey;
use crate::crypto::key::{self, hex};
use crate::wire::{self, COOKIE_LEN, Outer};

/// What follows a COOKIE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CookieStep {
    /// The relay's key is known: REGISTER.
    Register,
    /// Ask for the relay's key first: this KEY_REQUEST.
    KeyRequest(Vec<u8>),
}

/// What a PUBLIC_KEY means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyStep {
    /// The relay's key is taken (no pin, or the pinned one): REGISTER.
    Register,
    /// Not the pinned key. Unauthenticated too (an injector on the path may have answered
    /// first): this attempt ends and the next HELLO learns the relay's address anew; the
    /// deadline reports the mismatch if nothing better came.
    Mismatch,
}

/// The relay as the handshake knows it, and what we present to it.
pub(super) struct Handshake {
    pin: Option<[u8; 32]>,
    admission: Option<(String, String)>,
    /// Highest protocol version offered in HELLO.
    max_version: u16,
    relay_key: Option<(PublicKey, [u8; 32])>,
    cookie: Option<[u8; COOKIE_LEN]>,
    /// The address relay datagrams come from: learnt from the COOKIE this attempt acted on,
    /// fixed by WELCOME. Datagrams from anywhere else are dropped.
    relay_addr: Option<SocketAddr>,
    /// The last REJECT seen during the handshake.
    last_reject: Option<(u16, String)>,
    /// The last PUBLIC_KEY that did not match the pin: (expected, got) fingerprints in hex.
    key_mismatch: Option<(String, String)>,
}

impl Handshake {
    /// `pin`: refuse any relay key with another fingerprint. `admission`: `(name, token)`.
    pub(super) fn new(pin: Option<[u8; 32]>, admission: Option<(String, String)>) -> Self {
        Handshake {
            pin,
            admission,
            max_version: wire::VERSION_MAX,
            relay_key: None,
            cookie: None,
            relay_addr: None,
            last_reject: None,
            key_mismatch: None,
        }
    }

    /// Offer at most `version` (clamped to what this library speaks).
    pub(super) fn set_max_version(&mut self, version: u16) {
        self.max_version = version.clamp(wire::VERSION_MIN, wire::VERSION_MAX);
    }

    /// A new attempt's HELLO; the relay's address and cookie are learnt anew.
    pub(super) fn hello(&mut self) -> Vec<u8> {
        self.relay_addr = None;
        self.cookie = None;
        let mut d = Vec::with_capacity(64);
        Outer::Hello {
            min: wire::VERSION_MIN,
            max: self.max_version,
        }
        .write(&mut d);
        d
    }

    /// May a datagram from `from` be the relay's (its address is not known yet, or is this)?
    pub(super) fn is_from_relay(&self, from: SocketAddr) -> bool {
        self.relay_addr.is_none_or(|a| a == from)
    }

    /// Is `version`, chosen by the relay in COOKIE, one we offered?
    pub(super) fn offered(&self, version: u16) -> bool {
        (wire::VERSION_MIN..=self.max_version).contains(&version)
    }

    /// The COOKIE from `from` that this attempt acts on.
    pub(super) fn on_cookie(&mut self, from: SocketAddr, cookie: &[u8; COOKIE_LEN]) -> CookieStep {
        self.relay_addr = Some(from);
        self.cookie = Some(*cookie);
        if self.relay_key.is_some() {
            return CookieStep::Register;
        }
        let mut d = Vec::new();
        Outer::KeyRequest { cookie }.write(&mut d);
        CookieStep::KeyRequest(d)
    }

    /// The relay's PUBLIC_KEY.
    pub(super) fn on_public_key(&mut self, pem: &[u8]) -> Result<KeyStep, ClientError> {
        let (public, fp) =
            key::public_key_from_pem(pem).map_err(|e| ClientError::BadPublicKey(e.to_string()))?;
        if let Some(pin) = self.pin
            && pin != fp
        {
            self.key_mismatch = Some((hex(&pin), hex(&fp)));
            self.relay_addr = None;
            self.cookie = None;
            return Ok(KeyStep::Mismatch);
        }
        self.relay_key = Some((public, fp));
        Ok(KeyStep::Register)
    }

    /// The REGISTER for our channel `key`, once a cookie and the relay's key are known.
    pub(super) fn register(&self, key: &FernetKey) -> Option<Result<Vec<u8>, ClientError>> {
        let (Some(cookie), Some((public, _))) = (self.cookie, &self.relay_key) else {
            return None;
        };
        let mut plain = key.to_base64().to_vec();
        if let Some((name, token)) = &self.admission {
            plain.push(b'\n');
            plain.extend_from_slice(name.as_bytes());
            plain.push(b' ');
            plain.extend_from_slice(token.as_bytes());
        }
        let sealed = key::oaep_encrypt(public, &plain);
        zeroize::Zeroize::zeroize(&mut plain);
        Some(match sealed {
            Ok(ct) => {
                let mut d = Vec::new();
                Outer::Register {
                    cookie: &cookie,
                    ciphertext: &ct,
                }
                .write(&mut d);
                Ok(d)
            }
            Err(e) => Err(ClientError::BadPublicKey(e.to_string())),
        })
    }

    /// REJECT(4): perhaps a new relay key; fetch it again.
    pub(super) fn forget_key(&mut self) {
        self.relay_key = None;
    }

    /// A REJECT arrived while registering.
    pub(super) fn note_reject(&mut self, code: u16, reason: &[u8]) {
        self.last_reject = Some((code, text(reason)));
    }

    /// The last REJECT (code, reason).
    pub(super) fn last_reject(&self) -> Option<&(u16, String)> {
        self.last_reject.as_ref()
    }

    /// The last key that did not match the pin, as the error the deadline reports.
    pub(super) fn key_mismatch(&self) -> Option<ClientError> {
        self.key_mismatch
            .as_ref()
            .map(|(expected, got)| ClientError::FingerprintMismatch {
                expected: expected.clone(),
                got: got.clone(),
            })
    }

    /// SHA-256 of the relay's public key, once known.
    pub(super) fn fingerprint(&self) -> Option<[u8; 32]> {
        self.relay_key.as_ref().map(|(_, f)| *f)
    }

    /// The address the relay sends from, once known.
    pub(super) fn relay_addr(&self) -> Option<SocketAddr> {
        self.relay_addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testkit;
    use crate::crypto::rng::Rng;

    const RELAY: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::new(127, 0, 0, 254),
        9,
    ));

    fn other() -> SocketAddr {
        testkit::addr(9)
    }

    #[test]
    fn hello_offers_the_versions_and_forgets_the_relay() {
        let mut h = Handshake::new(None, None);
        h.set_max_version(1);
        let d = h.hello();
        assert!(matches!(
            Outer::parse(&d),
            Ok(Outer::Hello { min: 1, max: 1 })
        ));
        assert!(h.offered(1) && !h.offered(2));
        assert!(matches!(
            h.on_cookie(RELAY, &[7; COOKIE_LEN]),
            CookieStep::KeyRequest(_)
        ));
        assert!(h.is_from_relay(RELAY) && !h.is_from_relay(other()));
        h.hello();
        assert_eq!(h.relay_addr(), None);
        assert!(h.is_from_relay(other()));
    }

    #[test]
    fn register_carries_our_key_and_admission_sealed_to_the_relay() {
        let relay = testkit::key();
        let mut h = Handshake::new(None, Some(("alice".into(), "t0k".into())));
        let ours = FernetKey::generate(&mut Rng::from_seed([3; 32]));
        assert!(h.register(&ours).is_none(), "no cookie, no key yet");
        let CookieStep::KeyRequest(d) = h.on_cookie(RELAY, &[7; COOKIE_LEN]) else {
            panic!("the key is not known yet");
        };
        assert!(matches!(
            Outer::parse(&d),
            Ok(Outer::KeyRequest { cookie }) if cookie == &[7; COOKIE_LEN]
        ));
        let pem = relay.public_pem().as_bytes();
        assert!(matches!(h.on_public_key(pem), Ok(KeyStep::Register)));
        assert_eq!(h.fingerprint(), Some(*relay.fingerprint()));
        let d = h.register(&ours).unwrap().unwrap();
        let Ok(Outer::Register { cookie, ciphertext }) = Outer::parse(&d) else {
            panic!("not a REGISTER");
        };
        assert_eq!(cookie, &[7; COOKIE_LEN]);
        let plain = relay.oaep_decrypt(ciphertext).unwrap();
        let mut want = ours.to_base64().to_vec();
        want.extend_from_slice(b"\nalice t0k");
        assert_eq!(plain, want);
        // The next attempt's cookie goes straight to REGISTER.
        h.hello();
        assert_eq!(h.on_cookie(RELAY, &[8; COOKIE_LEN]), CookieStep::Register);
        h.forget_key();
        assert!(matches!(
            h.on_cookie(RELAY, &[8; COOKIE_LEN]),
            CookieStep::KeyRequest(_)
        ));
    }

    #[test]
    fn a_key_other_than_the_pin_ends_the_attempt_and_is_remembered() {
        let relay = testkit::key();
        let mut h = Handshake::new(Some([0xab; 32]), None);
        h.on_cookie(RELAY, &[7; COOKIE_LEN]);
        let pem = relay.public_pem().as_bytes();
        assert!(matches!(h.on_public_key(pem), Ok(KeyStep::Mismatch)));
        assert_eq!(h.relay_addr(), None);
        assert_eq!(h.fingerprint(), None);
        let Some(ClientError::FingerprintMismatch { expected, got }) = h.key_mismatch() else {
            panic!("no mismatch reported");
        };
        assert_eq!(expected, hex(&[0xab; 32]));
        assert_eq!(got, relay.fingerprint_hex());
        let mut pinned = Handshake::new(Some(*relay.fingerprint()), None);
        assert!(matches!(pinned.on_public_key(pem), Ok(KeyStep::Register)));
    }

    #[test]
    fn a_bad_pem_is_an_error_and_rejects_are_kept() {
        let mut h = Handshake::new(None, None);
        assert!(matches!(
            h.on_public_key(b"not a key"),
            Err(ClientError::BadPublicKey(_))
        ));
        h.note_reject(5, b"relay full \xff");
        assert_eq!(
            h.last_reject(),
            Some(&(5, "relay full \u{fffd}".to_string()))
        );
    }
}
