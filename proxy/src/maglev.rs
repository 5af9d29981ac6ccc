//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of a prime size in
//! which every backend owns about the same number of entries, and a change of the backend set
//! moves as few entries as possible. The table is a pure function of the backends' names, so
//! every node computes the same one.

/// 64-bit FNV-1a with a seed folded in first: stable across builds and machines (unlike std's
/// hasher), which is what lets every node build the same table.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final avalanche, so nearby names spread over the whole table.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

/// The stable hash of a key (a header's or cookie's value) for looking it up in a table.
pub fn hash(bytes: &[u8]) -> u64 {
    fnv1a(2, bytes)
}

/// The table sizes switchyard uses: primes, each about twice the one before (as Cilium's).
pub const TABLE_SIZES: [u32; 10] = [
    251, 509, 1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071,
];

/// The default smallest table (`--maglev-table-size`).
pub const DEFAULT_TABLE_SIZE: u32 = 1_021;

/// The table size for `backends` backends: the smallest of [`TABLE_SIZES`] that is at least
/// `min` and at least 100 entries per backend (so that each backend's share is even to within
/// about 1%), capped at the largest.
pub fn table_size(backends: usize, min: u32) -> u32 {
    let want = u64::from(min).max(100 * backends as u64);
    TABLE_SIZES
        .iter()
        .copied()
        .find(|s| u64::from(*s) >= want)
        .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
}
/// Builds the lookup table: entry `i` holds the index (into `names`) of the backend that owns
/// it. `size` must be a prime larger than the number of backends; an empty `names` gives an
/// empty table.
pub fn table(names: &[String], size: usize) -> Vec<u32> {
    if names.is_empty() || size == 0 {
        return Vec::new();
    }
    let m = size as u64;
    let (offsets, skips): (Vec<u64>, Vec<u64>) = names
        .iter()
        .map(|name| {
            let offset = fnv1a(0, name.as_bytes()) % m;
            let skip = fnv1a(1, name.as_bytes()) % (m - 1) + 1;
            (offset, skip)
        })
        .unzip();
    let mut next = vec![0u64; names.len()];
    let mut entries: Vec<Option<u32>> = vec![None; size];
    let mut filled = 0;
    'fill: loop {
        for i in 0..names.len() {
            // The next preferred entry of backend i that is still free.
            let mut candidate = (offsets[i] + next[i] * skips[i]) % m;
            while entries[candidate as usize].is_some() {
                next[i] += 1;
                candidate = (offsets[i] + next[i] * skips[i]) % m;
            }
            entries[candidate as usize] = Some(i as u32);
            next[i] += 1;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }
    entries.into_iter().map(|e| e.unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_size_is_a_listed_prime_of_100_entries_per_backend() {
        assert_eq!(table_size(0, DEFAULT_TABLE_SIZE), 1_021);
        assert_eq!(table_size(10, DEFAULT_TABLE_SIZE), 1_021);
        assert_eq!(table_size(11, DEFAULT_TABLE_SIZE), 2_039);
        assert_eq!(table_size(10, 16_381), 16_381);
        assert_eq!(table_size(3, 251), 509);
        assert_eq!(table_size(100_000, DEFAULT_TABLE_SIZE), 131_071);
        for size in TABLE_SIZES {
            assert!(
                (2..size)
                    .take_while(|d| d * d <= size)
                    .all(|d| size % d != 0),
                "{size} is prime"
            );
        }
    }

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080", i / 200, i % 200 + 1))
            .collect()
    }

    #[test]
    fn every_backend_gets_a_fair_share() {
        for n in [1, 2, 3, 10, 100] {
            let t = table(&names(n), 1021);
            assert_eq!(t.len(), 1021);
            let mut counts = vec![0usize; n];
            for e in &t {
                counts[*e as usize] += 1;
            }
            let fair = 1021 / n;
            for (i, c) in counts.iter().enumerate() {
                // Maglev's guarantee: shares differ by at most a small factor of the fair share.
                assert!(
                    *c * 10 >= fair * 7 && *c * 10 <= fair * 13 + 10,
                    "n={n} backend {i}: {c} of fair {fair}"
                );
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_few_entries() {
        let all = names(10);
        let before = table(&all, 1021);
        let mut fewer = all.clone();
        fewer.remove(3);
        let after = table(&fewer, 1021);
        // Entries that did not belong to the removed backend should mostly stay where they were.
        let mut kept = 0;
        let mut others = 0;
        for (b, a) in before.iter().zip(&after) {
            if *b as usize == 3 {
                continue;
            }
            others += 1;
            if all[*b as usize] == fewer[*a as usize] {
                kept += 1;
            }
        }
        assert!(
            kept * 100 >= others * 85,
            "only {kept} of {others} entries stayed"
        );
    }

    #[test]
    fn the_same_names_give_the_same_table() {
        assert_eq!(table(&names(7), 1021), table(&names(7), 1021));
        assert!(table(&[], 1021).is_empty());
    }
}
