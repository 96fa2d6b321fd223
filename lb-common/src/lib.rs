//! Every map key, value, name and constant the datapath and the agent share.
//!
//! Addresses and ports are stored in network byte order exactly as they
//! appear on the wire, so the kernel side never converts. Every type is
//! `#[repr(C)]` with explicit padding so that its bytes are fully defined
//! (required for hash keys and for `bytemuck::Pod`).
#![no_std]

pub mod maps;
pub mod stats;

pub use maps::*;
pub use stats::*;

/// IP protocol numbers the datapath handles.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_ICMP: u8 = 1;

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
