//! The control loop keeps answering while the maps are big and `/metrics` is scraped every
//! second: the map walks for a snapshot happen off the loop. It fills the pinned flow and
//! affinity maps with synthetic entries, then makes `list` round trips on one control
//! connection, first without scrapes, then with one scrape a second, and prints their
//! latency (a figure, not an assertion).
//!
//! CI runs it small; the measurement in the README is
//! `STICKY_LATENCY_FLOWS=250000 STICKY_LATENCY_SECS=20 cargo xtask test -- --test
//! control_latency -- --nocapture` (`STICKY_BIN` picks the binary, so two builds compare).

mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::net::UnixStream,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use common::{args_with, status, sticky_bin};
use sticky::{control, datapath::Pins};
use sticky_common::{
    Addr16,
    maps::{self as names, Affinity, FLOW_FORWARD, Flow, FlowKey, PROTO_TCP},
};
use sticky_tests::{StickyProcess, Topology, root_or_skip};

const METRICS: &str = "127.0.0.1:9477";

/// A size from the environment, or the CI default.
fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

fn flows() -> u32 {
    env_or("STICKY_LATENCY_FLOWS", 20_000)
}

fn phase() -> Duration {
    Duration::from_secs(u64::from(env_or("STICKY_LATENCY_SECS", 3)))
}
/// Pause between two control requests.
const GAP: Duration = Duration::from_millis(20);

fn open<K: aya::Pod, V: aya::Pod>(pins: &Pins, name: &str) -> HashMap<MapData, K, V> {
    let data = MapData::from_pin(pins.map(name)).unwrap_or_else(|e| panic!("open {name}: {e}"));
    HashMap::try_from(Map::LruHashMap(data)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn fill(pins: &Pins) {
    let mut map: HashMap<MapData, FlowKey, Flow> = open(pins, names::FLOWS);
    for i in 0..flows() {
        let key = FlowKey {
            src: Addr16::from_v4_word(0x0a40_0000 + i),
            dst: Addr16::from_v4_word(0x0a00_0001),
            sport_be: 40_000u16.to_be(),
            dport_be: 80u16.to_be(),
            proto: PROTO_TCP,
            ..FlowKey::default()
        };
        let flow = Flow {
            direction: FLOW_FORWARD,
            backend_id: i % 2,
            ..Flow::default()
        };
        map.insert(key, flow, 0).expect("insert flow");
    }
    let mut affinity: HashMap<MapData, Addr16, Affinity> = open(pins, names::AFFINITY);
    for i in 0..flows() * 2 / 5 {
        let a = Affinity {
            backend_id: i % 2,
            ..Affinity::default()
        };
        affinity
            .insert(Addr16::from_v4_word(0x0a40_0000 + i), a, 0)
            .expect("insert affinity");
    }
}

/// `list` round trips on one connection for `phase`: sorted latencies.
fn round_trips(instance: &str, phase: Duration) -> Vec<Duration> {
    let stream = UnixStream::connect(control::socket_path(instance)).expect("control socket");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut out = Vec::new();
    let end = Instant::now() + phase;
    let mut line = String::new();
    while Instant::now() < end {
        let t = Instant::now();
        writer.write_all(b"{\"op\":\"list\"}\n").expect("send");
        line.clear();
        reader.read_line(&mut line).expect("answer");
        out.push(t.elapsed());
        assert!(line.contains("\"ok\":true"), "{line}");
        std::thread::sleep(GAP);
    }
    out.sort();
    out
}

fn summary(what: &str, sorted: &[Duration]) {
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
    println!(
        "{what}: n={} p50={:?} p99={:?} max={:?}",
        sorted.len(),
        at(0.50),
        at(0.99),
        sorted[sorted.len() - 1]
    );
}

#[test]
fn control_requests_are_answered_with_a_full_flow_table_under_scrapes() {
    if !root_or_skip("control_requests_are_answered_with_a_full_flow_table_under_scrapes") {
        return;
    }
    let bin = sticky_bin();
    let topo = Topology::build("lat", 2, 1).expect("topology");
    let args = args_with(
        &topo,
        &[0, 1],
        &[
            "--metrics",
            METRICS,
            "--max-flows",
            "524288",
            "--max-clients",
            "262144",
        ],
    );
    let daemon = StickyProcess::start(&bin, &topo.lb, &args).expect("sticky");
    let pins = Pins::for_instance(&daemon.instance);
    let t = Instant::now();
    fill(&pins);
    let st = status(&daemon);
    println!(
        "filled in {:?}: {} flow entries, {} affinity entries ({})",
        t.elapsed(),
        st.flow_entries,
        st.affinity_entries,
        bin.display()
    );
    assert!(
        st.flow_entries >= u64::from(flows()) * 4 / 5,
        "{} flows",
        st.flow_entries
    );

    summary("list, no scrapes", &round_trips(&daemon.instance, phase()));

    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = {
        let stop = Arc::clone(&stop);
        topo.lb
            .spawn(move || {
                let mut took = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let mut s = std::net::TcpStream::connect(METRICS).expect("metrics");
                    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                        .expect("send");
                    let mut body = String::new();
                    s.read_to_string(&mut body).expect("read");
                    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
                    took.push(t.elapsed());
                    std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
                }
                took.sort();
                took
            })
            .expect("scraper")
    };
    // The daemon's own once-a-second work is in both phases; only the scrapes differ.
    summary(
        "list, /metrics scraped every second",
        &round_trips(&daemon.instance, phase()),
    );
    stop.store(true, Ordering::Relaxed);
    let scrapes = scrapes.join().expect("scraper");
    assert!(!scrapes.is_empty(), "no scrape completed");
    summary("scrape", &scrapes);
    let t = Instant::now();
    let _ = status(&daemon);
    println!("sticky status --json: {:?}", t.elapsed());
}
