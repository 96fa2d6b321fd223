//! Every map key, value, name and constant the datapath and the agent share.
//!
//! Addresses and ports are stored in network byte order exactly as they
//! appear on the wire, so the kernel side never converts. Every type is
//! `#[repr(C)]` with explicit padding so that its bytes are fully defined
//! (required for hash keys and for `bytemuck::Pod`).
#![no_std]

pub mod crc32c;
pub mod hash;
pub mod maps;
pub mod stats;

pub use maps::*;
pub use stats::*;

/// IP protocol numbers the datapath handles.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Converts a host-order port to the network-order value stored in maps.
#[inline(always)]
pub const fn port_to_net(port: u16) -> u16 {
    port.to_be()
}

/// Converts a network-order port from a map back to host order.
#[inline(always)]
pub const fn port_from_net(port: u16) -> u16 {
    u16::from_be(port)
}

/// Converts IPv4 octets to the network-order value stored in maps.
#[inline(always)]
pub const fn ipv4_to_net(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// Converts a network-order address from a map back to octets.
#[inline(always)]
pub const fn ipv4_from_net(addr: u32) -> [u8; 4] {
    addr.to_ne_bytes()
}

/// Converts IPv6 octets to the words stored in maps (network order).
#[inline(always)]
pub const fn ipv6_to_net(o: [u8; 16]) -> maps::In6 {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// Converts map words back to IPv6 octets.
#[inline(always)]
pub const fn ipv6_from_net(a: maps::In6) -> [u8; 16] {
    let (w0, w1, w2, w3) = (
        a[0].to_ne_bytes(),
        a[1].to_ne_bytes(),
        a[2].to_ne_bytes(),
        a[3].to_ne_bytes(),
    );
    [
        w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3], w3[0],
        w3[1], w3[2], w3[3],
    ]
}
