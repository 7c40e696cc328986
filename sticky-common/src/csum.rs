//! Internet checksum arithmetic (RFC 1071, incremental updates per RFC 1624) for the kernel
//! programs' rewrites. Words are taken as they sit in memory: ones'-complement sums do not
//! depend on byte order, so nothing is swapped.

/// Folds a sum of 16-bit words to 16 bits, carries added back in.
#[inline(always)]
pub const fn fold16(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum `check` of a header after one of its 32-bit words went from `old` to `new`
/// (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')).
#[inline(always)]
pub const fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let sum = (!check) as u64
        + (!old & 0xffff) as u64
        + (!old >> 16) as u64
        + (new & 0xffff) as u64
        + (new >> 16) as u64;
    !fold16(sum)
}

/// What replacing the words `old` with `new` adds to a ones'-complement sum, as a 32-bit
/// partial sum: `bpf_csum_diff`'s result, which `bpf_l4_csum_replace` takes with size 0.
#[inline(always)]
pub const fn diff4(old: &[u32; 4], new: &[u32; 4]) -> u32 {
    let mut acc: u64 = 0;
    let mut i = 0;
    while i < 4 {
        acc += (!old[i]) as u64 + new[i] as u64;
        i += 1;
    }
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc as u32
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// RFC 1071 over `words` (16-bit, in memory order), complemented.
    fn full(words: &[u16]) -> u16 {
        !fold16(words.iter().map(|w| u64::from(*w)).sum())
    }

    fn halves(w: u32) -> [u16; 2] {
        [w as u16, (w >> 16) as u16]
    }

    /// A deterministic stream of words (xorshift).
    fn words(seed: u64, n: usize) -> impl Iterator<Item = u32> {
        let mut x = seed | 1;
        (0..n).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u32
        })
    }

    #[test]
    fn replace4_matches_a_full_recomputation() {
        for seed in 1..2000u64 {
            let ws: Vec<u32> = words(seed, 6).collect();
            let (fixed, old, new) = ([ws[0], ws[1], ws[2], ws[3]], ws[4], ws[5]);
            let before: Vec<u16> = fixed
                .iter()
                .chain([&old])
                .flat_map(|w| halves(*w))
                .collect();
            let after: Vec<u16> = fixed
                .iter()
                .chain([&new])
                .flat_map(|w| halves(*w))
                .collect();
            // The checksum verifies either way: the header plus its checksum sums to all ones.
            let check = replace4(full(&before), old, new);
            let mut with = after.clone();
            with.push(check);
            assert_eq!(fold16(with.iter().map(|w| u64::from(*w)).sum()), 0xffff);
            // And it is the one a full recomputation gives, up to the two zeros.
            let want = full(&after);
            assert!(check == want || check ^ want == 0xffff && (check == 0 || want == 0));
        }
    }

    #[test]
    fn replace4_of_an_unchanged_word_keeps_the_checksum() {
        for w in words(7, 100) {
            for check in [0x1234, 0xfffe, 0x0001] {
                assert_eq!(replace4(check, w, w), check);
            }
        }
    }

    /// The kernel's update by a difference (`inet_proto_csum_replace_by_diff`, no offload):
    /// `csum_fold(csum_add(diff, ~csum_unfold(check)))`.
    fn apply(check: u16, diff: u32) -> u16 {
        let unfolded = u64::from(!u32::from(check) & 0xffff);
        !fold16(u64::from(diff) + unfolded)
    }

    #[test]
    fn diff4_updates_a_checksum_as_a_recomputation_would() {
        for seed in 1..2000u64 {
            let ws: Vec<u32> = words(seed, 11).collect();
            let rest = &ws[..3];
            let old = [ws[3], ws[4], ws[5], ws[6]];
            let new = [ws[7], ws[8], ws[9], ws[10]];
            let sum_of = |addr: &[u32; 4]| -> Vec<u16> {
                rest.iter().chain(addr).flat_map(|w| halves(*w)).collect()
            };
            let check = apply(full(&sum_of(&old)), diff4(&old, &new));
            let mut with = sum_of(&new);
            with.push(check);
            assert_eq!(fold16(with.iter().map(|w| u64::from(*w)).sum()), 0xffff);
        }
    }
}
