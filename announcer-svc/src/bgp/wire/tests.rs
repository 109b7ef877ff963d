//! Round trips and defects of every message.

use std::net::{IpAddr, Ipv4Addr};

use super::*;

fn p(s: &str) -> Prefix {
    s.parse().expect("test prefix")
}

fn roundtrip(m: &Message, four: bool) -> Message {
    decode(&encode(m, four), four).expect("decodes")
}

#[test]
fn open_roundtrip_with_every_capability() {
    let o = Message::Open(Open {
        version: 4,
        my_as: AS_TRANS,
        hold_time: 90,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        capabilities: vec![
            Capability::Multiprotocol {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
            },
            Capability::Multiprotocol {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
            },
            Capability::RouteRefresh,
            Capability::GracefulRestart(GracefulRestart {
                restarting: true,
                restart_time: 120,
                families: vec![(AFI_IPV4, 1, true), (AFI_IPV6, 1, false)],
            }),
            Capability::FourOctetAs(4_200_000_000),
        ],
    });
    let back = roundtrip(&o, true);
    assert_eq!(back, o);
    let Message::Open(b) = back else {
        unreachable!()
    };
    assert_eq!(b.asn(), 4_200_000_000);
}

#[test]
fn update_roundtrip_v4_and_v6() {
    let a = Attributes {
        as_path: vec![64513],
        next_hop: Some("10.0.0.11".parse().expect("ip")),
        local_pref: Some(100),
        communities: vec![(65000 << 16) | 100],
        large_communities: vec![(65000, 1, 2)],
    };
    let u = Message::Update(Update {
        attributes: Some(a.clone()),
        announced: vec![p("192.0.2.10/32"), p("198.51.100.0/24")],
        withdrawn: vec![p("192.0.2.11/32")],
        ..Update::default()
    });
    assert_eq!(roundtrip(&u, true), u);
    let u6 = Message::Update(Update {
        attributes: Some(Attributes {
            next_hop: Some("fd00::11".parse().expect("ip")),
            ..a
        }),
        announced_v6: vec![p("fd00:251::200/128"), p("2001:db8::/64")],
        withdrawn_v6: vec![p("2001:db8:1::/48")],
        mp_unreach: true,
        ..Update::default()
    });
    assert_eq!(roundtrip(&u6, true), u6);
}

#[test]
fn two_octet_peers_get_as_trans_and_as4_path() {
    let u = Message::Update(Update {
        attributes: Some(Attributes {
            as_path: vec![4_200_000_000],
            next_hop: Some("10.0.0.11".parse().expect("ip")),
            ..Attributes::default()
        }),
        announced: vec![p("192.0.2.10/32")],
        ..Update::default()
    });
    let bytes = encode(&u, false);
    // AS_PATH [AS_TRANS] as 2 octets, then AS4_PATH (type 17) with the real AS.
    let trans = [2u8, 1, 0x5b, 0xa0];
    assert!(bytes.windows(4).any(|w| w == trans));
    assert!(bytes.windows(2).any(|w| w == [0xc0, 17]));
}

#[test]
fn end_of_rib_markers() {
    let v4 = roundtrip(&Message::Update(Update::end_of_rib(AFI_IPV4)), true);
    let v6 = roundtrip(&Message::Update(Update::end_of_rib(AFI_IPV6)), true);
    for m in [v4, v6] {
        let Message::Update(u) = m else {
            unreachable!()
        };
        assert!(u.is_end_of_rib());
    }
    assert_eq!(
        encode(&Message::Update(Update::end_of_rib(1)), true).len(),
        23
    );
}

#[test]
fn defects_map_to_their_notifications() {
    let ka = encode(&Message::Keepalive, true);
    let mut bad = ka.clone();
    bad[3] = 0;
    assert_eq!(frame_len(&bad).unwrap_err().notification().subcode, 1);
    let mut long = ka.clone();
    long[17] = 20;
    long.push(0);
    let e = decode(&long, true).unwrap_err().notification();
    assert_eq!((e.code, e.subcode, e.data), (1, 2, vec![0, 20]));
    let mut kind = ka.clone();
    kind[18] = 9;
    assert_eq!(decode(&kind, true).unwrap_err(), DecodeError::BadType(9));
    let mut short = ka;
    short[17] = 18;
    assert_eq!(frame_len(&short).unwrap_err().notification().subcode, 2);

    let open = |version: u8, params: &[u8]| {
        let mut b = vec![version, 0xfc, 0x01, 0, 90, 10, 0, 0, 1, params.len() as u8];
        b.extend_from_slice(params);
        frame(1, &b)
    };
    let e = decode(&open(3, &[]), true).unwrap_err().notification();
    assert_eq!((e.code, e.subcode, e.data), (2, 1, vec![0, 4]));
    assert_eq!(
        decode(&open(4, &[1, 0]), true)
            .unwrap_err()
            .notification()
            .subcode,
        4
    );
    assert_eq!(
        decode(&open(4, &[2, 5, 1]), true)
            .unwrap_err()
            .notification()
            .code,
        2
    );

    // ORIGIN with a bad value, and with wrong flags.
    let upd = |attrs: &[u8]| {
        let mut b = vec![0, 0, 0, attrs.len() as u8];
        b.extend_from_slice(attrs);
        frame(2, &b)
    };
    assert_eq!(
        decode(&upd(&[0x40, 1, 1, 7]), true)
            .unwrap_err()
            .notification()
            .subcode,
        6
    );
    assert_eq!(
        decode(&upd(&[0x80, 1, 1, 0]), true)
            .unwrap_err()
            .notification()
            .subcode,
        4
    );
    assert_eq!(
        decode(&upd(&[0x40, 3, 3, 1, 2, 3]), true)
            .unwrap_err()
            .notification()
            .subcode,
        5
    );
    // An attribute longer than the list.
    assert_eq!(
        decode(&upd(&[0x40, 1, 9, 0]), true)
            .unwrap_err()
            .notification()
            .subcode,
        1
    );
    // A prefix longer than 32 bits.
    let mut b = vec![0, 0, 0, 0, 33, 1, 2, 3, 4, 5];
    b = frame(2, &std::mem::take(&mut b));
    assert_eq!(decode(&b, true).unwrap_err().notification().subcode, 10);
    // Routes without a mandatory attribute: the first one missing is named.
    let routes = |attrs: &[u8]| {
        let mut b = vec![0, 0, 0, attrs.len() as u8];
        b.extend_from_slice(attrs);
        b.extend_from_slice(&[8, 10]);
        frame(2, &b)
    };
    let e = decode(&routes(&[0x40, 1, 1, 0]), true)
        .unwrap_err()
        .notification();
    assert_eq!((e.code, e.subcode, e.data), (3, 3, vec![2]));
    let e = decode(&routes(&[0x40, 1, 1, 0, 0x40, 2, 0]), true)
        .unwrap_err()
        .notification();
    assert_eq!((e.code, e.subcode, e.data), (3, 3, vec![3]));
    let ok = routes(&[0x40, 1, 1, 0, 0x40, 2, 0, 0x40, 3, 4, 10, 0, 0, 1]);
    assert!(decode(&ok, true).is_ok());
    // A route refresh of the wrong length.
    assert_eq!(
        decode(&frame(5, &[0, 1, 0]), true)
            .unwrap_err()
            .notification()
            .code,
        7
    );
}

#[test]
fn chunks_fit_the_message() {
    let prefixes: Vec<Prefix> = (0..2000u32)
        .map(|i| Prefix::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 32).expect("p"))
        .collect();
    let a = Attributes {
        next_hop: Some("10.0.0.11".parse().expect("ip")),
        ..Attributes::default()
    };
    let room = nlri_room(&a, true, false);
    let parts = chunks(&prefixes, room);
    assert!(parts.len() > 1);
    assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 2000);
    for part in parts {
        let m = encode(
            &Message::Update(Update {
                attributes: Some(a.clone()),
                announced: part,
                ..Update::default()
            }),
            true,
        );
        assert!(m.len() <= MAX_LEN);
    }
}

#[test]
fn prefixes_are_masked() {
    assert_eq!(p("192.0.2.77/24").to_string(), "192.0.2.0/24");
    assert_eq!(p("fd00::1/64").to_string(), "fd00::/64");
    assert!("10.0.0.0/33".parse::<Prefix>().is_err());
}
