//! Recovering the original destination of a captured connection.
//!
//! Both capture modes answer the same `getsockopt`: iptables REDIRECT through
//! conntrack (`SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`), and the eBPF mode through a
//! cgroup/getsockopt program. The lookup sits behind [`OrigDstSource`] so in-process
//! tests can run the proxy without any capture installed.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

use crate::addr::OrigDstAddr;

/// Where a captured connection was originally headed.
pub trait OrigDstSource: Send + Sync + 'static {
    /// Returns the original destination of `conn`, an accepted connection whose
    /// peer is `peer` (the caller has it from accept; it tells the socket's address
    /// family without a system call).
    fn orig_dst(&self, conn: &TcpStream, peer: SocketAddr) -> io::Result<OrigDstAddr>;
}

/// The kernel's answer: `SO_ORIGINAL_DST` for IPv4 sockets, `IP6T_SO_ORIGINAL_DST` for
/// IPv6 ones. Needs no privilege.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOrigDst;

impl OrigDstSource for KernelOrigDst {
    fn orig_dst(&self, conn: &TcpStream, peer: SocketAddr) -> io::Result<OrigDstAddr> {
        let addr = match peer {
            SocketAddr::V4(_) => {
                let raw = getsockopt(conn, sockopt::OriginalDst).map_err(io::Error::from)?;
                SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)),
                    u16::from_be(raw.sin_port),
                ))
            }
            SocketAddr::V6(_) => {
                let raw = getsockopt(conn, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
                SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(raw.sin6_addr.s6_addr),
                    u16::from_be(raw.sin6_port),
                    raw.sin6_flowinfo,
                    raw.sin6_scope_id,
                ))
            }
        };
        Ok(OrigDstAddr(addr))
    }
}

/// A fixed answer, for in-process tests: every connection "was headed" to `0`.
#[derive(Clone, Copy, Debug)]
pub struct FixedOrigDst(pub SocketAddr);

impl OrigDstSource for FixedOrigDst {
    fn orig_dst(&self, _conn: &TcpStream, _peer: SocketAddr) -> io::Result<OrigDstAddr> {
        Ok(OrigDstAddr(self.0))
    }
}
