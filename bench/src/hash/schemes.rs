//! The client hashes sticky is compared with, and sticky's own table, each computed the way
//! its project does.

use std::net::{IpAddr, Ipv4Addr};

use sticky::{
    config::{DEFAULT_SEED as TABLE_SEED, DEFAULT_TABLE_SIZE},
    table::{self, Member},
};
use sticky_common::Addr16;

/// The backend the daemon would configure as the `k`th: members are identified by address,
/// as in the real daemon, so the table is the one a `sticky run` with these backends builds.
fn member(k: u32) -> Member {
    Member {
        id: k,
        addr: Addr16::from_ip(IpAddr::V4(Ipv4Addr::new(10, 1, (k >> 8) as u8, k as u8))),
        port: 8080,
        weight: 1,
    }
}

/// sticky's scheme: the Maglev table of backends `0..n` (weight 1, default size and seed).
/// Removing or adding a backend rebuilds it from the changed member set, as the daemon does.
pub fn sticky_table(n: u32) -> Vec<u32> {
    let members: Vec<Member> = (0..n).map(member).collect();
    table::build(&members, DEFAULT_TABLE_SIZE, TABLE_SEED)
}

const TWO_31: f64 = 2_147_483_648.0;

/// ECMAScript ToInt32: what every bitwise operator does to its operands first.
fn to_int32(x: f64) -> i32 {
    if !x.is_finite() {
        return 0;
    }
    x.trunc().rem_euclid(4_294_967_296.0) as u32 as i32
}

/// `parseInt(s, 10)`: the longest run of decimal digits after optional blanks and sign,
/// NaN when there is none. It stops at the first other character rather than failing.
fn parse_int(s: &str) -> f64 {
    let s = s.trim_start();
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'-') => (-1.0, &s[1..]),
        Some(b'+') => (1.0, &s[1..]),
        _ => (1.0, s),
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse::<f64>().map_or(f64::NAN, |v| sign * v)
}

/// `r + (r << k)`, then `% 2^31`, in JavaScript numbers.
fn js_add_shl_mod(r: f64, k: u32) -> f64 {
    (r + f64::from(to_int32(r).wrapping_shl(k))) % TWO_31
}

/// `r ^ (r >> k)` in JavaScript numbers.
fn js_xor_sar(r: f64, k: u32) -> f64 {
    f64::from(to_int32(r) ^ (to_int32(r) >> k))
}

/// The "int31" hash of Node's `sticky-session` 0.x (indutny/sticky-session,
/// `lib/sticky-session.js`; sticky-cluster's benchmark names it so): `remoteAddress` split on
/// '.', each piece through `parseInt(piece, 10)` and folded into the per-process seed with
/// one-at-a-time style mixing modulo 2^31, then a final avalanche; `hash >>> 0`.
///
/// Computed in f64 with JavaScript's operator semantics, so it inherits the IPv6 bug: an
/// IPv6 address is one piece, and `parseInt` reads only its leading decimal digits. When there
/// are none (`fe80::…`, `::1`, `abcd:…`) the piece is NaN; `^` turns NaN into 0, the seed is
/// lost, the hash of 0 is 0, and every such client lands on worker 0. When there are
/// (`2001:db8::…` → 2001, `2a00:…` → 2) whole prefixes collapse onto one worker. sticky-session
/// 1.x hashes the address bytes instead. (On a dual-stack listener Node also reports IPv4
/// clients as `::ffff:a.b.c.d`, whose first piece is NaN too; we model `a.b.c.d`.)
pub fn int31(remote_address: &str, seed: u32) -> u32 {
    let mut r = f64::from(seed);
    for piece in remote_address.split('.') {
        r = (r + parse_int(piece)) % TWO_31;
        r = js_add_shl_mod(r, 10);
        r = js_xor_sar(r, 6);
    }
    r = js_add_shl_mod(r, 3);
    r = js_xor_sar(r, 11);
    r = js_add_shl_mod(r, 15);
    to_int32(r) as u32
}

/// djb2 (Bernstein) as the `string-hash` npm package computes it, which Node's
/// `sticky-cluster` applies to `remoteAddress`: 5381, then `hash * 33 ^ unit` over the
/// string's UTF-16 code units from the last to the first, in 32 bits; `hash >>> 0`.
pub fn djb2(s: &str) -> u32 {
    let mut hash: u32 = 5381;
    for ch in s.chars().rev() {
        let mut buf = [0u16; 2];
        for &unit in ch.encode_utf16(&mut buf).iter().rev() {
            hash = hash.wrapping_mul(33) ^ u32::from(unit);
        }
    }
    hash
}

/// nginx's `ip_hash` (`ngx_http_upstream_ip_hash_module`, documented as "the first three
/// octets of the client IPv4 address, or the entire IPv6 address, are used as a hashing
/// key"): 89, then `(hash * 113 + byte) % 6271` per key byte. The hash is below 6271, so
/// it only ever has 6271 values; weights and the retry on a failed peer are left out.
pub fn ip_hash(addr: &Addr16) -> u32 {
    let bytes = addr.to_bytes();
    let key = if addr.is_v4() {
        &bytes[12..15]
    } else {
        &bytes[..]
    };
    key.iter()
        .fold(89, |hash, &b| (hash * 113 + u32::from(b)) % 6271)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Addr16 {
        Addr16::from_ip(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
    }

    #[test]
    fn js_number_semantics() {
        assert_eq!(to_int32(f64::NAN), 0);
        assert_eq!(to_int32(2_147_483_648.0), i32::MIN);
        assert_eq!(to_int32(-1.5), -1);
        assert_eq!(to_int32(4_294_967_297.0), 1);
        assert_eq!(parse_int("192"), 192.0);
        assert_eq!(parse_int("2001:db8::1"), 2001.0);
        assert_eq!(parse_int("2a00::1"), 2.0);
        assert!(parse_int("fe80::1").is_nan());
        assert!(parse_int("::ffff:1").is_nan());
        assert!(parse_int("").is_nan());
    }

    #[test]
    fn int31_known_values() {
        // All zero in, zero out: every step maps 0 to 0.
        assert_eq!(int31("0.0.0.0", 0), 0);
        // The rest checked against the same expression evaluated by node.
        assert_eq!(int31("1.2.3.4", 0), 1_010_056_299);
        assert_eq!(int31("1.2.3.4", 12_345), 3_997_725_834);
        assert_eq!(int31("10.0.0.1", 0), 3_260_871_531);
        assert_eq!(int31("192.168.0.1", 987_654_321), 284_055_131);
        assert_eq!(int31("255.255.255.255", 999_999_999), 2_864_662_336);
        // A negative intermediate, wrapped by `>>> 0`.
        assert_eq!(int31("2a00::1", 5), 2_148_040_719);
    }

    #[test]
    fn int31_sends_ipv6_without_leading_digits_to_worker_0() {
        for addr in ["fe80::1", "::1", "abcd:ef01::2", "::"] {
            for seed in [0, 7, 12_345, 999_999_999] {
                assert_eq!(int31(addr, seed), 0, "{addr} with seed {seed}");
                assert_eq!(int31(addr, seed) % 10, 0);
            }
        }
        // Leading digits survive, and everything after them is ignored.
        assert_eq!(int31("2001:db8::1", 5), int31("2001:abcd::5", 5));
        assert_eq!(int31("2001:db8::1", 5), 194_221_303);
        assert_ne!(int31("2001:db8::1", 5), int31("2002:db8::1", 5));
        // An IPv4 client on a dual-stack listener: the NaN first piece wipes the seed and the
        // first octet, so the worker depends on the last three octets alone.
        let mapped = int31("::ffff:1.2.3.4", 7);
        assert_eq!(mapped, int31("::ffff:9.2.3.4", 12_345));
        assert_ne!(mapped, int31("::ffff:1.2.3.5", 7));
    }

    #[test]
    fn djb2_known_values() {
        assert_eq!(djb2(""), 5381);
        // 5381 * 33 = 177573 = 0x2b5a5; ^ 'a' (0x61) = 0x2b5c4.
        assert_eq!(djb2("a"), 177_604);
        // 'é' is one UTF-16 unit, 0xe9: 0x2b5a5 ^ 0xe9 = 0x2b54c.
        assert_eq!(djb2("é"), 177_484);
        assert_eq!(djb2("1.2.3.4"), 3_534_154_447);
        assert_eq!(djb2("192.168.0.1"), 2_296_315_951);
        assert_eq!(djb2("2001:db8::1"), 825_529_651);
        // Outside the BMP: a surrogate pair, low unit first from the end.
        let units = [0xd83d_u32, 0xde00];
        let want = units
            .iter()
            .rev()
            .fold(5381u32, |h, &u| h.wrapping_mul(33) ^ u);
        assert_eq!(djb2("😀"), want);
    }

    #[test]
    fn ip_hash_known_values() {
        // 89 → (89·113 + 1) % 6271 = 3787 → (3787·113 + 2) % 6271 = 1505
        //    → (1505·113 + 3) % 6271 = 751; the fourth octet is not read.
        assert_eq!(ip_hash(&v4(1, 2, 3, 4)), 751);
        assert_eq!(ip_hash(&v4(1, 2, 3, 200)), 751);
        assert_eq!(ip_hash(&v4(192, 168, 0, 1)), 153);
        // IPv6: all 16 bytes.
        assert_eq!(ip_hash(&Addr16::from_ip("::1".parse().unwrap())), 5945);
        assert_eq!(
            ip_hash(&Addr16::from_ip("2001:db8::1".parse().unwrap())),
            2600
        );
    }

    #[test]
    fn ip_hash_keeps_a_slash_24_together() {
        for n in [2, 3, 10, 11] {
            let first = ip_hash(&v4(203, 0, 113, 0)) % n;
            assert!((0..=255).all(|d| ip_hash(&v4(203, 0, 113, d)) % n == first));
        }
    }
}
