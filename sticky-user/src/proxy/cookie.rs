//! The stickiness cookie: which backend a client was sent to, as an opaque token.
//!
//! The token is a keyed hash of the backend's address, so it reveals nothing about the
//! network behind us and stays valid as long as the backend and the key do (a restart
//! with the same key keeps sessions where they were). Tokens map back to backends by
//! computing the token of each current backend, so a made-up token matches nothing.

use std::net::SocketAddr;

use sticky_common::Addr16;

use super::client_ip::HeaderSource;
use crate::http::{self, is_token};

/// The value of the first cookie called exactly `name` across all `Cookie` headers, with
/// surrounding blanks and one pair of double quotes removed. Cookie names are
/// case-sensitive (RFC 6265 section 5.4); values that are not UTF-8 are skipped.
pub fn find(head: &impl HeaderSource, name: &str) -> Option<String> {
    head.values(&::http::header::COOKIE)
        .flat_map(|v| v.split(|&b| b == b';'))
        .filter_map(|pair| {
            let at = pair.iter().position(|&b| b == b'=')?;
            let (key, value) = pair.split_at(at);
            (key.trim_ascii() == name.as_bytes()).then_some(value.get(1..)?)
        })
        .find_map(|value| {
            let value = value.trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            String::from_utf8(value.to_vec()).ok()
        })
}

/// An opaque, stable token for the backend at `addr`: 16 hex digits of SipHash-2-4 over
/// the address (IPv4 as IPv4-mapped, so both spellings agree) and port, keyed by `key`.
/// Without the key it can neither be reversed nor forged for a chosen backend.
pub fn backend_token(addr: SocketAddr, key: u64) -> String {
    let mut msg = [0u8; 18];
    let (ip, port) = msg.split_at_mut(16);
    ip.copy_from_slice(&Addr16::from_ip(addr.ip()).to_bytes());
    port.copy_from_slice(&addr.port().to_be_bytes());
    // The second key half is derived, not zero, so the full 128-bit SipHash key varies;
    // the constant only separates this use from any other keyed by the same secret.
    let k1 = key.rotate_left(32) ^ 0x7374_6963_6b79_636b;
    format!("{:016x}", siphash24(key, k1, &msg))
}

/// Whether `name` can be a cookie name (an RFC 9110 token), i.e. cannot break the
/// `Set-Cookie` line or be confused with attributes. Check configured names with it.
pub fn is_valid_name(name: &str) -> bool {
    is_token(name)
}

/// The header line that sets cookie `name` (see [`is_valid_name`]) to `token` for the whole
/// site, hidden from scripts and sent on top-level navigations from other sites.
pub fn set_cookie_line(name: &str, token: &str) -> String {
    format!("Set-Cookie: {}\r\n", set_cookie_value(name, token))
}

/// The `Set-Cookie` value of [`set_cookie_line`].
pub fn set_cookie_value(name: &str, token: &str) -> String {
    format!("{name}={token}; Path=/; HttpOnly; SameSite=Lax")
}

/// `buf`, the first bytes of a backend's response, with header `line` added right after
/// the status line. `None` while the status line is incomplete, or if this is not an
/// HTTP/1.x response (leave those alone). The caller bounds how long it waits.
///
/// A `1xx` interim response gets the line too; clients may ignore cookies there, so the
/// next response without a cookie in its request sets it again.
pub fn insert_into_response(buf: &[u8], line: &str) -> Option<Vec<u8>> {
    let end = http::status_line(buf).ok()??.len?;
    let (status, rest) = buf.split_at(end);
    let mut out = Vec::with_capacity(buf.len() + line.len());
    out.extend_from_slice(status);
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(rest);
    Some(out)
}

/// SipHash-2-4 (Aumasson and Bernstein), a keyed PRF for short inputs. Written out because
/// std's `SipHasher` is deprecated and its `DefaultHasher` does not promise an algorithm.
fn siphash24(k0: u64, k1: u64, msg: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn compress(v: &mut [u64; 4], m: u64, rounds: usize) {
        v[3] ^= m;
        for _ in 0..rounds {
            sip_round(v);
        }
        v[0] ^= m;
    }
    let mut words = msg.chunks_exact(8);
    for word in words.by_ref() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        compress(&mut v, u64::from_le_bytes(bytes), 2);
    }
    let mut last = [0u8; 8];
    let tail = words.remainder();
    last[..tail.len()].copy_from_slice(tail);
    // The length modulo 256, as the algorithm specifies.
    last[7] = msg.len() as u8;
    compress(&mut v, u64::from_le_bytes(last), 2);
    v[2] ^= 0xff;
    for _ in 0..4 {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::RequestHead;
    use crate::http::fuzz::XorShift;
    use crate::http::request::parse;

    fn with_cookies(values: &[&str]) -> RequestHead {
        let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for v in values {
            req.extend_from_slice(format!("Cookie: {v}\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        parse(&req, 8192).unwrap().unwrap()
    }

    #[test]
    fn finds_cookies() {
        let head = with_cookies(&["a=1; sticky=abc; b=2", "sticky=second"]);
        assert_eq!(find(&head, "sticky").as_deref(), Some("abc"));
        assert_eq!(find(&head, "b").as_deref(), Some("2"));
        assert_eq!(find(&head, "Sticky"), None);
        assert_eq!(find(&head, "stick"), None);
        assert_eq!(find(&head, "missing"), None);
        let head = with_cookies(&["x=1", "  sticky = \"q v\" ;y=2"]);
        assert_eq!(find(&head, "sticky").as_deref(), Some("q v"));
        let head = with_cookies(&["a=1;sticky=;c"]);
        assert_eq!(find(&head, "sticky").as_deref(), Some(""));
        assert_eq!(find(&head, "c"), None);
        let head = with_cookies(&["sticky=a=b"]);
        assert_eq!(find(&head, "sticky").as_deref(), Some("a=b"));
        assert_eq!(find(&with_cookies(&[]), "sticky"), None);
    }

    #[test]
    fn skips_values_that_are_not_utf8() {
        let head = parse(b"GET / HTTP/1.1\r\nCookie: s=\xff\xfe; s=ok\r\n\r\n", 8192)
            .unwrap()
            .unwrap();
        assert_eq!(find(&head, "s").as_deref(), Some("ok"));
    }

    /// The reference vectors from the SipHash paper (appendix A): key 00..0f.
    #[test]
    fn siphash_reference_vectors() {
        let k0 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
        let k1 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);
        let msg: Vec<u8> = (0..15).collect();
        assert_eq!(siphash24(k0, k1, &msg), 0xa129_ca61_49be_45e5);
        assert_eq!(siphash24(k0, k1, &[]), 0x726f_db47_dd0e_0e31);
        let msg: Vec<u8> = (0..8).collect();
        assert_eq!(siphash24(k0, k1, &msg), 0x93f5_f579_9a93_2462);
    }

    #[test]
    fn tokens_are_stable_keyed_and_opaque() {
        let a: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let token = backend_token(a, 42);
        assert_eq!(token.len(), 16);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(token, backend_token(a, 42));
        assert_ne!(token, backend_token(a, 43));
        assert_ne!(token, backend_token("10.0.0.1:8081".parse().unwrap(), 42));
        assert_ne!(token, backend_token("10.0.0.2:8080".parse().unwrap(), 42));
        assert_eq!(
            token,
            backend_token("[::ffff:10.0.0.1]:8080".parse().unwrap(), 42)
        );
        assert!(!token.contains("0a000001") && !token.contains("1f90"));
    }

    #[test]
    fn set_cookie() {
        assert!(is_valid_name("sticky_backend"));
        assert!(!is_valid_name("") && !is_valid_name("a b") && !is_valid_name("a;b"));
        assert!(!is_valid_name("a\r\nX: y") && !is_valid_name("a=b"));
        let line = set_cookie_line("sticky", "0123456789abcdef");
        assert_eq!(
            line,
            "Set-Cookie: sticky=0123456789abcdef; Path=/; HttpOnly; SameSite=Lax\r\n"
        );
    }

    #[test]
    fn inserts_after_the_status_line() {
        let line = "Set-Cookie: s=t\r\n";
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let out = insert_into_response(resp, line).unwrap();
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nSet-Cookie: s=t\r\nContent-Length: 2\r\n\r\nok"
        );
        let mut headers = [httparse::EMPTY_HEADER; 4];
        let mut parsed = httparse::Response::new(&mut headers);
        assert!(parsed.parse(&out).unwrap().is_complete());
        assert_eq!(parsed.headers[0].name, "Set-Cookie");
        let bare = insert_into_response(b"HTTP/1.0 204 No Content\n\n", line).unwrap();
        assert_eq!(bare, b"HTTP/1.0 204 No Content\nSet-Cookie: s=t\r\n\n");
        for cut in 0..17 {
            assert_eq!(insert_into_response(&resp[..cut], line), None, "cut {cut}");
        }
        assert_eq!(insert_into_response(b"HTTP/2 200\r\n\r\n", line), None);
        assert_eq!(insert_into_response(b"SSH-2.0-x\r\n", line), None);
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift::new(0xc00c1e);
        let seeds: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nCookie: a=1; sticky=\"abc\"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ];
        for _ in 0..10_000 {
            let input = rng.input(seeds, b"=;\" \r\nsticky", 120);
            if let Ok(Some(head)) = parse(&input, 4096) {
                let _ = find(&head, "sticky");
            }
            if let Some(out) = insert_into_response(&input, "X: y\r\n") {
                assert_eq!(out.len(), input.len() + 6);
                assert!(out.starts_with(b"HTTP/1."));
            }
            let _ = backend_token(
                SocketAddr::from(([10, 0, 0, 1], rng.below(65536) as u16)),
                7,
            );
        }
    }
}
