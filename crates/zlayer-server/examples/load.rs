//! A bounded load test on loopback: C clients × R requests against an in-process server
//! (the bundled model, one worker, a queue of 4), every fifth request a 2-step generate job
//! and the rest validations. Prints throughput and p50/p99 latency per kind, and fails if any
//! request got an answer other than 200, 202 or the designed 429.
//!
//! `cargo run --release -p zlayer-server --example load [-- CLIENTS REQUESTS]`

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use zlayer_server::jobs::Limits;
use zlayer_server::{Config, State, router};

const SCENE: &str = include_str!("../../../examples/sphere-cube.json");

fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Duration) {
    let start = Instant::now();
    let mut c = TcpStream::connect(addr).expect("connects");
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("writes");
    let mut reply = String::new();
    c.read_to_string(&mut reply).expect("reads");
    let code = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, start.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[k].as_secs_f64() * 1e3
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<usize>().expect("a number"));
    let clients = args.next().unwrap_or(8);
    let requests = args.next().unwrap_or(50);
    let cfg = Config {
        limits: Limits {
            workers: 1,
            queue: 4,
            ..Config::default().limits
        },
        ..Config::default()
    };
    let state = State::new(&cfg).expect("the bundled model loads");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("binds");
    let addr = listener.local_addr().expect("an address");
    let app = router(state, cfg.max_body);
    rt.spawn(async move { axum::serve(listener, app).await });
    let scene: serde_json::Value = serde_json::from_str(SCENE).expect("scene");
    let job = serde_json::json!({"scene": scene, "steps": 2}).to_string();
    let start = Instant::now();
    let results: Vec<Vec<(&'static str, u16, Duration)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let job = job.as_str();
                s.spawn(move || {
                    (0..requests)
                        .map(|r| {
                            if (c + r) % 5 == 0 {
                                let (code, t) = request(addr, "POST", "/v1/jobs", job);
                                ("generate job", code, t)
                            } else {
                                let (code, t) = request(addr, "POST", "/v1/validate", SCENE);
                                ("validate", code, t)
                            }
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client"))
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let all: Vec<_> = results.into_iter().flatten().collect();
    let mut by_kind: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut codes: BTreeMap<(&str, u16), usize> = BTreeMap::new();
    for (kind, code, t) in &all {
        by_kind.entry(kind).or_default().push(*t);
        *codes.entry((kind, *code)).or_default() += 1;
    }
    println!(
        "{clients} clients × {requests} requests on {addr}: {} in {wall:.2} s, {:.0} requests/s",
        all.len(),
        all.len() as f64 / wall
    );
    println!("| requests | n | p50 (ms) | p99 (ms) |\n|---|---|---|---|");
    for (kind, mut ts) in by_kind {
        ts.sort();
        println!(
            "| {kind} | {} | {:.2} | {:.2} |",
            ts.len(),
            percentile(&ts, 0.5),
            percentile(&ts, 0.99)
        );
    }
    for ((kind, code), n) in &codes {
        println!("{kind}: {n} × {code}");
    }
    let unexpected: Vec<_> = codes
        .keys()
        .filter(|(kind, code)| {
            !matches!(
                (*kind, *code),
                ("validate", 200) | ("generate job", 202 | 429)
            )
        })
        .collect();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
}
