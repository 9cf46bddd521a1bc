//! Version-3 fragmentation (protocol.md §6): a body too large for one token is cut into
//! pieces of [`V3_FRAGMENT_CHUNK`] bytes, and each piece travels in a token of its own as
//! `SEQ, FRAG(msg_id, index, count, chunk)`. Every piece is sealed and numbered like any
//! other token, so a spoofer cannot inject, replace or replay one.

use crate::crypto::fernet;
use crate::wire::{MAX_DATAGRAM, TLV_HEADER, V3_FRAGMENT_CHUNK, V3_MAX_FRAGMENTS};

/// Bytes a SEALED datagram adds around its binary token.
pub const SEALED_OVERHEAD: usize = TLV_HEADER;
/// Bytes a GROUP datagram adds around its token (TLV header, epoch).
pub const GROUP_OVERHEAD: usize = TLV_HEADER + 4;
/// Bytes the SEQ TLV takes at the start of every plaintext.
pub const SEQ_TLV: usize = TLV_HEADER + 8;
/// Bytes the FRAG TLV adds in front of its chunk.
pub const FRAG_OVERHEAD: usize = TLV_HEADER + 8;

/// Does a binary token of the plaintext `plain_len` fit one datagram with `overhead`?
pub fn fits(plain_len: usize, overhead: usize) -> bool {
    overhead + fernet::raw_token_len(plain_len) <= MAX_DATAGRAM
}

/// How many pieces a `body_len`-byte body becomes (0 if it is too large for version 3).
pub fn pieces(body_len: usize) -> usize {
    let n = body_len.div_ceil(V3_FRAGMENT_CHUNK).max(1);
    if n > V3_MAX_FRAGMENTS { 0 } else { n }
}

/// The chunks of `body`, in order.
pub fn chunks(body: &[u8]) -> std::slice::Chunks<'_, u8> {
    body.chunks(V3_FRAGMENT_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_fragment_fits_a_datagram_on_the_group_too() {
        let plain = SEQ_TLV + FRAG_OVERHEAD + V3_FRAGMENT_CHUNK;
        assert!(fits(plain, SEALED_OVERHEAD));
        assert!(fits(plain, GROUP_OVERHEAD));
        // One more block of chunk would not fit the group.
        assert!(!fits(plain + 16, GROUP_OVERHEAD));
    }

    #[test]
    fn the_largest_message_fits_in_64_pieces() {
        // GSEQ + SENDER + NAME(32) + DATA(65535), the largest relayed body.
        let body = 12 + 8 + 36 + 4 + 65535;
        assert_eq!(pieces(body), 61);
        assert_eq!(pieces(V3_FRAGMENT_CHUNK * 64 + 1), 0);
        assert_eq!(
            chunks(&[0; 2177]).map(<[u8]>::len).collect::<Vec<_>>(),
            [1088, 1088, 1]
        );
    }
}
