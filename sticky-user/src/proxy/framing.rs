//! What the proxy checks and changes in a request's or response's headers: framing that two
//! parsers could read differently is refused (request smuggling); hop-by-hop headers stay on
//! their hop, so hyper frames every message it forwards itself; X-Forwarded-For as asked.

use std::net::IpAddr;

use http::{
    HeaderMap, HeaderName, HeaderValue,
    header::{CONNECTION, CONTENT_LENGTH, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE},
};

use super::config::ForwardedFor;

/// Why a request's framing is refused. hyper itself (httparse underneath) already refuses
/// obsolete line folding, whitespace before a colon, a bare CR and invalid chunk sizes; these
/// are the cases it resolves one way and forwards, or refuses without closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Ambiguous {
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("more than one Content-Length")]
    SeveralLengths,
    #[error("invalid Content-Length")]
    InvalidLength,
    #[error("Transfer-Encoding other than a single chunked")]
    Coding,
    #[error("Transfer-Encoding in HTTP/1.0")]
    CodingInOldVersion,
}

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    Bytes(u64),
    Chunked,
}

/// The framing of a request with these header lines (names and values as sent), refused
/// when a server behind or in front could read it otherwise than hyper does.
pub fn check<'a>(
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    version: u8,
) -> Result<Length, Ambiguous> {
    let (mut length, mut lengths, mut codings) = (None, 0, Vec::new());
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            length = content_length(value);
            if length.is_none() {
                return Err(Ambiguous::InvalidLength);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.push(value);
        }
    }
    if lengths > 1 {
        return Err(Ambiguous::SeveralLengths);
    }
    if codings.is_empty() {
        return Ok(Length::Bytes(length.unwrap_or(0)));
    }
    if lengths > 0 {
        return Err(Ambiguous::LengthAndChunked);
    }
    if version == 0 {
        return Err(Ambiguous::CodingInOldVersion);
    }
    match codings.as_slice() {
        [one] if one.trim_ascii().eq_ignore_ascii_case(b"chunked") => Ok(Length::Chunked),
        _ => Err(Ambiguous::Coding),
    }
}

/// A `Content-Length` value: decimal digits only (no sign, no list), blanks around allowed.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    (!digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(digits).ok()?.parse::<u64>().ok())
        .flatten()
}

/// Whether `headers` ask to switch protocols: `Connection: upgrade` and an `Upgrade`.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(b"upgrade"))
        && headers.contains_key(UPGRADE)
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    tokens(
        headers
            .get_all(CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// The options of `Connection` lines' `values`: comma-separated, trimmed, none empty.
fn tokens<'a>(values: impl Iterator<Item = &'a [u8]>) -> impl Iterator<Item = &'a [u8]> {
    values
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// What the `Connection` header lines of a message say, read off its raw values.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionOptions {
    /// `close`: the connection ends after this message.
    pub close: bool,
    /// A token other than the hop-by-hop names (`close` included): it may name a header that
    /// must go too, which only [`strip_hop_by_hop`] removes.
    pub names_others: bool,
}

/// Reads the options of `values`, the `Connection` lines' values.
pub fn connection_options<'a>(values: impl Iterator<Item = &'a [u8]>) -> ConnectionOptions {
    let mut o = ConnectionOptions::default();
    for token in tokens(values) {
        o.close |= token.eq_ignore_ascii_case(b"close");
        o.names_others |= !names_hop_by_hop(token);
    }
    o
}

/// Whether a `Connection` token, in any case, names one of the hop-by-hop headers.
fn names_hop_by_hop(token: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// Whether `name` is one of the headers meant for one hop only (RFC 9110 §7.6.1).
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name.as_str()).is_some()
}

const HOP_BY_HOP_COUNT: usize = 7;

/// As `HeaderName`s: removing by `&str` parses the name again on every message. `Connection`
/// first. A static: a `const` array would be built and dropped at every use.
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Where `name` (lower case) is in [`HOP_BY_HOP`]: a `match` on the text is a length switch
/// and one comparison, where comparing `HeaderName`s is seven.
fn hop_by_hop_index(name: &str) -> Option<usize> {
    Some(match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "te" => 3,
        "trailer" => 4,
        "transfer-encoding" => 5,
        "upgrade" => 6,
        _ => return None,
    })
}

/// Removes the headers meant for this hop only (RFC 9110 §7.6.1), those the `Connection`
/// header names included, except `Host` and `Content-Length` and the names in `protect`.
/// With `upgrade`, `Connection: upgrade` and `Upgrade` stay (the handshake goes through).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool, protect: &[&str]) {
    // One pass over the names, comparing without hashing: most messages carry none of these,
    // and a removal hashes its name (7 removals were a tenth of the proxy's own work).
    let mut present = [false; HOP_BY_HOP_COUNT];
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name.as_str()) {
            present[i] = true;
        }
    }
    if present[0] {
        // Tokens naming a hop-by-hop header go in the loop below, without a `HeaderName` made.
        let named: Vec<HeaderName> = connection_tokens(headers)
            .filter(|t| !names_hop_by_hop(t))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .filter(|n| *n != HOST && *n != CONTENT_LENGTH && !protect.contains(&n.as_str()))
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        if !(upgrade && name == UPGRADE) {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// Applies `--forwarded-for`: `peer` is the connection's peer (or a trusted PROXY header's
/// source), `client` the address the request was routed by.
pub fn forwarded_for(headers: &mut HeaderMap, how: ForwardedFor, peer: IpAddr, client: IpAddr) {
    let value = match how {
        ForwardedFor::Keep => return,
        ForwardedFor::Replace => client.to_string(),
        ForwardedFor::Append => {
            let mut list: Vec<String> = headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            list.push(peer.to_string());
            list.join(", ")
        }
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(HeaderName::from_static(X_FORWARDED_FOR), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        use Ambiguous::*;
        let c = |p: &[(&str, &str)]| check(p.iter().map(|(k, v)| (*k, v.as_bytes())), 1);
        assert_eq!(c(&[("content-length", "5")]), Ok(Length::Bytes(5)));
        assert_eq!(c(&[("Transfer-Encoding", "Chunked ")]), Ok(Length::Chunked));
        assert_eq!(c(&[]), Ok(Length::Bytes(0)));
        assert_eq!(
            c(&[("content-length", "5"), ("transfer-encoding", "chunked")]),
            Err(LengthAndChunked)
        );
        assert_eq!(
            c(&[("Content-Length", "5"), ("content-length", "5")]),
            Err(SeveralLengths)
        );
        for bad in ["", "+5", "-1", "5, 5", "0x5", "99999999999999999999"] {
            assert_eq!(c(&[("content-length", bad)]), Err(InvalidLength), "{bad:?}");
        }
        assert_eq!(
            c(&[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]),
            Err(Coding)
        );
        assert_eq!(c(&[("transfer-encoding", "gzip, chunked")]), Err(Coding));
        assert_eq!(c(&[("transfer-encoding", "xchunked")]), Err(Coding));
        assert_eq!(
            check([("transfer-encoding", &b"chunked"[..])].into_iter(), 0),
            Err(CodingInOldVersion)
        );
    }

    #[test]
    fn hop_by_hop_index_matches_the_table() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str()), Some(i));
        }
        assert_eq!(hop_by_hop_index("host"), None);
    }

    #[test]
    fn connection_options_read_raw_lines() {
        let read = |lines: &[&str]| connection_options(lines.iter().map(|l| l.as_bytes()));
        let opts = |close, names_others| ConnectionOptions {
            close,
            names_others,
        };
        assert_eq!(read(&[]), opts(false, false));
        assert_eq!(read(&["keep-alive"]), opts(false, false));
        assert_eq!(read(&[" Upgrade ,, TE", "Keep-Alive"]), opts(false, false));
        // `close` could name a header as well; a header named in a later line counts.
        assert_eq!(read(&["Close"]), opts(true, true));
        assert_eq!(read(&["keep-alive", "x-secret"]), opts(false, true));
        assert!(is_hop_by_hop(&TRANSFER_ENCODING) && !is_hop_by_hop(&HOST));
    }

    #[test]
    fn hop_by_hop_headers_stay_on_their_hop() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret, host, content-length"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("host", "a"),
            ("content-length", "3"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        h.append(CONNECTION, HeaderValue::from_static("Upgrade"));
        let mut up = h.clone();
        strip_hop_by_hop(&mut h, false, &[X_FORWARDED_FOR]);
        let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-length", "host", "x-forwarded-for"]);
        strip_hop_by_hop(&mut up, true, &[]);
        assert_eq!(up["connection"], "upgrade");
        assert_eq!(up["upgrade"], "websocket");
        assert!(!up.contains_key("te"));
        // Without a `Connection` header the fixed ones still go; protected names stay even
        // when `Connection` lists them; a message with none of these is left as it is.
        let mut h = headers(&[
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("x-a", "1"),
        ]);
        strip_hop_by_hop(&mut h, false, &[]);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            ["x-a"]
        );
        let mut h = headers(&[
            ("connection", "close, X-Forwarded-For"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        strip_hop_by_hop(&mut h, false, &[X_FORWARDED_FOR]);
        assert_eq!(
            h.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
            [X_FORWARDED_FOR]
        );
        let plain = headers(&[("host", "a"), ("x-b", "2"), ("x-b", "3")]);
        let mut h = plain.clone();
        strip_hop_by_hop(&mut h, false, &[]);
        assert_eq!(h, plain);
    }

    #[test]
    fn forwarded_for_keeps_appends_or_replaces() {
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        let client: IpAddr = "198.51.100.7".parse().unwrap();
        let start = || {
            headers(&[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
            ])
        };
        let mut h = start();
        forwarded_for(&mut h, ForwardedFor::Keep, peer, client);
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 2);
        forwarded_for(&mut h, ForwardedFor::Append, peer, client);
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        let mut h = start();
        forwarded_for(&mut h, ForwardedFor::Replace, peer, client);
        assert_eq!(h[X_FORWARDED_FOR], "198.51.100.7");
        let mut h = HeaderMap::new();
        forwarded_for(&mut h, ForwardedFor::Append, peer, client);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.9");
    }
}
