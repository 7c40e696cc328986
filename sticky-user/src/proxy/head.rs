//! HTTP/1.x request heads, read incrementally from a client connection.

/// Headers beyond this many make the request fail: real browsers send a few dozen, and the
/// cap bounds the work an attacker can make us do per request.
pub const MAX_HEADERS: usize = 128;

/// Why a request head cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// No complete head within the first `limit` bytes: answer 431.
    #[error("request head is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// Not HTTP/1.x: answer 400.
    #[error("malformed request head: {reason}")]
    Malformed { reason: &'static str },
    /// More than [`MAX_HEADERS`] header lines: answer 431.
    #[error("request has more than {MAX_HEADERS} headers")]
    TooManyHeaders,
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
    pub fn header_values(&self, name: &str) -> impl Iterator<Item = &[u8]> {
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
}

/// Parses the request head at the start of `buf`, looking at no more than `limit` bytes.
///
/// `Ok(None)` means the head is incomplete and more bytes may still complete it;
/// [`HeadError::TooLarge`] means they cannot, because `limit` bytes are already here.
pub fn parse(buf: &[u8], limit: usize) -> Result<Option<RequestHead>, HeadError> {
    // Parsing only the window keeps a complete head that ends beyond `limit` from being
    // accepted merely because the bytes happened to arrive together.
    let window = buf.get(..limit).unwrap_or(buf);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(window) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= limit => {
            return Err(HeadError::TooLarge { limit });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => return Err(HeadError::Malformed { reason: reason(e) }),
    };
    // httparse fills all three whenever it reports a complete request.
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed {
            reason: "incomplete request line",
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

/// Whether `s` is an RFC 9110 `token`: what header names, cookie names and `Forwarded`
/// parameter names must be.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A short, fixed description of what httparse rejected (it never echoes client bytes).
fn reason(e: httparse::Error) -> &'static str {
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

/// A complete `HTTP/1.1` response with status `code` whose reason phrase and plain-text
/// body are `reason`, closing the connection. Control characters in `reason` become spaces
/// so it cannot add header lines; a `code` outside 100..=999 becomes 500.
pub fn response_status(code: u16, reason: &str) -> Vec<u8> {
    let code = if (100..=999).contains(&code) {
        code
    } else {
        500
    };
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    )
    .into_bytes()
}

/// A deterministic generator of hostile input for the parsers' tests: no dependency, and a
/// failure reproduces from the seed alone.
#[cfg(test)]
pub(crate) mod fuzz {
    /// xorshift64* (Marsaglia, Vigna).
    pub(crate) struct XorShift(u64);

    impl XorShift {
        pub(crate) fn new(seed: u64) -> Self {
            Self(seed | 1)
        }

        pub(crate) fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Uniform enough in `0..n` for fuzzing; `n` must be non-zero.
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        fn pick<T: Copy>(&mut self, items: &[T]) -> T {
            items[self.below(items.len())]
        }

        /// Noise half the time; otherwise one of `seeds` with a few bytes replaced,
        /// inserted (from `alphabet` or anything), removed or cut off, which reaches much
        /// deeper into a parser than noise does.
        pub(crate) fn input(
            &mut self,
            seeds: &[&[u8]],
            alphabet: &[u8],
            max_len: usize,
        ) -> Vec<u8> {
            if seeds.is_empty() || self.below(2) == 0 {
                let len = self.below(max_len + 1);
                return (0..len).map(|_| self.next_u64() as u8).collect();
            }
            let mut out = self.pick(seeds).to_vec();
            for _ in 0..=self.below(4) {
                let byte = if self.below(4) == 0 {
                    self.next_u64() as u8
                } else {
                    self.pick(alphabet)
                };
                let at = self.below(out.len() + 1);
                match self.below(4) {
                    0 if at < out.len() => out[at] = byte,
                    1 => out.insert(at, byte),
                    2 if at < out.len() => {
                        out.remove(at);
                    }
                    3 => out.truncate(at),
                    _ => {}
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fuzz::XorShift;
    use super::*;

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
    fn status_responses_are_complete() {
        let resp = response_status(431, "Request Header Fields Too Large");
        assert_eq!(
            resp,
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n\
              content-length: 32\r\nconnection: close\r\n\r\nRequest Header Fields Too Large\n"
        );
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut parsed = httparse::Response::new(&mut headers);
        let resp = response_status(400, "Bad\r\nSet-Cookie: x=y");
        let len = parsed.parse(&resp).unwrap().unwrap();
        assert_eq!(
            (parsed.code, parsed.reason),
            (Some(400), Some("Bad  Set-Cookie: x=y"))
        );
        assert_eq!(parsed.headers.len(), 3);
        assert_eq!(resp.len() - len, "Bad  Set-Cookie: x=y\n".len());
        assert!(response_status(7, "x").starts_with(b"HTTP/1.1 500 x\r\n"));
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
