#!/usr/bin/env python3
"""Deterministic test vectors for the mcrelay wire protocol, version 1.

Computed from docs/protocol.md byte layouts only (TLV = type u16 BE, length u16 BE, value),
with `cryptography`'s Fernet for the token. Output: `key=value` lines, hex for bytes.

Fixed inputs: Fernet key = urlsafe_b64(bytes(range(32))), iv = bytes(range(16)),
timestamp = 1700000000.
"""
import base64
import struct

from cryptography.fernet import Fernet

KEY = base64.urlsafe_b64encode(bytes(range(32)))
IV = bytes(range(16))
TIME = 1700000000

# Outer types (section 2)
HELLO, COOKIE, KEY_REQUEST, PUBLIC_KEY, REGISTER, SEALED, FRAGMENT, REJECT = range(1, 9)
# Inner types (section 2)
SEQ, DATA, SENDER, NAME, KEEPALIVE, KEEPALIVE_ACK, DISCONNECT, WELCOME = range(0x0101, 0x0109)
JOIN, LEAVE, SHUTDOWN, CLOSED = range(0x0109, 0x010D)


def tlv(t: int, v: bytes) -> bytes:
    return struct.pack(">HH", t, len(v)) + v


def seq(n: int) -> bytes:
    return tlv(SEQ, struct.pack(">Q", n))


PLAINTEXTS = [
    ("a_data_hello", seq(1) + tlv(DATA, b"hello")),
    ("b_keepalive", seq(7) + tlv(KEEPALIVE, b"")),
    ("c_welcome", seq(1) + tlv(WELCOME, struct.pack(">III", 1, 10000, 30000))),
    ("d_sender_data", seq(2) + tlv(SENDER, struct.pack(">I", 3)) + tlv(DATA, b"hi")),
]


def vectors():
    """Return the list of (name, value-string) pairs, in output order."""
    f = Fernet(KEY)
    out = [
        ("fernet_key", KEY.decode("ascii")),
        ("fernet_key_raw", bytes(range(32)).hex()),
        ("iv", IV.hex()),
        ("time", str(TIME)),
    ]
    for name, pt in PLAINTEXTS:
        token = f._encrypt_from_parts(pt, TIME, IV)
        out.append((f"{name}.plaintext", pt.hex()))
        out.append((f"{name}.token", token.decode("ascii")))
        out.append((f"{name}.datagram", tlv(SEALED, token).hex()))
    hello = tlv(HELLO, struct.pack(">HH", 1, 1) + bytes(60 - 4))
    assert len(hello) == 64
    out.append(("hello.datagram", hello.hex()))
    # Extras (not requested, but cheap and layout-only): cookie bytes = bytes(range(24)).
    cookie = bytes(range(24))
    out.append(("cookie.datagram", tlv(COOKIE, struct.pack(">H", 1) + cookie).hex()))
    out.append(("key_request.datagram", tlv(KEY_REQUEST, cookie).hex()))
    out.append(("reject.datagram", tlv(REJECT, struct.pack(">H", 2) + b"bad cookie").hex()))
    return out


def main():
    for k, v in vectors():
        print(f"{k}={v}")


if __name__ == "__main__":
    main()
