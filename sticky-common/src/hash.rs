//! The client hash and the table lookup. The eBPF program and userspace (lookup, preview,
//! proxy mode, tests) call these same functions, so a client maps to the same slot everywhere.

use crate::Addr16;

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
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
const fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3 (x86, 32-bit) of the client address with `seed`: fixed length, no loop the
/// verifier must bound, full avalanche, so neighbouring addresses spread over the table.
#[inline(always)]
pub const fn client_hash(addr: &Addr16, seed: u32) -> u32 {
    let [a, b, c, d] = addr.words;
    finish(mix(mix(mix(mix(seed, a), b), c), d), 16)
}

/// The same hash over a backend's identity (address and port), used to derive a backend's
/// Maglev permutation. Independent of the backend's position in any list.
pub const fn backend_hash(addr: &Addr16, port: u16, seed: u32) -> u32 {
    let [a, b, c, d] = addr.words;
    finish(mix(mix(mix(mix(mix(seed, a), b), c), d), port as u32), 18)
}

/// Maps a 32-bit hash onto `0..table_size` with a multiply instead of a division
/// (Lemire's fast range reduction): cheaper in eBPF and as uniform as a modulo.
#[inline(always)]
pub const fn table_slot(hash: u32, table_size: u32) -> u32 {
    ((hash as u64 * table_size as u64) >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_changes_the_hash() {
        let a = Addr16::from_bytes([7; 16]);
        assert_ne!(client_hash(&a, 1), client_hash(&a, 2));
        assert_eq!(client_hash(&a, 1), client_hash(&a, 1));
    }

    #[test]
    fn neighbouring_addresses_differ_in_about_half_the_bits() {
        let mut total = 0u32;
        for i in 0..1000u32 {
            let a = Addr16::from_v4_word(i.to_be());
            let b = Addr16::from_v4_word((i + 1).to_be());
            total += (client_hash(&a, 0) ^ client_hash(&b, 0)).count_ones();
        }
        let mean = f64::from(total) / 1000.0;
        assert!((14.0..18.0).contains(&mean), "mean flipped bits {mean}");
    }

    #[test]
    fn table_slot_stays_in_range() {
        for h in [0, 1, u32::MAX / 2, u32::MAX - 1, u32::MAX] {
            for size in [1, 7, 65_537, 1_000_003] {
                assert!(table_slot(h, size) < size);
            }
        }
        assert_eq!(table_slot(u32::MAX, 65_537), 65_536);
        assert_eq!(table_slot(0, 65_537), 0);
    }
}
