#!/usr/bin/env python3
"""An independent mcrelay client, protocol versions 1 to 3, unicast and group mode.

Written from docs/protocol.md alone (no relay source was read). Standard library plus the
`cryptography` package (AES-CBC, RSA-OAEP; HMAC from the standard library). Fernet tokens are
built from those primitives, in binary, exactly as the Fernet spec lays them out; version 1
base64-encodes them.

Usage:
  v3client.py --group G --port P [--iface 127.0.0.1] [--ttl 0] [--pin HEX]
              [--name N --token T] [--max-version 3] [--timeout 10] [--reconnect-timeout 60]
              [--verbose]
  v3client.py --vectors        print the test vectors of protocol.md section 13, computed here

stdin, one command a line:
  send <text>        one message (the text's UTF-8 bytes)
  sendfile <n>       one message of n bytes: byte i is b"a"[0] + i % 26
  keepalive          a KEEPALIVE now
  disconnect         DISCONNECT; prints `closed 1` when the relay acknowledges
  stats              prints one `stats k=v ...` line
  mute / unmute      (a test hook) stop / resume sending anything: an uplink that fails
  ignore-keys <n>    (a test hook) lose the next n GROUP_KEY deliveries
  abort              exit at once without telling the relay (a crash)
  quit               disconnect (when in session), then exit 0; stdin EOF does the same

stdout, one event a line (flushed):
  ready <id> <version> <fingerprint> [name]   registered (again after `lost`)
  present <id> [name]        (v3) already there when we registered (MEMBERS)
  members <n>                (v3) the member list is complete: n entries
  join <id> [name] | leave <id> <reason>
  msg <sender> <len> <sha256-hex-16> [name]
  ack                        a KEEPALIVE_ACK
  group <addr:port> <epoch>  (group mode) a new current group epoch key installed
  closed <reason> | shutdown | lost <no-session|silence|shutdown>
  stats ...                  | error <text> (then exit 2; exit 3: the relay key is not the pin)
stderr (with --verbose): `drop <why>` and other diagnostics.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import random
import selectors
import socket
import struct
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

# ------------------------------------------------------------------------------------------
# Constants of protocol.md
# ------------------------------------------------------------------------------------------
MAX_DATAGRAM = 1200                     # section 1
HELLO_MIN_VALUE = 60                    # 3.1
COOKIE_LEN = 24                         # 3.2
FRAGMENT_CHUNK = 1188                   # 6.1 (versions 1, 2)
FRAGMENT_MAX_COUNT = 74
FRAG_CHUNK = 1088                       # 6.2 (version 3)
FRAG_MAX_COUNT = 64
REASSEMBLY_TIMEOUT = 5.0                # 6.1
REASM_MAX_MESSAGES = 4                  # 6.2: the reference client's caps (per space here)
REASM_MAX_BYTES = 384 * 1024
WINDOW = 960                            # 5
RATCHET_LABEL = b"mcrelay group ratchet"  # 12.2: 21 ASCII bytes
RATCHET_MAX_STEPS = 8                   # 12.2
KEY_PULL_INTERVAL = 0.5                 # 12.3
PROBE_WAIT = 1.0                        # 7.5
REJECT2_MIN_INTERVAL = 0.25             # 3.8
FULL_BACKOFF = [1.0, 2.0, 4.0, 8.0, 8.0]  # 3.8, REJECT(5)
SUPPORTED = (1, 2, 3)

# Outer types (section 2)
HELLO, COOKIE, KEY_REQUEST, PUBLIC_KEY, REGISTER, SEALED, FRAGMENT, REJECT, GROUP, NO_SESSION = \
    range(1, 11)
OUTER_KNOWN = set(range(1, 11))

# Sealed (inner) types
SEQ, DATA, SENDER, NAME, KEEPALIVE, KEEPALIVE_ACK, DISCONNECT, WELCOME, JOIN, LEAVE, SHUTDOWN, \
    CLOSED, FRAG, DIST, GROUP_KEY, KEY_ACK, KEY_PULL, MEMBERS, GSEQ = range(0x0101, 0x0114)
INNER_V12 = set(range(SEQ, CLOSED + 1))
INNER_V3 = set(range(SEQ, GSEQ + 1))
INNER_FIXED = {SEQ: 8, SENDER: 4, KEEPALIVE: 0, KEEPALIVE_ACK: 0, DISCONNECT: 0, WELCOME: 12,
               JOIN: 4, LEAVE: 5, SHUTDOWN: 0, CLOSED: 1, DIST: 11, GROUP_KEY: 36, KEY_ACK: 4,
               KEY_PULL: 4, GSEQ: 8}
NAME_CHARS = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")

# The R->C shapes (section 2, last table): the TLV types after SEQ, as a pattern where a
# trailing "?" marks an optional TLV. Expanded below into every allowed tuple.
def _expand(*pattern):
    shapes = [()]
    for p in pattern:
        opt = isinstance(p, tuple)
        t = p[0] if opt else p
        shapes = [s + (t,) for s in shapes] + (shapes if opt else [])
    return set(shapes)


R2C_V12 = set().union(
    _expand(WELCOME, (NAME,)), _expand(SENDER, (NAME,), DATA), {(KEEPALIVE_ACK,)},
    _expand(JOIN, (NAME,)), {(LEAVE,)}, {(SHUTDOWN,)}, {(CLOSED,)})
R2C_V3 = set().union(
    _expand(WELCOME, (NAME,), DIST), _expand((GSEQ,), SENDER, (NAME,), DATA), {(KEEPALIVE_ACK,)},
    _expand((GSEQ,), JOIN, (NAME,)), _expand((GSEQ,), LEAVE),
    # The table lists only SEQ, SHUTDOWN; 12.5 says every group item has a channel copy with
    # GSEQ, and 7.3 says SHUTDOWN is a group item: accept both forms.
    _expand((GSEQ,), SHUTDOWN),
    {(CLOSED,)}, {(MEMBERS,)}, {(GROUP_KEY,)}, {(FRAG,)})
# What a reassembled channel body may be (6.2: "e.g. DATA(...) or GSEQ, SENDER, NAME, DATA").
BODY_CHANNEL = _expand((GSEQ,), SENDER, (NAME,), DATA) | _expand((GSEQ,), JOIN, (NAME,))
GROUP_SHAPES = set().union(_expand(SENDER, (NAME,), DATA), _expand(JOIN, (NAME,)), {(LEAVE,)},
                           {(SHUTDOWN,)}, {(FRAG,)})
BODY_GROUP = _expand(SENDER, (NAME,), DATA) | _expand(JOIN, (NAME,))


class Malformed(Exception):
    pass


# ------------------------------------------------------------------------------------------
# TLV and Fernet
# ------------------------------------------------------------------------------------------
def tlv(t: int, v: bytes = b"") -> bytes:
    if len(v) > 0xFFFF:
        raise ValueError("TLV value too long")
    return struct.pack(">HH", t, len(v)) + v


def parse_tlvs(buf: bytes, known: set) -> list:
    if not buf:
        raise Malformed("empty")
    out, i, n = [], 0, len(buf)
    while i < n:
        if n - i < 4:
            raise Malformed("truncated TLV header")
        t, ln = struct.unpack_from(">HH", buf, i)
        i += 4
        if ln > n - i:
            raise Malformed("TLV runs past the end")
        if t not in known:
            raise Malformed(f"unknown type 0x{t:04x}")
        out.append((t, bytes(buf[i:i + ln])))
        i += ln
    return out


def fernet_encrypt(key: bytes, plaintext: bytes, iv: bytes | None = None,
                   ts: int | None = None) -> bytes:
    """A binary Fernet token: 0x80 | ts u64 | iv | AES-128-CBC-PKCS7 | HMAC-SHA256."""
    iv = os.urandom(16) if iv is None else iv
    ts = int(time.time()) if ts is None else ts
    padder = sym_padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(key[16:]), modes.CBC(iv)).encryptor()
    basic = b"\x80" + struct.pack(">Q", ts) + iv + enc.update(padded) + enc.finalize()
    return basic + hmac.new(key[:16], basic, hashlib.sha256).digest()


def fernet_decrypt(key: bytes, token: bytes) -> bytes:
    """Verify and open a binary token (no timestamp check: 4 says clients need not)."""
    if len(token) < 73 or (len(token) - 57) % 16 or token[0] != 0x80:
        raise Malformed("not a Fernet token")
    mac = hmac.new(key[:16], token[:-32], hashlib.sha256).digest()
    if not hmac.compare_digest(mac, token[-32:]):
        raise Malformed("bad HMAC")
    dec = Cipher(algorithms.AES(key[16:]), modes.CBC(token[9:25])).decryptor()
    padded = dec.update(token[25:-32]) + dec.finalize()
    unpad = sym_padding.PKCS7(128).unpadder()
    try:
        return unpad.update(padded) + unpad.finalize()
    except ValueError:
        raise Malformed("bad padding")


def token_size(plain_len: int) -> int:
    return 57 + 16 * (plain_len // 16 + 1)


def b64_value(token: bytes) -> bytes:
    return base64.urlsafe_b64encode(token)


def unb64_value(v: bytes) -> bytes:
    body = v.rstrip(b"=")
    if any(c not in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
           for c in body):
        raise Malformed("not base64url")
    try:
        return base64.urlsafe_b64decode(body + b"=" * (-len(body) % 4))
    except ValueError:
        raise Malformed("bad base64")


def ratchet(key: bytes, next_epoch: int) -> bytes:
    """12.2: K(e + 1) = HMAC-SHA256(K(e), "mcrelay group ratchet" || u32be(e + 1))."""
    return hmac.new(key, RATCHET_LABEL + struct.pack(">I", next_epoch), hashlib.sha256).digest()


# ------------------------------------------------------------------------------------------
# Replay window (5) and reassembly (6)
# ------------------------------------------------------------------------------------------
class Window:
    """Accept seq exactly when seq != 0 and (seq > top or (top - seq < 960 and not seen))."""

    def __init__(self):
        self.top = 0
        self.seen = set()

    def check(self, s: int) -> bool:
        if s == 0:
            return False
        if s > self.top:
            return True
        return self.top - s < WINDOW and s not in self.seen

    def accept(self, s: int) -> None:
        if s > self.top:
            self.top = s
            if len(self.seen) > 4 * WINDOW:
                self.seen = {x for x in self.seen if self.top - x < WINDOW}
        self.seen.add(s)


class Reassembly:
    def __init__(self, chunk: int, max_count: int):
        self.chunk, self.max_count = chunk, max_count
        self.entries = {}  # msg_id -> [start, count, {index: bytes}, size, extra]

    def expire(self, now: float) -> int:
        dead = [m for m, e in self.entries.items() if now - e[0] >= REASSEMBLY_TIMEOUT]
        for m in dead:
            del self.entries[m]
        return len(dead)

    def deadline(self):
        return min((e[0] + REASSEMBLY_TIMEOUT for e in self.entries.values()), default=None)

    def add(self, now, msg_id, index, count, chunk, extra=None):
        """Returns (bytes, extra) when complete, else None. Raises Malformed for a piece to
        drop (the reassembly it claimed stays as it was)."""
        if not 2 <= count <= self.max_count or index >= count:
            raise Malformed("piece index/count out of range")
        if (index < count - 1 and len(chunk) != self.chunk) or not 1 <= len(chunk) <= self.chunk:
            raise Malformed("piece chunk length wrong for its position")
        e = self.entries.get(msg_id)
        if e is None:
            while self.entries and (len(self.entries) >= REASM_MAX_MESSAGES or
                                    sum(x[3] for x in self.entries.values()) + len(chunk)
                                    > REASM_MAX_BYTES):
                oldest = min(self.entries, key=lambda m: self.entries[m][0])
                del self.entries[oldest]
            e = self.entries[msg_id] = [now, count, {}, 0, extra]
        if e[1] != count:
            raise Malformed("piece count differs from its reassembly")
        if index in e[2]:
            raise Malformed("duplicate piece")
        e[2][index] = chunk
        e[3] += len(chunk)
        if len(e[2]) < count:
            return None
        del self.entries[msg_id]
        return b"".join(e[2][i] for i in range(count)), e[4]


# ------------------------------------------------------------------------------------------
# Parsing of sealed plaintexts
# ------------------------------------------------------------------------------------------
def check_inner_values(tl: list) -> None:
    for t, v in tl:
        fixed = INNER_FIXED.get(t)
        if fixed is not None and len(v) != fixed:
            raise Malformed(f"0x{t:04x} value of {len(v)} bytes")
        if t == NAME and not (1 <= len(v) <= 32 and all(c in NAME_CHARS for c in v)):
            raise Malformed("bad NAME")
        if t == FRAG and len(v) < 9:
            raise Malformed("short FRAG")
        if t == MEMBERS and len(v) < 1:
            raise Malformed("empty MEMBERS")


def parse_plain(pt: bytes, known: set, shapes: set):
    """(seq, [(type, value)...] after SEQ), or Malformed."""
    tl = parse_tlvs(pt, known)
    if tl[0][0] != SEQ:
        raise Malformed("plaintext does not start with SEQ")
    rest = tl[1:]
    if tuple(t for t, _ in rest) not in shapes:
        raise Malformed("plaintext shape " + ",".join(f"{t:04x}" for t, _ in tl))
    check_inner_values(tl)
    return struct.unpack(">Q", tl[0][1])[0], rest


def parse_body(body: bytes, shapes: set) -> list:
    tl = parse_tlvs(body, INNER_V3)
    if tuple(t for t, _ in tl) not in shapes:
        raise Malformed("reassembled body shape")
    check_inner_values(tl)
    return tl


def parse_members(v: bytes):
    flags, i, out = v[0], 1, []
    if flags & ~1:
        raise Malformed("MEMBERS flags")
    while i < len(v):
        if len(v) - i < 5:
            raise Malformed("MEMBERS entry truncated")
        cid, nl = struct.unpack_from(">IB", v, i)
        i += 5
        if nl > 32 or len(v) - i < nl:
            raise Malformed("MEMBERS name")
        out.append((cid, v[i:i + nl].decode("ascii", "replace") if nl else None))
        i += nl
    return bool(flags & 1), out


def pattern(n: int) -> bytes:
    return bytes(97 + i % 26 for i in range(n))


# ------------------------------------------------------------------------------------------
# The client
# ------------------------------------------------------------------------------------------
class Client:
    def __init__(self, a):
        self.a = a
        self.group = (a.group, a.port)
        self.iface = a.iface
        self.pin = bytes.fromhex(a.pin) if a.pin else None
        self.sel = selectors.DefaultSelector()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        u.bind((a.iface, 0))
        u.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(a.iface))
        u.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, a.ttl)
        u.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        u.setblocking(False)
        self.u = u
        self.sel.register(u, selectors.EVENT_READ, "u")
        self.sel.register(0, selectors.EVENT_READ, "stdin")
        self.stdin_buf = b""
        self.gsock = None
        self.relay_pem = None      # cached relay key (3.3: a client that knows it may skip)
        self.fingerprint = None
        self.stats = dict(group_rx=0, group_open=0, group_sealed=0, group_foreign=0,
                          group_replay=0, group_dup=0, delivered=0, drops=0, no_session=0,
                          key_pulls=0, key_acks=0, probes=0, lost=0, keepalives=0,
                          reject=0)
        self.msg_id = random.getrandbits(32)
        self.state = "handshake"
        self.reply = None
        self.exit_code = None
        self.muted = False
        self.ignore_keys = 0
        self.begin_handshake(a.timeout, first_delay=0.0)

    # -- output -------------------------------------------------------------------------
    def out(self, line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def log(self, line: str) -> None:
        if self.a.verbose:
            sys.stderr.write(f"[{time.monotonic():.3f}] {line}\n")
            sys.stderr.flush()

    def drop(self, why: str) -> None:
        self.stats["drops"] += 1
        self.log("drop " + why)

    def send_dgram(self, d: bytes) -> None:
        assert len(d) <= MAX_DATAGRAM, len(d)
        if self.muted:
            return self.log("muted: datagram not sent")
        try:
            self.u.sendto(d, self.group)
        except (BlockingIOError, OSError) as e:  # pragma: no cover - loopback never refuses
            self.log(f"send failed: {e}")

    # -- handshake (3, 3.8) -------------------------------------------------------------
    def begin_handshake(self, deadline_s: float, first_delay: float) -> None:
        """A new registration: a fresh Fernet key (3.4, 7.5), the retry schedule from 0."""
        self.state = "handshake"
        self.key = os.urandom(32)
        self.hs_deadline = time.monotonic() + deadline_s
        self.retry_index = 0
        self.reject_counts = {}
        self.last_restart = -1e9
        self.full_until = 0.0
        self.full_index = 0
        self.attempt = None
        self.next_hello = time.monotonic() + first_delay
        self.reset_session()

    def reset_session(self) -> None:
        self.id = None
        self.version = None
        self.tx_seq = 1
        self.rx = Window()
        self.known = {}
        self.members_seen = 0
        self.chan_reasm = Reassembly(FRAG_CHUNK, FRAG_MAX_COUNT)
        self.frag12 = Reassembly(FRAGMENT_CHUNK, FRAGMENT_MAX_COUNT)
        self.close_group()
        self.dist = None
        self.gkeys = {}
        self.erase = []
        self.gwin = Window()
        self.items = Window()
        self.grp_reasm = Reassembly(FRAG_CHUNK, FRAG_MAX_COUNT)
        self.last_pull = -1e9
        self.probe_until = None
        self.last_probe = float("-inf")
        self.disc_until = None

    def jitter(self, d: float) -> float:
        return d * random.uniform(0.75, 1.25)

    def send_hello(self, now: float) -> None:
        self.attempt = {"cookie": None, "phase": "cookie"}
        self.send_dgram(tlv(HELLO, struct.pack(">HH", 1, self.a.max_version)
                            + bytes(HELLO_MIN_VALUE - 4)))
        delay = min(0.5 * (2 ** self.retry_index), 8.0)
        self.retry_index += 1
        self.next_hello = now + self.jitter(delay)
        self.log(f"HELLO (next retry in {self.next_hello - now:.2f}s)")

    def give_up(self, why: str, code: int = 2) -> None:
        self.out(f"error {why}")
        self.exit_code = code

    def on_cookie(self, v: bytes, src, now: float) -> None:
        if len(v) != 2 + COOKIE_LEN:
            return self.drop("COOKIE of wrong size")
        (ver,) = struct.unpack_from(">H", v)
        if self.attempt is None or self.attempt["cookie"] is not None:
            return self.drop("COOKIE not awaited")
        if not 1 <= ver <= self.a.max_version or ver not in SUPPORTED:
            return self.drop(f"COOKIE for version {ver}, not offered")
        self.attempt["cookie"] = v[2:]
        self.attempt["version"] = ver
        self.reply = src  # 3.2: the reply address for the rest of this attempt
        if self.relay_pem is not None:
            self.send_register(now)
        else:
            self.attempt["phase"] = "key"
            self.send_dgram(tlv(KEY_REQUEST, self.attempt["cookie"]))

    def on_public_key(self, v: bytes, now: float) -> None:
        if self.attempt is None or self.attempt["phase"] != "key":
            return self.drop("PUBLIC_KEY not awaited")
        try:
            pub = serialization.load_pem_public_key(v)
        except ValueError:
            return self.drop("PUBLIC_KEY does not parse")
        if not isinstance(pub, rsa.RSAPublicKey) or not 2048 <= pub.key_size <= 4096:
            return self.drop("PUBLIC_KEY not an RSA key of 2048..4096 bits")
        der = pub.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
        fp = hashlib.sha256(der).digest()
        if self.pin is not None and fp != self.pin:
            return self.give_up(f"relay key {fp.hex()} is not the pinned one", 3)
        if self.pin is None and self.fingerprint is not None and fp != self.fingerprint:
            return self.give_up(f"relay key changed to {fp.hex()}", 3)
        self.fingerprint = fp
        self.relay_pem = v
        self.send_register(now)

    def send_register(self, now: float) -> None:
        pub = serialization.load_pem_public_key(self.relay_pem)
        plain = base64.urlsafe_b64encode(self.key)
        if self.a.name:
            plain += b"\n" + self.a.name.encode() + b" " + self.a.token.encode()
        ct = pub.encrypt(plain, asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA256()),
                                                  algorithm=hashes.SHA256(), label=None))
        self.attempt["phase"] = "welcome"
        self.version = self.attempt["version"]
        self.send_dgram(tlv(REGISTER, self.attempt["cookie"] + ct))

    def on_reject(self, v: bytes, src, now: float) -> None:
        if self.state != "handshake" or self.attempt is None:
            return self.drop("REJECT outside the handshake")
        if self.attempt["cookie"] is not None and src != self.reply:
            return self.drop("REJECT not from the reply address")
        if len(v) < 2 or len(v) > 102:
            return self.drop("REJECT of wrong size")
        (code,) = struct.unpack_from(">H", v)
        reason = v[2:].decode("utf-8", "replace")
        self.stats["reject"] += 1
        self.log(f"REJECT {code} {reason!r}")
        if code in (2, 3):
            if now - self.last_restart >= REJECT2_MIN_INTERVAL:
                self.last_restart = now
                self.retry_index = max(0, self.retry_index - 1)  # keep the schedule's step
                self.send_hello(now)
            return
        if code == 5:
            if now < self.full_until:
                return  # a REJECT(5) while a back-off runs is ignored
            d = FULL_BACKOFF[min(self.full_index, len(FULL_BACKOFF) - 1)]
            self.full_index += 1
            self.full_until = now + d
            self.next_hello = now + d
            self.attempt = None
            return
        if code == 4:
            self.relay_pem = None
        n = self.reject_counts.get(code, 0) + 1
        self.reject_counts[code] = n
        if n >= 3:
            return self.give_up(f"handshake: REJECT {code} ({reason}) three times")
        # codes 1, 4, 6, 7 and unknown ones: retry on the schedule (next_hello stands)
        self.attempt = None

    # -- sealing ------------------------------------------------------------------------
    def seal(self, key: bytes, plain: bytes) -> bytes:
        tok = fernet_encrypt(key, plain)
        return b64_value(tok) if self.version == 1 else tok

    def send_body(self, body: bytes) -> None:
        """Send SEQ ++ body in this session's form, fragmenting if needed."""
        now = time.monotonic()
        self.last_tx = now
        plain = tlv(SEQ, struct.pack(">Q", self.tx_seq)) + body
        if self.version == 3:
            if 4 + token_size(len(plain)) <= MAX_DATAGRAM:
                self.tx_seq += 1
                return self.send_dgram(tlv(SEALED, fernet_encrypt(self.key, plain)))
            chunks = [body[i:i + FRAG_CHUNK] for i in range(0, len(body), FRAG_CHUNK)]
            if len(chunks) > FRAG_MAX_COUNT:
                raise ValueError("message too large")
            mid = self.next_msg_id()
            for i, c in enumerate(chunks):
                p = tlv(SEQ, struct.pack(">Q", self.tx_seq)) + \
                    tlv(FRAG, struct.pack(">IHH", mid, i, len(chunks)) + c)
                self.tx_seq += 1
                self.send_dgram(tlv(SEALED, fernet_encrypt(self.key, p)))
            return
        value = self.seal(self.key, plain)
        self.tx_seq += 1
        if 4 + len(value) <= MAX_DATAGRAM:
            return self.send_dgram(tlv(SEALED, value))
        chunks = [value[i:i + FRAGMENT_CHUNK] for i in range(0, len(value), FRAGMENT_CHUNK)]
        if len(chunks) > FRAGMENT_MAX_COUNT:
            raise ValueError("message too large")
        mid = self.next_msg_id()
        for i, c in enumerate(chunks):
            self.send_dgram(tlv(FRAGMENT, struct.pack(">IHH", mid, i, len(chunks)) + c))

    def next_msg_id(self) -> int:
        self.msg_id = (self.msg_id + 1) & 0xFFFFFFFF
        return self.msg_id

    def send_keepalive(self) -> None:
        self.stats["keepalives"] += 1
        self.last_ka = time.monotonic()
        self.send_body(tlv(KEEPALIVE))

    # -- receiving ----------------------------------------------------------------------
    def on_unicast(self, d: bytes, src, now: float) -> None:
        if len(d) > MAX_DATAGRAM:
            return self.drop("oversized")
        try:
            tl = parse_tlvs(d, OUTER_KNOWN)
        except Malformed as e:
            return self.drop(f"outer: {e}")
        if len(tl) != 1:
            return self.drop("more than one TLV")
        t, v = tl[0]
        if t == COOKIE and self.state == "handshake":
            return self.on_cookie(v, src, now)
        if t == REJECT:
            return self.on_reject(v, src, now)
        if t == NO_SESSION:
            # 7.5: from any address (a restarted relay answers from a new one); a hint only.
            if v:
                return self.drop("NO_SESSION not empty")
            return self.on_no_session(now, "NO_SESSION")
        if src != self.reply:
            return self.drop(f"type {t} from {src}, not the reply address {self.reply}")
        if t == PUBLIC_KEY and self.state == "handshake":
            return self.on_public_key(v, now)
        if t == SEALED:
            return self.on_sealed_value(v, now)
        if t == FRAGMENT:
            if self.version not in (1, 2):
                return self.drop("FRAGMENT in a version-3 session")
            if len(v) < 9:
                return self.drop("short FRAGMENT")
            mid, idx, cnt = struct.unpack_from(">IHH", v)
            try:
                r = self.frag12.add(now, mid, idx, cnt, v[8:])
            except Malformed as e:
                return self.drop(f"FRAGMENT: {e}")
            if r is not None:
                self.on_sealed_value(r[0], now)
            return
        self.drop(f"type {t} not expected in state {self.state}")

    def on_sealed_value(self, v: bytes, now: float) -> None:
        if self.version is None or self.state not in ("handshake", "established", "closing"):
            return self.drop("SEALED with no session")
        try:
            token = unb64_value(v) if self.version == 1 else v
            pt = fernet_decrypt(self.key, token)
            known = INNER_V3 if self.version == 3 else INNER_V12
            shapes = R2C_V3 if self.version == 3 else R2C_V12
            seq, rest = parse_plain(pt, known, shapes)
        except Malformed as e:
            return self.drop(f"SEALED: {e}")
        if not self.rx.check(seq):
            return self.drop(f"channel replay seq {seq}")
        self.rx.accept(seq)
        self.last_rx = now
        self.probe_until = None
        kinds = tuple(t for t, _ in rest)
        if kinds[0] == WELCOME:
            return self.on_welcome(rest, now)
        if self.state == "handshake":
            return self.drop("sealed message before WELCOME")
        if kinds == (FRAG,):
            mid, idx, cnt = struct.unpack_from(">IHH", rest[0][1])
            try:
                r = self.chan_reasm.add(now, mid, idx, cnt, rest[0][1][8:])
                if r is None:
                    return
                rest = parse_body(r[0], BODY_CHANNEL)
            except Malformed as e:
                return self.drop(f"channel FRAG: {e}")
        self.on_channel_body(rest, now)

    def on_channel_body(self, rest: list, now: float) -> None:
        t0, v0 = rest[0]
        if t0 == GSEQ:
            return self.deliver_item(struct.unpack(">Q", v0)[0], rest[1:], "channel")
        if t0 == KEEPALIVE_ACK:
            return self.out("ack")
        if t0 == CLOSED:
            return self.on_closed(v0[0])
        if t0 == MEMBERS:
            try:
                last, entries = parse_members(v0)
            except Malformed as e:
                return self.drop(f"MEMBERS: {e}")
            for cid, name in entries:
                self.members_seen += 1
                if cid not in self.known and cid != self.id:
                    self.known[cid] = name
                    self.out(f"present {cid}" + (f" {name}" if name else ""))
            if last:
                self.out(f"members {self.members_seen}")
                self.members_seen = 0
            return
        if t0 == GROUP_KEY:
            epoch = struct.unpack_from(">I", v0)[0]
            if self.ignore_keys > 0:  # the test hook: as if this delivery were lost
                self.ignore_keys -= 1
                return self.log(f"GROUP_KEY {epoch} ignored (test hook)")
            self.stats["key_acks"] += 1
            self.send_body(tlv(KEY_ACK, struct.pack(">I", epoch)))
            if self.dist and self.dist[0] == 2:
                self.install_key(epoch, v0[4:], now)
            return
        self.notice(rest)

    def on_welcome(self, rest: list, now: float) -> None:
        if self.state != "handshake":
            return self.log("repeated WELCOME ignored")
        cid, ka, to = struct.unpack(">III", rest[0][1])
        name = None
        dist = None
        for t, v in rest[1:]:
            if t == NAME:
                name = v.decode()
            elif t == DIST:
                mode, ga, gp, grace = struct.unpack(">B4sHI", v)
                dist = (mode, socket.inet_ntoa(ga), gp, grace)
        self.state = "established"
        self.id, self.keepalive, self.timeout_s = cid, ka / 1000.0, to / 1000.0
        self.last_tx = self.last_rx = self.last_ka = now
        self.attempt = None
        self.dist = dist
        if dist and dist[0] == 2:
            self.open_group(dist[1], dist[2])
        self.out(f"ready {cid} {self.version} {self.fingerprint.hex()}"
                 + (f" {name}" if name else ""))

    def on_closed(self, reason: int) -> None:
        self.out(f"closed {reason}")
        self.state = "closed"  # the group socket stays open: see `stats`

    def notice(self, rest: list) -> None:
        """A message or notice (unicast, a channel copy, or from the group)."""
        t0, v0 = rest[0]
        name = next((v.decode() for t, v in rest if t == NAME), None)
        if t0 == SENDER:
            sender = struct.unpack(">I", v0)[0]
            if sender == self.id:
                return  # 7.2, 12.1: our own message, back from the group
            data = rest[-1][1]
            self.stats["delivered"] += 1
            self.out(f"msg {sender} {len(data)} {hashlib.sha256(data).hexdigest()[:16]}"
                     + (f" {name}" if name else ""))
        elif t0 == JOIN:
            cid = struct.unpack(">I", v0)[0]
            if cid == self.id:
                return
            self.known[cid] = name
            self.out(f"join {cid}" + (f" {name}" if name else ""))
        elif t0 == LEAVE:
            cid, reason = struct.unpack(">IB", v0)
            if cid == self.id:
                # Our own LEAVE (seen on the group): the relay dropped us. Not authenticated
                # as from the relay (any member holds the group key): check, as NO_SESSION.
                return self.on_no_session(time.monotonic(), "own LEAVE")
            self.known.pop(cid, None)
            self.out(f"leave {cid} {reason}")
        elif t0 == SHUTDOWN:
            self.out("shutdown")
            self.out("lost shutdown")
            self.stats["lost"] += 1
            self.begin_handshake(self.a.reconnect_timeout, first_delay=self.jitter(1.0))

    def deliver_item(self, item: int, rest: list, how: str) -> None:
        """12.5: one window over item numbers, whichever way the item came."""
        if not self.items.check(item):
            self.stats["group_dup"] += 1
            return self.log(f"item {item} ({how}) already delivered")
        self.items.accept(item)
        self.notice(rest)

    # -- NO_SESSION and loss (7.5) ------------------------------------------------------
    def on_no_session(self, now: float, why: str) -> None:
        self.stats["no_session"] += 1
        if self.state != "established" or self.version != 3:
            return self.log(f"{why} ignored in state {self.state} (version {self.version})")
        if self.probe_until is not None:
            return
        if now - self.last_probe < PROBE_WAIT:
            return  # at most one probe a second, however many notices arrive
        self.last_probe = now
        self.stats["probes"] += 1
        self.probe_until = now + min(PROBE_WAIT, self.timeout_s / 2)
        self.log(f"{why}: probing with a KEEPALIVE")
        self.send_keepalive()

    def lose(self, why: str) -> None:
        self.stats["lost"] += 1
        self.out(f"lost {why}")
        self.begin_handshake(self.a.reconnect_timeout, first_delay=0.0)

    # -- group mode (12) ----------------------------------------------------------------
    def open_group(self, addr: str, port: int) -> None:
        g = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        g.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        g.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        g.bind((addr, port))
        g.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton(addr) + socket.inet_aton(self.iface))
        g.setblocking(False)
        self.gsock = g
        self.sel.register(g, selectors.EVENT_READ, "g")

    def close_group(self) -> None:
        if getattr(self, "gsock", None) is not None:
            self.sel.unregister(self.gsock)
            self.gsock.close()
            self.gsock = None

    def install_key(self, epoch: int, key: bytes, now: float) -> None:
        top = max(self.gkeys, default=0)
        if epoch < top or (epoch == top and top in self.gkeys):
            return self.log(f"key of epoch {epoch} ignored: we hold {top}")
        self.gkeys[epoch] = key
        if top:
            self.erase.append((now + self.dist[3] / 1000.0, epoch))
        self.out(f"group {self.dist[1]}:{self.dist[2]} {epoch}")

    def maybe_pull(self, epoch: int, now: float) -> None:
        if self.state != "established" or now - self.last_pull < KEY_PULL_INTERVAL:
            return
        self.last_pull = now
        self.stats["key_pulls"] += 1
        self.log(f"KEY_PULL {epoch}")
        self.send_body(tlv(KEY_PULL, struct.pack(">I", epoch)))

    def on_group(self, d: bytes, src, now: float) -> None:
        if src != self.reply:
            self.stats["group_foreign"] += 1
            return self.drop(f"group datagram from {src}, not the reply address")
        self.stats["group_rx"] += 1
        try:
            tl = parse_tlvs(d, OUTER_KNOWN)
            if len(d) > MAX_DATAGRAM or len(tl) != 1 or tl[0][0] != GROUP or len(tl[0][1]) < 77:
                raise Malformed("not a GROUP datagram")
        except Malformed as e:
            return self.drop(f"group: {e}")
        v = tl[0][1]
        epoch, token = struct.unpack_from(">I", v)[0], v[4:]
        pt = None
        key = self.gkeys.get(epoch)
        top = max(self.gkeys, default=0)
        if key is not None:
            try:
                pt = fernet_decrypt(key, token)
            except Malformed:
                pass
        elif top and 1 <= epoch - top <= RATCHET_MAX_STEPS:
            k = self.gkeys[top]
            for e in range(top + 1, epoch + 1):
                k = ratchet(k, e)
            try:
                pt = fernet_decrypt(k, token)
                if self.state == "established":
                    self.install_key(epoch, k, now)
            except Malformed:
                pass
        if pt is None:
            self.stats["group_sealed"] += 1
            if epoch > top:
                self.maybe_pull(epoch, now)
            return self.drop(f"group token of epoch {epoch} unreadable (we hold {top})")
        try:
            g, rest = parse_plain(pt, INNER_V3, GROUP_SHAPES)
        except Malformed as e:
            return self.drop(f"group plaintext: {e}")
        if not self.gwin.check(g):
            self.stats["group_replay"] += 1
            return self.drop(f"group replay g={g}")
        self.gwin.accept(g)
        self.stats["group_open"] += 1
        if self.state != "established":
            return  # kicked / closed: we still hear the group, but deliver nothing
        if rest[0][0] == FRAG:
            v = rest[0][1]
            mid, idx, cnt = struct.unpack_from(">IHH", v)
            item = g - idx + cnt - 1
            try:
                r = self.grp_reasm.add(now, mid, idx, cnt, v[8:], item)
                if r is None:
                    return
                rest = parse_body(r[0], BODY_GROUP)
                item = r[1]
            except Malformed as e:
                return self.drop(f"group FRAG: {e}")
            return self.deliver_item(item, rest, "group")
        self.deliver_item(g, rest, "group")

    # -- commands -----------------------------------------------------------------------
    def command(self, line: str) -> None:
        cmd, _, arg = line.partition(" ")
        if cmd == "stats":
            keys = ",".join(str(e) for e in sorted(self.gkeys)) or "-"
            return self.out("stats " + " ".join(f"{k}={v}" for k, v in self.stats.items())
                            + f" state={self.state} epoch={max(self.gkeys, default=0)}"
                            + f" keys={keys}")
        if cmd in ("mute", "unmute"):  # a test hook: an uplink that loses everything
            self.muted = cmd == "mute"
            return
        if cmd == "ignore-keys":  # a test hook: lose the next n GROUP_KEY deliveries
            self.ignore_keys = int(arg)
            return
        if cmd == "abort":
            self.exit_code = 0
            return
        if cmd == "quit":
            if self.state == "established":
                self.command("disconnect")
                self.quit_after_close = True
            else:
                self.exit_code = 0
            return
        if self.state != "established":
            return self.out(f"error not in session ({self.state}): {cmd}")
        if cmd == "send":
            self.send_body(tlv(DATA, arg.encode()))
        elif cmd == "sendfile":
            self.send_body(tlv(DATA, pattern(int(arg))))
        elif cmd == "keepalive":
            self.send_keepalive()
        elif cmd == "disconnect":
            self.send_body(tlv(DISCONNECT))
            self.state = "closing"
            self.disc_until = time.monotonic() + 1.0
        else:
            self.out(f"error unknown command {cmd}")

    # -- the loop -----------------------------------------------------------------------
    def timers(self, now: float) -> None:
        st = self.state
        if st == "handshake":
            if now >= self.hs_deadline:
                return self.give_up("handshake: no WELCOME before the deadline")
            if now >= self.next_hello:
                self.send_hello(now)
        if st in ("established", "closing", "closed"):
            self.chan_reasm.expire(now)
            self.grp_reasm.expire(now)
            self.frag12.expire(now)
            for t, e in [x for x in self.erase if x[0] <= now]:
                for old in [k for k in self.gkeys if k < e]:
                    del self.gkeys[old]
                    self.log(f"erased the key of epoch {old}")
                self.erase.remove((t, e))
        if st == "closing" and now >= self.disc_until:
            self.state = "closed"
        if st == "established":
            if self.probe_until is not None and now >= self.probe_until:
                return self.lose("no-session")
            if now - self.last_rx >= self.timeout_s:
                return self.lose("silence")
            idle = now - self.last_tx >= self.keepalive
            # 7.1: also when nothing was heard in the channel (and none asked for) for one
            # interval, so that a client that only sends still hears from the relay.
            quiet = (now - self.last_rx >= self.keepalive
                     and now - self.last_ka >= self.keepalive)
            if idle or quiet:
                self.send_keepalive()

    def next_deadline(self, now: float) -> float:
        ds = [now + 1.0]
        if self.state == "handshake":
            ds += [self.hs_deadline, self.next_hello]
        if self.state == "established":
            ds += [self.last_tx + self.keepalive, self.last_rx + self.timeout_s,
                   self.last_ka + self.keepalive]
            if self.probe_until is not None:
                ds.append(self.probe_until)
        if self.state == "closing":
            ds.append(self.disc_until)
        ds += [t for t, _ in self.erase]
        return max(0.0, min(ds) - now)

    def run(self) -> int:
        self.quit_after_close = False
        eof = False
        while self.exit_code is None:
            now = time.monotonic()
            self.timers(now)
            if self.exit_code is not None:
                break
            if self.quit_after_close and self.state == "closed":
                break
            for k, _ in self.sel.select(self.next_deadline(time.monotonic())):
                now = time.monotonic()
                if k.data == "stdin":
                    chunk = os.read(0, 65536)
                    if not chunk:
                        self.sel.unregister(0)
                        eof = True
                        self.command("quit")
                        continue
                    self.stdin_buf += chunk
                    while b"\n" in self.stdin_buf:
                        line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
                        line = line.decode("utf-8", "replace").rstrip("\r")
                        if line:
                            self.command(line)
                    continue
                sock = self.u if k.data == "u" else self.gsock
                if sock is None:
                    continue
                for _ in range(256):
                    try:
                        d, src = sock.recvfrom(65536)
                    except BlockingIOError:
                        break
                    if k.data == "u":
                        self.on_unicast(d, src, now)
                    else:
                        self.on_group(d, src, now)
                    if self.gsock is None and k.data == "g":
                        break
                    if self.exit_code is not None:
                        break
        del eof
        return self.exit_code or 0


# ------------------------------------------------------------------------------------------
# --vectors: section 13, computed from the layouts
# ------------------------------------------------------------------------------------------
def vectors() -> list:
    key = bytes(range(32))
    iv = bytes(range(16))
    ts = 1700000000
    gk1 = bytes(range(32, 64))

    def seq(n):
        return tlv(SEQ, struct.pack(">Q", n))

    def u32(n):
        return struct.pack(">I", n)

    cookie1 = bytes([1]) + (12345).to_bytes(7, "big") + bytes(range(16, 32))
    cookie3 = bytes([3]) + cookie1[1:]
    out = [("fernet_key", base64.urlsafe_b64encode(key).decode()), ("iv", iv.hex()),
           ("time", str(ts)),
           ("hello", tlv(HELLO, struct.pack(">HH", 1, 1) + bytes(56)).hex()),
           ("cookie", tlv(COOKIE, struct.pack(">H", 1) + cookie1).hex()),
           ("key_request", tlv(KEY_REQUEST, cookie1).hex()),
           ("reject", tlv(REJECT, struct.pack(">H", 2) + b"bad cookie").hex()),
           ("fragment_datagram", tlv(FRAGMENT, struct.pack(">IHH", 9, 1, 2) + b"xyz").hex())]
    welcome = tlv(WELCOME, struct.pack(">III", 1, 10000, 30000))
    v1 = [
        ("data_hello", seq(1) + tlv(DATA, b"hello")),
        ("keepalive", seq(7) + tlv(KEEPALIVE)),
        ("disconnect", seq(8) + tlv(DISCONNECT)),
        ("welcome", seq(1) + welcome),
        ("relayed_hi", seq(2) + tlv(SENDER, u32(3)) + tlv(DATA, b"hi")),
        ("relayed_named", seq(3) + tlv(SENDER, u32(3)) + tlv(NAME, b"alice") + tlv(DATA, b"hi")),
        ("keepalive_ack", seq(4) + tlv(KEEPALIVE_ACK)),
        ("join", seq(5) + tlv(JOIN, u32(4))),
        ("leave_timeout", seq(6) + tlv(LEAVE, u32(4) + bytes([2]))),
        ("shutdown", seq(9) + tlv(SHUTDOWN)),
        ("closed_kicked", seq(10) + tlv(CLOSED, bytes([3]))),
    ]
    plains = dict(v1)
    for name, pt in v1:
        text = b64_value(fernet_encrypt(key, pt, iv, ts))
        out += [(f"{name}.plaintext", pt.hex()), (f"{name}.token", text.decode()),
                (f"{name}.datagram", tlv(SEALED, text).hex())]
    for name in ("data_hello", "relayed_hi"):
        out.append((f"{name}.datagram_v2",
                    tlv(SEALED, fernet_encrypt(key, plains[name], iv, ts)).hex()))
    out += [("hello_v3", tlv(HELLO, struct.pack(">HH", 1, 3) + bytes(56)).hex()),
            ("cookie_v3", tlv(COOKIE, struct.pack(">H", 3) + cookie3).hex()),
            ("no_session", tlv(NO_SESSION).hex())]
    members = bytes([1]) + u32(2) + bytes([0]) + u32(3) + bytes([5]) + b"alice"
    v3 = [
        ("welcome_v3", seq(1) + welcome + tlv(DIST, struct.pack(">B4sHI", 1, bytes(4), 0, 0))),
        ("welcome_group", seq(1) + welcome + tlv(DIST, struct.pack(
            ">B4sHI", 2, socket.inet_aton("239.255.77.77"), 5008, 2000))),
        ("members", seq(2) + tlv(MEMBERS, members)),
        ("group_key", seq(3) + tlv(GROUP_KEY, u32(1) + gk1)),
        ("key_ack", seq(2) + tlv(KEY_ACK, u32(1))),
        ("key_pull", seq(3) + tlv(KEY_PULL, u32(2))),
        ("relayed_copy", seq(4) + tlv(GSEQ, struct.pack(">Q", 17)) + tlv(SENDER, u32(3))
         + tlv(DATA, b"hi")),
        ("frag_piece", seq(5) + tlv(FRAG, struct.pack(">IHH", 0x01020304, 1, 2) + b"xyz")),
    ]
    for name, pt in v3:
        out += [(f"{name}.plaintext", pt.hex()),
                (f"{name}.datagram_v3", tlv(SEALED, fernet_encrypt(key, pt, iv, ts)).hex())]
    ghi = seq(17) + tlv(SENDER, u32(3)) + tlv(DATA, b"hi")
    out += [("group_hi.plaintext", ghi.hex()),
            ("group_hi.datagram", tlv(GROUP, u32(1) + fernet_encrypt(gk1, ghi, iv, ts)).hex()),
            ("group_key_1", gk1.hex()), ("group_key_2", ratchet(gk1, 2).hex()),
            ("group_key_3", ratchet(ratchet(gk1, 2), 3).hex())]
    # Our Fernet codec against the library's own (which can take an IV and a time).
    from cryptography.fernet import Fernet
    f = Fernet(base64.urlsafe_b64encode(key))
    lib = f._encrypt_from_parts(plains["data_hello"], ts, iv)
    assert lib == b64_value(fernet_encrypt(key, plains["data_hello"], iv, ts))
    assert fernet_decrypt(key, unb64_value(lib)) == plains["data_hello"]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description="independent mcrelay client (versions 1 to 3)")
    p.add_argument("--vectors", action="store_true")
    p.add_argument("--group", default="239.255.77.77")
    p.add_argument("--port", type=int, default=5007)
    p.add_argument("--iface", default="127.0.0.1")
    p.add_argument("--ttl", type=int, default=1)
    p.add_argument("--pin", help="the relay key's SHA-256 fingerprint, hex")
    p.add_argument("--name")
    p.add_argument("--token")
    p.add_argument("--max-version", type=int, default=3, choices=SUPPORTED)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--reconnect-timeout", type=float, default=60.0)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    if a.vectors:
        for k, v in vectors():
            print(f"{k} = {v}")
        return 0
    if bool(a.name) != bool(a.token):
        p.error("--name and --token go together")
    return Client(a).run()


if __name__ == "__main__":
    sys.exit(main())
