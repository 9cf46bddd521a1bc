//! Wire codec: `Outer::parse` and `parse_inner` on arbitrary bytes.
//!
//! Whatever parses must re-encode (`write` / `write_inner`) to bytes that parse to the same
//! value; apart from HELLO's padding (any bytes accepted, zeros written) the encoding is the
//! input itself (the formats are exact, so there is one encoding per value).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcrelay::DropReason;
use mcrelay::crypto::fernet::{self, FernetKey};
use mcrelay::wire::{MAX_DATAGRAM, Outer, TlvIter, parse_inner, write_inner};

fuzz_target!(|data: &[u8]| {
    match Outer::parse(data) {
        Ok(m) => {
            let mut b = Vec::new();
            m.write(&mut b);
            assert_eq!(
                Outer::parse(&b),
                Ok(m),
                "outer re-encoding parses differently"
            );
            match m {
                Outer::Hello { .. } => {
                    assert_eq!(b.len(), 64);
                    assert_eq!((&b[..2], &b[4..8]), (&data[..2], &data[4..8]));
                }
                _ => assert_eq!(b, data, "outer encoding is not canonical"),
            }
            if data.len() <= MAX_DATAGRAM {
                assert!(b.len() <= MAX_DATAGRAM);
            }
        }
        Err(e) => {
            let _ = (DropReason::from_wire(&e).name(), e.to_string());
        }
    }

    match parse_inner(data) {
        Ok((seq, body)) => {
            let mut b = Vec::new();
            write_inner(&mut b, seq, &body);
            assert_eq!(
                parse_inner(&b),
                Ok((seq, body)),
                "inner re-encoding parses differently"
            );
            assert_eq!(b, data, "inner encoding is not canonical");
        }
        Err(e) => {
            let _ = (DropReason::from_wire(&e).name(), e.to_string());
        }
    }

    // The TLV iterator yields at most one error and then stops.
    let mut errors = 0;
    for r in TlvIter::new(data) {
        if r.is_err() {
            errors += 1;
        }
    }
    assert!(errors <= 1);

    // A sealed token's decoder on the same bytes: no panic, and a fixed key never verifies
    // random input (a 256-bit HMAC).
    let key = FernetKey::from_bytes(&[7u8; 32]);
    let (mut scratch, mut out) = (Vec::new(), Vec::new());
    let _ = fernet::decrypt_into(&key, data, &mut scratch, &mut out);
});
