//! Writing heads: simple requests (health checks) and complete responses (the proxy's
//! refusals, the metrics endpoint), with the one table of reason phrases.

/// A request head: request line, then `headers` in order, then the blank line.
pub fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    push_headers(&mut out, headers);
    out.into_bytes()
}

/// A complete `HTTP/1.1` response: status line, `headers` in order, blank line, `body`.
/// A `code` outside 100..=999 becomes 500. Control characters in `reason` and in header
/// values become spaces, so no text can add header lines.
pub fn response(code: u16, reason: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let code = if (100..=999).contains(&code) {
        code
    } else {
        500
    };
    let mut out = format!("HTTP/1.1 {code} {}\r\n", printable(reason));
    push_headers(&mut out, headers);
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A complete response with status `code` whose reason phrase and plain-text body are
/// `reason`, closing the connection: what the proxy answers before any backend is involved.
pub fn response_status(code: u16, reason: &str) -> Vec<u8> {
    let body = format!("{}\n", printable(reason));
    response(
        code,
        reason,
        &[
            ("content-type", "text/plain"),
            ("content-length", &body.len().to_string()),
            ("connection", "close"),
        ],
        body.as_bytes(),
    )
}

/// The reason phrase of the statuses sticky sends with their standard phrase.
pub fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "",
    }
}

fn push_headers(out: &mut String, headers: &[(&str, &str)]) {
    for (name, value) in headers {
        debug_assert!(super::is_token(name), "header name {name:?}");
        out.push_str(name);
        out.push_str(": ");
        out.push_str(&printable(value));
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
}

fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn requests_and_responses_in_order() {
        assert_eq!(
            request(
                "GET",
                "/healthz",
                &[("Host", "10.0.0.1:80"), ("X", "a\r\nb")]
            ),
            b"GET /healthz HTTP/1.1\r\nHost: 10.0.0.1:80\r\nX: a  b\r\n\r\n"
        );
        assert_eq!(
            response(405, reason(405), &[("Allow", "GET, HEAD")], b"no\n"),
            b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\n\r\nno\n"
        );
        assert_eq!(
            response(299, reason(299), &[], b""),
            b"HTTP/1.1 299 \r\n\r\n"
        );
    }
}
