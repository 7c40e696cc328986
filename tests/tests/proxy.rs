//! Proxy mode with real sockets: the client address from X-Forwarded-For / Forwarded /
//! PROXY protocol (believed only from trusted peers), the same backend as the kernel path,
//! cookie stickiness, kernel splice and userspace copy carrying every byte, hostile input.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use common::{assign, spread, sticky_bin};
use sticky_tests::{EchoBackend, HttpConn, StickyProcess, Topology, plan, root_or_skip};

const CLIENTS: usize = 200;
const PROXY_PORT: u16 = 8080;
const ECHO_PORT: u16 = 9000;

/// The client namespace's own address: plays the trusted proxy (a CDN, an nginx) in front.
fn proxy_peer() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2))
}

fn proxy_addr(topo: &Topology) -> SocketAddr {
    SocketAddr::new(topo.vip(false).ip(), PROXY_PORT)
}

fn start(topo: &Topology, backend_port: u16, extra: &[&str]) -> StickyProcess {
    let mut args = vec![
        "--iface".to_string(),
        "cli0".into(),
        "--vip".into(),
        topo.vip(false).to_string(),
        "--proxy".into(),
        proxy_addr(topo).to_string(),
        "--trusted-proxies".into(),
        "198.18.0.2/32,10.9.9.0/24".into(),
    ];
    for k in 0..topo.backends.len() {
        args.extend([
            "--backend".into(),
            SocketAddr::new(plan::backend(k, false).0, backend_port).to_string(),
        ]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky with --proxy")
}

/// One request through the proxy from `src` with extra header lines; the answer or status.
fn via_proxy(topo: &Topology, src: IpAddr, headers: &str) -> Result<String, String> {
    let to = proxy_addr(topo);
    let headers = headers.to_string();
    topo.client
        .run(move || {
            let mut c =
                HttpConn::open(src, to, Duration::from_secs(3)).map_err(|e| format!("{e:#}"))?;
            match c.get_with(&headers, true) {
                Ok(a) => Ok(a.backend),
                Err(_) => Err(c.last_status.trim().to_string()),
            }
        })
        .expect("client namespace")
}

fn xff(i: usize) -> String {
    format!("X-Forwarded-For: {}\r\n", plan::client(i, false))
}

#[test]
fn forwarded_clients_spread_stick_and_match_the_kernel_path() {
    if !root_or_skip("forwarded_clients_spread_stick_and_match_the_kernel_path") {
        return;
    }
    let topo = Topology::build("pxff", 3, CLIENTS).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let _daemon = start(&topo, plan::BACKEND_PORT, &[]);
    // Half the clients come directly first, half through the proxy first: either way each
    // client gets one backend, shared by both paths (same hash, table and affinity map).
    let direct_first = assign(&topo, 0..CLIENTS / 2, 1, false);
    let mut via: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for i in 0..CLIENTS {
        for _ in 0..3 {
            let b = via_proxy(&topo, proxy_peer(), &xff(i))
                .unwrap_or_else(|e| panic!("client {i}: {e}"));
            via.entry(i).or_default().insert(b);
        }
    }
    let via: BTreeMap<usize, String> = via
        .into_iter()
        .map(|(i, set)| {
            assert_eq!(set.len(), 1, "client {i} split through the proxy: {set:?}");
            (i, set.into_iter().next().expect("one"))
        })
        .collect();
    let direct_after = assign(&topo, CLIENTS / 2..CLIENTS, 1, false);
    for (i, b) in direct_first.iter().chain(direct_after.iter()) {
        assert_eq!(via[i], *b, "client {i}: direct and proxied disagree");
    }
    assert_eq!(spread(&via).len(), 3, "{:?}", spread(&via));
}

#[test]
fn trust_hops_headers_and_proxy_protocol() {
    if !root_or_skip("trust_hops_headers_and_proxy_protocol") {
        return;
    }
    let topo = Topology::build("ptrust", 3, 20).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let daemon = start(&topo, plan::BACKEND_PORT, &[]);
    let direct = assign(&topo, 0..20, 1, false);
    let c = |i: usize| plan::client(i, false);

    // Multi-hop: client, then trusted proxies; the rightmost untrusted hop is the client.
    let hops = format!("X-Forwarded-For: 203.0.113.9, {}, 10.9.9.1\r\n", c(1));
    assert_eq!(
        via_proxy(&topo, proxy_peer(), &hops).expect("multi-hop"),
        direct[&1]
    );
    // Repeated headers form one list.
    let repeated = format!(
        "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: {}\r\n",
        c(2)
    );
    assert_eq!(
        via_proxy(&topo, proxy_peer(), &repeated).expect("repeated"),
        direct[&2]
    );
    // Values with ports, IPv4-mapped.
    let mapped = format!("X-Forwarded-For: [::ffff:{}]:4711\r\n", c(3));
    assert_eq!(
        via_proxy(&topo, proxy_peer(), &mapped).expect("mapped"),
        direct[&3]
    );
    // RFC 7239 Forwarded, quoted with a port.
    let forwarded = format!(
        "Forwarded: for=\"{}:4711\";proto=http, for=10.9.9.1\r\n",
        c(4)
    );
    drop(daemon);
    let daemon = start(&topo, plan::BACKEND_PORT, &["--header", "Forwarded"]);
    assert_eq!(
        via_proxy(&topo, proxy_peer(), &forwarded).expect("Forwarded"),
        direct[&4]
    );

    // A spoofed header from an untrusted peer is ignored: routed by the peer itself.
    let spoof = format!("Forwarded: for={}\r\n", c(6));
    assert_eq!(
        via_proxy(&topo, c(5), &spoof).expect("untrusted"),
        direct[&5]
    );

    // Missing header from a trusted peer: 400 by default…
    let err = via_proxy(&topo, proxy_peer(), "").expect_err("missing header accepted");
    assert!(err.starts_with("HTTP/1.1 400"), "{err}");
    // …or routed by the peer address with --ignore-missing-header.
    drop(daemon);
    let daemon = start(&topo, plan::BACKEND_PORT, &["--ignore-missing-header"]);
    let by_peer = via_proxy(&topo, proxy_peer(), "").expect("ignore-missing-header");
    assert_eq!(via_proxy(&topo, proxy_peer(), "").expect("again"), by_peer);

    // PROXY protocol v1 and v2 from a trusted balancer.
    drop(daemon);
    let _daemon = start(&topo, plan::BACKEND_PORT, &["--proxy-protocol"]);
    let to = proxy_addr(&topo);
    let v1 = format!("PROXY TCP4 {} {} 40000 {PROXY_PORT}\r\n", c(7), to.ip());
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    let IpAddr::V4(src) = c(8) else {
        unreachable!("IPv4 plan")
    };
    let IpAddr::V4(dst) = to.ip() else {
        unreachable!("IPv4 VIP")
    };
    v2.extend(src.octets());
    v2.extend(dst.octets());
    v2.extend(40000u16.to_be_bytes());
    v2.extend(PROXY_PORT.to_be_bytes());
    for (i, header) in [(7, v1.into_bytes()), (8, v2)] {
        let got = topo
            .client
            .run(move || {
                let mut conn =
                    HttpConn::open(proxy_peer(), to, Duration::from_secs(3)).expect("connect");
                conn.send_raw(&header).expect("PROXY header");
                conn.get(true).map(|a| a.backend)
            })
            .expect("client namespace")
            .unwrap_or_else(|e| panic!("PROXY header for client {i}: {e:#}"));
        assert_eq!(got, direct[&i], "PROXY protocol client {i}");
    }
}

#[test]
fn cookies_keep_clients_behind_one_address_apart() {
    if !root_or_skip("cookies_keep_clients_behind_one_address_apart") {
        return;
    }
    let topo = Topology::build("pcookie", 3, 1).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let _daemon = start(
        &topo,
        plan::BACKEND_PORT,
        &["--cookie", "SRV", "--ignore-missing-header"],
    );
    let to = proxy_addr(&topo);
    let results = topo
        .client
        .run(move || {
            (0..100)
                .map(|_| {
                    // First request: no cookie; the answer carries one.
                    let mut s = TcpStream::connect(to).expect("connect");
                    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .expect("send");
                    let mut text = String::new();
                    s.read_to_string(&mut text).expect("read");
                    let cookie = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Set-Cookie: SRV="))
                        .and_then(|v| v.split(';').next())
                        .unwrap_or_else(|| panic!("no Set-Cookie in {text:?}"))
                        .to_string();
                    let first = text
                        .lines()
                        .last()
                        .unwrap_or("")
                        .split(' ')
                        .next()
                        .unwrap_or("")
                        .to_string();
                    // Later requests with the cookie stay put.
                    let later: BTreeSet<String> = (0..3)
                        .map(|_| {
                            let mut c = HttpConn::open(proxy_peer(), to, Duration::from_secs(3))
                                .expect("connect");
                            c.get_with(&format!("Cookie: a=b; SRV={cookie}\r\n"), true)
                                .expect("with cookie")
                                .backend
                        })
                        .collect();
                    (first, later)
                })
                .collect::<Vec<_>>()
        })
        .expect("client namespace");
    let mut per_backend: BTreeMap<String, usize> = BTreeMap::new();
    for (first, later) in &results {
        assert_eq!(later.len(), 1, "a cookie client moved: {later:?}");
        assert!(
            later.contains(first),
            "cookie did not lead back to {first}: {later:?}"
        );
        *per_backend.entry(first.clone()).or_default() += 1;
    }
    assert_eq!(
        per_backend.len(),
        3,
        "cookie clients not spread: {per_backend:?}"
    );
    // A forged cookie falls back to the normal choice instead of failing.
    let forged = topo
        .client
        .run(move || {
            HttpConn::open(proxy_peer(), to, Duration::from_secs(3))
                .and_then(|mut c| c.get_with("Cookie: SRV=forged0000000000\r\n", true))
        })
        .expect("client namespace");
    assert!(forged.is_ok(), "{forged:?}");
}

/// Sends `total` bytes after the upgrade while reading the echo, checks every byte.
/// `total` bytes each way through a WebSocket-style upgrade (`101`), checked byte by byte.
fn echo_through(to: SocketAddr, total: usize, half_close: bool) -> Result<(), String> {
    echo_via(to, "/ws", total, half_close)
}

/// The same through `path`: `/plain` is no upgrade but one request whose `total`-byte body
/// the backend streams back as its response's body while it arrives (both framed by the
/// proxy, no byte of them parsed as a request).
fn echo_via(to: SocketAddr, path: &str, total: usize, half_close: bool) -> Result<(), String> {
    let mut s = TcpStream::connect(to).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let head = if path == "/plain" {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.1\r\n\
             Content-Length: {total}\r\n\r\n"
        )
    } else {
        format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.1\r\nConnection: \
             Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
    };
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)
            .map_err(|e| format!("upgrade answer: {e}"))?;
        head.push(byte[0]);
    }
    let want: &[u8] = if path == "/plain" {
        b"HTTP/1.1 200"
    } else {
        b"HTTP/1.1 101"
    };
    if !head.starts_with(want) {
        return Err(format!(
            "unexpected answer: {}",
            String::from_utf8_lossy(&head)
        ));
    }
    let mut writer = s.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0usize;
        while sent < total {
            let n = chunk.len().min(total - sent);
            for (j, b) in chunk[..n].iter_mut().enumerate() {
                *b = ((sent + j) % 251) as u8;
            }
            writer.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
            sent += n;
        }
        if half_close {
            writer
                .shutdown(std::net::Shutdown::Write)
                .map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    });
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < total {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("after {got} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {got} of {total} bytes"));
        }
        for (j, b) in buf[..n].iter().enumerate() {
            if *b != ((got + j) % 251) as u8 {
                return Err(format!("byte {} corrupted", got + j));
            }
        }
        got += n;
    }
    sender.join().map_err(|_| "sender panicked".to_string())??;
    if half_close {
        // The backend's FIN must arrive once all bytes are through.
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("waiting for FIN: {e}"))?;
        if n != 0 {
            return Err(format!("{n} extra bytes"));
        }
    }
    Ok(())
}

fn bulk_and_concurrency(splice: bool) {
    let tag = if splice { "psplice" } else { "pcopy" };
    let topo = Topology::build(tag, 2, 1).expect("topology");
    let _echo: Vec<EchoBackend> = topo
        .backends
        .iter()
        .map(|ns| {
            EchoBackend::start(
                ns,
                SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), ECHO_PORT),
            )
            .expect("echo")
        })
        .collect();
    let extra: &[&str] = if splice { &[] } else { &["--no-splice"] };
    let daemon = start(&topo, ECHO_PORT, extra);
    let mode = if splice {
        "(kernel splice"
    } else {
        "(userspace copy"
    };
    assert!(
        daemon
            .log
            .iter()
            .any(|l| l.starts_with("proxy on") && l.contains(mode)),
        "proxy not in {mode} mode: {:?}",
        daemon.log
    );
    let to = proxy_addr(&topo);
    topo.client
        .run(move || {
            // 100 MB each way on one connection, then a half-close that must carry through.
            echo_through(to, 100 << 20, true)
                .unwrap_or_else(|e| panic!("100 MB (splice={splice}): {e}"));
            // No upgrade: a request body and its response body streamed through hyper.
            echo_via(to, "/plain", 16 << 20, true)
                .unwrap_or_else(|e| panic!("16 MB plain (splice={splice}): {e}"));
            // 500 connections at once, 64 KiB each way.
            let handles: Vec<_> = (0..500)
                .map(|_| std::thread::spawn(move || echo_through(to, 64 << 10, true)))
                .collect();
            let failed: Vec<String> = handles
                .into_iter()
                .filter_map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())).err())
                .collect();
            assert!(
                failed.is_empty(),
                "{} of 500 failed (splice={splice}): {:?}",
                failed.len(),
                &failed[..failed.len().min(3)]
            );
        })
        .expect("client namespace");
}

/// `--splice-after`: an upgraded connection is copied for its first 64 KiB after the `101`,
/// then joins the sockmap mid-stream; every byte and the half-close must carry through the
/// handoff.
#[test]
fn splice_after_a_threshold_carries_every_byte() {
    if !root_or_skip("splice_after_a_threshold_carries_every_byte") {
        return;
    }
    let topo = Topology::build("pthresh", 2, 1).expect("topology");
    let _echo: Vec<EchoBackend> = topo
        .backends
        .iter()
        .map(|ns| {
            EchoBackend::start(
                ns,
                SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), ECHO_PORT),
            )
            .expect("echo")
        })
        .collect();
    let _daemon = start(&topo, ECHO_PORT, &["--splice-after", "65536"]);
    let to = proxy_addr(&topo);
    topo.client
        .run(move || {
            echo_through(to, 32 << 20, true)
                .unwrap_or_else(|e| panic!("32 MB through the handoff: {e}"));
            let handles: Vec<_> = (0..100)
                .map(|_| std::thread::spawn(move || echo_through(to, 256 << 10, true)))
                .collect();
            let failed: Vec<String> = handles
                .into_iter()
                .filter_map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())).err())
                .collect();
            assert!(
                failed.is_empty(),
                "{} of 100 failed: {:?}",
                failed.len(),
                &failed[..failed.len().min(3)]
            );
        })
        .expect("client namespace");
}

#[test]
fn splice_carries_every_byte() {
    if root_or_skip("splice_carries_every_byte") {
        bulk_and_concurrency(true);
    }
}

#[test]
fn copy_carries_every_byte() {
    if root_or_skip("copy_carries_every_byte") {
        bulk_and_concurrency(false);
    }
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

#[test]
fn hostile_clients_get_clear_answers_and_leave_no_trace() {
    if !root_or_skip("hostile_clients_get_clear_answers_and_leave_no_trace") {
        return;
    }
    let topo = Topology::build("phostile", 2, 1).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let daemon = start(&topo, plan::BACKEND_PORT, &["--header-timeout", "1s"]);
    let to = proxy_addr(&topo);
    let status_of = |bytes: Vec<u8>| -> String {
        topo.client
            .run(move || {
                let mut s = TcpStream::connect(to).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let _ = s.write_all(&bytes);
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                text.lines().next().unwrap_or("").to_string()
            })
            .expect("client namespace")
    };
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert!(status_of(huge.into_bytes()).starts_with("HTTP/1.1 431"));
    assert!(status_of(b"\x16\x03\x01\x02\x00garbage\r\n\r\n".to_vec()).starts_with("HTTP/1.1 400"));
    assert!(
        status_of(b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n".to_vec())
            .starts_with("HTTP/1.1 400")
    );
    // Slowloris: a head that never completes is cut at the header timeout.
    let started = Instant::now();
    let slow = topo
        .client
        .run(move || {
            let mut s = TcpStream::connect(to).expect("connect");
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let mut text = String::new();
            for _ in 0..50 {
                if s.write_all(b"X").is_err() {
                    break;
                }
                let mut buf = [0u8; 512];
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => text.push_str(&String::from_utf8_lossy(&buf[..n])),
                    Err(_) => {}
                }
            }
            text
        })
        .expect("client namespace");
    assert!(slow.starts_with("HTTP/1.1 408"), "slowloris got {slow:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
    // A client that half-closes after its request still gets the whole answer.
    let half = topo
        .client
        .run(move || {
            let mut s = TcpStream::connect(to).expect("connect");
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.9\r\nConnection: close\r\n\r\n").expect("send");
            s.shutdown(std::net::Shutdown::Write).expect("half-close");
            let mut text = String::new();
            s.read_to_string(&mut text).expect("read");
            text
        })
        .expect("client namespace");
    assert!(
        half.starts_with("HTTP/1.1 200") && half.contains("be"),
        "{half:?}"
    );

    // 10k connections opened and closed: fds and memory back at baseline.
    let pid = daemon.pid(); // nsenter execs sticky: same process
    std::thread::sleep(Duration::from_millis(300));
    let (fds, rss) = (fd_count(pid), rss_kib(pid));
    topo.client
        .run(move || {
            for i in 0..10_000u32 {
                let mut s = TcpStream::connect(to).expect("connect");
                if i % 2 == 0 {
                    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.3\r\nConnection: close\r\n\r\n");
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink);
                }
            }
        })
        .expect("client namespace");
    let deadline = Instant::now() + Duration::from_secs(15);
    while fd_count(pid) > fds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fd_count(pid), fds, "file descriptors leaked");
    let grown = rss_kib(pid).saturating_sub(rss);
    assert!(
        grown < 16 * 1024,
        "memory grew by {grown} KiB over 10k connections"
    );
}

#[test]
fn ipv6_listener_backends_and_forwarded_clients() {
    if !root_or_skip("ipv6_listener_backends_and_forwarded_clients") {
        return;
    }
    let topo = Topology::build("pv6", 3, 40).expect("topology");
    let _servers = topo.start_backends().expect("backends");
    let listen = SocketAddr::new(topo.vip(true).ip(), PROXY_PORT);
    let mut args = topo.sticky_args(true);
    args.extend([
        "--proxy".into(),
        listen.to_string(),
        "--trusted-proxies".into(),
        "fd00:18::2/128".into(),
    ]);
    let _daemon = StickyProcess::start(&sticky_bin(), &topo.lb, &args).expect("sticky");
    let direct = assign(&topo, 0..40, 1, true);
    let peer: IpAddr = "fd00:18::2".parse().expect("v6");
    for i in 0..40 {
        let header = format!(
            "X-Forwarded-For: [{}]:4711, fd00:18::2\r\n",
            plan::client(i, true)
        );
        let got = topo
            .client
            .run(move || {
                let mut c = HttpConn::open(peer, listen, Duration::from_secs(3)).expect("connect");
                c.get_with(&header, true).map(|a| a.backend)
            })
            .expect("client namespace");
        let got = got.unwrap_or_else(|e| panic!("IPv6 client {i}: {e:#}"));
        assert_eq!(
            got, direct[&i],
            "IPv6 client {i}: proxied and direct disagree"
        );
    }
}
