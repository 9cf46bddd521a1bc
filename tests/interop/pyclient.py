#!/usr/bin/env python3
"""Independent mcrelay wire-protocol (version 1) client.

Written from docs/protocol.md alone (no relay source was read), to check that the document is
a complete contract. Standard library plus `cryptography` only.

Usage:
  pyclient.py [--group 239.255.77.77] [--port 5007] [--iface 127.0.0.1] [--ttl 0]
              [--server-fingerprint HEX] [--name NAME --token TOKEN] [--timeout 5]
              [--send-file PATH]
  pyclient.py --self-test

stdout (one event per line, flushed):
  ready <client_id> <fingerprint-hex>
  msg <sender_id>[@<name>] <escaped text>
  join <id>[@<name>] | leave <id> <reason> | closed <reason> | shutdown
stderr: `warn ...` for dropped datagrams, `error ...` for fatal errors.
Exit codes: 0 normal end, 2 handshake failure / REJECT, 3 fingerprint mismatch.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import select
import selectors
import signal
import socket
import struct
import sys
import threading
import time

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# ---------------------------------------------------------------------------------------------
# Constants (docs/protocol.md)
# ---------------------------------------------------------------------------------------------
PROTOCOL_VERSION = 1
MAX_DATAGRAM = 1200                 # section 1
FRAG_CHUNK = 1188                   # section 6: 1200 - 4 TLV header - 8 fragment header
FRAG_MIN_COUNT = 2
FRAG_MAX_COUNT = 74
HELLO_MIN_VALUE = 60                # section 3.1
COOKIE_LEN = 24
REJECT_REASON_MAX = 100
MAX_DATA = 65536                    # doc: "0..=65536 bytes" ...
MAX_DATA_ENCODABLE = 0xFFFF         # ... but a TLV length is u16: 65535 is the real maximum
REPLAY_WINDOW = 1024                # section 5
REASSEMBLY_TIMEOUT = 5.0            # section 6
RETRANSMIT_INTERVAL = 1.0           # brief
# Client-side reassembly caps: the doc states caps only for the relay (section 8); these are
# this client's own choice.
CLIENT_MAX_REASSEMBLIES = 64
CLIENT_MAX_REASSEMBLY_BYTES = 8 * 1024 * 1024

# Outer types
T_HELLO = 0x0001
T_COOKIE = 0x0002
T_KEY_REQUEST = 0x0003
T_PUBLIC_KEY = 0x0004
T_REGISTER = 0x0005
T_SEALED = 0x0006
T_FRAGMENT = 0x0007
T_REJECT = 0x0008
OUTER_NAMES = {
    T_HELLO: "HELLO", T_COOKIE: "COOKIE", T_KEY_REQUEST: "KEY_REQUEST",
    T_PUBLIC_KEY: "PUBLIC_KEY", T_REGISTER: "REGISTER", T_SEALED: "SEALED",
    T_FRAGMENT: "FRAGMENT", T_REJECT: "REJECT",
}

# Inner (sealed) types
S_SEQ = 0x0101
S_DATA = 0x0102
S_SENDER = 0x0103
S_NAME = 0x0104
S_KEEPALIVE = 0x0105
S_KEEPALIVE_ACK = 0x0106
S_DISCONNECT = 0x0107
S_WELCOME = 0x0108
S_JOIN = 0x0109
S_LEAVE = 0x010A
S_SHUTDOWN = 0x010B
S_CLOSED = 0x010C
INNER_NAMES = {
    S_SEQ: "SEQ", S_DATA: "DATA", S_SENDER: "SENDER", S_NAME: "NAME",
    S_KEEPALIVE: "KEEPALIVE", S_KEEPALIVE_ACK: "KEEPALIVE_ACK", S_DISCONNECT: "DISCONNECT",
    S_WELCOME: "WELCOME", S_JOIN: "JOIN", S_LEAVE: "LEAVE", S_SHUTDOWN: "SHUTDOWN",
    S_CLOSED: "CLOSED",
}

# Allowed plaintext TLV sequences (section 2, last table).
R2C_SHAPES = {
    (S_SEQ, S_WELCOME): "welcome",
    (S_SEQ, S_WELCOME, S_NAME): "welcome",
    (S_SEQ, S_SENDER, S_DATA): "data",
    (S_SEQ, S_SENDER, S_NAME, S_DATA): "data",
    (S_SEQ, S_KEEPALIVE_ACK): "keepalive_ack",
    (S_SEQ, S_JOIN): "join",
    (S_SEQ, S_JOIN, S_NAME): "join",
    (S_SEQ, S_LEAVE): "leave",
    (S_SEQ, S_SHUTDOWN): "shutdown",
    (S_SEQ, S_CLOSED): "closed",
}
C2R_SHAPES = {
    (S_SEQ, S_DATA): "data",
    (S_SEQ, S_KEEPALIVE): "keepalive",
    (S_SEQ, S_DISCONNECT): "disconnect",
}

# Fixed value sizes of inner TLVs (None = variable).
INNER_FIXED_LEN = {
    S_SEQ: 8, S_SENDER: 4, S_KEEPALIVE: 0, S_KEEPALIVE_ACK: 0, S_DISCONNECT: 0,
    S_WELCOME: 12, S_JOIN: 4, S_LEAVE: 5, S_SHUTDOWN: 0, S_CLOSED: 1,
}

REASONS = {1: "disconnect", 2: "timeout", 3: "kicked", 4: "replaced", 5: "shutdown", 6: "relay-lost"}

REJECT_NAMES = {1: "unsupported-version", 2: "bad-cookie", 3: "cookie-used",
                4: "undecryptable", 5: "full", 6: "not-admitted", 7: "malformed"}


def reason_word(code: int) -> str:
    return REASONS.get(code, str(code))


class Malformed(Exception):
    """A datagram / plaintext / fragment that a receiver must reject (silently, with a warn)."""


# ---------------------------------------------------------------------------------------------
# TLV codec
# ---------------------------------------------------------------------------------------------
def tlv(t: int, v: bytes = b"") -> bytes:
    if len(v) > 0xFFFF:
        raise ValueError(f"TLV value too long ({len(v)})")
    return struct.pack(">HH", t, len(v)) + v


def parse_tlvs(buf: bytes, known: dict) -> list[tuple[int, bytes]]:
    out = []
    i = 0
    n = len(buf)
    if n == 0:
        raise Malformed("empty")
    while i < n:
        if n - i < 4:
            raise Malformed("truncated TLV header")
        t, ln = struct.unpack_from(">HH", buf, i)
        i += 4
        if ln > n - i:
            raise Malformed(f"TLV 0x{t:04x} length {ln} runs past end")
        if t not in known:
            raise Malformed(f"unknown TLV type 0x{t:04x}")
        out.append((t, bytes(buf[i:i + ln])))
        i += ln
    return out


# ---------------------------------------------------------------------------------------------
# Outer messages
# ---------------------------------------------------------------------------------------------
TOKEN_RE = re.compile(rb"\A[A-Za-z0-9_-]+={0,2}\Z")


def enc_hello(min_v: int = 1, max_v: int = 1, value_len: int = HELLO_MIN_VALUE) -> bytes:
    v = struct.pack(">HH", min_v, max_v)
    return tlv(T_HELLO, v + bytes(max(0, value_len - len(v))))


def enc_cookie(version: int, cookie: bytes) -> bytes:
    assert len(cookie) == COOKIE_LEN
    return tlv(T_COOKIE, struct.pack(">H", version) + cookie)


def enc_key_request(cookie: bytes) -> bytes:
    assert len(cookie) == COOKIE_LEN
    return tlv(T_KEY_REQUEST, cookie)


def enc_public_key(pem: bytes) -> bytes:
    return tlv(T_PUBLIC_KEY, pem)


def enc_register(cookie: bytes, ciphertext: bytes) -> bytes:
    assert len(cookie) == COOKIE_LEN
    return tlv(T_REGISTER, cookie + ciphertext)


def enc_sealed(token: bytes) -> bytes:
    return tlv(T_SEALED, token)


def enc_fragment(msg_id: int, index: int, count: int, chunk: bytes) -> bytes:
    return tlv(T_FRAGMENT, struct.pack(">IHH", msg_id, index, count) + chunk)


def enc_reject(code: int, reason: bytes) -> bytes:
    return tlv(T_REJECT, struct.pack(">H", code) + reason)


def check_token_syntax(token: bytes) -> None:
    if not TOKEN_RE.match(token):
        raise Malformed("token is not url-safe base64")
    body = token.rstrip(b"=")
    pad = len(token) - len(body)
    if len(body) % 4 == 1:
        raise Malformed("token base64 length impossible")
    if pad and (len(body) + pad) % 4 != 0:
        raise Malformed("token base64 padding wrong")


def decode_outer(dgram: bytes) -> tuple[int, dict]:
    """Decode one datagram into (type, fields). Raises Malformed."""
    if len(dgram) > MAX_DATAGRAM:
        raise Malformed(f"datagram of {len(dgram)} bytes exceeds {MAX_DATAGRAM}")
    tl = parse_tlvs(dgram, OUTER_NAMES)
    if len(tl) != 1:
        raise Malformed(f"{len(tl)} TLVs in datagram, expected exactly 1")
    t, v = tl[0]
    if t == T_HELLO:
        if len(v) < HELLO_MIN_VALUE:
            raise Malformed("HELLO value shorter than 60")
        mn, mx = struct.unpack_from(">HH", v)
        return t, {"min": mn, "max": mx}
    if t == T_COOKIE:
        if len(v) != 2 + COOKIE_LEN:
            raise Malformed(f"COOKIE value length {len(v)} != 26")
        (ver,) = struct.unpack_from(">H", v)
        return t, {"version": ver, "cookie": v[2:]}
    if t == T_KEY_REQUEST:
        if len(v) != COOKIE_LEN:
            raise Malformed("KEY_REQUEST value length != 24")
        return t, {"cookie": v}
    if t == T_PUBLIC_KEY:
        if not v:
            raise Malformed("empty PUBLIC_KEY")
        return t, {"pem": v}
    if t == T_REGISTER:
        if len(v) <= COOKIE_LEN:
            raise Malformed("REGISTER too short")
        return t, {"cookie": v[:COOKIE_LEN], "ciphertext": v[COOKIE_LEN:]}
    if t == T_SEALED:
        check_token_syntax(v)
        return t, {"token": v}
    if t == T_FRAGMENT:
        if len(v) < 8 + 1:
            raise Malformed("FRAGMENT too short")
        msg_id, index, count = struct.unpack_from(">IHH", v)
        chunk = v[8:]
        if not (FRAG_MIN_COUNT <= count <= FRAG_MAX_COUNT):
            raise Malformed(f"FRAGMENT count {count} out of range")
        if index >= count:
            raise Malformed(f"FRAGMENT index {index} >= count {count}")
        if index < count - 1 and len(chunk) != FRAG_CHUNK:
            raise Malformed(f"FRAGMENT non-last chunk length {len(chunk)} != {FRAG_CHUNK}")
        if index == count - 1 and not (1 <= len(chunk) <= FRAG_CHUNK):
            raise Malformed(f"FRAGMENT last chunk length {len(chunk)}")
        return t, {"msg_id": msg_id, "index": index, "count": count, "chunk": chunk}
    if t == T_REJECT:
        if len(v) < 2:
            raise Malformed("REJECT too short")
        (code,) = struct.unpack_from(">H", v)
        reason = v[2:]
        if len(reason) > REJECT_REASON_MAX:
            raise Malformed("REJECT reason longer than 100 bytes")
        try:
            reason.decode("utf-8")
        except UnicodeDecodeError:
            raise Malformed("REJECT reason not UTF-8")
        return t, {"code": code, "reason": reason}
    raise Malformed("unreachable")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Inner (sealed plaintext) messages
# ---------------------------------------------------------------------------------------------
def enc_inner(seq: int, *tlvs: tuple[int, bytes]) -> bytes:
    return tlv(S_SEQ, struct.pack(">Q", seq)) + b"".join(tlv(t, v) for t, v in tlvs)


def c2r_data(seq: int, data: bytes) -> bytes:
    return enc_inner(seq, (S_DATA, data))


def c2r_keepalive(seq: int) -> bytes:
    return enc_inner(seq, (S_KEEPALIVE, b""))


def c2r_disconnect(seq: int) -> bytes:
    return enc_inner(seq, (S_DISCONNECT, b""))


def decode_inner(pt: bytes, direction: str = "r2c") -> dict:
    """Decode a sealed plaintext. Returns dict with 'kind', 'seq' and fields. Raises Malformed."""
    tl = parse_tlvs(pt, INNER_NAMES)
    shape = tuple(t for t, _ in tl)
    shapes = R2C_SHAPES if direction == "r2c" else C2R_SHAPES
    if shape not in shapes:
        raise Malformed("plaintext shape " + ",".join(INNER_NAMES[t] for t in shape))
    msg = {"kind": shapes[shape]}
    for t, v in tl:
        fixed = INNER_FIXED_LEN.get(t)
        if fixed is not None and len(v) != fixed:
            raise Malformed(f"{INNER_NAMES[t]} value length {len(v)} != {fixed}")
        if t == S_SEQ:
            (msg["seq"],) = struct.unpack(">Q", v)
        elif t == S_DATA:
            if len(v) > MAX_DATA:
                raise Malformed("DATA longer than 65536")
            msg["data"] = v
        elif t == S_SENDER:
            (msg["sender"],) = struct.unpack(">I", v)
        elif t == S_NAME:
            try:
                v.decode("utf-8")
            except UnicodeDecodeError:
                raise Malformed("NAME not UTF-8")
            msg["name"] = v
        elif t == S_WELCOME:
            msg["client_id"], msg["keepalive_ms"], msg["timeout_ms"] = struct.unpack(">III", v)
        elif t == S_JOIN:
            (msg["client_id"],) = struct.unpack(">I", v)
        elif t == S_LEAVE:
            msg["client_id"], msg["reason"] = struct.unpack(">IB", v)
        elif t == S_CLOSED:
            (msg["reason"],) = struct.unpack(">B", v)
    return msg


# ---------------------------------------------------------------------------------------------
# Fernet helpers
# ---------------------------------------------------------------------------------------------
def open_token(f: Fernet, token: bytes) -> bytes:
    """Verify and decrypt a token (strict syntax, accepts missing '=' padding). Raises Malformed."""
    check_token_syntax(token)
    body = token.rstrip(b"=")
    norm = body + b"=" * (-len(body) % 4)
    try:
        return f.decrypt(norm)  # no TTL: the doc defines timestamp checks only for the relay
    except InvalidToken:
        raise Malformed("token HMAC/decryption failed")


# ---------------------------------------------------------------------------------------------
# Replay window (section 5)
# ---------------------------------------------------------------------------------------------
class ReplayWindow:
    """Accepts seq in (top - size, top] not yet seen, or > top. Rejects 0."""

    def __init__(self, size: int = REPLAY_WINDOW):
        self.size = size
        self.top = 0
        self.bits = 0  # bit i set <=> (top - i) seen
        self.mask = (1 << size) - 1

    def check(self, seq: int) -> bool:
        if seq == 0:
            return False
        if seq > self.top:
            return True
        diff = self.top - seq
        if diff >= self.size:
            return False
        return not (self.bits >> diff) & 1

    def update(self, seq: int) -> None:
        if seq > self.top:
            shift = seq - self.top
            self.bits = ((self.bits << shift) | 1) & self.mask if shift < self.size else 1
            self.top = seq
        else:
            self.bits |= 1 << (self.top - seq)


# ---------------------------------------------------------------------------------------------
# Fragmentation (section 6)
# ---------------------------------------------------------------------------------------------
def fragment_token(token: bytes, msg_id: int) -> list[bytes]:
    if 4 + len(token) <= MAX_DATAGRAM:
        return [enc_sealed(token)]
    chunks = [token[i:i + FRAG_CHUNK] for i in range(0, len(token), FRAG_CHUNK)]
    count = len(chunks)
    if count > FRAG_MAX_COUNT:
        raise ValueError(f"token needs {count} fragments (> {FRAG_MAX_COUNT})")
    return [enc_fragment(msg_id & 0xFFFFFFFF, i, count, c) for i, c in enumerate(chunks)]


class Reassembler:
    def __init__(self, timeout: float = REASSEMBLY_TIMEOUT,
                 max_entries: int = CLIENT_MAX_REASSEMBLIES,
                 max_bytes: int = CLIENT_MAX_REASSEMBLY_BYTES):
        self.timeout = timeout
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries: dict[int, dict] = {}
        self.total = 0

    def expire(self, now: float) -> list[int]:
        dead = [m for m, e in self.entries.items() if now - e["start"] >= self.timeout]
        for m in dead:
            self.total -= self.entries.pop(m)["size"]
        return dead

    def next_deadline(self) -> float | None:
        if not self.entries:
            return None
        return min(e["start"] for e in self.entries.values()) + self.timeout

    def add(self, msg_id: int, index: int, count: int, chunk: bytes, now: float) -> bytes | None:
        """Add one (already statically validated) fragment. Returns the whole token when
        complete. Raises Malformed for a fragment to reject; other reassemblies and the
        existing reassembly of this msg_id are left untouched."""
        self.expire(now)
        e = self.entries.get(msg_id)
        if e is None:
            if len(self.entries) >= self.max_entries:
                raise Malformed("too many concurrent reassemblies")
            e = {"count": count, "chunks": {}, "start": now, "size": 0}
            self.entries[msg_id] = e
        if e["count"] != count:
            raise Malformed(f"fragment count {count} differs from {e['count']} for msg {msg_id}")
        if index in e["chunks"]:
            raise Malformed(f"duplicate fragment index {index} for msg {msg_id}")
        if self.total + len(chunk) > self.max_bytes:
            raise Malformed("reassembly memory cap")
        e["chunks"][index] = chunk
        e["size"] += len(chunk)
        self.total += len(chunk)
        if len(e["chunks"]) == count:
            del self.entries[msg_id]
            self.total -= e["size"]
            return b"".join(e["chunks"][i] for i in range(count))
        return None


# ---------------------------------------------------------------------------------------------
# Text escaping for stdout
# ---------------------------------------------------------------------------------------------
def escape_text(b: bytes) -> str:
    out = []
    for ch in b.decode("utf-8", errors="surrogateescape"):
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif 0xDC80 <= o <= 0xDCFF:  # invalid UTF-8 byte (surrogateescape)
            out.append(f"\\x{o - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


def who(ident: int, name: bytes | None) -> str:
    return f"{ident}@{escape_text(name)}" if name is not None else str(ident)


# ---------------------------------------------------------------------------------------------
# RSA helpers
# ---------------------------------------------------------------------------------------------
def load_public_key(pem: bytes):
    """Returns (public_key, der, fingerprint_hex). Raises Malformed."""
    try:
        pem.decode("ascii")
    except UnicodeDecodeError:
        raise Malformed("PUBLIC_KEY not ASCII")
    if not pem.lstrip().startswith(b"-----BEGIN PUBLIC KEY-----"):
        raise Malformed("PUBLIC_KEY is not a 'BEGIN PUBLIC KEY' PEM")
    try:
        key = serialization.load_pem_public_key(pem)
    except Exception as e:  # noqa: BLE001
        raise Malformed(f"PUBLIC_KEY unparsable: {e}")
    if not isinstance(key, rsa.RSAPublicKey):
        raise Malformed("PUBLIC_KEY is not RSA")
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, der, hashlib.sha256(der).hexdigest()


def oaep():
    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()),
                        algorithm=hashes.SHA256(), label=None)


def oaep_max_plaintext(key) -> int:
    return key.key_size // 8 - 2 * 32 - 2


# ---------------------------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------------------------
class Exit(Exception):
    def __init__(self, code: int):
        self.code = code


class Client:
    def __init__(self, args, out=None, err=None):
        self.args = args
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.dest = (args.group, args.port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # A 74-fragment burst (doc section 6) can overflow a default-sized receive buffer;
        # ask for more (the kernel caps it at net.core.rmem_max).
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        except OSError:
            pass
        self.sock.bind((args.iface, 0))
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                             socket.inet_aton(args.iface))
        self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, args.ttl)
        self.key = Fernet.generate_key()  # 44 ASCII chars, url-safe b64 with '='
        assert len(self.key) == 44
        self.fernet = Fernet(self.key)
        self.send_seq = 0
        self.msg_id = 0
        self.window = ReplayWindow()
        self.reasm = Reassembler()
        self.client_id = None
        self.keepalive_s = 10.0
        self.last_send = 0.0
        self.pending: list[dict] = []  # sealed messages received before WELCOME
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.lines: list[bytes | None] = []
        self.lines_lock = threading.Lock()
        self.stop_signal = False

    # -- output ----------------------------------------------------------------------------
    def emit(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def warn(self, text: str) -> None:
        self.err.write(f"warn {text}\n")
        self.err.flush()

    def fatal(self, text: str, code: int) -> None:
        self.err.write(f"error {text}\n")
        self.err.flush()
        raise Exit(code)

    # -- sending ---------------------------------------------------------------------------
    def send_raw(self, d: bytes) -> None:
        assert len(d) <= MAX_DATAGRAM
        self.sock.sendto(d, self.dest)

    def send_sealed(self, plaintext_fn) -> None:
        self.send_seq += 1
        pt = plaintext_fn(self.send_seq)
        token = self.fernet.encrypt(pt)
        self.msg_id += 1
        for d in fragment_token(token, self.msg_id):
            self.send_raw(d)
        self.last_send = time.monotonic()

    def send_data(self, data: bytes) -> None:
        if len(data) > MAX_DATA_ENCODABLE:
            self.warn(f"message of {len(data)} bytes exceeds the u16 TLV length "
                      f"({MAX_DATA_ENCODABLE}); not sent")
            return
        self.send_sealed(lambda s: c2r_data(s, data))

    # -- receiving -------------------------------------------------------------------------
    def recv_outer(self):
        """Read one datagram; returns (type, fields) or None if it was rejected."""
        try:
            data, addr = self.sock.recvfrom(65536)
        except (BlockingIOError, InterruptedError):
            return None
        except ConnectionRefusedError:
            return None
        try:
            return decode_outer(data)
        except Malformed as e:
            self.warn(f"malformed datagram from {addr[0]}:{addr[1]} ({len(data)} bytes): {e}")
            return None

    def open_sealed(self, t: int, f: dict) -> dict | None:
        """SEALED or FRAGMENT -> decoded, replay-checked inner message (or None)."""
        if t == T_FRAGMENT:
            try:
                token = self.reasm.add(f["msg_id"], f["index"], f["count"], f["chunk"],
                                       time.monotonic())
            except Malformed as e:
                self.warn(f"fragment rejected: {e}")
                return None
            if token is None:
                return None
            try:
                check_token_syntax(token)
            except Malformed as e:
                self.warn(f"reassembled message rejected: {e}")
                return None
        else:
            token = f["token"]
        try:
            pt = open_token(self.fernet, token)
            msg = decode_inner(pt, "r2c")
        except Malformed as e:
            self.warn(f"sealed message rejected: {e}")
            return None
        if not self.window.check(msg["seq"]):
            self.warn(f"sealed message rejected: replayed/old seq {msg['seq']}")
            return None
        self.window.update(msg["seq"])
        return msg

    # -- handshake -------------------------------------------------------------------------
    def handshake(self) -> None:
        a = self.args
        start = time.monotonic()
        deadline = start + a.timeout
        step = "COOKIE"  # what we are waiting for
        cookie = None
        pubkey = None
        fingerprint = None
        restarts = 0
        suffix = b""
        if a.name is not None:
            suffix = b"\n" + a.name.encode("utf-8") + b" " + a.token.encode("utf-8")
        current = enc_hello()
        self.send_raw(current)
        next_retx = time.monotonic() + RETRANSMIT_INTERVAL

        def make_register():
            secret = self.key + suffix
            if len(secret) > oaep_max_plaintext(pubkey):
                self.fatal(f"admission name/token too long for the relay's "
                           f"{pubkey.key_size}-bit key", 2)
            ct = pubkey.encrypt(secret, oaep())
            assert len(ct) == pubkey.key_size // 8
            return enc_register(cookie, ct)

        while True:
            if self.stop_signal:
                raise Exit(0)  # no session yet: nothing to disconnect
            now = time.monotonic()
            if now >= deadline:
                self.fatal(f"timeout waiting for {step}", 2)
            if now >= next_retx:
                self.send_raw(current)
                next_retx = now + RETRANSMIT_INTERVAL
            wait = max(0.0, min(next_retx, deadline) - now)
            r, _, _ = select.select([self.sock], [], [], wait)
            if not r:
                continue
            got = self.recv_outer()
            if got is None:
                continue
            t, f = got
            if t == T_REJECT:
                code, reason = f["code"], f["reason"]
                if code in (2, 3) and restarts < 3:
                    # Section 3.6: restart from HELLO on 2 and 3 (keep the same Fernet key, so
                    # a relay that already holds our session answers WELCOME again).
                    restarts += 1
                    self.warn(f"reject {code} {escape_text(reason)}; restarting from HELLO")
                    step = "COOKIE"
                    current = enc_hello()
                    self.send_raw(current)
                    next_retx = time.monotonic() + RETRANSMIT_INTERVAL
                    continue
                self.fatal(f"reject {code} {escape_text(reason)}", 2)
            elif t == T_COOKIE:
                if step != "COOKIE":
                    continue  # duplicate answer to a retransmitted HELLO
                if f["version"] != PROTOCOL_VERSION:
                    self.warn(f"COOKIE with version {f['version']} outside offered [1,1]")
                    continue
                cookie = f["cookie"]
                if pubkey is None:
                    step = "PUBLIC_KEY"
                    current = enc_key_request(cookie)
                else:  # section 3.3: a client that knows the key may skip KEY_REQUEST
                    step = "WELCOME"
                    current = make_register()
                self.send_raw(current)
                next_retx = time.monotonic() + RETRANSMIT_INTERVAL
            elif t == T_PUBLIC_KEY:
                if step != "PUBLIC_KEY":
                    continue
                try:
                    key, _der, fp = load_public_key(f["pem"])
                except Malformed as e:
                    self.warn(f"PUBLIC_KEY rejected: {e}")
                    continue
                if a.server_fingerprint and fp != a.server_fingerprint.lower():
                    self.err.write(f"error fingerprint mismatch: expected "
                                   f"{a.server_fingerprint.lower()} got {fp}\n")
                    self.err.flush()
                    raise Exit(3)
                pubkey, fingerprint = key, fp
                step = "WELCOME"
                current = make_register()
                self.send_raw(current)
                next_retx = time.monotonic() + RETRANSMIT_INTERVAL
            elif t in (T_SEALED, T_FRAGMENT):
                if step != "WELCOME":
                    self.warn("sealed message before REGISTER; dropped")
                    continue
                msg = self.open_sealed(t, f)
                if msg is None:
                    continue
                if msg["kind"] == "welcome":
                    self.client_id = msg["client_id"]
                    ka = msg["keepalive_ms"]
                    if ka == 0:
                        self.warn("WELCOME keepalive_ms = 0; using 10000")
                        ka = 10000
                    self.keepalive_s = ka / 1000.0
                    self.fingerprint = fingerprint
                    return
                self.pending.append(msg)  # reordered ahead of WELCOME; handle after it
            else:
                self.warn(f"unexpected {OUTER_NAMES[t]} from relay; dropped")

    # -- session ---------------------------------------------------------------------------
    def dispatch(self, msg: dict) -> None:
        k = msg["kind"]
        if k == "data":
            self.emit(f"msg {who(msg['sender'], msg.get('name'))} {escape_text(msg['data'])}")
        elif k == "join":
            self.emit(f"join {who(msg['client_id'], msg.get('name'))}")
        elif k == "leave":
            self.emit(f"leave {msg['client_id']} {reason_word(msg['reason'])}")
        elif k == "keepalive_ack":
            pass
        elif k == "welcome":
            if msg["client_id"] != self.client_id:
                self.warn(f"WELCOME for id {msg['client_id']} during session "
                          f"{self.client_id}; ignored")
        elif k == "shutdown":
            self.emit("shutdown")
            raise Exit(0)
        elif k == "closed":
            self.emit(f"closed {reason_word(msg['reason'])}")
            raise Exit(0)

    def stdin_reader(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(0, 65536)
            except InterruptedError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                with self.lines_lock:
                    if buf:
                        self.lines.append(buf)
                    self.lines.append(None)
                self.wake()
                return
            buf += chunk
            new = []
            while True:
                i = buf.find(b"\n")
                if i < 0:
                    break
                new.append(buf[:i])
                buf = buf[i + 1:]
            if new:
                with self.lines_lock:
                    self.lines.extend(new)
                self.wake()

    def wake(self) -> None:
        try:
            os.write(self.wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def on_signal(self, signum, frame) -> None:
        self.stop_signal = True
        self.wake()

    def session(self) -> None:
        a = self.args
        self.emit(f"ready {self.client_id} {self.fingerprint}")
        self.last_send = time.monotonic()
        for m in self.pending:
            self.dispatch(m)
        self.pending = []
        if a.send_file:
            with open(a.send_file, "rb") as fh:
                self.send_data(fh.read())
        threading.Thread(target=self.stdin_reader, daemon=True).start()
        sel = selectors.DefaultSelector()
        self.sock.setblocking(False)
        sel.register(self.sock, selectors.EVENT_READ, "sock")
        sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        closing_deadline = None
        while True:
            now = time.monotonic()
            if closing_deadline is not None and now >= closing_deadline:
                raise Exit(0)
            if closing_deadline is None and now - self.last_send >= self.keepalive_s:
                self.send_sealed(c2r_keepalive)
            self.reasm.expire(now)
            timeouts = [self.last_send + self.keepalive_s]
            if closing_deadline is not None:
                timeouts = [closing_deadline]
            rd = self.reasm.next_deadline()
            if rd is not None:
                timeouts.append(rd)
            wait = max(0.0, min(timeouts) - time.monotonic())
            for key, _ in sel.select(wait):
                if key.data == "wake":
                    try:
                        while os.read(self.wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                    with self.lines_lock:
                        lines, self.lines = self.lines, []
                    for ln in lines:
                        if closing_deadline is not None:
                            break
                        if ln is None:
                            self.send_sealed(c2r_disconnect)
                            closing_deadline = time.monotonic() + 1.0
                        else:
                            self.send_data(ln)
                    if self.stop_signal and closing_deadline is None:
                        self.send_sealed(c2r_disconnect)
                        closing_deadline = time.monotonic() + 1.0
                else:
                    for _ in range(64):
                        got = self.recv_outer_nb()
                        if got is False:
                            break
                        if got is None:
                            continue
                        t, f = got
                        if t in (T_SEALED, T_FRAGMENT):
                            msg = self.open_sealed(t, f)
                            if msg is not None:
                                self.dispatch(msg)
                        elif t == T_REJECT:
                            self.warn(f"REJECT {f['code']} during session ignored "
                                      "(unauthenticated)")
                        elif t in (T_COOKIE, T_PUBLIC_KEY):
                            pass  # late duplicate handshake answers
                        else:
                            self.warn(f"unexpected {OUTER_NAMES[t]} from relay; dropped")

    def recv_outer_nb(self):
        """Non-blocking variant: False when nothing to read, None when rejected."""
        try:
            data, addr = self.sock.recvfrom(65536)
        except (BlockingIOError, InterruptedError):
            return False
        except ConnectionRefusedError:
            return None
        try:
            return decode_outer(data)
        except Malformed as e:
            self.warn(f"malformed datagram from {addr[0]}:{addr[1]} ({len(data)} bytes): {e}")
            return None

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)
        try:
            self.handshake()
            if self.stop_signal:
                raise Exit(0)
            self.session()
        except Exit as e:
            return e.code
        return 0


# ---------------------------------------------------------------------------------------------
# Self-test (--self-test): unit checks plus end-to-end runs against a tiny in-process fake
# relay written from the same document (it checks this client, not the real relay).
# ---------------------------------------------------------------------------------------------
class FakeRelay(threading.Thread):
    """Minimal relay following docs/protocol.md, with knobs to misbehave."""

    def __init__(self, group: str, port: int, **knobs):
        super().__init__(daemon=True)
        from cryptography.hazmat.primitives.asymmetric import rsa as _rsa
        self.group, self.port = group, port
        self.knobs = knobs
        self.priv = _rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = self.priv.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        der = self.priv.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.fingerprint = hashlib.sha256(der).hexdigest()
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.rx.bind((group, port))
        self.rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                           socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
        self.rx.settimeout(0.1)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tx.bind(("127.0.0.1", 0))
        self.cookies: dict[bytes, bool] = {}  # cookie -> used
        self.sessions: dict = {}
        self.next_id = 1
        self.counts = {"hello": 0, "register": 0, "keepalive": 0}
        self.received: list[bytes] = []  # DATA bodies from clients
        self.events: list[str] = []
        self.stop = False
        self.lock = threading.Lock()
        self.msg_id = 1000

    def send(self, addr, d: bytes) -> None:
        self.tx.sendto(d, addr)

    def seal(self, s: dict, *tlvs, seq: int | None = None) -> bytes:
        if seq is None:
            s["seq"] += 1
            seq = s["seq"]
        return s["fernet"].encrypt(enc_inner(seq, *tlvs))

    def send_token(self, addr, token: bytes, shuffle: bool = False, dup: bool = False):
        self.msg_id += 1
        ds = fragment_token(token, self.msg_id)
        if shuffle:
            random.shuffle(ds)
        for d in ds:
            self.send(addr, d)
            if dup:
                self.send(addr, d)

    def push(self, addr, *tlvs, **kw) -> bytes:
        s = self.sessions[addr]
        token = self.seal(s, *tlvs)
        self.send_token(addr, token, **kw)
        return token

    def run(self) -> None:
        while not self.stop:
            try:
                d, addr = self.rx.recvfrom(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.handle(d, addr)

    def handle(self, d: bytes, addr) -> None:
        k = self.knobs
        try:
            t, f = decode_outer(d)
        except Malformed as e:
            self.events.append(f"malformed {e}")
            return
        if t == T_HELLO:
            self.counts["hello"] += 1
            if self.counts["hello"] <= k.get("drop_hellos", 0):
                return
            c = os.urandom(COOKIE_LEN)
            self.cookies[c] = False
            self.send(addr, enc_cookie(1, c))
        elif t == T_KEY_REQUEST:
            if f["cookie"] in self.cookies:
                self.send(addr, enc_public_key(self.pem))
            else:
                self.send(addr, enc_reject(2, b"bad cookie"))
        elif t == T_REGISTER:
            self.counts["register"] += 1
            c = f["cookie"]
            if c not in self.cookies:
                self.send(addr, enc_reject(2, b"bad cookie"))
                return
            if self.cookies[c]:
                self.send(addr, enc_reject(3, b"cookie already used"))
                return
            self.cookies[c] = True
            if k.get("reject_register"):
                self.send(addr, enc_reject(k["reject_register"], b"not admitted"))
                return
            try:
                secret = self.priv.decrypt(f["ciphertext"], oaep())
                key = secret[:44]
                fer = Fernet(key)
            except Exception:  # noqa: BLE001
                self.send(addr, enc_reject(4, b"undecryptable"))
                return
            name = None
            if len(secret) > 44 and secret[44:45] == b"\n":
                name = secret[45:].split(b" ", 1)[0]
            s = self.sessions.get(addr)
            if s is None or s["key"] != key:
                s = {"key": key, "fernet": fer, "seq": 0, "id": self.next_id,
                     "window": ReplayWindow(), "reasm": Reassembler(), "name": name}
                self.next_id += 1
                self.sessions[addr] = s
            extra = [(S_NAME, name)] if name else []
            tok = self.seal(s, (S_WELCOME, struct.pack(">III", s["id"],
                                                     k.get("keepalive_ms", 10000), 30000)),
                            *extra)
            if self.counts["register"] <= k.get("drop_welcomes", 0):
                return
            self.send_token(addr, tok)
        elif t in (T_SEALED, T_FRAGMENT):
            s = self.sessions.get(addr)
            if s is None:
                return
            if t == T_FRAGMENT:
                try:
                    token = s["reasm"].add(f["msg_id"], f["index"], f["count"], f["chunk"],
                                           time.monotonic())
                except Malformed as e:
                    self.events.append(f"fragment {e}")
                    return
                if token is None:
                    return
            else:
                token = f["token"]
            try:
                msg = decode_inner(open_token(s["fernet"], token), "c2r")
            except Malformed as e:
                self.events.append(f"sealed {e}")
                return
            if not s["window"].check(msg["seq"]):
                self.events.append("replay")
                return
            s["window"].update(msg["seq"])
            if msg["kind"] == "keepalive":
                self.counts["keepalive"] += 1
                self.push(addr, (S_KEEPALIVE_ACK, b""))
            elif msg["kind"] == "disconnect":
                self.push(addr, (S_CLOSED, b"\x01"))
                del self.sessions[addr]
            elif msg["kind"] == "data":
                self.received.append(msg["data"])
                if k.get("echo"):
                    # Echo back as if from client 42 named "bob", shuffled and duplicated.
                    self.push(addr, (S_SENDER, struct.pack(">I", 42)), (S_NAME, b"bob"),
                              (S_DATA, msg["data"]), shuffle=True, dup=True)


def _spawn(args: list[str]):
    import queue
    import subprocess
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__)] + args,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.lines = queue.Queue()

    def pump():
        for ln in p.stdout:
            p.lines.put(ln.decode("utf-8", "replace").rstrip("\n"))
        p.lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return p


def _readline(p, timeout: float) -> str | None:
    import queue
    try:
        return p.lines.get(timeout=timeout)
    except queue.Empty:
        return None


def run_self_test() -> int:  # noqa: C901
    import subprocess
    import tempfile
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)
            print(f"FAIL {what}", file=sys.stderr)

    # --- TLV / outer codec ------------------------------------------------------------------
    h = enc_hello()
    check(len(h) == 64 and h[:8] == bytes.fromhex("0001003c00010001"), "HELLO layout")
    check(decode_outer(h) == (T_HELLO, {"min": 1, "max": 1}), "HELLO decode")
    ck = bytes(range(24))
    check(decode_outer(enc_cookie(1, ck)) == (T_COOKIE, {"version": 1, "cookie": ck}), "COOKIE")
    check(len(enc_cookie(1, ck)) == 30, "COOKIE is 30 bytes (section 8)")
    check(decode_outer(enc_key_request(ck))[1]["cookie"] == ck, "KEY_REQUEST")
    check(decode_outer(enc_reject(6, b"nope")) == (T_REJECT, {"code": 6, "reason": b"nope"}),
          "REJECT")
    fr = enc_fragment(5, 1, 2, b"x" * 7)
    check(decode_outer(fr)[1] == {"msg_id": 5, "index": 1, "count": 2, "chunk": b"x" * 7},
          "FRAGMENT")
    bad = [
        b"", b"\x00\x06\x00", b"\x00\x06\x00\x05abcd", b"\x00\x09\x00\x00",
        enc_hello(value_len=59), enc_sealed(b"abc") + enc_sealed(b"abc"),
        enc_sealed(b"ab+/"), enc_sealed(b""), enc_cookie(1, ck)[:-1],
        enc_fragment(1, 2, 2, b"x"), enc_fragment(1, 0, 1, b"x"), enc_fragment(1, 0, 75, b"x"),
        enc_fragment(1, 0, 2, b"x" * 100), enc_fragment(1, 1, 2, b""),
        enc_reject(1, b"x" * 101), enc_reject(1, b"\xff"), tlv(T_SEALED, b"A" * 1197),
    ]
    for i, b in enumerate(bad):
        try:
            decode_outer(b)
            check(False, f"malformed outer #{i} accepted")
        except Malformed:
            pass

    # --- inner codec --------------------------------------------------------------------------
    for pt, exp in [
        (enc_inner(1, (S_WELCOME, struct.pack(">III", 1, 10000, 30000))),
         {"kind": "welcome", "seq": 1, "client_id": 1, "keepalive_ms": 10000,
          "timeout_ms": 30000}),
        (enc_inner(2, (S_SENDER, b"\0\0\0\3"), (S_NAME, b"al"), (S_DATA, b"hi")),
         {"kind": "data", "seq": 2, "sender": 3, "name": b"al", "data": b"hi"}),
        (enc_inner(3, (S_LEAVE, b"\0\0\0\7\2")),
         {"kind": "leave", "seq": 3, "client_id": 7, "reason": 2}),
        (enc_inner(4, (S_CLOSED, b"\1")), {"kind": "closed", "seq": 4, "reason": 1}),
        (enc_inner(5, (S_JOIN, b"\0\0\0\1")), {"kind": "join", "seq": 5, "client_id": 1}),
    ]:
        check(decode_inner(pt) == exp, f"inner decode {exp['kind']}")
    check(decode_inner(c2r_data(9, b"x"), "c2r") == {"kind": "data", "seq": 9, "data": b"x"},
          "c2r data")
    for i, pt in enumerate([
        c2r_data(1, b"x"),                                     # C->R shape to client
        enc_inner(1, (S_DATA, b"x"), (S_SENDER, b"\0\0\0\1")),  # wrong order
        enc_inner(1, (S_KEEPALIVE_ACK, b"x")),                  # non-empty empty-type
        enc_inner(1, (S_JOIN, b"\0\0\1")),                       # short id
        tlv(S_JOIN, b"\0\0\0\1"),                                # missing SEQ
        enc_inner(1, (S_SHUTDOWN, b"")) + b"\0",                 # trailing garbage
        enc_inner(1, (0x010D, b"")),
    ]):
        try:
            decode_inner(pt)
            check(False, f"malformed inner #{i} accepted")
        except Malformed:
            pass

    # --- vectors.py agrees with this client's encoders -----------------------------------------
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import vectors as V
        vec = dict(V.vectors())
        check(vec["a_data_hello.plaintext"] == c2r_data(1, b"hello").hex(), "vector a")
        check(vec["b_keepalive.plaintext"] == c2r_keepalive(7).hex(), "vector b")
        check(vec["c_welcome.plaintext"] ==
              enc_inner(1, (S_WELCOME, struct.pack(">III", 1, 10000, 30000))).hex(), "vector c")
        check(vec["d_sender_data.plaintext"] ==
              enc_inner(2, (S_SENDER, struct.pack(">I", 3)), (S_DATA, b"hi")).hex(), "vector d")
        check(vec["hello.datagram"] == enc_hello().hex(), "vector hello")
        vf = Fernet(vec["fernet_key"].encode())
        for n in ("a_data_hello", "b_keepalive", "c_welcome", "d_sender_data"):
            tok = vec[n + ".token"].encode()
            check(open_token(vf, tok).hex() == vec[n + ".plaintext"], f"vector {n} token")
            check(open_token(vf, tok.rstrip(b"=")).hex() == vec[n + ".plaintext"],
                  f"vector {n} unpadded token")
            check(decode_outer(bytes.fromhex(vec[n + ".datagram"])) == (T_SEALED, {"token": tok}),
                  f"vector {n} datagram")
    except ImportError:
        check(False, "vectors.py importable")

    # --- Fernet strictness --------------------------------------------------------------------
    f1, f2 = Fernet(Fernet.generate_key()), Fernet(Fernet.generate_key())
    tok = f1.encrypt(b"abc")
    check(open_token(f1, tok) == b"abc", "token round trip")
    for i, bt in enumerate([f2.encrypt(b"abc"), tok[:-5] + b"AAAA=", tok[:10] + b"." + tok[11:]]):
        try:
            open_token(f1, bt)
            check(False, f"bad token #{i} accepted")
        except Malformed:
            pass

    # --- replay window --------------------------------------------------------------------------
    w = ReplayWindow()
    check(not w.check(0), "seq 0 rejected")
    for s in (1, 3, 2):
        check(w.check(s), f"fresh seq {s}")
        w.update(s)
    check(not w.check(2), "duplicate rejected")
    w.update(2000)
    check(w.check(977) and not w.check(976), "window edge: 1024 newest numbers (977..2000)")
    w.update(977)
    check(not w.check(977), "in-window duplicate")
    w.update(5000)
    check(not w.check(2000) and w.check(4000) and not w.check(3976), "big jump")
    check(w.check(2 ** 64 - 1), "max seq")

    # --- fragmentation ---------------------------------------------------------------------------
    fk = Fernet(Fernet.generate_key())
    try:
        c2r_data(1, bytes(65536))
        check(False, "65536-byte DATA should not be encodable in a u16 TLV length")
    except ValueError:
        pass
    big = fk.encrypt(c2r_data(1, bytes(65535)))
    check(len(big) == 87480, f"65535-byte DATA token is 87480 chars (got {len(big)})")
    # what the doc's 87,500 figure corresponds to: a 65552-byte plaintext (SEQ + 65536 DATA)
    check(len(fk.encrypt(bytes(12 + 4 + 65536))) == 87500, "doc 87500 figure")
    frags = fragment_token(big, 77)
    check(len(frags) == 74 and all(len(d) <= 1200 for d in frags), "74 fragments <= 1200")
    check(all(len(d) == 1200 for d in frags[:-1]), "full fragments are exactly 1200 bytes")
    tok60 = fk.encrypt(c2r_data(1, os.urandom(60 * 1024)))
    frags = fragment_token(tok60, 1)
    order = list(range(len(frags)))
    random.shuffle(order)
    ra = Reassembler()
    res = None
    for i in order:
        t, f = decode_outer(frags[i])
        r = ra.add(f["msg_id"], f["index"], f["count"], f["chunk"], 0.0)
        if r is not None:
            res = r
    check(res == tok60 and not ra.entries, "60 KiB shuffled reassembly")
    check(len(fragment_token(b"A" * 1196, 1)) == 1 and len(fragment_token(b"A" * 1197, 1)) == 2,
          "fragment threshold 1196/1197")
    ra = Reassembler()
    ra.add(1, 0, 3, b"a" * 1188, 0.0)
    ra.add(2, 0, 2, b"b" * 1188, 0.0)
    for args, what in [((1, 0, 3, b"a" * 1188), "duplicate index"),
                       ((1, 1, 4, b"a" * 1188), "count mismatch")]:
        try:
            ra.add(*args, 0.1)
            check(False, what + " accepted")
        except Malformed:
            pass
    check(set(ra.entries) == {1, 2} and len(ra.entries[1]["chunks"]) == 1,
          "rejected fragments leave reassemblies intact")
    check(ra.add(2, 1, 2, b"c", 1.0) == b"b" * 1188 + b"c", "other reassembly completes")
    check(ra.add(1, 1, 3, b"a" * 1188, 5.0) is None and len(ra.entries) == 1
          and ra.entries[1]["chunks"].keys() == {1} and ra.entries[1]["start"] == 5.0,
          "5 s timeout discards (a late fragment starts afresh)")

    # --- escaping --------------------------------------------------------------------------------
    check(escape_text(b"a\\b\nc\rd\te\x01\x7f\xff\xc3\xa9 \xe2\x82") ==
          "a\\\\b\\nc\\rd\\te\\x01\\x7f\\xffé \\xe2\\x82", "escape")

    # --- end to end against the fake relay -------------------------------------------------------
    group = "239.255.77.77"

    def port():
        return random.randint(20000, 60000)

    # 1: full session, 60 KiB file, echo, replays, malformed datagrams, EOF disconnect.
    pt_ = port()
    relay = FakeRelay(group, pt_, echo=True)
    relay.start()
    payload = bytes(random.getrandbits(8) for _ in range(60 * 1024))
    with tempfile.NamedTemporaryFile(delete=False) as tf:
        tf.write(payload)
    p = _spawn(["--port", str(pt_), "--server-fingerprint", relay.fingerprint,
                "--send-file", tf.name])
    ln = _readline(p, 10)
    check(ln is not None and ln.startswith("ready 1 " + relay.fingerprint), f"ready line: {ln}")
    ln = _readline(p, 10)
    check(ln == "msg 42@bob " + escape_text(payload),
          f"60 KiB echoed message: {ln[:80] if ln else ln!r}")
    check(relay.received[:1] == [payload], "relay got the 60 KiB message intact")
    with relay.lock:
        addr = next(iter(relay.sessions))
        s = relay.sessions[addr]
        tok = relay.push(addr, (S_JOIN, b"\0\0\0\7"), (S_NAME, b"eve"))
        relay.send(addr, enc_sealed(tok))                            # replay
        relay.send(addr, b"\x00\x06\x00\x10garbage")                   # truncated
        relay.send(addr, enc_fragment(9, 3, 2, b"x"))                  # index >= count
        relay.send(addr, enc_sealed(Fernet(Fernet.generate_key()).encrypt(b"x")))  # wrong key
        relay.send(addr, enc_sealed(s["fernet"].encrypt(c2r_data(99, b"x"))))     # bad shape
        relay.push(addr, (S_LEAVE, b"\0\0\0\7\3"))
        relay.push(addr, (S_KEEPALIVE_ACK, b""))
        relay.push(addr, (S_LEAVE, b"\0\0\0\x08\x09"))
    for exp in ("join 7@eve", "leave 7 kicked", "leave 8 9"):
        ln = _readline(p, 5)
        check(ln == exp, f"expected {exp!r}, got {ln!r}")
    p.stdin.write("tab\there \\ é\n".encode() + b"\xff\x01\n")
    p.stdin.flush()
    for exp in ("msg 42@bob tab\\there \\\\ é", "msg 42@bob \\xff\\x01"):
        ln = _readline(p, 5)
        check(ln == exp, f"expected {exp!r}, got {ln!r}")
    p.stdin.close()
    ln = _readline(p, 5)
    check(ln == "closed disconnect", f"closed on EOF, got {ln!r}")
    rc = p.wait(5)
    err = p.stderr.read().decode()
    check(rc == 0, f"exit 0 after EOF (rc={rc})")
    check(err.count("warn") >= 5, f"warnings for rejected datagrams: {err!r}")
    check(not relay.sessions, "relay saw DISCONNECT")
    relay.stop = True
    os.unlink(tf.name)

    # 2: fingerprint mismatch -> exit 3
    pt_ = port()
    relay = FakeRelay(group, pt_)
    relay.start()
    p = _spawn(["--port", str(pt_), "--server-fingerprint", "00" * 32])
    p.wait(10)
    err = p.stderr.read()
    check(p.returncode == 3 and b"fingerprint" in err, f"fingerprint mismatch rc={p.returncode}")
    relay.stop = True

    # 3: REJECT 6 -> exit 2 with 'error reject 6 ...'
    pt_ = port()
    relay = FakeRelay(group, pt_, reject_register=6)
    relay.start()
    p = _spawn(["--port", str(pt_), "--name", "al", "--token", "t0k"])
    p.wait(10)
    err = p.stderr.read()
    check(p.returncode == 2 and b"error reject 6 not admitted" in err,
          f"reject rc={p.returncode} err={err!r}")
    relay.stop = True

    # 4: nobody there -> timeout exit 2
    p = _spawn(["--port", str(port()), "--timeout", "1.5"])
    p.wait(10)
    err = p.stderr.read()
    check(p.returncode == 2 and err.startswith(b"error timeout"), f"timeout rc={p.returncode}")

    # 5: lost HELLO and lost WELCOME: retransmit, REJECT 3, restart with the same key, NAME in
    #    WELCOME; then SHUTDOWN; fast keep-alives.
    pt_ = port()
    relay = FakeRelay(group, pt_, drop_hellos=1, drop_welcomes=1, keepalive_ms=200)
    relay.start()
    p = _spawn(["--port", str(pt_), "--name", "al", "--token", "t0k", "--timeout", "8"])
    ln = _readline(p, 10)
    check(ln is not None and ln.startswith("ready 1 "), f"ready after retransmits: {ln}")
    check(relay.counts["hello"] >= 3 and relay.counts["register"] >= 3,
          f"retransmit counts {relay.counts}")
    time.sleep(1.1)
    check(relay.counts["keepalive"] >= 3, f"keepalives sent: {relay.counts['keepalive']}")
    with relay.lock:
        addr = next(iter(relay.sessions))
        relay.push(addr, (S_SHUTDOWN, b""))
    check(_readline(p, 5) == "shutdown", "shutdown line")
    check(p.wait(5) == 0, "exit 0 after shutdown")
    relay.stop = True

    # 6: SIGTERM -> DISCONNECT, exit 0
    pt_ = port()
    relay = FakeRelay(group, pt_)
    relay.start()
    p = _spawn(["--port", str(pt_)])
    check((_readline(p, 10) or "").startswith("ready 1 "), "ready (sigterm case)")
    p.send_signal(signal.SIGTERM)
    check(_readline(p, 5) == "closed disconnect", "closed after SIGTERM")
    check(p.wait(5) == 0 and not relay.sessions, "SIGTERM disconnects, exit 0")
    relay.stop = True

    if failures:
        print(f"self-test: {len(failures)} failure(s)", file=sys.stderr)
        return 1
    print("self-test: all passed")
    return 0


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="independent mcrelay v1 client")
    p.add_argument("--group", default="239.255.77.77")
    p.add_argument("--port", type=int, default=5007)
    p.add_argument("--iface", default="127.0.0.1")
    p.add_argument("--ttl", type=int, default=0)
    p.add_argument("--server-fingerprint", default=None)
    p.add_argument("--name", default=None)
    p.add_argument("--token", default=None)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--send-file", default=None)
    p.add_argument("--self-test", action="store_true")
    a = p.parse_args(argv)
    if (a.name is None) != (a.token is None):
        p.error("--name and --token go together")
    if a.name is not None and (" " in a.name or "\n" in a.name or "\n" in a.token):
        p.error("--name must not contain space/newline; --token must not contain newline")
    if a.server_fingerprint is not None:
        fp = a.server_fingerprint.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", fp):
            p.error("--server-fingerprint must be 64 hex digits")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.self_test:
        return run_self_test()
    return Client(a).run()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
