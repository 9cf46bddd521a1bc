#!/usr/bin/env python3
"""The smallest complete mcrelay client: protocol version 3, unicast mode.

python3 minimal_client.py GROUP PORT [FINGERPRINT]   (stdlib + the `cryptography` package)
Registers, sends each stdin line as one message, prints what arrives, disconnects at EOF.
"""
import base64, hashlib, os, random, select, socket, struct, sys, time
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

GROUP, PORT, IFACE = sys.argv[1], int(sys.argv[2]), "127.0.0.1"
PIN = sys.argv[3] if len(sys.argv) > 3 else None
SEQ, DATA, SENDER, NAME, KEEPALIVE, ACK, DISCONNECT, WELCOME, JOIN, LEAVE, SHUTDOWN, \
    CLOSED, FRAG, DIST, GROUP_KEY, KEY_ACK, KEY_PULL, MEMBERS, GSEQ = range(0x0101, 0x0114)


def tlv(t, v=b""):
    return struct.pack(">HH", t, len(v)) + v


def tlvs(b):
    out = []
    while b:
        if len(b) < 4 or len(b) < 4 + struct.unpack_from(">H", b, 2)[0]:
            raise ValueError("truncated TLV")
        t, n = struct.unpack_from(">HH", b)
        out.append((t, b[4:4 + n]))
        b = b[4 + n:]
    return out


def say(line):
    print(line, flush=True)


# Section 1: one socket, bound to the interface, sending everything to the group.
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
sock.bind((IFACE, 0))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(IFACE))
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
key = Fernet.generate_key()          # 44 bytes of base64url: the OAEP plaintext (3.4)
fernet = Fernet(key)
state = {"seq": 1, "top": 0, "seen": set(), "last_tx": 0.0}


def send(d):
    sock.sendto(d, (GROUP, PORT))


def seal(body):                      # SEALED{SEQ, body}: a binary Fernet token (4)
    plain = tlv(SEQ, struct.pack(">Q", state["seq"])) + body
    state["seq"] += 1
    state["last_tx"] = time.monotonic()
    send(tlv(0x0006, base64.urlsafe_b64decode(fernet.encrypt(plain))))


def unseal(value):                   # -> TLVs after SEQ, or None (forged, malformed, replay)
    try:
        items = tlvs(fernet.decrypt(base64.urlsafe_b64encode(value)))
    except (InvalidToken, ValueError, struct.error):
        return None
    if not items or items[0][0] != SEQ or len(items[0][1]) != 8:
        return None
    (seq,) = struct.unpack(">Q", items[0][1])
    if seq == 0 or seq in state["seen"] or state["top"] - seq >= 960:    # section 5
        return None
    state["top"] = max(state["top"], seq)
    state["seen"].add(seq)
    return items[1:]


# Section 3: HELLO, COOKIE, KEY_REQUEST, PUBLIC_KEY, REGISTER, WELCOME; retried from HELLO.
reply, welcome, delay, deadline = None, None, 0.5, time.monotonic() + 10
while welcome is None:
    if time.monotonic() > deadline:
        sys.exit("error: no WELCOME within 10 s")
    send(tlv(0x0001, struct.pack(">HH", 3, 3) + bytes(56)))
    cookie, until = None, time.monotonic() + delay * random.uniform(0.75, 1.25)
    delay = min(delay * 2, 8.0)
    while welcome is None and select.select([sock], [], [], max(0, until - time.monotonic()))[0]:
        d, src = sock.recvfrom(2048)
        try:
            ((t, v),) = tlvs(d)
        except ValueError:
            continue
        if t == 0x0002 and cookie is None and v[:2] == b"\x00\x03":      # COOKIE
            cookie, reply = v[2:], src
            send(tlv(0x0003, cookie))                                    # KEY_REQUEST
        elif t == 0x0008 and (cookie is None or src == reply):           # REJECT
            if v[:2] in (b"\x00\x02", b"\x00\x03"):
                break           # the cookie failed: a new HELLO now (3.8)
        elif src != reply:      # the others wait for the next retry
            continue
        elif t == 0x0004 and cookie is not None:                         # PUBLIC_KEY
            try:
                pub = serialization.load_pem_public_key(v)
            except ValueError:
                continue
            der = pub.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
            fp = hashlib.sha256(der).hexdigest()
            if PIN and fp != PIN:
                sys.exit(f"error: relay key {fp} is not the pinned one")
            oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()),
                                algorithm=hashes.SHA256(), label=None)
            send(tlv(0x0005, cookie + pub.encrypt(key, oaep)))           # REGISTER
        elif t == 0x0006:                                                # SEALED
            body = unseal(v)
            if body and body[0][0] == WELCOME:
                welcome = struct.unpack(">III", body[0][1])
my_id, keepalive, timeout = welcome[0], welcome[1] / 1000, welcome[2] / 1000
say(f"ready {my_id} {fp}")


def show(body):                      # print one message or notice
    kinds = {t: v for t, v in body}
    who = f"@{kinds[NAME].decode()}" if NAME in kinds else ""
    if SENDER in kinds and DATA in kinds:
        text = kinds[DATA].decode("utf-8", "replace").replace("\n", "\\n")
        say(f"msg {struct.unpack('>I', kinds[SENDER])[0]}{who} {text}")
    elif JOIN in kinds:
        say(f"join {struct.unpack('>I', kinds[JOIN])[0]}{who}")
    elif LEAVE in kinds:
        say("leave %d %d" % struct.unpack(">IB", kinds[LEAVE]))


def handle(body):                    # one authenticated plaintext, after SEQ
    kind, value = body[0]
    if kind == FRAG:                 # one piece of a larger body (6.2)
        mid, index, count = struct.unpack_from(">IHH", value)
        got = pieces.setdefault(mid, {})
        got[index] = value[8:]
        if len(got) < count:
            return
        body = tlvs(b"".join(got[i] for i in range(count)))
        del pieces[mid]
        kind, value = body[0]
    if kind == MEMBERS:              # section 3.7: who was already there
        i = 1
        while i < len(value):
            cid, n = struct.unpack_from(">IB", value, i)
            say(f"present {cid}" + (f"@{value[i + 5:i + 5 + n].decode()}" if n else ""))
            i += 5 + n
    elif kind == CLOSED:
        say(f"closed {value[0]}")
        sys.exit(0)
    elif kind == SHUTDOWN:
        say("shutdown")
        sys.exit(0)
    elif kind in (SENDER, JOIN, LEAVE):
        show(body)


# Section 7: the session. Messages out, events in, keep-alives, disconnect at EOF.
pieces, last_rx, last_ka, closing, inbuf = {}, time.monotonic(), 0.0, None, b""
while True:
    now = time.monotonic()
    if closing is not None and now > closing or now - last_rx > timeout:
        sys.exit(0 if closing else "lost: the relay is silent")
    if closing is None and (now - state["last_tx"] >= keepalive or
                            (now - last_rx >= keepalive and now - last_ka >= keepalive)):
        seal(tlv(KEEPALIVE))
        last_ka = now
    ready, _, _ = select.select([sock] + ([0] if closing is None else []), [], [], 0.2)
    if 0 in ready:
        chunk = os.read(0, 1 << 16)
        if not chunk:                # EOF: DISCONNECT, wait up to 1 s for CLOSED(1)
            seal(tlv(DISCONNECT))
            closing = now + 1.0
        inbuf += chunk
        while b"\n" in inbuf:
            line, inbuf = inbuf.split(b"\n", 1)
            data = tlv(DATA, line)
            if 4 + 57 + 16 * ((12 + len(data)) // 16 + 1) <= 1200:   # the token fits
                seal(data)
            else:                    # section 6.2: cut the body, seal each piece
                chunks = [data[i:i + 1088] for i in range(0, len(data), 1088)]
                mid = random.getrandbits(32)
                for i, c in enumerate(chunks):
                    seal(tlv(FRAG, struct.pack(">IHH", mid, i, len(chunks)) + c))
    if sock not in ready:
        continue
    d, src = sock.recvfrom(2048)
    try:
        ((t, v),) = tlvs(d)
    except ValueError:
        continue
    body = unseal(v) if t == 0x0006 and src == reply else None
    if not body:
        continue
    last_rx = now
    try:
        handle(body)
    except (ValueError, KeyError, IndexError, struct.error):
        pass                         # a malformed plaintext: drop it
