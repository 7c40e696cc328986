//! The bodies of the cargo-fuzz targets in `fuzz_targets/`, one per parser that reads network
//! or user input. `tests/tests/fuzz_corpus.rs` includes this file, so a plain `cargo test`
//! replays the committed corpus and every crash found so far on stable Rust, through the very
//! same code.
//!
//! Each body feeds the bytes to the parser the way the daemon does and then checks what
//! can be checked cheaply about the result; a panic, or a failed check, is a finding.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use sticky::{
    config::{self, Layer},
    control,
    http::{self, HeadError, RequestHead, request as head},
    metrics,
    peers::wire::{self, Key, MAX_DATAGRAM, MAX_RECORDS, ReplayWindow},
    proxy::{
        cidr::{Cidr, CidrList},
        client_ip::{ClientIpError, MAX_EXCERPT, Source, client_ip},
        cookie,
        proxy_protocol::{self, V1_MAX_LEN, V2_MAX_BLOCK, V2_SIGNATURE},
    },
};

/// A target's body: any bytes in, a panic on a finding.
pub type Body = fn(&[u8]);

/// Every target, by the name of its binary in `fuzz/` and of its corpus directory.
pub const TARGETS: &[(&str, Body)] = &[
    ("request_head", request_head),
    ("forwarded_for", forwarded_for),
    ("forwarded", forwarded),
    ("proxy_protocol", proxy_protocol),
    ("cookies", cookies),
    ("config_file", config_file),
    ("control_message", control_message),
    ("cidr_list", cidr_list),
    ("metrics_request", metrics_request),
    ("request_framing", request_framing),
    ("peer_datagram", peer_datagram),
];

/// The proxies the forwarding-header targets trust.
const TRUSTED: &str = "10.0.0.0/8, fd00::/8, 192.0.2.0/24";

/// `[hi, lo, head...]`: an HTTP request head read with a limit of `hi * 256 + lo` bytes.
pub fn request_head(data: &[u8]) {
    let Some(([hi, lo], buf)) = data.split_first_chunk() else {
        return;
    };
    let limit = usize::from(u16::from_be_bytes([*hi, *lo]));
    match head::parse(buf, limit) {
        Ok(Some(head)) => {
            assert!(head.len <= limit.min(buf.len()), "head longer than allowed");
            assert!(head.headers.len() <= head::MAX_HEADERS);
            // The head is complete in exactly its own bytes, and parses the same there.
            assert_eq!(head::parse(&buf[..head.len], limit), Ok(Some(head.clone())));
            let _ = head.is_upgrade();
        }
        Ok(None) => assert!(buf.len() < limit, "waiting for bytes past the limit"),
        Err(HeadError::TooLarge { .. }) => assert!(buf.len() >= limit),
        Err(_) => {}
    }
}

/// `[flags, stream...]`: a client connection's bytes through what proxy mode does before
/// hyper and before forwarding. The framing guard (`proxy::guard`) must pass the same bytes and
/// refuse the same head whether the stream arrives at once or in pieces of `1 + flags / 4 % 64`
/// bytes (an attacker chooses the segmentation), and refuse only a complete head the framing
/// check refuses. The first head's framing check must agree with a model (one valid
/// Content-Length, or a single `chunked` coding alone in HTTP/1.1); then its engine.io
/// parameters, hop-by-hop headers stripped for the backend's hop and `--forwarded-for`
/// (flags bits 0-1) applied; bytes after it go through the polling handshake's sid reader.
pub fn request_framing(data: &[u8]) {
    use ::http::{HeaderMap, HeaderName, HeaderValue};
    use sticky::proxy::{
        config::ForwardedFor,
        framing,
        guard::{Guard, Step},
        sid,
    };

    let Some((flags, buf)) = data.split_first() else {
        return;
    };
    // Larger than any input, so the head limit never cuts a head at one segmentation only.
    const LIMIT: usize = 1 << 20;
    let through = |size: usize| {
        let (mut guard, mut held, mut passed) = (Guard::new(LIMIT), Vec::new(), 0);
        for piece in buf.chunks(size.max(1)) {
            held.extend_from_slice(piece);
            match guard.scan(&held) {
                Step::Pass(n) => {
                    assert!(n <= held.len());
                    passed += n;
                    held.drain(..n);
                }
                Step::Refuse(n, why) => {
                    assert!(n <= held.len());
                    return (passed + n, Some(why));
                }
            }
        }
        (passed, None)
    };
    let whole = through(buf.len());
    assert_eq!(
        through(1 + usize::from(flags >> 2) % 64),
        whole,
        "the segmentation changed what the guard passes"
    );
    if let (at, Some(why)) = whole {
        let mut slots = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
        let mut req = httparse::Request::new(&mut slots);
        assert!(
            matches!(req.parse(&buf[at..]), Ok(httparse::Status::Complete(_))),
            "refused an incomplete head"
        );
        let pairs = req.headers.iter().map(|h| (h.name, h.value));
        assert_eq!(framing::check(pairs, req.version.unwrap_or(1)), Err(why));
    }

    let mut slots = [httparse::EMPTY_HEADER; head::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let Ok(httparse::Status::Complete(len)) = req.parse(buf) else {
        return;
    };
    let _ = sid::from_handshake(&buf[len..]);
    let field = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect::<Vec<_>>()
    };
    let (lengths, codings) = (field("content-length"), field("transfer-encoding"));
    let valid_length = |v: &[u8]| {
        let d = v.trim_ascii();
        !d.is_empty() && d.len() <= 19 && d.iter().all(u8::is_ascii_digit)
    };
    let single_chunked =
        matches!(codings.as_slice(), [one] if one.trim_ascii().eq_ignore_ascii_case(b"chunked"));
    let version = req.version.unwrap_or(1);
    let unambiguous = lengths.iter().all(|v| valid_length(v))
        && lengths.len() <= 1
        && (codings.is_empty() || (lengths.is_empty() && version == 1 && single_chunked));
    let pairs = req.headers.iter().map(|h| (h.name, h.value));
    match framing::check(pairs, version) {
        Ok(framing::Length::Chunked) => assert!(unambiguous && single_chunked),
        Ok(framing::Length::Bytes(n)) => {
            assert!(unambiguous && codings.is_empty());
            let given = lengths.first().map(|v| {
                std::str::from_utf8(v.trim_ascii())
                    .ok()
                    .and_then(|d| d.parse::<u64>().ok())
            });
            assert_eq!(given.unwrap_or(Some(0)), Some(n));
        }
        Err(_) => assert!(!unambiguous),
    }

    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        // hyper refuses a head whose names or values these refuse.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        headers.append(name, value);
    }
    let count = |h: &HeaderMap, name: &str| h.get_all(name).iter().count();
    let lengths = lengths.len();

    let target = req.path.unwrap_or("");
    if let Some(s) = sid::from_target(target).and_then(|eio| eio.sid) {
        assert!(!s.is_empty() && target.contains(s));
        assert!(
            !s.contains('&') && !s.contains('#'),
            "sid {s:?} of {target:?}"
        );
    }

    let upgrade = framing::wants_upgrade(&headers);
    let hosts = count(&headers, "host");
    let xff_before = count(&headers, framing::X_FORWARDED_FOR);
    framing::strip_hop_by_hop(&mut headers, upgrade, &[framing::X_FORWARDED_FOR]);
    for name in [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        assert!(!headers.contains_key(name), "{name} left for the backend");
    }
    if upgrade {
        assert_eq!(count(&headers, "connection"), 1);
        assert!(headers.contains_key("upgrade"));
    } else {
        assert!(!headers.contains_key("connection") && !headers.contains_key("upgrade"));
    }
    assert_eq!(count(&headers, "host"), hosts, "Host is end to end");
    assert_eq!(
        count(&headers, "content-length"),
        lengths,
        "Content-Length is end to end"
    );

    let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let client = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
    let how = match flags % 3 {
        0 => ForwardedFor::Keep,
        1 => ForwardedFor::Append,
        _ => ForwardedFor::Replace,
    };
    framing::forwarded_for(&mut headers, how, peer, client);
    let xff: Vec<&[u8]> = headers
        .get_all(framing::X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    match how {
        ForwardedFor::Keep => assert_eq!(xff.len(), xff_before),
        ForwardedFor::Replace => assert_eq!(xff, [client.to_string().as_bytes()]),
        ForwardedFor::Append => {
            assert_eq!(xff.len(), 1);
            assert!(xff[0].ends_with(peer.to_string().as_bytes()), "{xff:?}");
        }
    }
}

/// `[flags, values...]`: `X-Forwarded-For`, `X-Real-IP` or another list header (flags
/// bits 2-3), one occurrence per line of `values`, from a trusted or untrusted peer.
pub fn forwarded_for(data: &[u8]) {
    let Some((flags, values)) = data.split_first() else {
        return;
    };
    let source = match (flags >> 2) % 3 {
        0 => Source::XForwardedFor,
        1 => Source::XRealIp,
        _ => Source::from_header_name("CF-Connecting-IP").expect("a header name"),
    };
    client_ip_checked(&source, *flags, values);
}

/// `[flags, values...]`: RFC 7239 `Forwarded`, one occurrence per line of `values`.
pub fn forwarded(data: &[u8]) {
    let Some((flags, values)) = data.split_first() else {
        return;
    };
    client_ip_checked(&Source::Forwarded, *flags, values);
}

fn client_ip_checked(source: &Source, flags: u8, values: &[u8]) {
    let trusted: CidrList = TRUSTED.parse().expect("TRUSTED is a valid list");
    let peer = match flags & 3 {
        0 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        1 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
        2 => IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped()),
        _ => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)),
    };
    // Alternate the spelling: names match case-insensitively.
    let names = [
        source.header_name().to_owned(),
        source.header_name().to_uppercase(),
    ];
    let head = get_with(
        values
            .split(|&b| b == b'\n')
            .zip(names.iter().cycle())
            .map(|(value, name)| (name.clone(), value.to_vec()))
            .collect(),
    );
    match client_ip(&head, source, peer, &trusted) {
        Ok(ip) if !trusted.contains(peer) => assert_eq!(ip, peer.to_canonical()),
        Ok(ip) => {
            assert_eq!(ip, ip.to_canonical(), "IPv4-mapped address returned");
            assert!(
                addresses_in(values).contains(&ip),
                "{ip} is neither the peer nor in the header"
            );
        }
        Err(e) => {
            if let ClientIpError::Malformed { value, .. } | ClientIpError::Unusable { value } = &e {
                assert!(
                    value.len() <= MAX_EXCERPT,
                    "excerpt of {} bytes",
                    value.len()
                );
            }
            // The error text reaches the client in a 400 response: it must stay its body.
            let response = http::response_status(400, &e.to_string());
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut parsed = httparse::Response::new(&mut headers);
            let status = parsed.parse(&response).expect("own response parses");
            assert!(status.is_complete() && parsed.headers.len() == 3);
        }
    }
}

/// Every address that could be read out of `values`, found independently of the parser:
/// any piece between separators that parses as an address, or as IPv4 with a port. Quoted
/// pairs are resolved by dropping backslashes, which an address cannot contain.
fn addresses_in(values: &[u8]) -> Vec<IpAddr> {
    let text = String::from_utf8_lossy(values).replace('\\', "");
    // The parser trims with `str::trim`, which knows Unicode blanks too.
    text.split(|c: char| c.is_whitespace() || ",;=\"[]".contains(c))
        .filter_map(|piece| {
            let ipv4_with_port = || {
                let (addr, _port) = piece.split_once(':')?;
                addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
            };
            piece.parse::<IpAddr>().ok().or_else(ipv4_with_port)
        })
        .map(|ip| ip.to_canonical())
        .collect()
}

/// A connection's first bytes, read for a PROXY protocol v1 or v2 header.
pub fn proxy_protocol(data: &[u8]) {
    match proxy_protocol::parse(data) {
        Ok(Some((header, used))) => {
            assert!(
                used <= data.len(),
                "consumed {used} of {} bytes",
                data.len()
            );
            let max = if data.starts_with(&V2_SIGNATURE) {
                16 + V2_MAX_BLOCK
            } else {
                V1_MAX_LEN
            };
            assert!(used <= max, "header of {used} bytes");
            // Complete in exactly its own bytes and not one fewer.
            assert_eq!(
                proxy_protocol::parse(&data[..used]),
                Ok(Some((header, used)))
            );
            assert_eq!(proxy_protocol::parse(&data[..used - 1]), Ok(None));
            if let (Some(src), Some(dst)) = (header.source, header.destination) {
                assert_eq!(src.is_ipv4(), dst.is_ipv4(), "mixed families");
            }
        }
        // Never waits for more than the longest header it accepts.
        Ok(None) => assert!(data.len() < 16 + V2_MAX_BLOCK),
        Err(_) => {}
    }
}

/// `name \0 cookie-lines \0 response`: the cookie `name` looked up in `Cookie` headers (one
/// per line), and the `Set-Cookie` line for it inserted into a backend's first response
/// bytes.
pub fn cookies(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (Some(name), Some(lines), response) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    let head = get_with(
        lines
            .split(|&b| b == b'\n')
            .map(|value| ("Cookie".to_owned(), value.to_vec()))
            .collect(),
    );
    if let Some(value) = cookie::find(&head, name) {
        assert!(
            head.headers
                .iter()
                .any(|(_, v)| contains(v, value.as_bytes())),
            "{value:?} is in no Cookie header"
        );
        assert!(!value.contains(';'));
    }
    if !cookie::is_valid_name(name) {
        return;
    }
    let response = response.unwrap_or_default();
    let key = u64::from_le_bytes(*data.first_chunk().unwrap_or(&[0; 8]));
    let token = cookie::backend_token(SocketAddr::from(([10, 0, 0, 1], 8080)), key);
    assert!(token.len() == 16 && token.bytes().all(|b| b.is_ascii_hexdigit()));
    let line = cookie::set_cookie_line(name, &token);
    let Some(out) = cookie::insert_into_response(response, &line) else {
        return;
    };
    // The response is unchanged but for the line, right after the status line.
    let status_end = response
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| i + 1)
        .expect("a response with a line added has a status line");
    assert!(response.starts_with(b"HTTP/1."));
    assert_eq!(&out[..status_end], &response[..status_end]);
    assert_eq!(&out[status_end..status_end + line.len()], line.as_bytes());
    assert_eq!(&out[status_end + line.len()..], &response[status_end..]);
    // A response that parsed before parses after, with the cookie as its first header.
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut before = httparse::Response::new(&mut headers);
    if let Ok(httparse::Status::Complete(len)) = before.parse(response) {
        let count = before.headers.len();
        let mut headers = [httparse::EMPTY_HEADER; 65];
        let mut after = httparse::Response::new(&mut headers);
        assert_eq!(
            after.parse(&out),
            Ok(httparse::Status::Complete(len + line.len()))
        );
        assert_eq!(after.headers.len(), count + 1);
        assert_eq!(after.headers[0].name, "Set-Cookie");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A `--config` file: TOML into a [`Layer`], over an empty command line, then validated.
pub fn config_file(data: &[u8]) {
    // The daemon reads the file with `read_to_string`, which refuses anything but UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(layer) = Layer::from_toml(text) else {
        return;
    };
    let Ok(config) = layer.over(Layer::default()).validate() else {
        return;
    };
    assert!(!config.ifaces.is_empty() && !config.vips.is_empty());
    assert!(!config.backends.is_empty());
    assert!(config::is_prime(config.table_size));
    assert!(
        config
            .backends
            .iter()
            .all(|b| (1..=1000).contains(&b.weight))
    );
}

/// One line from a control-socket client.
pub fn control_message(data: &[u8]) {
    // The socket is read with `lines()`, which refuses anything but UTF-8.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match control::parse_request(line) {
        Ok(request) => {
            let again = serde_json::to_string(&request).expect("a request serialises");
            assert_eq!(control::parse_request(&again), Ok(request));
        }
        Err(message) => {
            let response = control::Response::err(message);
            let text = serde_json::to_string(&response).expect("a response serialises");
            assert!(!text.contains('\n'), "a response must stay on one line");
        }
    }
}

/// `--trusted-proxies` and other address ranges: a comma-separated list of networks.
pub fn cidr_list(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(list) = text.parse::<CidrList>() else {
        return;
    };
    // Printing and parsing again gives the same networks.
    assert_eq!(list.to_string().parse::<CidrList>(), Ok(list.clone()));
    for net in &list.0 {
        assert!(
            net.contains(net.addr()),
            "{net} does not hold its own address"
        );
        assert_eq!(Cidr::new(net.addr(), net.prefix()), Some(*net));
    }
}

/// The Prometheus endpoint's request head, as its reader parses it.
pub fn metrics_request(data: &[u8]) {
    if let Ok(Some(head)) = metrics::parse_request(data) {
        assert!(head.len <= data.len());
        let _ = head.origin_path();
    }
}

/// A datagram on the affinity exchange's socket (`--peers`): `[mode, bytes...]`, the bytes as
/// received (mode even), or signed with the key first (mode odd), so the fuzzer also reaches
/// the layout checks behind the tag.
pub fn peer_datagram(data: &[u8]) {
    let key = Key::new(vec![7; 32]).expect("a long enough key");
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let datagram = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        wire::sign(&key, rest.to_vec())
    };
    let Ok((header, records)) = wire::decode(&key, &datagram) else {
        return;
    };
    assert!(datagram.len() <= MAX_DATAGRAM && records.len() <= MAX_RECORDS);
    // What was accepted says exactly what was sent: it encodes to the same bytes.
    assert_eq!(wire::encode(&key, header, &records), datagram);
    let mut window = ReplayWindow::default();
    assert_eq!(window.accept(header), Ok(true), "the first of its boot");
    assert!(window.accept(header).is_err(), "a second time is a replay");
}

/// `GET / HTTP/1.1` with these header lines, as the head parser would have built it.
fn get_with(headers: Vec<(String, Vec<u8>)>) -> RequestHead {
    RequestHead {
        method: "GET".to_owned(),
        path: "/".to_owned(),
        version: 1,
        headers,
        len: 0,
    }
}
