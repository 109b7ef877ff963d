//! BFD's UDP sockets: the receiving one reports each datagram's TTL (IPv4) or hop limit (IPv6),
//! which single-hop sessions require to be 255 (RFC 5881 §5) and multihop ones at least the
//! profile's minimum; the sending ones go out with TTL 255 from a port in 49152–65535 (§4).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The receiving socket on `addr`, asking the kernel for each datagram's TTL.
pub fn listen(addr: SocketAddr) -> io::Result<UdpSocket> {
    let std = std::net::UdpSocket::bind(addr)?;
    std.set_nonblocking(true)?;
    match addr {
        SocketAddr::V4(_) => set_int(&std, libc::IPPROTO_IP, libc::IP_RECVTTL, 1)?,
        SocketAddr::V6(_) => set_int(&std, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?,
    }
    UdpSocket::from_std(std)
}

/// A sending socket from `source` (any address of the family when None) to `peer`, TTL 255,
/// from the first free port of 49152–65535 after one picked by `seed`.
pub fn sender(source: Option<IpAddr>, peer: SocketAddr, seed: u64) -> io::Result<UdpSocket> {
    let any = match peer {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let source = source.unwrap_or(any);
    const FIRST: u16 = 49152;
    let span = u16::MAX - FIRST + 1;
    let start = (seed % u64::from(span)) as u16;
    let mut last = None;
    for i in 0..span.min(64) {
        let port = FIRST + (start + i) % span;
        match std::net::UdpSocket::bind(SocketAddr::new(source, port)) {
            Ok(s) => {
                s.set_nonblocking(true)?;
                match peer {
                    SocketAddr::V4(_) => s.set_ttl(255)?,
                    SocketAddr::V6(_) => {
                        set_int(&s, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, 255)?
                    }
                }
                s.connect(peer)?;
                return UdpSocket::from_std(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free source port")))
}

/// Waits for one datagram: its length, sender, and TTL or hop limit (None if the kernel gave
/// none).
pub async fn recv(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<u8>)> {
    socket
        .async_io(Interest::READABLE, || recv_with_ttl(socket, buf))
        .await
}

#[allow(unsafe_code)]
fn set_int(
    socket: &std::net::UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the option value is a live c_int of the length passed; the descriptor belongs to
    // `socket` for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[allow(unsafe_code)]
fn recv_with_ttl(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<u8>)> {
    // SAFETY: all-zero bytes are a valid sockaddr_storage and msghdr.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one int-sized control message, aligned as cmsghdr wants.
    let mut control = [0u64; 8];
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` points at a live buffer of the length it gives, all of
    // which outlive the call; the descriptor belongs to `socket`.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ttl = None;
    // SAFETY: the kernel filled `control` up to msg_controllen; CMSG_FIRSTHDR and CMSG_NXTHDR
    // stay inside it, and each header it yields is followed by its data.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            let is_ttl = (h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_TTL)
                || (h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_HOPLIMIT);
            if is_ttl {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                ttl = u8::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let from = match libc::c_int::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a =
                unsafe { &*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            ))
        }
        f => return Err(io::Error::other(format!("address family {f}"))),
    };
    Ok((n as usize, from, ttl))
}
