//! Full Internet checksums over small headers we build ourselves.

/// One's-complement sum of big-endian 16-bit words, not yet folded.
#[inline(always)]
pub fn sum_words(bytes: &[u8], mut acc: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        acc += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    acc
}

/// Folds a sum to 16 bits and complements it; result in network order bytes.
#[inline(always)]
pub fn finish(mut acc: u32) -> [u8; 2] {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    (!(acc as u16)).to_be_bytes()
}

/// RFC 1624 incremental update of checksum `csum` (network-order bytes)
/// for 16-bit words changing from `old` to `new` (both network order,
/// even length). Used where no helper applies: inside ICMP payloads.
#[inline(always)]
pub fn replace(csum: [u8; 2], old: &[u8], new: &[u8]) -> [u8; 2] {
    let mut acc = !u16::from_be_bytes(csum) as u32;
    let mut i = 0;
    while i + 1 < old.len() && i + 1 < new.len() {
        acc += !u16::from_be_bytes([old[i], old[i + 1]]) as u32;
        acc += u16::from_be_bytes([new[i], new[i + 1]]) as u32;
        i += 2;
    }
    finish(acc)
}

// Incremental updates on native-order values, as loaded from the packet:
// the one's-complement sum is byte-order independent (RFC 1071), so
// nothing needs swapping. Used on the per-packet path.

/// What a checksum gains when the 32-bit field `old` becomes `new`.
#[inline(always)]
pub fn delta32(old: u32, new: u32) -> u32 {
    let o = !old;
    (o & 0xffff) + (o >> 16) + (new & 0xffff) + (new >> 16)
}

/// What a checksum gains when the 16-bit field `old` becomes `new`.
#[inline(always)]
pub fn delta16(old: u16, new: u16) -> u32 {
    (!old) as u32 + new as u32
}

/// The checksum `csum` (native order) after the fields summed in `delta`
/// changed (RFC 1624: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub fn apply(csum: u16, delta: u32) -> u16 {
    let mut acc = (!csum) as u32 + delta;
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}
