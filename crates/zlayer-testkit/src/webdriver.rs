//! A headless Chromium driven over W3C WebDriver, for the editor's browser tests.
//!
//! The protocol is JSON over HTTP/1.1 to a local `chromedriver`; the few commands a test
//! needs (navigate, find, click, type, pointer actions, run a script, screenshot) are a
//! request each, so a plain socket and `serde_json` carry them without an async client.

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The W3C name of an element reference in a JSON answer.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session: a `chromedriver` process and one headless Chromium window.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: TempDir,
}

/// A page element, as the driver names it.
#[derive(Debug, Clone)]
pub struct Element(String);

/// Chromium and its driver from the PATH (Debian's `chromium` and `chromium-driver`), or
/// `None` with a printed notice. Panics under `CI=true` when either is missing: `.ci/run`
/// installs them, so CI never goes green by skipping.
pub fn find() -> Option<(PathBuf, PathBuf)> {
    let on_path = |names: &[&str]| {
        let path = std::env::var_os("PATH")?;
        names.iter().find_map(|n| {
            std::env::split_paths(&path)
                .map(|d| d.join(n))
                .find(|p| p.is_file())
        })
    };
    let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = on_path(&["chromedriver"]);
    if let (Some(c), Some(d)) = (&chromium, &driver) {
        return Some((c.clone(), d.clone()));
    }
    crate::absent(
        "Chromium and chromedriver (apt-get install chromium chromium-driver)",
        "a browser test",
    );
    None
}

impl Browser {
    /// Starts `chromedriver` and a headless window of `width × height` CSS pixels.
    pub fn start(chromium: &Path, driver: &Path, width: u32, height: u32) -> Self {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
        let profile = TempDir::new("chromium-profile");
        let mut b = Self {
            driver: child,
            port,
            session: String::new(),
            _profile: profile,
        };
        let ready = Instant::now();
        while b.call("GET", "/status", None).is_err() {
            assert!(
                ready.elapsed() < Duration::from_secs(30),
                "chromedriver on port {port} did not answer in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let args = [
            "--headless=new".to_string(),
            // Root in a container has no user namespace for the sandbox.
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--disable-dev-shm-usage".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", b._profile.0.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let answer = b
            .call("POST", "/session", Some(&caps))
            .unwrap_or_else(|e| panic!("chromedriver refused a session: {e}"));
        b.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {answer}"))
            .to_string();
        b
    }

    /// Sends one command of this session and returns its `value`.
    pub fn cmd(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let full = format!("/session/{}{path}", self.session);
        self.call(method, &full, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Opens a page.
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs a script in the page (a function body: `return` gives the answer).
    pub fn js(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    /// Polls a script until it returns something truthy, and returns that.
    pub fn wait_for(&self, script: &str, what: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "waited {limit:?} for {what}; the page says: {}",
                self.js("return document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first element matching a CSS selector.
    pub fn find(&self, css: &str) -> Element {
        let v = self.cmd(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        );
        Element(
            v[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("no element {css}: {v}"))
                .into(),
        )
    }

    /// Clicks an element.
    pub fn click(&self, el: &Element) {
        self.cmd(
            "POST",
            &format!("/element/{}/click", el.0),
            Some(&json!({})),
        );
    }

    /// Types text into an element, as key presses.
    pub fn type_into(&self, el: &Element, text: &str) {
        let body = json!({ "text": text });
        self.cmd("POST", &format!("/element/{}/value", el.0), Some(&body));
    }

    /// The centre of the first element matching `css`, in viewport pixels.
    pub fn centre(&self, css: &str) -> (f64, f64) {
        let sel = serde_json::to_string(css).expect("a string");
        let r = self.js(&format!(
            "const r = document.querySelector({sel}).getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2];"
        ));
        (r[0].as_f64().unwrap(), r[1].as_f64().unwrap())
    }

    /// Presses the mouse at `from`, moves it to `to` in a few steps, and releases it.
    pub fn drag(&self, from: (f64, f64), to: (f64, f64)) {
        let at = |(x, y): (f64, f64), ms: u64| {
            json!({"type": "pointerMove", "origin": "viewport", "duration": ms,
                   "x": x.round() as i64, "y": y.round() as i64})
        };
        let mid = ((from.0 + to.0) / 2.0, (from.1 + to.1) / 2.0);
        let actions = json!({"actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [
                at(from, 0),
                {"type": "pointerDown", "button": 0},
                at(mid, 100),
                at(to, 100),
                {"type": "pointerUp", "button": 0},
            ],
        }]});
        self.cmd("POST", "/actions", Some(&actions));
        self.cmd("DELETE", "/actions", None);
    }

    /// The window as a PNG.
    pub fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd("GET", "/screenshot", None);
        base64_decode(v.as_str().expect("base64 text"))
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )
        .map_err(|e| e.to_string())?;
        // The driver keeps the connection open, so the answer ends where its length says.
        let mut raw = Vec::new();
        let (status, body) = loop {
            let mut buf = [0u8; 1 << 16];
            let n = s.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!(
                    "the driver closed the connection after {} bytes",
                    raw.len()
                ));
            }
            raw.extend(&buf[..n]);
            if let Some(answer) = http_body(&raw)? {
                break answer;
            }
        };
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&body)))?;
        if status != 200 {
            return Err(format!("HTTP {status}: {}", v["value"]));
        }
        Ok(v["value"].clone())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = self.call("DELETE", &path, None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    l.local_addr().expect("an address").port()
}

/// The status code and body of an HTTP/1.1 answer, by its `Content-Length` or chunks;
/// `None` while `raw` holds only part of it.
fn http_body(raw: &[u8]) -> Result<Option<(u16, Vec<u8>)>, String> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let mut rest = &raw[split + 4..];
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    if let Some(len) = header("content-length:") {
        let len: usize = len
            .parse()
            .map_err(|e| format!("content-length {len:?}: {e}"))?;
        return Ok(rest.get(..len).map(|b| (status, b.to_vec())));
    }
    if header("transfer-encoding:").as_deref() != Some("chunked") {
        return Err(format!(
            "an answer with neither a length nor chunks: {head:?}"
        ));
    }
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = String::from_utf8_lossy(&rest[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("chunk size {size_text:?}: {e}"))?;
        let start = eol + 2;
        if size == 0 {
            return Ok(Some((status, body)));
        }
        let Some(chunk) = rest.get(start..start + size) else {
            return Ok(None);
        };
        body.extend(chunk);
        let Some(next) = rest.get(start + size + 2..) else {
            return Ok(None);
        };
        rest = next;
    }
}

/// Standard base64 (RFC 4648, with padding), as WebDriver sends screenshots.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {:?}", c as char),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | (d as u32) << (18 - 6 * i));
        out.extend(&n.to_be_bytes()[1..group.len()]);
    }
    out
}

/// A folder removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("zlayer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temporary folder");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length_and_byte() {
        // Encoded by the definition, one bit at a time, then decoded.
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for len in 0..300usize {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            let bits: Vec<u8> = bytes
                .iter()
                .flat_map(|b| (0..8).rev().map(move |k| (b >> k) & 1))
                .collect();
            let mut text: String = bits
                .chunks(6)
                .map(|c| {
                    let v = (0..6).fold(0, |v, i| v << 1 | c.get(i).copied().unwrap_or(0));
                    ABC[v as usize] as char
                })
                .collect();
            while !text.len().is_multiple_of(4) {
                text.push('=');
            }
            assert_eq!(base64_decode(&text), bytes, "length {len}");
        }
    }

    #[test]
    fn chunked_and_plain_answers_give_the_same_body_and_parts_give_none() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length:11\r\n\r\n{\"value\":1}";
        let chunked: &[u8] =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"va\r\n7;x=y\r\nlue\":1}\r\n0\r\n\r\n";
        let want = b"{\"value\":1}".to_vec();
        assert_eq!(http_body(plain).unwrap(), Some((200, want.clone())));
        assert_eq!(http_body(chunked).unwrap(), Some((404, want)));
        // Every cut short of the end is "not yet", never a wrong body.
        for answer in [&plain[..], chunked] {
            let end = answer.len() - if answer == chunked { 2 } else { 0 };
            for cut in 0..end {
                assert_eq!(http_body(&answer[..cut]).unwrap(), None, "cut at {cut}");
            }
        }
        assert!(http_body(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        let bad_chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(http_body(bad_chunk).is_err());
    }
}
