//! Which client a request comes from when it reaches us through other proxies.
//!
//! A forwarding header is believed only from a trusted peer, and only as far as it was
//! written by trusted proxies: the list is read from the right (each proxy appends the
//! address it saw), skipping trusted hops, and the first untrusted hop is the client. This
//! is Envoy's `xff_trusted_cidrs` rule; anything further left was written by the client
//! and is ignored, so a client cannot pick its own address and thereby its backend.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderName, header::FORWARDED};

use super::cidr::CidrList;
use crate::http::{RequestHead, is_token};

/// Request headers to read from: a head parsed here, or hyper's.
pub trait HeaderSource {
    /// Every value of header `name`, in the order sent.
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl DoubleEndedIterator<Item = &'a [u8]>;
}

impl HeaderSource for RequestHead {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        self.header_values(name.as_str())
    }
}

impl HeaderSource for http::HeaderMap {
    fn values<'a>(&'a self, name: &'a HeaderName) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        // By `HeaderName`: a `&str` is parsed again on every request.
        self.get_all(name).iter().map(http::HeaderValue::as_bytes)
    }
}

/// Where the client address is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for=proxy1`.
    Forwarded,
    /// `X-Real-IP: client`, a single address set by the proxy in front of us.
    XRealIp,
    /// Any other header, read like `X-Forwarded-For` (e.g. `CF-Connecting-IP`,
    /// `True-Client-IP`, which hold a one-element list).
    Other(HeaderName),
}

static X_FORWARDED_FOR_NAME: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

impl Source {
    /// The source for a header name given on the command line (case-insensitive); `None`
    /// if it is not a header name.
    pub fn from_header_name(name: &str) -> Option<Self> {
        let name = name.trim();
        Some(if name.eq_ignore_ascii_case("x-forwarded-for") {
            Self::XForwardedFor
        } else if name.eq_ignore_ascii_case("forwarded") {
            Self::Forwarded
        } else if name.eq_ignore_ascii_case("x-real-ip") {
            Self::XRealIp
        } else {
            Self::Other(HeaderName::from_bytes(name.as_bytes()).ok()?)
        })
    }

    /// The header this source reads.
    pub fn header(&self) -> &HeaderName {
        match self {
            Self::XForwardedFor => &X_FORWARDED_FOR_NAME,
            Self::Forwarded => &FORWARDED,
            Self::XRealIp => &X_REAL_IP,
            Self::Other(name) => name,
        }
    }

    /// The header's name, in lower case.
    pub fn header_name(&self) -> &str {
        self.header().as_str()
    }
}

/// Why a trusted peer's request names no usable client address. Values are excerpts of
/// what the client sent, cut to [`MAX_EXCERPT`] bytes so they are safe to log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientIpError {
    /// A trusted proxy sent no such header, or one listing no hops: reject (400), or route
    /// by the peer address if the operator allows missing headers.
    #[error("trusted peer sent no {header} header, or an empty one")]
    Missing { header: String },
    /// Something other than an address where the client's address must be.
    #[error("{header} header holds {value:?} where the client address must be")]
    Malformed { header: String, value: String },
    /// The client's hop is `unknown` or an obfuscated identifier (RFC 7239 section 6.3):
    /// well-formed but naming no address to route by.
    #[error("client hop {value:?} names no address")]
    Unusable { value: String },
}

/// The longest excerpt of a header kept in an error.
pub const MAX_EXCERPT: usize = 100;

/// The address to route `head` by, which arrived from `peer` on the connection.
///
/// An untrusted peer's headers are ignored and the peer itself is the client. From a trusted
/// peer, every occurrence of the header counts, in order, as one list (RFC 9110 section
/// 5.3); hops are read from the right past trusted proxies, and if every hop is trusted the
/// leftmost is the client. IPv4-mapped IPv6 addresses come back as IPv4.
pub fn client_ip(
    head: &impl HeaderSource,
    source: &Source,
    peer: IpAddr,
    trusted: &CidrList,
) -> Result<IpAddr, ClientIpError> {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return Ok(peer);
    }
    let header = source.header_name();
    if matches!(source, Source::XForwardedFor | Source::Other(_)) {
        return from_list(head, source.header(), trusted);
    }
    let values: Vec<Cow<'_, str>> = head
        .values(source.header())
        .map(String::from_utf8_lossy)
        .collect();
    if *source == Source::XRealIp {
        return real_ip(header, &values);
    }
    // `Forwarded`: a quoted string cannot continue into the next header line, so each line
    // is split on its own before the lines are joined into one list.
    let elements: Vec<&str> = values
        .iter()
        .flat_map(|v| split_unquoted(v, b','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let hops = elements.iter().rev().map(|e| forwarded_for(header, e));
    first_untrusted(hops, trusted, header)
}

/// A comma-separated list read from the right as it is found, every line of the header from
/// the last: the common case (one line, a hop or two) allocates nothing.
fn from_list(
    head: &impl HeaderSource,
    name: &HeaderName,
    trusted: &CidrList,
) -> Result<IpAddr, ClientIpError> {
    let header = name.as_str();
    // Lossy decoding borrows in the usual ASCII case; a replaced byte can only make an
    // element fail to parse, never turn it into another address (a comma is never part of
    // a multi-byte character, so decoding each element is decoding the line).
    let hops = head
        .values(name)
        .rev()
        .flat_map(|line| line.rsplit(|&b| b == b','))
        .map(String::from_utf8_lossy)
        .filter(|e| !e.trim().is_empty())
        .map(|e| node(header, e.trim()));
    first_untrusted(hops, trusted, header)
}

/// The client among `hops`, given from the right: the first hop that is not a trusted proxy,
/// or the leftmost when all are.
fn first_untrusted(
    hops: impl Iterator<Item = Result<IpAddr, ClientIpError>>,
    trusted: &CidrList,
    header: &str,
) -> Result<IpAddr, ClientIpError> {
    let mut leftmost = None;
    for ip in hops {
        let ip = ip?;
        if !trusted.contains(ip) {
            return Ok(ip);
        }
        leftmost = Some(ip);
    }
    leftmost.ok_or_else(|| ClientIpError::Missing {
        header: header.to_owned(),
    })
}

/// `X-Real-IP` is overwritten, not appended, by the proxy that sets it, so there is no list
/// to walk; two of them mean someone appended one, and neither can be believed.
fn real_ip(header: &str, values: &[Cow<'_, str>]) -> Result<IpAddr, ClientIpError> {
    match values {
        [] => Err(ClientIpError::Missing {
            header: header.to_owned(),
        }),
        [value] if !value.contains(',') => node(header, value.trim()),
        _ => Err(malformed(header, &values.join(", "))),
    }
}

/// The address in one `Forwarded` element's `for` parameter.
fn forwarded_for(header: &str, element: &str) -> Result<IpAddr, ClientIpError> {
    let mut found = None;
    for pair in split_unquoted(element, b';') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| malformed(header, element))?;
        let value = forwarded_value(value).ok_or_else(|| malformed(header, element))?;
        if !is_token(key) {
            return Err(malformed(header, element));
        }
        if key.eq_ignore_ascii_case("for") {
            // RFC 7239 section 4: a parameter must not occur twice in one element, and
            // there is no telling which of two is genuine.
            if found.is_some() {
                return Err(malformed(header, element));
            }
            found = Some(value);
        }
    }
    match found {
        Some(value) => node(header, &value),
        // A hop that does not say who it received the request from names nobody.
        None => Err(unusable(element)),
    }
}

/// A parameter value: a token, or a quoted string with its quoted-pairs resolved. Unquoted
/// `[`, `]` and `:` are accepted too: RFC 7239 wants such values quoted, but some proxies
/// write `for=[2001:db8::1]:80` bare and the meaning is unambiguous.
fn forwarded_value(value: &str) -> Option<Cow<'_, str>> {
    let Some(quoted) = value.strip_prefix('"') else {
        let bare = value
            .split([':', '[', ']'])
            .all(|part| part.is_empty() || is_token(part));
        return (!value.is_empty() && bare).then_some(Cow::Borrowed(value));
    };
    let mut out = String::with_capacity(quoted.len());
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            // The closing quote must end the value.
            '"' => return chars.as_str().is_empty().then_some(Cow::Owned(out)),
            c => out.push(c),
        }
    }
    None
}

/// Splits `s` at each `sep` outside double-quoted strings. An unterminated quote runs to
/// the end, leaving a last piece that fails to parse rather than one that was cut short.
fn split_unquoted(s: &str, sep: u8) -> Vec<&str> {
    let mut pieces = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                pieces.push(s.get(start..i).unwrap_or_default());
                start = i + 1;
            }
            _ => {}
        }
    }
    pieces.push(s.get(start..).unwrap_or_default());
    pieces
}

/// One hop's address in any of the forms proxies write: `192.0.2.1`, `192.0.2.1:5678`,
/// `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:4711`, `::ffff:192.0.2.1`. A port may
/// also be obfuscated (`192.0.2.1:_a`). `unknown` and `_obfuscated` names are unusable.
fn node(header: &str, text: &str) -> Result<IpAddr, ClientIpError> {
    if text.eq_ignore_ascii_case("unknown") || text.starts_with('_') {
        return Err(unusable(text));
    }
    parse_node(text)
        .map(|ip| ip.to_canonical())
        .ok_or_else(|| malformed(header, text))
}

fn parse_node(text: &str) -> Option<IpAddr> {
    if let Some(rest) = text.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    // With a port, only IPv4 is unambiguous: `2001:db8::1:80` is itself an address.
    let (addr, port) = text.split_once(':')?;
    if !is_port(port) {
        return None;
    }
    addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A decimal port, or an obfuscated one (RFC 7239 section 6.3: `_` and token characters).
fn is_port(s: &str) -> bool {
    let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = s.len() > 1
        && s.starts_with('_')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    (digits && s.parse::<u16>().is_ok()) || obfuscated
}

fn malformed(header: &str, value: &str) -> ClientIpError {
    ClientIpError::Malformed {
        header: header.to_owned(),
        value: excerpt(value),
    }
}

fn unusable(value: &str) -> ClientIpError {
    ClientIpError::Unusable {
        value: excerpt(value),
    }
}

/// At most [`MAX_EXCERPT`] bytes of `s`, cut on a character boundary.
fn excerpt(s: &str) -> String {
    let mut end = s.len().min(MAX_EXCERPT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::fuzz::XorShift;

    const TRUSTED: &str = "10.0.0.0/8, fd00::/8";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            path: "/".into(),
            version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
                .collect(),
            len: 0,
        }
    }

    /// The client of a request carrying `headers` that arrived from the trusted 10.0.0.1.
    fn via_proxy(source: &Source, headers: &[(&str, &str)]) -> Result<IpAddr, ClientIpError> {
        client_ip(
            &head(headers),
            source,
            ip("10.0.0.1"),
            &TRUSTED.parse().unwrap(),
        )
    }

    fn xff(value: &str) -> Result<IpAddr, ClientIpError> {
        via_proxy(&Source::XForwardedFor, &[("X-Forwarded-For", value)])
    }

    fn fwd(value: &str) -> Result<IpAddr, ClientIpError> {
        via_proxy(&Source::Forwarded, &[("Forwarded", value)])
    }

    #[test]
    fn source_names() {
        assert_eq!(
            Source::from_header_name("X-Forwarded-For"),
            Some(Source::XForwardedFor)
        );
        assert_eq!(
            Source::from_header_name("FORWARDED"),
            Some(Source::Forwarded)
        );
        assert_eq!(Source::from_header_name("x-real-ip"), Some(Source::XRealIp));
        let other = Source::from_header_name("CF-Connecting-IP").unwrap();
        assert_eq!(
            other,
            Source::Other(HeaderName::from_static("cf-connecting-ip"))
        );
        assert_eq!(other.header_name(), "cf-connecting-ip");
        assert_eq!(Source::from_header_name("not a name"), None);
    }

    #[test]
    fn untrusted_peer_with_spoofed_header_is_the_client() {
        let spoofed = head(&[("X-Forwarded-For", "10.0.0.5, 203.0.113.1")]);
        let trusted = TRUSTED.parse().unwrap();
        for source in [Source::XForwardedFor, Source::Forwarded, Source::XRealIp] {
            let got = client_ip(&spoofed, &source, ip("198.51.100.9"), &trusted);
            assert_eq!(got, Ok(ip("198.51.100.9")));
        }
        // Even garbage or a missing header is no error from an untrusted peer.
        let garbage = head(&[("X-Forwarded-For", "<script>")]);
        let got = client_ip(
            &garbage,
            &Source::XForwardedFor,
            ip("::ffff:192.0.2.4"),
            &trusted,
        );
        assert_eq!(got, Ok(ip("192.0.2.4")));
        let empty = CidrList::default();
        let got = client_ip(&spoofed, &Source::XForwardedFor, ip("10.0.0.1"), &empty);
        assert_eq!(got, Ok(ip("10.0.0.1")));
    }

    #[test]
    fn multi_hop_x_forwarded_for() {
        assert_eq!(xff("203.0.113.7"), Ok(ip("203.0.113.7")));
        // The client claims 1.2.3.4; the first untrusted hop from the right wins.
        assert_eq!(
            xff("1.2.3.4, 203.0.113.7, 10.1.1.1, fd00::2"),
            Ok(ip("203.0.113.7"))
        );
        // Every hop trusted: the leftmost is the client.
        assert_eq!(xff("10.9.9.9, 10.1.1.1"), Ok(ip("10.9.9.9")));
        // Repeated headers are one list, in order.
        let repeated = via_proxy(
            &Source::XForwardedFor,
            &[
                ("X-Forwarded-For", "1.2.3.4, 203.0.113.7"),
                ("Host", "example.com"),
                ("x-forwarded-for", "198.51.100.1, 10.1.1.1"),
            ],
        );
        assert_eq!(repeated, Ok(ip("198.51.100.1")));
    }

    #[test]
    fn address_forms() {
        for (value, want) in [
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("192.0.2.1:5678", "192.0.2.1"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
            ("[::ffff:192.0.2.1]:80", "192.0.2.1"),
            ("  192.0.2.1  ,, 10.0.0.3 ,", "192.0.2.1"),
            ("192.0.2.1:_port", "192.0.2.1"),
        ] {
            assert_eq!(xff(value), Ok(ip(want)), "{value:?}");
        }
    }

    #[test]
    fn garbage_where_the_client_must_be() {
        for value in [
            "example.com",
            "192.0.2.1:99999",
            "192.0.2.1:",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "[192.0.2.1]",
            "192.0.2",
            "1.2.3.4 5.6.7.8",
            "fe80::1%eth0",
        ] {
            assert_eq!(
                xff(value),
                Err(ClientIpError::Malformed {
                    header: "x-forwarded-for".into(),
                    value: value.into()
                }),
                "{value:?}"
            );
        }
        assert_eq!(
            xff("unknown"),
            Err(ClientIpError::Unusable {
                value: "unknown".into()
            })
        );
        // Garbage left of the client was written by the client and is never looked at.
        assert_eq!(xff("<junk>, 203.0.113.7"), Ok(ip("203.0.113.7")));
        // Garbage among the trusted hops is reached, and reported.
        assert!(matches!(
            xff("203.0.113.7, junk, 10.0.0.9"),
            Err(ClientIpError::Malformed { .. })
        ));
    }

    #[test]
    fn missing_or_empty_header() {
        let missing = ClientIpError::Missing {
            header: "x-forwarded-for".into(),
        };
        assert_eq!(via_proxy(&Source::XForwardedFor, &[]), Err(missing.clone()));
        assert_eq!(xff(" , ,"), Err(missing));
        assert_eq!(
            via_proxy(&Source::XRealIp, &[("X-Forwarded-For", "192.0.2.1")]),
            Err(ClientIpError::Missing {
                header: "x-real-ip".into()
            })
        );
    }

    /// RFC 7239 examples (sections 4, 6.3, 7.1 and 7.4).
    #[test]
    fn forwarded_rfc_examples() {
        assert_eq!(
            fwd(r#"For="[2001:db8:cafe::17]:4711""#),
            Ok(ip("2001:db8:cafe::17"))
        );
        assert_eq!(
            fwd("for=192.0.2.60;proto=http;by=203.0.113.43"),
            Ok(ip("192.0.2.60"))
        );
        assert_eq!(
            fwd("for=192.0.2.43, for=198.51.100.17"),
            Ok(ip("198.51.100.17"))
        );
        assert_eq!(
            fwd(r#"for=192.0.2.43, for="[2001:db8:cafe::17]""#),
            Ok(ip("2001:db8:cafe::17"))
        );
        assert_eq!(
            fwd(r#"for="_gazonk""#),
            Err(ClientIpError::Unusable {
                value: "_gazonk".into()
            })
        );
        assert_eq!(
            fwd("for=unknown, for=10.0.0.7"),
            Err(ClientIpError::Unusable {
                value: "unknown".into()
            })
        );
        assert_eq!(
            fwd("for=_hidden, for=_SEVKISEK"),
            Err(ClientIpError::Unusable {
                value: "_SEVKISEK".into()
            })
        );
        // Section 7.1: the same list in one line, with blanks, and over two lines.
        let unknown = Err(ClientIpError::Unusable {
            value: "unknown".into(),
        });
        assert_eq!(
            fwd(r#"for=192.0.2.43,for="[2001:db8:cafe::17]",for=unknown"#),
            unknown
        );
        assert_eq!(
            fwd(r#"for=192.0.2.43, for="[2001:db8:cafe::17]", for=unknown"#),
            unknown
        );
        let two_lines = via_proxy(
            &Source::Forwarded,
            &[
                ("Forwarded", "for=192.0.2.43"),
                ("Forwarded", r#"for="[2001:db8:cafe::17]", for=unknown"#),
            ],
        );
        assert_eq!(two_lines, unknown);
        // Trusted hops (here 10.0.0.0/8 and fd00::/8) are passed on the way left.
        assert_eq!(
            fwd(r#"for=192.0.2.43;by="[fd00::17]", for=10.0.0.2;by=10.0.0.1"#),
            Ok(ip("192.0.2.43"))
        );
        assert_eq!(
            fwd("for=192.0.2.43,for=198.51.100.17;by=203.0.113.60;proto=http;host=example.com"),
            Ok(ip("198.51.100.17"))
        );
    }

    #[test]
    fn forwarded_syntax() {
        // Commas and semicolons inside quotes do not split, escapes are resolved.
        assert_eq!(
            fwd(r#"for=192.0.2.9;host="a,b;c", for="\[fd00::1\]:8""#),
            Ok(ip("192.0.2.9"))
        );
        assert_eq!(fwd("FOR=192.0.2.9 ; proto=https"), Ok(ip("192.0.2.9")));
        assert_eq!(fwd("for=[2001:db8::5]"), Ok(ip("2001:db8::5")));
        // Separate header lines, as a chain of proxies that each add their own, form a list.
        let lines = via_proxy(
            &Source::Forwarded,
            &[
                ("Forwarded", "for=203.0.113.1"),
                ("forwarded", "for=10.0.0.4"),
            ],
        );
        assert_eq!(lines, Ok(ip("203.0.113.1")));
        for bad in [
            "for=192.0.2.1;for=192.0.2.2",
            r#"for="192.0.2.1"x"#,
            r#"for="192.0.2.1"#,
            "for",
            "for=a b",
            "f r=1;for=192.0.2.1",
            r#"for=injected;by=""#,
            r#"for=injected;by=", for=203.0.113.1"#,
            "for=",
        ] {
            assert!(
                matches!(fwd(bad), Err(ClientIpError::Malformed { .. })),
                "{bad:?}: {:?}",
                fwd(bad)
            );
        }
        assert!(matches!(
            fwd("proto=https;by=10.0.0.1"),
            Err(ClientIpError::Unusable { .. })
        ));
    }

    #[test]
    fn an_unterminated_quote_cannot_hide_the_proxys_hop() {
        // The client wrote `for="1.1.1.1` and the trusted proxy appended its hop to the
        // same line: the quote swallows it, and the result is an error, not 1.1.1.1.
        assert!(matches!(
            fwd(r#"for="1.1.1.1, for=203.0.113.5"#),
            Err(ClientIpError::Malformed { .. })
        ));
    }

    #[test]
    fn x_real_ip() {
        let real = |values: &[&str]| {
            let headers: Vec<_> = values.iter().map(|v| ("X-Real-IP", *v)).collect();
            via_proxy(&Source::XRealIp, &headers)
        };
        assert_eq!(real(&["192.0.2.1"]), Ok(ip("192.0.2.1")));
        assert_eq!(real(&[" [2001:db8::1]:443 "]), Ok(ip("2001:db8::1")));
        // One address, even a trusted one: there is no list to walk.
        assert_eq!(real(&["10.0.0.8"]), Ok(ip("10.0.0.8")));
        assert!(matches!(
            real(&["192.0.2.1", "192.0.2.2"]),
            Err(ClientIpError::Malformed { .. })
        ));
        assert!(matches!(
            real(&["192.0.2.1, 192.0.2.2"]),
            Err(ClientIpError::Malformed { .. })
        ));
        assert!(matches!(
            real(&["unknown"]),
            Err(ClientIpError::Unusable { .. })
        ));
    }

    #[test]
    fn other_headers_read_as_lists() {
        let source = Source::from_header_name("CF-Connecting-IP").unwrap();
        let got = via_proxy(&source, &[("cf-connecting-ip", "2001:db8::9")]);
        assert_eq!(got, Ok(ip("2001:db8::9")));
    }

    #[test]
    fn errors_keep_short_excerpts() {
        let long = "é".repeat(200);
        match xff(&long) {
            Err(ClientIpError::Malformed { value, .. }) => {
                assert!(value.len() <= MAX_EXCERPT && long.starts_with(&value));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift::new(0x1b);
        let trusted: CidrList = TRUSTED.parse().unwrap();
        let seeds: &[&[u8]] = &[
            b"1.2.3.4, 203.0.113.7, 10.1.1.1",
            b"[2001:db8::1]:4711, ::ffff:10.0.0.1",
            br#"for="[2001:db8:cafe::17]:4711";proto=http, for=_x"#,
            br#"for="a\"b,c";by=unknown"#,
        ];
        let sources = [
            Source::XForwardedFor,
            Source::Forwarded,
            Source::XRealIp,
            Source::Other(HeaderName::from_static("x-client")),
        ];
        for i in 0..10_000 {
            let value = rng.input(seeds, b",;=\"\\[]:._ f0123456789", 80);
            let source = &sources[i % sources.len()];
            let req = RequestHead {
                method: "GET".into(),
                path: "/".into(),
                version: 1,
                headers: vec![(source.header_name().to_owned(), value)],
                len: 0,
            };
            if let Ok(client) = client_ip(&req, source, ip("10.0.0.1"), &trusted) {
                // A result is an address from the header, never made up: if it is trusted,
                // every hop was (or it came from X-Real-IP).
                assert!(client.to_canonical() == client);
            }
        }
    }
}
