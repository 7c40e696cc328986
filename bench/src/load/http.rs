//! Non-blocking client sockets bound to a chosen source address, and a parser for the
//! answers of `sticky-bench serve` (which HAProxy and nginx pass through unchanged).

use std::{
    io::{self, Read as _},
    net::{Ipv4Addr, SocketAddr},
    ops::Range,
    os::fd::AsRawFd as _,
};

use socket2::{Domain, Socket, Type};

pub const KEEP_ALIVE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
pub const CLOSE: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
/// socket.io's first long-polling request, then the one that carries the session id.
pub const HANDSHAKE_OPEN: &[u8] =
    b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

/// The handshake's second request, for session number `session`: every session has its own
/// id, as engine.io's are (proxy mode routes by a sid it has seen answered).
pub fn handshake_second(session: u64) -> Vec<u8> {
    format!(
        "GET /socket.io/?EIO=4&transport=polling&sid=bench{session:x} HTTP/1.1\r\nHost: bench\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// `request` (a head without a body) with `X-Forwarded-For: <client>` added when given: the
/// header HTTP proxies route by.
pub fn forwarded(request: &[u8], client: Option<Ipv4Addr>) -> Vec<u8> {
    let mut out = request.to_vec();
    if let Some(client) = client {
        let end = out.len().saturating_sub(2);
        out.splice(
            end..end,
            format!("X-Forwarded-For: {client}\r\n").into_bytes(),
        );
    }
    out
}

/// Starts a non-blocking connection from `src` (any port) to `dst`.
pub fn connect(src: Ipv4Addr, dst: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None)?;
    socket.set_nodelay(true)?;
    // The port is chosen at connect time for the whole 4-tuple, so 4096 sources do not run
    // out of ports at bind time.
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    socket.bind(&SocketAddr::new(src.into(), 0).into())?;
    match socket.connect(&dst.into()) {
        Ok(()) => Ok(socket),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(socket),
        Err(e) => Err(e),
    }
}

/// Writes a whole small request; a non-blocking socket takes it at once or it is an error.
pub fn send(socket: &Socket, request: &[u8]) -> io::Result<()> {
    let n = socket.send(request)?;
    if n != request.len() {
        return Err(io::Error::other("short write of a small request"));
    }
    Ok(())
}

/// What reading until the socket would block produced.
pub enum Read {
    /// More bytes may come.
    Open,
    /// The peer closed.
    Eof,
}

/// Appends everything readable now to `buf`.
pub fn read_available(socket: &Socket, buf: &mut Vec<u8>) -> io::Result<Read> {
    let mut chunk = [0u8; 4096];
    loop {
        match (&*socket).read(&mut chunk) {
            Ok(0) => return Ok(Read::Eof),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Read::Open),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// One complete response at the start of `buf`: its total length and its body's range.
/// `Ok(None)` until it is complete.
pub fn parse_response(buf: &[u8]) -> io::Result<Option<(usize, Range<usize>)>> {
    let Some(head_end) = crate::serve::find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = buf.get(..head_end).unwrap_or_default();
    if !head.starts_with(b"HTTP/1.1 200") {
        return Err(io::Error::other(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(head.get(..40.min(head.len())).unwrap_or_default())
        )));
    }
    let len = head
        .split(|&b| b == b'\n')
        .find_map(|line| {
            let line = std::str::from_utf8(line).ok()?.trim();
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .ok_or_else(|| io::Error::other("answer without Content-Length"))?;
    let body = head_end + 4..head_end + 4 + len;
    Ok((buf.len() >= body.end).then_some((body.end, body)))
}

/// The backend id in an answer body (`<id> <client-ip>`).
pub fn backend_id(body: &[u8]) -> &[u8] {
    body.split(|&b| b == b' ').next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\nConnection: close\r\n\r\nbe1 198.18.16.7\n";

    #[test]
    fn parses_complete_answers_only() {
        for cut in 0..ANSWER.len() {
            assert!(
                parse_response(&ANSWER[..cut]).unwrap().is_none(),
                "cut {cut}"
            );
        }
        let mut two = ANSWER.to_vec();
        two.extend_from_slice(ANSWER);
        let (len, body) = parse_response(&two).unwrap().unwrap();
        assert_eq!(len, ANSWER.len());
        assert_eq!(backend_id(&two[body]), b"be1");
    }

    #[test]
    fn adds_x_forwarded_for_to_the_head() {
        let src = Ipv4Addr::new(198, 18, 16, 7);
        assert_eq!(
            forwarded(CLOSE, Some(src)),
            b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\
              X-Forwarded-For: 198.18.16.7\r\n\r\n"
        );
        assert_eq!(forwarded(KEEP_ALIVE, None), KEEP_ALIVE);
    }

    #[test]
    fn refuses_errors_and_missing_lengths() {
        assert!(parse_response(b"HTTP/1.1 503 Busy\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }
}
