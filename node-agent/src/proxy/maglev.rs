//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of a prime
//! size `M` in which every backend holds about `M / N` entries, built so that removing
//! one of `N` backends moves little more than the `1/N` of entries it held. The
//! datapath picks `table[hash(flow) % M]` for a new flow, so every node picks the same
//! backend for the same flow (the table is built from backend addresses, the same on
//! every node), and a change of the backend set re-routes few flows that have no
//! conntrack entry yet (a node port's flows arriving at another node, after a failover).
//!
//! Pure functions: the reconciler writes the table into the frontend's slots.

use super::model::BackendKey;

/// The default table size: prime, and 100 × 10 backends.
pub const DEFAULT_TABLE_SIZE: u16 = 1021;
/// The largest prime that fits the slot numbers (`u16`).
pub const MAX_TABLE_SIZE: u16 = 65_521;

/// The table size for `backends` backends: `configured`, or the smallest prime of at
/// least 100 × backends when that is larger (capped at [`MAX_TABLE_SIZE`]).
pub fn table_size(configured: u16, backends: usize) -> u16 {
    let wanted = backends.saturating_mul(100).min(usize::from(MAX_TABLE_SIZE));
    if usize::from(configured) >= wanted {
        return configured;
    }
    (wanted..=usize::from(MAX_TABLE_SIZE))
        .find(|n| is_prime(*n))
        .and_then(|n| u16::try_from(n).ok())
        .unwrap_or(MAX_TABLE_SIZE)
}

pub fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// The lookup table of size `m` (a prime) over `backends`, which must be sorted and
/// distinct: entry `i` is the index of the backend that flows hashing to `i` go to.
/// Empty without backends.
pub fn table(backends: &[BackendKey], m: u16) -> Vec<usize> {
    let m = usize::from(m);
    if backends.is_empty() || m == 0 {
        return Vec::new();
    }
    // Each backend's preference list is `offset, offset + skip, ...` (mod m); `skip`
    // is never 0 and, m being prime, the list visits every entry.
    let prefs: Vec<(usize, usize)> = backends
        .iter()
        .map(|b| {
            let name = fnv1a(&b.to_string());
            let offset = (mix(name ^ 0x9e37_79b9_7f4a_7c15) % m as u64) as usize;
            let skip = if m > 1 { (mix(name ^ 0xd1b5_4a32_d192_ed03) % (m as u64 - 1)) as usize + 1 } else { 1 };
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; backends.len()];
    let mut entry: Vec<Option<usize>> = vec![None; m];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in prefs.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while entry[c].is_some() {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            entry[c] = Some(i);
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entry.into_iter().map(|e| e.expect("every entry filled")).collect()
}

/// FNV-1a: the same on every node and build (std's hasher promises neither).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// splitmix64's finaliser: with two different inputs per name, the two independent
/// hashes Maglev needs (FNV alone leaves names that differ in one digit too alike).
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::model::Protocol;

    fn backends(n: usize) -> Vec<BackendKey> {
        let mut v: Vec<BackendKey> = (0..n)
            .map(|i| BackendKey {
                addr: format!("10.244.{}.{}", i / 200, i % 200 + 2).parse().unwrap(),
                port: 8080,
                proto: Protocol::Tcp,
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn sizes_are_prime_and_grow_with_the_backends() {
        assert!(is_prime(usize::from(DEFAULT_TABLE_SIZE)) && is_prime(usize::from(MAX_TABLE_SIZE)));
        assert_eq!(table_size(DEFAULT_TABLE_SIZE, 3), DEFAULT_TABLE_SIZE);
        assert_eq!(table_size(DEFAULT_TABLE_SIZE, 11), 1103, "the smallest prime ≥ 1100");
        assert_eq!(table_size(DEFAULT_TABLE_SIZE, 10_000), MAX_TABLE_SIZE);
    }

    #[test]
    fn every_backend_gets_a_fair_share() {
        let b = backends(7);
        let t = table(&b, DEFAULT_TABLE_SIZE);
        assert_eq!(t.len(), usize::from(DEFAULT_TABLE_SIZE));
        let per = usize::from(DEFAULT_TABLE_SIZE) / 7;
        for i in 0..7 {
            let n = t.iter().filter(|e| **e == i).count();
            assert!(n.abs_diff(per) <= 2, "backend {i} holds {n} of {}, expected about {per}", t.len());
        }
        assert!(table(&[], DEFAULT_TABLE_SIZE).is_empty());
    }

    /// The share of table entries that change when the middle one of `n` backends goes.
    fn moved_share(n: usize, m: u16) -> f64 {
        let all = backends(n);
        let before: Vec<BackendKey> = table(&all, m).into_iter().map(|i| all[i]).collect();
        let removed = all[n / 2];
        let rest: Vec<BackendKey> = all.iter().copied().filter(|b| *b != removed).collect();
        let after: Vec<BackendKey> = table(&rest, m).into_iter().map(|i| rest[i]).collect();
        // The removed backend's entries all go to the others.
        assert!(!after.contains(&removed) && before.contains(&removed));
        before.iter().zip(&after).filter(|(a, b)| a != b).count() as f64 / f64::from(m)
    }

    #[test]
    fn removing_one_of_n_backends_moves_about_one_nth_of_the_entries() {
        // Maglev moves the removed backend's 1/N and some more, the less the larger the
        // table is against N (about 1.2/N at 100 × N for N = 10; 1.9/N for N = 50).
        for n in [3usize, 10, 50] {
            let share = moved_share(n, table_size(DEFAULT_TABLE_SIZE, n));
            assert!(share <= 2.5 / n as f64, "n={n}: {share:.3} of the entries moved, 1/N is {:.3}", 1.0 / n as f64);
        }
        let share = moved_share(50, MAX_TABLE_SIZE);
        assert!(share <= 1.4 / 50.0, "a large table is close to the minimum: {share:.4}");
    }

    #[test]
    fn the_table_depends_on_the_backends_not_on_anything_local() {
        let b = backends(5);
        assert_eq!(table(&b, DEFAULT_TABLE_SIZE), table(&b.clone(), DEFAULT_TABLE_SIZE));
    }
}
