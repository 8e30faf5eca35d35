//! `zlayer serve` as a process: it stops on Ctrl-C (SIGINT) or SIGTERM, cancels what is
//! still queued or running, ends every open event stream with `canceled`, and exits 0.

mod common;

use common::{request, serve};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn submit(addr: &str) -> String {
    let scene: serde_json::Value =
        serde_json::from_str(include_str!("../../../examples/sphere-cube.json")).unwrap();
    // Long enough to be mid-way when the signal comes: 100 steps of 8 samples.
    let body = serde_json::json!({"scene": scene, "steps": 100, "n": 8}).to_string();
    let answer = request(addr, "POST", "/v1/jobs", &body);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let json = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["id"].as_str().unwrap().to_string()
}

/// The names of a job's server-sent events, read until the stream ends (or `until` is seen).
fn events(stream: &mut BufReader<TcpStream>, until: Option<&str>) -> Vec<String> {
    let mut names = Vec::new();
    let mut line = String::new();
    while stream.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        if let Some(name) = line.trim_end().strip_prefix("event: ") {
            names.push(name.to_string());
            if Some(name) == until {
                break;
            }
        }
        line.clear();
    }
    names
}

fn open_events(addr: &str, id: &str) -> BufReader<TcpStream> {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        c,
        "GET /v1/jobs/{id}/events HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    BufReader::new(c)
}

fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args(["-s", name, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
}

fn exits(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > within {
            child.kill().ok();
            panic!("the server did not stop within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_cancels_running_and_queued_jobs_and_exits_cleanly() {
    let (mut child, addr, mut err) = serve(&std::env::temp_dir(), &["--workers", "1"]);
    let running = submit(&addr);
    let queued = submit(&addr);
    let mut a = open_events(&addr, &running);
    let mut b = open_events(&addr, &queued);
    assert_eq!(events(&mut a, Some("running")).last().unwrap(), "running");
    signal(&child, "INT");
    let rest_a = events(&mut a, None);
    let rest_b = events(&mut b, None);
    assert_eq!(
        rest_a.last().map(String::as_str),
        Some("canceled"),
        "{rest_a:?}"
    );
    assert_eq!(
        rest_b.last().map(String::as_str),
        Some("canceled"),
        "{rest_b:?}"
    );
    assert!(
        !rest_b.contains(&"running".to_string()),
        "a queued job never starts"
    );
    let status = exits(&mut child, Duration::from_secs(30));
    let mut said = String::new();
    err.read_to_string(&mut said).unwrap();
    assert_eq!(status.code(), Some(0), "{said}");
    assert!(said.contains("2 unfinished job(s) canceled"), "{said}");
}

#[test]
fn sigterm_stops_an_idle_server_at_once() {
    let (mut child, addr, mut err) = serve(&std::env::temp_dir(), &["--workers", "1"]);
    assert!(request(&addr, "GET", "/v1/vocabulary", "").starts_with("HTTP/1.1 200"));
    signal(&child, "TERM");
    let status = exits(&mut child, Duration::from_secs(10));
    let mut said = String::new();
    err.read_to_string(&mut said).unwrap();
    assert_eq!(status.code(), Some(0), "{said}");
    assert!(said.contains("0 unfinished job(s) canceled"), "{said}");
}
