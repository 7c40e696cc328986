//! HTTP/1.x request heads, parsed incrementally by httparse.

/// Headers beyond this many make the request fail: real browsers send a few dozen, and the
/// cap bounds the work an attacker can make us do per request. hyper's default (HAProxy's is
/// 101 lines with the request line): the proxy leaves hyper at it, as any other limit makes
/// hyper allocate two header arrays on the heap for every head it parses.
pub const MAX_HEADERS: usize = 100;

/// Room for `MAX_HEADERS` parsed headers, left uninitialised: httparse writes what it parses,
/// where an array of `EMPTY_HEADER`s is 3.2 KB written before every parse.
pub fn header_slots<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

/// Why a request head cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// No complete head within the first `limit` bytes.
    #[error("request head is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// Not HTTP/1.x.
    #[error("malformed request head: {reason}")]
    Malformed {
        reason: &'static str,
        /// Where the head went wrong, for servers that say so.
        at: Part,
    },
    /// More than [`MAX_HEADERS`] header lines.
    #[error("request has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
}

impl HeadError {
    /// The status that refuses the request: 431 when it is too large, else 400.
    pub fn status(&self) -> u16 {
        match self {
            Self::TooLarge { .. } => 431,
            Self::Malformed { .. } | Self::TooManyHeaders => 400,
        }
    }
}

/// A part of a request head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    RequestLine,
    Headers,
}

/// A parsed request line and headers, owned so the read buffer can be reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent (origin form, absolute form, `*` or authority form).
    pub path: String,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Names as sent (case preserved), values as raw bytes (they may hold obs-text).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the head including the final blank line; the body or the next request
    /// starts here.
    pub len: usize,
}

impl RequestHead {
    /// Every value of header `name` (matched case-insensitively), in the order sent.
    pub fn header_values(&self, name: &str) -> impl DoubleEndedIterator<Item = &[u8]> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether the client asks to switch protocols (e.g. a WebSocket handshake): a
    /// `Connection` header listing `upgrade` and a non-empty `Upgrade` header. After such a
    /// request the connection stops being HTTP, so it is spliced rather than parsed further.
    pub fn is_upgrade(&self) -> bool {
        let connection_upgrade = self
            .header_values("connection")
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        connection_upgrade
            && self
                .header_values("upgrade")
                .any(|v| !v.trim_ascii().is_empty())
    }

    /// Whether the `Host` headers are as RFC 9112 §3.2 requires of a server's request:
    /// exactly one in HTTP/1.1, at most one in HTTP/1.0.
    pub fn host_is_valid(&self) -> bool {
        match self.header_values("host").count() {
            0 => self.version == 0,
            1 => true,
            _ => false,
        }
    }

    /// The path of the target without query or fragment; the absolute form
    /// (`http://host:9000/metrics`, which proxies send) gives its path, `/` if it has none.
    pub fn origin_path(&self) -> &str {
        let target = self.path.as_str();
        let origin = ["http://", "https://"]
            .iter()
            .find_map(|scheme| target.strip_prefix(scheme))
            .map_or(target, |rest| rest.find('/').map_or("/", |at| &rest[at..]));
        origin.split(['?', '#']).next().unwrap_or_default()
    }
}

/// Parses the request head at the start of `buf`, looking at no more than `limit` bytes.
///
/// `Ok(None)` means the head is incomplete and more bytes may still complete it;
/// [`HeadError::TooLarge`] means they cannot, because `limit` bytes are already here.
/// A malformed request line is refused as soon as its first bad byte is here.
pub fn parse(buf: &[u8], limit: usize) -> Result<Option<RequestHead>, HeadError> {
    // Parsing only the window keeps a complete head that ends beyond `limit` from being
    // accepted merely because the bytes happened to arrive together.
    let window = buf.get(..limit).unwrap_or(buf);
    let mut slots = header_slots();
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(window, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limit => {
            return Err(HeadError::TooLarge { limit });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => {
            return Err(HeadError::Malformed {
                reason: reason(e),
                at: failed_part(window),
            });
        }
    };
    // httparse fills all three whenever it reports a complete request.
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed {
            reason: "incomplete request line",
            at: Part::RequestLine,
        });
    };
    Ok(Some(RequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        version,
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
        len,
    }))
}

/// Where a head httparse rejected went wrong: in the request line if that line alone (through
/// its line feed, after any blank lines) fails too, or has not ended.
fn failed_part(window: &[u8]) -> Part {
    let blank = window
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let line_end = window[blank..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|at| blank + at + 1);
    match line_end.map(|end| httparse::Request::new(&mut []).parse(&window[..end])) {
        Some(Ok(_)) => Part::Headers,
        None | Some(Err(_)) => Part::RequestLine,
    }
}

/// Whether `s` is an RFC 9110 `token`: what header names, cookie names and `Forwarded`
/// parameter names must be.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A short, fixed description of what httparse rejected (it never echoes client bytes).
pub(super) fn reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid method or request target",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::fuzz::XorShift;

    const GET: &[u8] = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n\
        Host: example.com\r\n\
        X-Forwarded-For: 192.0.2.1\r\n\
        x-forwarded-for: 198.51.100.7\r\n\
        Cookie: a=b\r\n\r\n";

    fn parse_all(buf: &[u8]) -> RequestHead {
        parse(buf, 8192).unwrap().unwrap()
    }

    #[test]
    fn parses_a_request() {
        let mut buf = GET.to_vec();
        buf.extend_from_slice(b"body bytes");
        let head = parse_all(&buf);
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/socket.io/?EIO=4&transport=polling");
        assert_eq!(head.version, 1);
        assert_eq!(head.len, GET.len());
        assert_eq!(head.headers.len(), 4);
        assert_eq!(
            head.headers[0],
            ("Host".to_owned(), b"example.com".to_vec())
        );
        let xff: Vec<&[u8]> = head.header_values("X-FORWARDED-FOR").collect();
        assert_eq!(xff, [&b"192.0.2.1"[..], b"198.51.100.7"]);
        assert_eq!(head.header_values("missing").count(), 0);
        assert!(!head.is_upgrade());
    }

    #[test]
    fn http_1_0_and_obs_text() {
        let head = parse_all(b"POST /x HTTP/1.0\r\nX-Name: caf\xe9\r\n\r\n");
        assert_eq!((head.method.as_str(), head.version), ("POST", 0));
        assert_eq!(head.headers[0].1, b"caf\xe9");
    }

    #[test]
    fn every_truncation_is_incomplete() {
        for cut in 0..GET.len() {
            assert_eq!(parse(&GET[..cut], 8192), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn limit_is_enforced() {
        assert_eq!(parse(GET, GET.len()).unwrap().unwrap().len, GET.len());
        // The head ends one byte past the limit: too large even though it is all here.
        assert_eq!(
            parse(GET, GET.len() - 1),
            Err(HeadError::TooLarge {
                limit: GET.len() - 1
            })
        );
        assert_eq!(
            parse(&GET[..10], 10),
            Err(HeadError::TooLarge { limit: 10 })
        );
        assert_eq!(parse(&GET[..10], 11), Ok(None));
        assert_eq!(parse(b"", 0), Err(HeadError::TooLarge { limit: 0 }));
    }

    #[test]
    fn too_many_headers() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            buf.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(parse(&buf, 1 << 20), Err(HeadError::TooManyHeaders));
    }

    #[test]
    fn malformed_requests() {
        for bad in [
            &b"GET / HTTP/2.0\r\n\r\n"[..],
            b"GET / FTP/1.1\r\n\r\n",
            b"GE T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad, 8192), Err(HeadError::Malformed { .. })),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn malformed_heads_say_where() {
        let at = |buf: &[u8]| match parse(buf, 8192) {
            Err(HeadError::Malformed { at, .. }) => at,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(b"G(T / HTTP/1.1\r\n"), Part::RequestLine);
        assert_eq!(at(b"\x16\x03\x01"), Part::RequestLine);
        assert_eq!(at(b"\r\nGET / HTTP/1.1\rX"), Part::RequestLine);
        assert_eq!(at(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"), Part::Headers);
        assert_eq!(at(b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n"), Part::Headers);
        assert_eq!(at(b"GET / HTTP/1.1\n folded: x\n\n"), Part::Headers);
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let ws = parse_all(
            b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n\
              Upgrade: websocket\r\n\r\n",
        );
        assert!(ws.is_upgrade());
        let no_upgrade = parse_all(b"GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n");
        assert!(!no_upgrade.is_upgrade());
        let no_connection = parse_all(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n");
        assert!(!no_connection.is_upgrade());
        let split = parse_all(
            b"GET / HTTP/1.1\r\nconnection: close\r\nCONNECTION: UPGRADE\r\nupgrade: h2c\r\n\r\n",
        );
        assert!(split.is_upgrade());
        let lookalike =
            parse_all(b"GET / HTTP/1.1\r\nConnection: upgraded\r\nUpgrade: websocket\r\n\r\n");
        assert!(!lookalike.is_upgrade());
    }

    #[test]
    fn random_input_never_panics() {
        let mut rng = XorShift::new(0x4ead);
        for _ in 0..10_000 {
            let input = rng.input(&[GET], b"\r\n: ,/HTTP1.", 300);
            let limit = rng.below(400);
            if let Ok(Some(head)) = parse(&input, limit) {
                assert!(head.len <= limit.min(input.len()));
                let _ = head.is_upgrade();
            }
        }
    }
}
