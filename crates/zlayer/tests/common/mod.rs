//! Helpers shared by the CLI tests.
// Each test binary uses some of them.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};

/// Runs the built `zlayer` in the repository root.
pub fn zlayer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zlayer"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("runs")
}

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh folder for one test.
pub fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zlayer-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Bytes as text, lossily.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `zlayer serve` on a free loopback port, started in `dir` with extra `args`: the process,
/// its address and the rest of its stderr after the banner.
pub fn serve(dir: &Path, args: &[&str]) -> (Child, String, BufReader<ChildStderr>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zlayer"))
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut banner = String::new();
    err.read_line(&mut banner).unwrap();
    let addr = banner
        .split("http://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("no address in {banner:?}"))
        .to_string();
    (child, addr, err)
}

/// One HTTP request on its own connection; the whole answer as text.
pub fn request(addr: &str, method: &str, path: &str, body: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    answer
}
