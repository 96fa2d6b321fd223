//! SCTP's checksum (CRC32c) updated, not recomputed, when a NAT rewrites
//! the ports. The CRC is linear over GF(2): changing the first four bytes
//! of an `len`-byte packet by `diff` (old xor new) changes its CRC by the
//! CRC of `diff` followed by `len - 4` zero bytes, which is `diff` times
//! x^(8 len) modulo the polynomial. Tables of x^(8n) for the low and high
//! byte of `len` make that two carry-less multiplications, without a loop
//! over the payload (the method of zlib's `crc32_combine`). Addresses are
//! not covered by SCTP's checksum: rewriting them changes nothing here.

/// The Castagnoli polynomial, reflected (bit 31 is x^0).
const POLY: u32 = 0x82F6_3B78;

/// `a` times `b` modulo the polynomial, both reflected. Without branches:
/// the datapath runs it, and the verifier walks a branch-free body once.
#[inline(always)]
pub const fn multmodp(a: u32, mut b: u32) -> u32 {
    let mut p = 0u32;
    let mut i = 0;
    while i < 32 {
        p ^= b & 0u32.wrapping_sub((a >> (31 - i)) & 1);
        b = (b >> 1) ^ (POLY & 0u32.wrapping_sub(b & 1));
        i += 1;
    }
    p
}

/// x^0, reflected.
const ONE: u32 = 1 << 31;

/// x^(8 step i) for i in 0..256.
const fn powers(step: u32) -> [u32; 256] {
    // x^(8 step) by squaring: x^8 squared log2(step) times (step is a
    // power of two).
    let mut x = ONE >> 8;
    let mut s = step;
    while s > 1 {
        x = multmodp(x, x);
        s >>= 1;
    }
    let mut t = [0u32; 256];
    t[0] = ONE;
    let mut i = 1;
    while i < 256 {
        t[i] = multmodp(t[i - 1], x);
        i += 1;
    }
    t
}

/// x^(8n) for the low byte of a length, and for its high byte (n * 256).
static LOW: [u32; 256] = powers(1);
static HIGH: [u32; 256] = powers(256);

/// What to xor into an SCTP packet's checksum field, read and written as
/// a little-endian u32, when its first four bytes (the ports) change by
/// `diff` (old xor new, also read little-endian); `len` is the SCTP
/// packet's length (common header and chunks).
#[inline(always)]
pub fn delta(diff: u32, len: u16) -> u32 {
    let op = multmodp(HIGH[(len >> 8) as usize], LOW[(len & 0xff) as usize]);
    multmodp(op, diff)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// The checksum as SCTP computes it over a packet whose checksum field
    /// (bytes 8..12) is zero, as stored: little-endian.
    fn sctp_crc(pkt: &[u8]) -> u32 {
        let mut crc = !0u32;
        for (i, &b) in pkt.iter().enumerate() {
            let b = if (8..12).contains(&i) { 0 } else { b };
            crc ^= b as u32;
            for _ in 0..8 {
                crc = (crc >> 1) ^ (POLY & 0u32.wrapping_sub(crc & 1));
            }
        }
        !crc
    }

    #[test]
    fn a_port_change_updates_the_checksum_as_a_recomputation_would() {
        // RFC 3720's test vector: 32 zero bytes give 0x8a9136aa.
        assert_eq!(sctp_crc(&[0u8; 32]), 0x8a91_36aa);
        let mut seed = 0x1234_5678u32;
        for len in [16usize, 17, 60, 255, 256, 257, 1452, 9000, 65_535] {
            let mut pkt: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (seed >> 16) as u8
                })
                .collect();
            let old = sctp_crc(&pkt);
            pkt[8..12].copy_from_slice(&old.to_le_bytes());
            let before = u32::from_le_bytes(pkt[0..4].try_into().unwrap());
            pkt[0..4].copy_from_slice(&[0x1f, 0x90, 0xc3, 0x51]);
            let after = u32::from_le_bytes(pkt[0..4].try_into().unwrap());
            let stored = u32::from_le_bytes(pkt[8..12].try_into().unwrap());
            let updated = stored ^ delta(before ^ after, len as u16);
            assert_eq!(updated, sctp_crc(&pkt), "length {len}");
        }
    }
}
