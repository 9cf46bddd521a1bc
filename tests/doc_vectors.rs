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
