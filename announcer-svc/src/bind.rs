//! Binding announced addresses to interfaces over netlink, so that the kernel itself answers ARP
//! and neighbor solicitations for them (at kernel speed) and accepts their traffic locally.
//!
//! IPv4 addresses go on as /32 with host scope, so the node never picks them as the source of
//! its own connections and no subnet route appears. IPv6 addresses go on as /128 without
//! duplicate address detection, without a prefix route, and deprecated (preferred lifetime 0)
//! for the same reason. Every address carries ferrolb's address protocol number, so a restarted
//! announcer finds and clears what an earlier run left behind.

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::Handle;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol, AddressScope, CacheInfo,
};

/// The `IFA_PROTO` value that marks ferrolb's addresses (`ip address show proto 0xfb`).
pub const PROTOCOL: u8 = 0xfb;

/// A netlink connection for address changes.
#[derive(Clone)]
pub struct Binder {
    handle: Handle,
}

fn prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn address_of(m: &AddressMessage) -> Option<IpAddr> {
    m.attributes
        .iter()
        .find_map(|a| match a {
            AddressAttribute::Local(ip) => Some(*ip),
            _ => None,
        })
        .or_else(|| {
            m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
        })
}

fn ours(m: &AddressMessage) -> bool {
    m.attributes
        .iter()
        .any(|a| matches!(a, AddressAttribute::Protocol(p) if u8::from(*p) == PROTOCOL))
}

impl Binder {
    /// Opens the connection; must run inside a tokio runtime.
    pub fn new() -> std::io::Result<Binder> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Binder { handle })
    }

    /// Puts `ip` on interface `index` (again, if it is there already).
    pub async fn bind(&self, index: u32, ip: IpAddr) -> Result<(), rtnetlink::Error> {
        let mut req = self.handle.address().add(index, ip, prefix(ip)).replace();
        let m = req.message_mut();
        m.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::Other(PROTOCOL)));
        match ip {
            IpAddr::V4(_) => m.header.scope = AddressScope::Host,
            IpAddr::V6(_) => {
                m.attributes.push(AddressAttribute::Flags(
                    AddressFlags::Nodad | AddressFlags::Noprefixroute,
                ));
                let mut lifetimes = CacheInfo::default();
                lifetimes.ifa_preferred = 0;
                lifetimes.ifa_valid = u32::MAX;
                m.attributes.push(AddressAttribute::CacheInfo(lifetimes));
            }
        }
        req.execute().await
    }

    /// Takes `ip` off interface `index`; an address that is not there is no error.
    pub async fn unbind(&self, index: u32, ip: IpAddr) -> Result<(), rtnetlink::Error> {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.header.prefix_len = prefix(ip);
        m.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.attributes.push(AddressAttribute::Local(ip));
        if ip.is_ipv6() {
            m.attributes.push(AddressAttribute::Address(ip));
        }
        match self.handle.address().del(m).execute().await {
            Ok(()) => Ok(()),
            // EADDRNOTAVAIL: already gone (a link that went down drops IPv6 addresses).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -99 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every address carrying ferrolb's protocol mark, as (interface index, address).
    pub async fn bound(&self) -> Result<Vec<(u32, IpAddr)>, rtnetlink::Error> {
        let all: Vec<AddressMessage> = self.handle.address().get().execute().try_collect().await?;
        Ok(all
            .iter()
            .filter(|m| ours(m))
            .filter_map(|m| address_of(m).map(|ip| (m.header.index, ip)))
            .collect())
    }
}
