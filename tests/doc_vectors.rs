//! docs/protocol.md §13 is checked line by line against our encoder: the document's hex
//! examples and test vectors are the contract, so they must be exactly what we send.

use std::collections::HashMap;

use std::net::{Ipv4Addr, SocketAddrV4};

use mcrelay::crypto::fernet::{self, FernetKey};
use mcrelay::crypto::key::hex;
use mcrelay::proto::group::{EpochKey, ratchet};
use mcrelay::wire::{self, Body, Dist, Outer, put_fragment};

fn vectors() -> HashMap<String, String> {
    let doc = std::fs::read_to_string("docs/protocol.md").unwrap();
    let start = doc.find("```vectors\n").expect("vectors block") + "```vectors\n".len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end]
        .lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn every_documented_byte_is_what_we_encode() {
    let v = vectors();
    let key = FernetKey::from_base64(v["fernet_key"].as_bytes()).unwrap();
    let iv: [u8; 16] = std::array::from_fn(|i| i as u8);
    assert_eq!(v["iv"], hex(&iv));
    let time: u64 = v["time"].parse().unwrap();
    // version 1, issued 12,345 ms after the relay started, then the MAC.
    let mut cookie = [0u8; 24];
    cookie[..8].copy_from_slice(&[1, 0, 0, 0, 0, 0, 0x30, 0x39]);
    for (i, b) in cookie[8..].iter_mut().enumerate() {
        *b = 0x10 + i as u8;
    }

    let mut checked = 0;
    let mut v2 = 0;
    let mut check_outer = |name: &str, m: Outer<'_>| {
        let mut d = Vec::new();
        m.write(&mut d);
        assert_eq!(hex(&d), v[name], "{name}");
        assert_eq!(Outer::parse(&d).unwrap(), m);
        checked += 1;
    };
    check_outer("hello", Outer::Hello { min: 1, max: 1 });
    check_outer(
        "cookie",
        Outer::Cookie {
            version: 1,
            cookie: &cookie,
        },
    );
    check_outer("key_request", Outer::KeyRequest { cookie: &cookie });
    check_outer(
        "reject",
        Outer::Reject {
            code: 2,
            reason: b"bad cookie",
        },
    );
    let mut d = Vec::new();
    put_fragment(&mut d, 9, 1, 2, b"xyz");
    assert_eq!(hex(&d), v["fragment_datagram"]);

    let sealed: [(&str, u64, Body<'_>); 11] = [
        ("data_hello", 1, Body::Data(b"hello")),
        ("keepalive", 7, Body::Keepalive),
        ("disconnect", 8, Body::Disconnect),
        (
            "welcome",
            1,
            Body::Welcome {
                id: 1,
                keepalive_ms: 10_000,
                timeout_ms: 30_000,
                name: None,
                dist: None,
            },
        ),
        (
            "relayed_hi",
            2,
            Body::Message {
                sender: 3,
                name: None,
                data: b"hi",
            },
        ),
        (
            "relayed_named",
            3,
            Body::Message {
                sender: 3,
                name: Some(b"alice"),
                data: b"hi",
            },
        ),
        ("keepalive_ack", 4, Body::KeepaliveAck),
        ("join", 5, Body::Join { id: 4, name: None }),
        ("leave_timeout", 6, Body::Leave { id: 4, reason: 2 }),
        ("shutdown", 9, Body::Shutdown),
        ("closed_kicked", 10, Body::Closed { reason: 3 }),
    ];
    for (name, seq, body) in sealed {
        let mut plain = Vec::new();
        wire::write_inner(&mut plain, seq, &body);
        assert_eq!(
            hex(&plain),
            v[&format!("{name}.plaintext")],
            "{name}.plaintext"
        );
        let mut token = Vec::new();
        fernet::encrypt_into(&key, &iv, time, &plain, &mut token);
        assert_eq!(
            String::from_utf8(token.clone()).unwrap(),
            v[&format!("{name}.token")],
            "{name}.token"
        );
        let mut d = Vec::new();
        Outer::Sealed { token: &token }.write(&mut d);
        assert_eq!(hex(&d), v[&format!("{name}.datagram")], "{name}.datagram");
        checked += 1;
        if let Some(want) = v.get(&format!("{name}.datagram_v2")) {
            let mut raw = Vec::new();
            fernet::encrypt_raw_into(&key, &iv, time, &plain, &mut raw);
            let mut d = Vec::new();
            Outer::Sealed { token: &raw }.write(&mut d);
            assert_eq!(&hex(&d), want, "{name}.datagram_v2");
            v2 += 1;
        }
    }
    assert_eq!(checked, 15);
    assert_eq!(v2, 2);
    let v3 = version_3(&v, &key, &iv, time);
    // Nothing in the block is left unchecked.
    assert_eq!(v.len(), 3 + 5 + 11 * 3 + 2 + v3);
}

/// The version-3 lines; returns how many there are.
fn version_3(v: &HashMap<String, String>, key: &FernetKey, iv: &[u8; 16], time: u64) -> usize {
    let mut n = 0;
    let mut outer = |name: &str, m: Outer<'_>| {
        let mut d = Vec::new();
        m.write(&mut d);
        assert_eq!(hex(&d), v[name], "{name}");
        assert_eq!(Outer::parse(&d).unwrap(), m);
        n += 1;
    };
    outer("hello_v3", Outer::Hello { min: 1, max: 3 });
    let mut cookie = [0u8; 24];
    cookie[..8].copy_from_slice(&[3, 0, 0, 0, 0, 0, 0x30, 0x39]);
    for (i, b) in cookie[8..].iter_mut().enumerate() {
        *b = 0x10 + i as u8;
    }
    outer(
        "cookie_v3",
        Outer::Cookie {
            version: 3,
            cookie: &cookie,
        },
    );
    outer("no_session", Outer::NoSession);
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, 77), 5008);
    let mut entries = Vec::new();
    wire::put_member(&mut entries, 2, None);
    wire::put_member(&mut entries, 3, Some(b"alice"));
    let k1: [u8; 32] = std::array::from_fn(|i| 32 + i as u8);
    let welcome = |dist| Body::Welcome {
        id: 1,
        keepalive_ms: 10_000,
        timeout_ms: 30_000,
        name: None,
        dist: Some(dist),
    };
    let hi = Body::Message {
        sender: 3,
        name: None,
        data: b"hi",
    };
    let sealed: [(&str, u64, Option<u64>, Body<'_>); 8] = [
        ("welcome_v3", 1, None, welcome(Dist::Unicast)),
        (
            "welcome_group",
            1,
            None,
            welcome(Dist::Group {
                addr: group,
                grace_ms: 2000,
            }),
        ),
        (
            "members",
            2,
            None,
            Body::Members {
                last: true,
                entries: &entries,
            },
        ),
        ("group_key", 3, None, Body::GroupKey { epoch: 1, key: &k1 }),
        ("key_ack", 2, None, Body::KeyAck { epoch: 1 }),
        ("key_pull", 3, None, Body::KeyPull { epoch: 2 }),
        ("relayed_copy", 4, Some(17), hi),
        (
            "frag_piece",
            5,
            None,
            Body::Frag {
                msg_id: 0x0102_0304,
                index: 1,
                count: 2,
                chunk: b"xyz",
            },
        ),
    ];
    for (name, seq, gseq, body) in sealed {
        let mut plain = Vec::new();
        wire::write_sealed(&mut plain, seq, gseq, &body);
        assert_eq!(hex(&plain), v[&format!("{name}.plaintext")], "{name}");
        let parsed = wire::parse_sealed(&plain).unwrap();
        assert_eq!((parsed.seq, parsed.gseq, parsed.body), (seq, gseq, body));
        let mut raw = Vec::new();
        fernet::encrypt_raw_into(key, iv, time, &plain, &mut raw);
        let mut d = Vec::new();
        Outer::Sealed { token: &raw }.write(&mut d);
        assert_eq!(hex(&d), v[&format!("{name}.datagram_v3")], "{name}");
        n += 2;
    }
    // The GROUP datagram, under the group key of epoch 1.
    let mut plain = Vec::new();
    wire::write_inner(&mut plain, 17, &hi);
    assert_eq!(hex(&plain), v["group_hi.plaintext"]);
    let mut raw = Vec::new();
    fernet::encrypt_raw_into(&FernetKey::from_bytes(&k1), iv, time, &plain, &mut raw);
    let mut d = Vec::new();
    Outer::Group {
        epoch: 1,
        token: &raw,
    }
    .write(&mut d);
    assert_eq!(hex(&d), v["group_hi.datagram"]);
    assert_eq!(hex(&k1), v["group_key_1"]);
    let k2 = ratchet(&k1, 2);
    assert_eq!(hex(&k2), v["group_key_2"]);
    assert_eq!(hex(&ratchet(&k2, 3)), v["group_key_3"]);
    // Two steps, as a member holding epoch 1 takes them when it sees epoch 3 (protocol.md
    // §12.2), and as the client's own key schedule does.
    let e3 = EpochKey::new(1, &k1).ratcheted().ratcheted();
    assert_eq!((e3.epoch, hex(e3.raw())), (3, v["group_key_3"].clone()));
    n + 5
}

/// docs/federation.md's `vectors` block: every federation message kind, byte by byte, and
/// one whole NATS payload (a DATA sealed under the cluster key).
fn federation_vectors() -> Vec<(String, String)> {
    use mcrelay::core::{RosterDigest, member_digest};
    use mcrelay::federation::wire::{self, Header, Msg};
    let h = |seq: u64| Header {
        origin: 2,
        incarnation: 1_796_000_000_000_000,
        seq,
    };
    let ann = 0x0200_0001;
    let roster = RosterDigest {
        members: 1,
        digest: member_digest(ann, Some(b"ann")),
    };
    let mut pair = vec![1u8];
    pair.extend_from_slice(&3u64.to_be_bytes());
    let mut entry = Vec::new();
    wire::put_entry(&mut entry, ann, Some("ann"));
    let msgs: Vec<(&str, u64, Msg<'_>)> = vec![
        (
            "join",
            1,
            Msg::Join {
                client: ann,
                name: Some("ann"),
            },
        ),
        (
            "roster",
            2,
            Msg::Roster {
                snapshot: 2,
                part: 0,
                parts: 1,
                total: roster,
                entries: wire::roster_entries(&entry),
            },
        ),
        ("sync", 3, Msg::Sync { target: 0 }),
        (
            "heartbeat",
            4,
            Msg::Heartbeat {
                interval_ms: 1000,
                roster,
                received: wire::heartbeat_pairs(&pair),
            },
        ),
        (
            "data",
            5,
            Msg::Data {
                sender: ann,
                name: Some("ann"),
                data: b"hello",
            },
        ),
        (
            "leave",
            6,
            Msg::Leave {
                client: ann,
                reason: 1,
            },
        ),
        ("bye", 7, Msg::Bye),
    ];
    let mut out = vec![(
        "member_digest_ann".to_string(),
        format!("{:016x}", roster.digest),
    )];
    let mut data_plain = Vec::new();
    for (name, seq, m) in &msgs {
        let mut p = Vec::new();
        wire::write(&mut p, &h(*seq), m);
        let (hh, back) = wire::parse(&p).expect("parses");
        assert_eq!((hh, back), (h(*seq), *m), "{name}");
        if *name == "data" {
            data_plain = p.clone();
        }
        out.push((name.to_string(), hex(&p)));
    }
    let key = FernetKey::from_base64(b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let iv: [u8; 16] = std::array::from_fn(|i| i as u8);
    let mut token = Vec::new();
    fernet::encrypt_raw_into(&key, &iv, 1_796_000_000, &data_plain, &mut token);
    out.push(("data_payload".to_string(), hex(&token)));
    out.push(("subject".to_string(), wire::subject("prod", 2)));
    out
}

#[test]
fn federation_md_vectors_are_what_we_encode() {
    let want = federation_vectors();
    if std::env::var_os("MCRELAY_PRINT_VECTORS").is_some() {
        for (k, v) in &want {
            eprintln!("{k} = {v}");
        }
    }
    let doc = std::fs::read_to_string("docs/federation.md").unwrap();
    let start = doc.find("```vectors\n").expect("vectors block") + "```vectors\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let got: Vec<(String, String)> = doc[start..end]
        .lines()
        .filter_map(|l| l.split_once(" = "))
        .filter(|(k, _)| !["cluster_key", "iv", "time", "incarnation"].contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(got, want, "docs/federation.md vectors vs the encoder");
    // The payload opens under the documented key, and parses back to the DATA.
    let payload = &want.iter().find(|(k, _)| k == "data_payload").unwrap().1;
    let bytes: Vec<u8> = (0..payload.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&payload[i..i + 2], 16).unwrap())
        .collect();
    let key = FernetKey::from_base64(b"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let mut plain = Vec::new();
    assert_eq!(
        fernet::decrypt_raw_into(&key, &bytes, &mut plain),
        Ok(1_796_000_000)
    );
    assert!(mcrelay::federation::wire::parse(&plain).is_ok());
}
