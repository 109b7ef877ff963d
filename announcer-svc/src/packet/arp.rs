//! ARP for IPv4 over Ethernet (RFC 826), with its Ethernet header.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |       Ethernet destination (6), source (6), type 0x0806 (2)   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |     Hardware type = 1         |     Protocol type = 0x0800    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  HLEN = 6     |  PLEN = 4     |   Operation (1 req, 2 reply)  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Sender hardware address (6) | Sender protocol address (4)     |
//! | Target hardware address (6) | Target protocol address (4)     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! A gratuitous ARP announces `ip` at `mac`: sender and target protocol address are both `ip`,
//! sent to the broadcast address, as a request and as a reply (MetalLB sends both; the Linux
//! kernel updates an existing entry from either, bypassing its `locktime`).

use std::net::Ipv4Addr;

use super::{DecodeError, ETH_HEADER, Mac, need, u16_at};

pub const ETHERTYPE: u16 = 0x0806;
const LEN: usize = ETH_HEADER + 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Request,
    Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub eth_dst: Mac,
    pub eth_src: Mac,
    pub operation: Operation,
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

fn ipv4(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

impl Arp {
    /// Decodes an Ethernet frame; trailing padding is ignored.
    pub fn decode(frame: &[u8]) -> Result<Arp, DecodeError> {
        need(frame, ETH_HEADER)?;
        let ethertype = u16_at(frame, 12);
        if ethertype != ETHERTYPE {
            return Err(DecodeError::EtherType(ethertype));
        }
        need(frame, LEN)?;
        let a = &frame[ETH_HEADER..];
        let (hardware, protocol) = (u16_at(a, 0), u16_at(a, 2));
        if hardware != 1 || protocol != 0x0800 {
            return Err(DecodeError::ArpKind { hardware, protocol });
        }
        if a[4] != 6 || a[5] != 4 {
            return Err(DecodeError::ArpLengths {
                hardware: a[4],
                protocol: a[5],
            });
        }
        let operation = match u16_at(a, 6) {
            1 => Operation::Request,
            2 => Operation::Reply,
            op => return Err(DecodeError::ArpOperation(op)),
        };
        Ok(Arp {
            eth_dst: Mac::read(&frame[0..6]),
            eth_src: Mac::read(&frame[6..12]),
            operation,
            sender_mac: Mac::read(&a[8..14]),
            sender_ip: ipv4(&a[14..18]),
            target_mac: Mac::read(&a[18..24]),
            target_ip: ipv4(&a[24..28]),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(LEN);
        f.extend_from_slice(&self.eth_dst.0);
        f.extend_from_slice(&self.eth_src.0);
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
        let op: u16 = match self.operation {
            Operation::Request => 1,
            Operation::Reply => 2,
        };
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&self.sender_mac.0);
        f.extend_from_slice(&self.sender_ip.octets());
        f.extend_from_slice(&self.target_mac.0);
        f.extend_from_slice(&self.target_ip.octets());
        f
    }

    /// The answer to this request: `mac` has the requested address.
    pub fn reply(&self, mac: Mac) -> Arp {
        Arp {
            eth_dst: self.sender_mac,
            eth_src: mac,
            operation: Operation::Reply,
            sender_mac: mac,
            sender_ip: self.target_ip,
            target_mac: self.sender_mac,
            target_ip: self.sender_ip,
        }
    }

    /// A gratuitous announcement of `ip` at `mac`, broadcast.
    pub fn gratuitous(ip: Ipv4Addr, mac: Mac, operation: Operation) -> Arp {
        Arp {
            eth_dst: Mac::BROADCAST,
            eth_src: mac,
            operation,
            sender_mac: mac,
            sender_ip: ip,
            target_mac: match operation {
                Operation::Request => Mac::ZERO,
                Operation::Reply => mac,
            },
            target_ip: ip,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `arping -c 1 10.250.0.11` from the lab's client, as tcpdump saw it (padded to 60).
    const KERNEL_REQUEST: [u8; 60] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0xfa, 0x00, 0x00, 0x01, 0x00, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0xfa, 0x00, 0x00, 0x01, 0x00, 0x0a, 0xfa,
        0x00, 0x64, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xfa, 0x00, 0x0b, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    /// The kernel of node n1 answering it.
    const KERNEL_REPLY: [u8; 42] = [
        0x02, 0xfa, 0x00, 0x00, 0x01, 0x00, 0x02, 0xfa, 0x00, 0x00, 0x00, 0x11, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, 0x02, 0xfa, 0x00, 0x00, 0x00, 0x11, 0x0a, 0xfa,
        0x00, 0x0b, 0x02, 0xfa, 0x00, 0x00, 0x01, 0x00, 0x0a, 0xfa, 0x00, 0x64,
    ];
    const N1: Mac = Mac([0x02, 0xfa, 0, 0, 0, 0x11]);

    #[test]
    fn decodes_the_kernels_request_and_answers_like_the_kernel() {
        let req = Arp::decode(&KERNEL_REQUEST).expect("a request");
        assert_eq!(req.operation, Operation::Request);
        assert_eq!(req.sender_ip, Ipv4Addr::new(10, 250, 0, 100));
        assert_eq!(req.target_ip, Ipv4Addr::new(10, 250, 0, 11));
        assert_eq!(req.eth_dst, Mac::BROADCAST);
        assert_eq!(req.reply(N1).encode(), KERNEL_REPLY);
        assert_eq!(
            Arp::decode(&KERNEL_REPLY).expect("a reply").encode(),
            KERNEL_REPLY
        );
    }

    #[test]
    fn gratuitous_forms() {
        let ip = Ipv4Addr::new(192, 168, 1, 240);
        let req =
            Arp::decode(&Arp::gratuitous(ip, N1, Operation::Request).encode()).expect("valid");
        assert_eq!(
            (req.sender_ip, req.target_ip, req.eth_dst),
            (ip, ip, Mac::BROADCAST)
        );
        assert_eq!(req.target_mac, Mac::ZERO);
        let rep = Arp::gratuitous(ip, N1, Operation::Reply);
        assert_eq!(rep.target_mac, N1, "a gratuitous reply has tha == sha");
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(
            Arp::decode(&KERNEL_REQUEST[..20]),
            Err(DecodeError::Truncated { need: 42, got: 20 })
        );
        assert_eq!(
            Arp::decode(&[0; 5]),
            Err(DecodeError::Truncated { need: 14, got: 5 })
        );
        let mut ipv6 = KERNEL_REQUEST;
        ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(Arp::decode(&ipv6), Err(DecodeError::EtherType(0x86dd)));
        let mut bad = KERNEL_REQUEST;
        bad[18] = 8;
        assert!(matches!(
            Arp::decode(&bad),
            Err(DecodeError::ArpLengths { .. })
        ));
        let mut bad = KERNEL_REQUEST;
        bad[21] = 9;
        assert_eq!(Arp::decode(&bad), Err(DecodeError::ArpOperation(9)));
        let mut bad = KERNEL_REQUEST;
        bad[15] = 6;
        assert!(matches!(
            Arp::decode(&bad),
            Err(DecodeError::ArpKind { .. })
        ));
    }
}
