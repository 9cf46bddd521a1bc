//! Stateless address-validation cookies (protocol.md §3).
//!
//! cookie = version u8 ‖ issued_ms u56 ‖ HMAC-SHA256(secret, ip ‖ port ‖ those 8 bytes)[..16].
//! The version the relay chose in COOKIE is authenticated inside it, so REGISTER needs no
//! field of its own for it and the relay stays stateless until then. The secret is
//! rotated every `rotation`; the previous secret stays valid so a cookie minted just before a
//! rotation still verifies. `issued_ms` is milliseconds on the relay's own clock.

use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::wire::COOKIE_LEN;

/// Why a cookie was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieError {
    /// Genuine but too old (or its secret is gone).
    Expired,
    /// Forged, altered, or minted for another address.
    BadMac,
}

/// The cookie secrets (current and previous) and their schedule.
pub struct CookieJar {
    secrets: [[u8; 32]; 2],
    /// Rotation epoch of `secrets[0]`; `secrets[1]` belongs to `epoch - 1`.
    epoch: u64,
    rotation_ms: u64,
    lifetime_ms: u64,
}

impl Drop for CookieJar {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secrets);
    }
}

impl std::fmt::Debug for CookieJar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CookieJar {{ epoch: {}, .. }}", self.epoch)
    }
}

impl CookieJar {
    /// Two random secrets, rotated every `rotation_ms`; a cookie is valid `lifetime_ms`.
    pub fn new(first: [u8; 32], second: [u8; 32], rotation_ms: u64, lifetime_ms: u64) -> Self {
        CookieJar {
            secrets: [first, second],
            epoch: 0,
            rotation_ms: rotation_ms.max(1),
            lifetime_ms,
        }
    }

    /// Rotate if `now_ms` entered a new epoch; `fresh` is the next secret.
    pub fn maybe_rotate(&mut self, now_ms: u64, mut fresh: impl FnMut() -> [u8; 32]) -> bool {
        let epoch = now_ms / self.rotation_ms;
        if epoch <= self.epoch {
            return false;
        }
        let mut previous = if epoch == self.epoch + 1 {
            self.secrets[0]
        } else {
            fresh()
        };
        let mut current = fresh();
        self.secrets[1].copy_from_slice(&previous);
        self.secrets[0].copy_from_slice(&current);
        zeroize::Zeroize::zeroize(&mut previous);
        zeroize::Zeroize::zeroize(&mut current);
        self.epoch = epoch;
        true
    }

    /// The rotation period.
    pub fn rotation_ms(&self) -> u64 {
        self.rotation_ms
    }

    fn mac(secret: &[u8; 32], addr: SocketAddr, issued_ms: u64) -> [u8; 16] {
        let mut m =
            <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
        match addr.ip() {
            IpAddr::V4(ip) => m.update(&ip.octets()),
            IpAddr::V6(ip) => m.update(&ip.octets()),
        }
        m.update(&addr.port().to_be_bytes());
        m.update(&issued_ms.to_be_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// A cookie for `addr`, binding the protocol `version` chosen for it.
    pub fn mint(&self, addr: SocketAddr, now_ms: u64, version: u8) -> [u8; COOKIE_LEN] {
        let word = (u64::from(version) << 56) | (now_ms & ISSUED_MASK);
        let mut c = [0u8; COOKIE_LEN];
        c[..8].copy_from_slice(&word.to_be_bytes());
        c[8..].copy_from_slice(&Self::mac(&self.secrets[0], addr, word));
        c
    }

    /// Verify a cookie for `addr`; returns its MAC (the identity used for single use) and the
    /// protocol version it binds.
    /// A forgery is reported as `BadMac`, a genuine cookie past its lifetime as `Expired`.
    pub fn verify(
        &self,
        addr: SocketAddr,
        cookie: &[u8; COOKIE_LEN],
        now_ms: u64,
    ) -> Result<([u8; 16], u8), CookieError> {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&cookie[..8]);
        let word = u64::from_be_bytes(ts);
        let version = (word >> 56) as u8;
        let issued = word & ISSUED_MASK;
        // We never issue cookies from the future: that one is forged.
        if issued > now_ms {
            return Err(CookieError::BadMac);
        }
        let epoch = issued / self.rotation_ms;
        let secret = if epoch == self.epoch {
            &self.secrets[0]
        } else if epoch + 1 == self.epoch {
            &self.secrets[1]
        } else {
            // Its secret is gone: too old to check, whoever made it.
            return Err(CookieError::Expired);
        };
        // The MAC first, so a forgery is counted as one, then the age.
        let want = Self::mac(secret, addr, word);
        if !bool::from(want.ct_eq(&cookie[8..])) {
            return Err(CookieError::BadMac);
        }
        if now_ms - issued > self.lifetime_ms {
            return Err(CookieError::Expired);
        }
        Ok((want, version))
    }
}

/// `issued_ms` occupies the low 56 bits of the cookie's first word (2 million years of ms).
const ISSUED_MASK: u64 = (1 << 56) - 1;

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn binds_address_port_and_time() {
        let mut n = 2u8;
        let mut fresh = || {
            n += 1;
            [n; 32]
        };
        let mut jar = CookieJar::new([1; 32], [2; 32], 60_000, 30_000);
        let c = jar.mint(a("127.0.0.1:4000"), 1000, 1);
        assert!(jar.verify(a("127.0.0.1:4000"), &c, 1000).is_ok());
        assert_eq!(
            jar.verify(a("127.0.0.1:4001"), &c, 1000),
            Err(CookieError::BadMac)
        );
        assert_eq!(
            jar.verify(a("127.0.0.2:4000"), &c, 1000),
            Err(CookieError::BadMac)
        );
        assert_eq!(
            jar.verify(a("127.0.0.1:4000"), &c, 31_001),
            Err(CookieError::Expired)
        );
        let mut forged = c;
        forged[20] ^= 1;
        assert_eq!(
            jar.verify(a("127.0.0.1:4000"), &forged, 1000),
            Err(CookieError::BadMac)
        );
        // Moving the timestamp invalidates the MAC.
        let mut moved = c;
        moved[7] ^= 1;
        assert!(jar.verify(a("127.0.0.1:4000"), &moved, 2000).is_err());
        // Survives one rotation, not two.
        // A timestamp from the future is a forgery, not an old cookie.
        let mut future = c;
        future[..8].copy_from_slice(&999_999u64.to_be_bytes());
        assert_eq!(
            jar.verify(a("127.0.0.1:4000"), &future, 1000),
            Err(CookieError::BadMac)
        );
        // A forged MAC on a timestamp past the lifetime is still reported as a forgery.
        let mut forged_old = jar.mint(a("127.0.0.1:4000"), 2000, 1);
        forged_old[9] ^= 1;
        assert_eq!(
            jar.verify(a("127.0.0.1:4000"), &forged_old, 40_000),
            Err(CookieError::BadMac)
        );
        // The version is bound: returned on success, and changing it breaks the MAC.
        assert_eq!(
            jar.verify(a("127.0.0.1:4000"), &c, 1000).map(|v| v.1),
            Ok(1)
        );
        let mut other_version = c;
        other_version[0] = 2;
        assert_eq!(
            jar.verify(a("127.0.0.1:4000"), &other_version, 1000),
            Err(CookieError::BadMac)
        );
        let c2 = jar.mint(a("127.0.0.1:4000"), 59_000, 2);
        assert!(jar.maybe_rotate(60_000, &mut fresh));
        assert!(jar.verify(a("127.0.0.1:4000"), &c2, 60_500).is_ok());
        assert!(jar.maybe_rotate(120_000, &mut fresh));
        assert!(jar.verify(a("127.0.0.1:4000"), &c2, 80_000).is_err());
    }
}
