//! IPv6 Neighbor Discovery (RFC 4861): neighbor solicitations and advertisements, with their
//! Ethernet and IPv6 headers.
//!
//! ```text
//! Ethernet (14): destination, source, type 0x86dd
//! IPv6 (40):     version 6 | traffic class | flow label, payload length, next header 58,
//!                hop limit 255, source address (16), destination address (16)
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Type 135/136 |     Code 0    |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|S|O|                     Reserved (NS: all reserved)         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       Target Address (16)                     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |   Options: type (1), length in units of 8 octets (1), value   |
//! |   type 1: source link-layer address, type 2: target's         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Decoding applies RFC 4861's validity checks (§7.1.1, §7.1.2): hop limit 255, code 0, a valid
//! checksum, a non-multicast target, no zero-length option.

use std::net::Ipv6Addr;

use super::{DecodeError, ETH_HEADER, Mac, need, u16_at};

pub const ETHERTYPE: u16 = 0x86dd;
const IPV6_HEADER: usize = 40;
const ICMPV6: u8 = 58;
const SOLICITATION: u8 = 135;
const ADVERTISEMENT: u8 = 136;
const OPT_SOURCE_LLA: u8 = 1;
const OPT_TARGET_LLA: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Solicitation {
        target: Ipv6Addr,
        source_lla: Option<Mac>,
    },
    Advertisement {
        router: bool,
        solicited: bool,
        override_: bool,
        target: Ipv6Addr,
        target_lla: Option<Mac>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ndp {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub message: Message,
}

/// The solicited-node multicast group of an address (ff02::1:ffXX:XXXX).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

/// The Ethernet address of an IPv6 multicast group (33:33 and its last four octets).
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    Mac([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The Internet checksum of the ICMPv6 message with the IPv6 pseudo-header.
fn checksum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for chunk in bytes.chunks(2) {
            let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv6(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Ipv6Addr::from(a)
}

impl Ndp {
    pub fn decode(frame: &[u8]) -> Result<Ndp, DecodeError> {
        need(frame, ETH_HEADER)?;
        let ethertype = u16_at(frame, 12);
        if ethertype != ETHERTYPE {
            return Err(DecodeError::EtherType(ethertype));
        }
        need(frame, ETH_HEADER + IPV6_HEADER)?;
        let ip = &frame[ETH_HEADER..];
        if ip[0] >> 4 != 6 {
            return Err(DecodeError::IpVersion(ip[0] >> 4));
        }
        if ip[6] != ICMPV6 {
            return Err(DecodeError::NextHeader(ip[6]));
        }
        let payload = usize::from(u16_at(ip, 4));
        let available = ip.len() - IPV6_HEADER;
        if payload > available {
            return Err(DecodeError::PayloadLength {
                claimed: payload,
                available,
            });
        }
        let (src, dst) = (ipv6(&ip[8..24]), ipv6(&ip[24..40]));
        let icmp = &ip[IPV6_HEADER..IPV6_HEADER + payload];
        need(icmp, 4)?;
        if !matches!(icmp[0], SOLICITATION | ADVERTISEMENT) || icmp[1] != 0 {
            return Err(DecodeError::IcmpType(icmp[0], icmp[1]));
        }
        if ip[7] != 255 {
            return Err(DecodeError::HopLimit(ip[7]));
        }
        need(icmp, 24)?;
        if checksum(src, dst, icmp) != 0 {
            return Err(DecodeError::Checksum);
        }
        let target = ipv6(&icmp[8..24]);
        if target.is_multicast() {
            return Err(DecodeError::MulticastTarget);
        }
        let wanted = if icmp[0] == SOLICITATION {
            OPT_SOURCE_LLA
        } else {
            OPT_TARGET_LLA
        };
        let lla = link_layer_option(&icmp[24..], wanted)?;
        let message = if icmp[0] == SOLICITATION {
            Message::Solicitation {
                target,
                source_lla: lla,
            }
        } else {
            Message::Advertisement {
                router: icmp[4] & 0x80 != 0,
                solicited: icmp[4] & 0x40 != 0,
                override_: icmp[4] & 0x20 != 0,
                target,
                target_lla: lla,
            }
        };
        Ok(Ndp {
            eth_dst: Mac::read(&frame[0..6]),
            eth_src: Mac::read(&frame[6..12]),
            src,
            dst,
            message,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut icmp = Vec::with_capacity(32);
        let (kind, flags, target, option) = match self.message {
            Message::Solicitation { target, source_lla } => (
                SOLICITATION,
                0u8,
                target,
                source_lla.map(|m| (OPT_SOURCE_LLA, m)),
            ),
            Message::Advertisement {
                router,
                solicited,
                override_,
                target,
                target_lla,
            } => (
                ADVERTISEMENT,
                (u8::from(router) << 7) | (u8::from(solicited) << 6) | (u8::from(override_) << 5),
                target,
                target_lla.map(|m| (OPT_TARGET_LLA, m)),
            ),
        };
        icmp.extend_from_slice(&[kind, 0, 0, 0, flags, 0, 0, 0]);
        icmp.extend_from_slice(&target.octets());
        if let Some((t, mac)) = option {
            icmp.extend_from_slice(&[t, 1]);
            icmp.extend_from_slice(&mac.0);
        }
        let sum = checksum(self.src, self.dst, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut f = Vec::with_capacity(ETH_HEADER + IPV6_HEADER + icmp.len());
        f.extend_from_slice(&self.eth_dst.0);
        f.extend_from_slice(&self.eth_src.0);
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[ICMPV6, 255]);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        f.extend_from_slice(&icmp);
        f
    }

    /// An unsolicited advertisement of `target` at `mac` to all nodes, with Override set so that
    /// neighbours replace what they had, sent from `src`.
    pub fn unsolicited(target: Ipv6Addr, mac: Mac, src: Ipv6Addr) -> Ndp {
        let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
        Ndp {
            eth_dst: multicast_mac(all_nodes),
            eth_src: mac,
            src,
            dst: all_nodes,
            message: Message::Advertisement {
                router: false,
                solicited: false,
                override_: true,
                target,
                target_lla: Some(mac),
            },
        }
    }
}

/// The first link-layer address option of type `wanted`, if any.
fn link_layer_option(mut opts: &[u8], wanted: u8) -> Result<Option<Mac>, DecodeError> {
    let mut found = None;
    while opts.len() >= 2 {
        let len = usize::from(opts[1]) * 8;
        if len == 0 {
            return Err(DecodeError::OptionLength);
        }
        need(opts, len)?;
        if opts[0] == wanted && len >= 8 && found.is_none() {
            found = Some(Mac::read(&opts[2..8]));
        }
        opts = &opts[len..];
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ndisc6 fd00:250::11 eth0` from the lab's client, as tcpdump saw it.
    const NDISC6_SOLICITATION: [u8; 86] = [
        0x33, 0x33, 0xff, 0x00, 0x00, 0x11, 0x02, 0xfa, 0x00, 0x00, 0x01, 0x00, 0x86, 0xdd, 0x60,
        0x05, 0xc7, 0xcd, 0x00, 0x20, 0x3a, 0xff, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xfa, 0x00, 0xff, 0xfe, 0x00, 0x01, 0x00, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0x00, 0x00, 0x11, 0x87, 0x00, 0x76, 0xb7, 0x00, 0x00,
        0x00, 0x00, 0xfd, 0x00, 0x02, 0x50, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x11, 0x01, 0x01, 0x02, 0xfa, 0x00, 0x00, 0x01, 0x00,
    ];
    /// The kernel's duplicate address detection probe: from ::, with a nonce option (type 14).
    const KERNEL_DAD: [u8; 86] = [
        0x33, 0x33, 0xff, 0xa6, 0x8c, 0xdd, 0xfa, 0x66, 0x6e, 0xa6, 0x8c, 0xdd, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0xa6, 0x8c,
        0xdd, 0x87, 0x00, 0xe8, 0x92, 0x00, 0x00, 0x00, 0x00, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0xf8, 0x66, 0x6e, 0xff, 0xfe, 0xa6, 0x8c, 0xdd, 0x0e, 0x01, 0x48, 0xe5, 0xab,
        0xdd, 0x10, 0x5a,
    ];
    const CLIENT: Mac = Mac([0x02, 0xfa, 0, 0, 1, 0]);

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().expect("test address")
    }

    #[test]
    fn decodes_real_solicitations_and_reencodes_them_exactly() {
        let ns = Ndp::decode(&NDISC6_SOLICITATION).expect("valid");
        assert_eq!(ns.src, ip("fe80::fa:ff:fe00:100"));
        assert_eq!(ns.dst, solicited_node(ip("fd00:250::11")));
        assert_eq!(ns.eth_dst, multicast_mac(ns.dst));
        assert_eq!(
            ns.message,
            Message::Solicitation {
                target: ip("fd00:250::11"),
                source_lla: Some(CLIENT)
            }
        );
        // Our encoder computes the same checksum; the flow label is not kept, so compare the rest.
        let mut ours = ns.encode();
        ours[15..18].copy_from_slice(&NDISC6_SOLICITATION[15..18]);
        assert_eq!(ours, NDISC6_SOLICITATION);

        let dad = Ndp::decode(&KERNEL_DAD).expect("valid");
        assert_eq!(dad.src, Ipv6Addr::UNSPECIFIED);
        assert!(
            matches!(
                dad.message,
                Message::Solicitation {
                    source_lla: None,
                    ..
                }
            ),
            "a DAD probe has no source address option"
        );
    }

    #[test]
    fn advertisements_round_trip() {
        let na = Ndp::unsolicited(ip("fd00:250::200"), CLIENT, ip("fe80::fa:ff:fe00:100"));
        let back = Ndp::decode(&na.encode()).expect("our own frame is valid");
        assert_eq!(back, na);
        assert_eq!(back.eth_dst, Mac([0x33, 0x33, 0, 0, 0, 1]));
    }

    #[test]
    fn invalid_messages_are_errors() {
        let mut bad = NDISC6_SOLICITATION;
        bad[21] = 64;
        assert_eq!(Ndp::decode(&bad), Err(DecodeError::HopLimit(64)));
        let mut bad = NDISC6_SOLICITATION;
        bad[57] ^= 1;
        assert_eq!(Ndp::decode(&bad), Err(DecodeError::Checksum));
        let mut bad = NDISC6_SOLICITATION;
        bad[20] = 17;
        assert_eq!(Ndp::decode(&bad), Err(DecodeError::NextHeader(17)));
        let mut bad = NDISC6_SOLICITATION;
        bad[19] = 0xff;
        assert!(matches!(
            Ndp::decode(&bad),
            Err(DecodeError::PayloadLength { .. })
        ));
        assert!(matches!(
            Ndp::decode(&NDISC6_SOLICITATION[..60]),
            Err(DecodeError::Truncated { .. }) | Err(DecodeError::PayloadLength { .. })
        ));
        let mut bad = NDISC6_SOLICITATION;
        bad[54] = 128; // echo request
        assert_eq!(Ndp::decode(&bad), Err(DecodeError::IcmpType(128, 0)));
        // A zero-length option, with a checksum that is right for it.
        let mut ns = Ndp::decode(&NDISC6_SOLICITATION).expect("valid");
        ns.src = ip("fe80::1");
        let mut frame = ns.encode();
        frame[79] = 0;
        let len = frame.len();
        frame[56..58].copy_from_slice(&[0, 0]);
        let sum = checksum(ns.src, ns.dst, &frame[54..len]);
        frame[56..58].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(Ndp::decode(&frame), Err(DecodeError::OptionLength));
    }

    #[test]
    fn multicast_groups() {
        assert_eq!(solicited_node(ip("fd00:250::200")), ip("ff02::1:ff00:200"));
        assert_eq!(
            multicast_mac(ip("ff02::1:ff00:200")),
            Mac([0x33, 0x33, 0xff, 0, 0x02, 0])
        );
    }
}
