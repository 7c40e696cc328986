//! The HAProxy PROXY protocol, versions 1 and 2: the header a load balancer in front of us
//! sends first on each connection to say which client it accepted it from.
//!
//! Spec: <https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt>. A connection from
//! a peer configured to send the header must start with one; anything else is refused,
//! never passed on as data, so a client cannot smuggle in a header of its own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The longest version 1 line, CRLF included (spec section 2.1).
pub const V1_MAX_LEN: usize = 107;

/// The twelve bytes that open a version 2 header. They cannot start an HTTP request or a
/// TLS handshake, nor a version 1 line.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// The largest version 2 address block (addresses plus TLVs) accepted. The 16-bit length
/// field allows 64 KiB, which a peer could make us wait for and buffer per connection;
/// real headers are far smaller (the largest address block, AF_UNIX, is 216 bytes, and the
/// TLVs senders emit, such as authority, unique ID, SSL details and cloud endpoint IDs, add
/// a few hundred), so 2 KiB leaves generous room.
pub const V2_MAX_BLOCK: usize = 2048;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_FIXED_LEN: usize = 16;

/// The connection's real endpoints, as the sender saw them. Both are `None` when the
/// sender does not know them or they are not IP (v1 `UNKNOWN`, v2 `LOCAL` health checks,
/// AF_UNSPEC, AF_UNIX, UDP): the connection's own addresses apply then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHeader {
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

impl ProxyHeader {
    const NONE: Self = Self {
        source: None,
        destination: None,
    };
}

/// Why the start of a connection is not an acceptable PROXY header. The connection should
/// be closed: there is no way to resynchronise.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProxyProtocolError {
    #[error(
        "connection does not start with a PROXY protocol header: is the peer configured to send one?"
    )]
    NotProxyProtocol,
    #[error("PROXY v1 line is longer than {max} bytes")]
    V1TooLong { max: usize },
    #[error("malformed PROXY v1 line: {reason}")]
    V1Malformed { reason: &'static str },
    #[error("PROXY v2 header has version {version}, not 2")]
    V2Version { version: u8 },
    #[error("PROXY v2 command {command:#x} is neither LOCAL (0) nor PROXY (1)")]
    V2Command { command: u8 },
    #[error("PROXY v2 family/protocol byte {byte:#04x} is not defined")]
    V2Family { byte: u8 },
    #[error("PROXY v2 address block of {len} bytes exceeds the limit of {max}")]
    V2TooLong { len: usize, max: usize },
    #[error("PROXY v2 address block of {len} bytes is shorter than the {need} its family needs")]
    V2Truncated { len: usize, need: usize },
}

/// Parses the PROXY header at the start of `buf`, returning it and its length in bytes
/// (the connection's own data starts there). `Ok(None)` means more bytes are needed; at
/// most [`V1_MAX_LEN`] or 16 + [`V2_MAX_BLOCK`] bytes are ever asked for.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    if is_prefix_of(buf, &V2_SIGNATURE) {
        return if buf.len() >= V2_SIGNATURE.len() {
            parse_v2(buf)
        } else {
            Ok(None)
        };
    }
    if is_prefix_of(buf, V1_PREFIX) {
        return if buf.len() >= V1_PREFIX.len() {
            parse_v1(buf)
        } else {
            Ok(None)
        };
    }
    Err(ProxyProtocolError::NotProxyProtocol)
}

/// Whether `buf` and `pattern` agree on their common length (a short `buf` may yet match).
fn is_prefix_of(buf: &[u8], pattern: &[u8]) -> bool {
    buf.iter().zip(pattern).all(|(a, b)| a == b)
}

fn v1_error(reason: &'static str) -> ProxyProtocolError {
    ProxyProtocolError::V1Malformed { reason }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    let window = buf.get(..V1_MAX_LEN).unwrap_or(buf);
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        // Fail as soon as the line cannot become valid rather than wait for 107 bytes.
        let (last, body) = window.split_last().unwrap_or((&b' ', &[]));
        if !body.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
            || !(last.is_ascii_graphic() || *last == b' ' || *last == b'\r')
        {
            return Err(v1_error("line holds a byte that is not printable ASCII"));
        }
        return if window.len() >= V1_MAX_LEN {
            Err(ProxyProtocolError::V1TooLong { max: V1_MAX_LEN })
        } else {
            Ok(None)
        };
    };
    let line = window
        .get(..lf)
        .and_then(|l| l.strip_suffix(b"\r"))
        .ok_or_else(|| v1_error("line does not end in CRLF"))?;
    let line = std::str::from_utf8(line)
        .ok()
        .filter(|l| l.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .ok_or_else(|| v1_error("line holds a byte that is not printable ASCII"))?;
    let rest = line.get(V1_PREFIX.len()..).unwrap_or_default();
    let (family, addresses) = rest.split_once(' ').unwrap_or((rest, ""));
    let header = match family {
        // The spec has the receiver ignore whatever follows UNKNOWN.
        "UNKNOWN" => ProxyHeader::NONE,
        "TCP4" => v1_addresses(addresses, |s| s.parse::<Ipv4Addr>().ok().map(IpAddr::V4))?,
        "TCP6" => v1_addresses(addresses, |s| s.parse::<Ipv6Addr>().ok().map(IpAddr::V6))?,
        _ => return Err(v1_error("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Some((header, lf + 1)))
}

/// `src dst sport dport`, single spaces, addresses of the family `addr` parses.
fn v1_addresses(
    text: &str,
    addr: impl Fn(&str) -> Option<IpAddr>,
) -> Result<ProxyHeader, ProxyProtocolError> {
    let fields: Vec<&str> = text.split(' ').collect();
    let [src, dst, sport, dport] = fields.as_slice() else {
        return Err(v1_error(
            "expected source, destination and two ports, single-spaced",
        ));
    };
    let ip_of = |s: &str| addr(s).ok_or_else(|| v1_error("address does not match the protocol"));
    let port_of = |s: &str| port(s).ok_or_else(|| v1_error("port is not a number from 0 to 65535"));
    Ok(ProxyHeader {
        source: Some(SocketAddr::new(ip_of(src)?, port_of(sport)?)),
        destination: Some(SocketAddr::new(ip_of(dst)?, port_of(dport)?)),
    })
}

/// A decimal port: digits only (`u16::from_str` would accept a leading `+`).
fn port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
    let Some((&fixed, rest)) = buf.split_first_chunk::<V2_FIXED_LEN>() else {
        return Ok(None);
    };
    let [.., ver_cmd, family, len_hi, len_lo] = fixed;
    let version = ver_cmd >> 4;
    if version != 2 {
        return Err(ProxyProtocolError::V2Version { version });
    }
    let command = ver_cmd & 0x0f;
    if command > 1 {
        return Err(ProxyProtocolError::V2Command { command });
    }
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if len > V2_MAX_BLOCK {
        return Err(ProxyProtocolError::V2TooLong {
            len,
            max: V2_MAX_BLOCK,
        });
    }
    let Some(block) = rest.get(..len) else {
        return Ok(None);
    };
    let total = V2_FIXED_LEN + len;
    // LOCAL: the sender's own connection (a health check). The spec has the receiver
    // ignore the family and use the real endpoints.
    if command == 0 {
        return Ok(Some((ProxyHeader::NONE, total)));
    }
    if family >> 4 > 3 || family & 0x0f > 2 {
        return Err(ProxyProtocolError::V2Family { byte: family });
    }
    let header = match family {
        0x11 => v2_addresses(block, |b: [u8; 4]| Ipv4Addr::from(b).into())?,
        0x21 => v2_addresses(block, |b: [u8; 16]| Ipv6Addr::from(b).into())?,
        // UNSPEC, UNIX and datagram families: nothing to route a TCP connection by. Any
        // TLVs after the addresses are skipped along with the block.
        _ => ProxyHeader::NONE,
    };
    Ok(Some((header, total)))
}

/// The source and destination addresses (`N` bytes each) and ports at the start of `block`.
fn v2_addresses<const N: usize>(
    block: &[u8],
    ip: impl Fn([u8; N]) -> IpAddr,
) -> Result<ProxyHeader, ProxyProtocolError> {
    let short = || ProxyProtocolError::V2Truncated {
        len: block.len(),
        need: 2 * N + 4,
    };
    let (&src, rest) = block.split_first_chunk::<N>().ok_or_else(short)?;
    let (&dst, rest) = rest.split_first_chunk::<N>().ok_or_else(short)?;
    let (&[s_hi, s_lo, d_hi, d_lo], _tlvs) = rest.split_first_chunk::<4>().ok_or_else(short)?;
    Ok(ProxyHeader {
        source: Some(SocketAddr::new(ip(src), u16::from_be_bytes([s_hi, s_lo]))),
        destination: Some(SocketAddr::new(ip(dst), u16::from_be_bytes([d_hi, d_lo]))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::fuzz::XorShift;

    fn sock(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn v1(line: &str) -> Result<Option<(ProxyHeader, usize)>, ProxyProtocolError> {
        parse(line.as_bytes())
    }

    fn v2(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.extend([ver_cmd, family]);
        out.extend((block.len() as u16).to_be_bytes());
        out.extend(block);
        out
    }

    fn v2_ipv4_block() -> Vec<u8> {
        let mut block = vec![192, 0, 2, 1, 198, 51, 100, 2];
        block.extend(56324u16.to_be_bytes());
        block.extend(443u16.to_be_bytes());
        block
    }

    /// The v1 examples of the spec (section 2.1).
    #[test]
    fn v1_spec_examples() {
        let line = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n\r\n";
        let (header, len) = v1(line).unwrap().unwrap();
        assert_eq!(header.source, sock("192.168.0.1:56324"));
        assert_eq!(header.destination, sock("192.168.0.11:443"));
        assert_eq!(&line[len..], "GET / HTTP/1.1\r\n\r\n");

        let worst4 = "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
        let (header, len) = v1(worst4).unwrap().unwrap();
        assert_eq!((header.source, len), (sock("255.255.255.255:65535"), 56));

        let full = "ffff:f...f:ffff".replace("f...f", "ffff:ffff:ffff:ffff:ffff:ffff");
        let worst6 = format!("PROXY TCP6 {full} {full} 65535 65535\r\n");
        assert_eq!(worst6.len(), 104);
        let (header, _) = v1(&worst6).unwrap().unwrap();
        assert_eq!(header.destination, sock(&format!("[{full}]:65535")));

        assert_eq!(v1("PROXY UNKNOWN\r\n"), Ok(Some((ProxyHeader::NONE, 15))));
        let unknown = format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n");
        assert_eq!(unknown.len(), V1_MAX_LEN);
        assert_eq!(v1(&unknown), Ok(Some((ProxyHeader::NONE, V1_MAX_LEN))));
    }

    #[test]
    fn v1_ipv6() {
        let (header, _) = v1("PROXY TCP6 2001:db8::1 ::1 4711 0\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(header.source, sock("[2001:db8::1]:4711"));
        assert_eq!(header.destination, sock("[::1]:0"));
    }

    #[test]
    fn v1_is_strict() {
        for bad in [
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n",
            "PROXY TCP4  192.168.0.1 192.168.0.11 56324 443\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 +1 443\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 -1 443\r\n",
            "PROXY TCP4 2001:db8::1 192.168.0.11 1 443\r\n",
            "PROXY TCP6 192.168.0.1 ::1 1 443\r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 1 44\r3\r\n",
            "PROXY tcp4 192.168.0.1 192.168.0.11 1 443\r\n",
            "PROXY TCP5 192.168.0.1 192.168.0.11 1 443\r\n",
            "PROXY UNKNOWNX\r\n",
            "PROXY \r\n",
            "PROXY TCP4 192.168.0.1 192.168.0.11 1 4\t3\r\n",
        ] {
            assert!(
                matches!(v1(bad), Err(ProxyProtocolError::V1Malformed { .. })),
                "{bad:?}: {:?}",
                v1(bad)
            );
        }
        let long = format!("PROXY UNKNOWN {}", "x".repeat(200));
        assert_eq!(
            v1(&long),
            Err(ProxyProtocolError::V1TooLong { max: V1_MAX_LEN })
        );
        // Early refusal: no need to wait for the rest of a line that cannot be valid.
        assert!(v1("PROXY TCP4 \x00").is_err());
        assert!(v1("PROXY TCP4 1\r2").is_err());
    }

    #[test]
    fn not_proxy_protocol() {
        for other in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01",
            b"PROXX",
            b"\r\n\r\n\x01",
        ] {
            assert_eq!(parse(other), Err(ProxyProtocolError::NotProxyProtocol));
        }
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"PROX"), Ok(None));
        assert_eq!(parse(b"\r\n\r\n\0"), Ok(None));
    }

    #[test]
    fn v2_ipv4_with_tlvs() {
        let mut block = v2_ipv4_block();
        // PP2_TYPE_AUTHORITY "example.com", then PP2_TYPE_NOOP.
        block.extend([0x02, 0, 11]);
        block.extend(b"example.com");
        block.extend([0x04, 0, 0]);
        let mut buf = v2(0x21, 0x11, &block);
        let total = buf.len();
        buf.extend(b"GET /");
        let (header, len) = parse(&buf).unwrap().unwrap();
        assert_eq!(header.source, sock("192.0.2.1:56324"));
        assert_eq!(header.destination, sock("198.51.100.2:443"));
        assert_eq!(len, total);
    }

    #[test]
    fn v2_ipv6() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let mut block = src.octets().to_vec();
        block.extend(dst.octets());
        block.extend([0x12, 0x67, 0x00, 0x50]);
        let (header, len) = parse(&v2(0x21, 0x21, &block)).unwrap().unwrap();
        assert_eq!(header.source, sock("[2001:db8::1]:4711"));
        assert_eq!(header.destination, sock("[2001:db8::2]:80"));
        assert_eq!(len, 16 + 36);
    }

    #[test]
    fn v2_without_addresses() {
        // LOCAL ignores the family, even a nonsensical one, and the block.
        let local = v2(0x20, 0xff, &[1, 2, 3]);
        assert_eq!(parse(&local), Ok(Some((ProxyHeader::NONE, 19))));
        for family in [0x00, 0x01, 0x12, 0x22, 0x31, 0x32] {
            let buf = v2(0x21, family, &[0; 216]);
            assert_eq!(
                parse(&buf),
                Ok(Some((ProxyHeader::NONE, 232))),
                "{family:#x}"
            );
        }
    }

    #[test]
    fn v2_errors() {
        let block = v2_ipv4_block();
        assert_eq!(
            parse(&v2(0x11, 0x11, &block)),
            Err(ProxyProtocolError::V2Version { version: 1 })
        );
        assert_eq!(
            parse(&v2(0x22, 0x11, &block)),
            Err(ProxyProtocolError::V2Command { command: 2 })
        );
        for byte in [0x41, 0x13] {
            assert_eq!(
                parse(&v2(0x21, byte, &block)),
                Err(ProxyProtocolError::V2Family { byte })
            );
        }
        assert_eq!(
            parse(&v2(0x21, 0x11, &block[..11])),
            Err(ProxyProtocolError::V2Truncated { len: 11, need: 12 })
        );
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 35])),
            Err(ProxyProtocolError::V2Truncated { len: 35, need: 36 })
        );
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend([0x21, 0x11, 0xff, 0xff]);
        assert_eq!(
            parse(&huge),
            Err(ProxyProtocolError::V2TooLong {
                len: 65535,
                max: V2_MAX_BLOCK
            })
        );
        let max = v2(0x21, 0x11, &[0; V2_MAX_BLOCK]);
        assert_eq!(parse(&max).unwrap().unwrap().1, 16 + V2_MAX_BLOCK);
    }

    #[test]
    fn every_truncation_is_incomplete() {
        let full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let mut valid = vec![
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
            format!("PROXY UNKNOWN {full} {full} 65535 65535\r\n").into_bytes(),
            v2(0x21, 0x11, &v2_ipv4_block()),
            v2(0x20, 0x00, &[]),
            v2(0x21, 0x21, &[7; 36 + 20]),
        ];
        valid.push(v2(0x21, 0x31, &[0; 216]));
        for input in &valid {
            for cut in 0..input.len() {
                assert_eq!(parse(&input[..cut]), Ok(None), "{input:?} cut at {cut}");
            }
            assert_eq!(parse(input).unwrap().unwrap().1, input.len());
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift::new(0x9709);
        let seeds = [
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 ::1 4711 0\r\n".to_vec(),
            v2(0x21, 0x11, &v2_ipv4_block()),
            v2(0x21, 0x21, &[9; 40]),
        ];
        let seeds: Vec<&[u8]> = seeds.iter().map(Vec::as_slice).collect();
        for _ in 0..10_000 {
            let input = rng.input(&seeds, b"PROXY TCP46:. 0123456789\r\n\x21\x11\x00", 160);
            if let Ok(Some((_, len))) = parse(&input) {
                assert!(len <= input.len());
            }
        }
    }
}
