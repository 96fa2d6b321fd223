//! The hashes the schedulers use (source and destination hashing, Maglev's
//! flow hash): MurmurHash3's 32-bit mixing over 32-bit words. Shared: the
//! datapath picks with them, `lb-agent explain` says what it would pick.
#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Four words (an address as `mapped` keeps it).
#[inline(always)]
pub fn words(w: &[u32; 4]) -> u32 {
    finish(mix(mix(mix(mix(0, w[0]), w[1]), w[2]), w[3]))
}

/// Four words and one more (an address and a port/protocol word).
#[inline(always)]
pub fn words_and(w: &[u32; 4], extra: u32) -> u32 {
    finish(mix(mix(mix(mix(mix(0, w[0]), w[1]), w[2]), w[3]), extra))
}
