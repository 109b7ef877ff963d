//! Opening a session's TCP connection: source address, and TCP MD5 signatures (RFC 2385) for
//! peers with a password.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::net::{TcpSocket, TcpStream};

use super::speaker::PeerSpec;

/// Connects to the peer from `spec.source` (when set), signing every segment when the peer has
/// a password.
pub async fn connect(spec: &PeerSpec) -> io::Result<TcpStream> {
    let socket = match spec.address {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(password) = &spec.password {
        set_md5(&socket, spec.address, password.expose().as_bytes())?;
    }
    if let Some(source) = spec.source {
        socket.bind(SocketAddr::new(source, 0)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("source address {source} (it must be on this node): {e}"),
            )
        })?;
    }
    socket
        .connect(SocketAddr::new(spec.address, spec.port))
        .await
}

/// The longest key Linux takes (TCP_MD5SIG_MAXKEYLEN).
pub const MAX_KEY_LEN: usize = 80;

/// Sets the TCP_MD5SIG option for `peer`. The kernel's `struct tcp_md5sig` is built byte by byte:
/// a 128-byte socket address, flags, prefix length, key length, interface index, key.
#[allow(unsafe_code)]
fn set_md5(socket: &TcpSocket, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > MAX_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a TCP MD5 key has at most {MAX_KEY_LEN} bytes"),
        ));
    }
    let mut opt = [0u8; 128 + 8 + MAX_KEY_LEN];
    match peer {
        IpAddr::V4(a) => {
            opt[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            opt[4..8].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            opt[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            opt[8..24].copy_from_slice(&a.octets());
        }
    }
    opt[130..132].copy_from_slice(&(key.len() as u16).to_ne_bytes());
    opt[136..136 + key.len()].copy_from_slice(key);
    // SAFETY: `opt` is a live buffer of exactly the length passed, laid out as the kernel's
    // struct tcp_md5sig; the file descriptor belongs to `socket` for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            opt.as_ptr().cast(),
            opt.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::other(format!(
            "TCP MD5 signature: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(())
}
