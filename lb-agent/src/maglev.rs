//! Maglev lookup tables (Eisenbud et al., NSDI 2016, section 3.4): each
//! backend walks its own permutation of the table's indexes, and the
//! backends take turns claiming the next free index of theirs until the
//! table is full. Every backend ends with an equal share (within one
//! entry), and when one of N backends goes, only about 1/N of the entries
//! change hands: mostly its own.
//!
//! Permutations come from the backend's identity (address and port), never
//! from local ids, so every node builds the same table and maps a flow to
//! the same backend. The hashes are FNV-1a with two offsets: stable across
//! builds and machines, which `std`'s hasher is not.

/// FNV-1a over `bytes`, from `basis`.
fn fnv1a(basis: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(basis, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Builds a table of size `m` (a prime) over `backends` (their identities,
/// e.g. `10.244.1.5:9376`): entry i is the index in `backends` of the
/// backend that owns i. Empty when there are no backends. The backends
/// take turns in the order of their identities, so the table does not
/// depend on the order they are given in.
pub fn table(backends: &[String], m: u32) -> Vec<u32> {
    let n = backends.len();
    if n == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| backends[a].cmp(&backends[b]));
    let sorted: Vec<&String> = order.iter().map(|&i| &backends[i]).collect();
    build(&sorted, m)
        .into_iter()
        .map(|k| order[k as usize] as u32)
        .collect()
}

/// The table over `backends` in the order given.
fn build(backends: &[&String], m: u32) -> Vec<u32> {
    let n = backends.len();
    let m64 = u64::from(m);
    // (offset, skip) of each backend's permutation: offset + j * skip.
    let perm: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let offset = fnv1a(0xcbf2_9ce4_8422_2325, b.as_bytes()) % m64;
            let skip = fnv1a(0x8422_2325_cbf2_9ce4, b.as_bytes()) % (m64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; n];
    let mut entry = vec![u32::MAX; m as usize];
    let mut filled = 0;
    'fill: loop {
        for i in 0..n {
            let (offset, skip) = perm[i];
            // The backend's next preferred index that is still free.
            let mut c = (offset + next[i] * skip) % m64;
            while entry[c as usize] != u32::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m64;
            }
            entry[c as usize] = i as u32;
            next[i] += 1;
            filled += 1;
            if filled == m as usize {
                break 'fill;
            }
        }
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:9376", i / 250, i % 250 + 1))
            .collect()
    }

    #[test]
    fn every_permutation_visits_every_index_once() {
        let m = 251u64;
        for b in names(20) {
            let offset = fnv1a(0xcbf2_9ce4_8422_2325, b.as_bytes()) % m;
            let skip = fnv1a(0x8422_2325_cbf2_9ce4, b.as_bytes()) % (m - 1) + 1;
            let mut seen: Vec<u64> = (0..m).map(|j| (offset + j * skip) % m).collect();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), m as usize, "{b}");
        }
    }

    #[test]
    fn the_table_is_full_and_shares_are_equal() {
        for (n, m) in [(1, 251), (3, 251), (7, 16381), (100, 16381), (1000, 65521)] {
            let t = table(&names(n), m);
            assert_eq!(t.len(), m as usize);
            let mut share = vec![0u32; n];
            for &b in &t {
                share[b as usize] += 1;
            }
            let (lo, hi) = (share.iter().min().unwrap(), share.iter().max().unwrap());
            assert!(hi - lo <= 1, "{n} backends over {m}: shares {lo}..{hi}");
        }
    }

    #[test]
    fn a_backend_leaving_moves_about_its_share_only() {
        let (n, m) = (10, 16381u32);
        let all = names(n);
        let before = table(&all, m);
        let gone = 3;
        let rest: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != gone)
            .map(|(_, b)| b.clone())
            .collect();
        let after = table(&rest, m);
        // Compare by identity.
        let moved = (0..m as usize)
            .filter(|&i| all[before[i] as usize] != rest[after[i] as usize])
            .count();
        let own = before.iter().filter(|&&b| b as usize == gone).count();
        // Its own entries must move; Maglev moves a little more besides
        // (the paper: near-minimal). Bound: the share of 1 backend plus 50%.
        assert!(moved >= own);
        assert!(
            (moved as f64) <= own as f64 * 1.5,
            "{moved} of {m} entries moved for a backend owning {own}"
        );
        // Tables are the same for the same backends, in any order.
        let mut shuffled = all.clone();
        shuffled.reverse();
        let t2 = table(&shuffled, m);
        assert!((0..m as usize).all(|i| all[before[i] as usize] == shuffled[t2[i] as usize]));
    }
}
