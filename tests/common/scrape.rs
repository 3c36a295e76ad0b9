//! The metrics endpoint as a scraper sees it: plain HTTP/1.1 requests, and
//! the exposition read by the Prometheus Python client's OpenMetrics parser.

use std::collections::HashMap;
use std::io::{Read, Write};

/// (status code, Content-Type, body) of `GET path`, with the response
/// framing checked.
pub fn get(port: u16, path: &str) -> (u16, String, String) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a blank line after the head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap();
    let code = status.strip_prefix("HTTP/1.1 ").and_then(|s| s.split(' ').next()).expect("status line");
    let headers: HashMap<String, String> = lines
        .map(|l| l.split_once(": ").expect("header: value"))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    assert_eq!(headers["content-length"].parse::<usize>().unwrap(), body.len(), "{raw}");
    (code.parse().unwrap(), headers["content-type"].clone(), body.to_owned())
}

pub fn health(port: u16) -> (u16, String) {
    let (code, _, body) = get(port, "/health");
    (code, body)
}

/// The samples of one scrape, keyed `name{label="value",…}` (labels
/// sorted), as the Prometheus Python client's OpenMetrics parser reads them.
pub fn scrape(port: u16) -> HashMap<String, f64> {
    let (code, content_type, body) = get(port, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    parse_exposition(&body)
}

/// prometheus_client, installed by scripts/test into target/py (a venv).
pub fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python");
    assert!(python.exists(), "prometheus_client is not installed: run scripts/test, which installs it from PyPI");
    let mut parser = std::process::Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/openmetrics.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    parser.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = parser.wait_with_output().unwrap();
    assert!(out.status.success(), "{}\n{text}", String::from_utf8_lossy(&out.stderr));
    let mut samples = HashMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let mut fields = line.split('\t');
        let (key, kind, value) = (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());
        assert!(kind != "counter" || key.contains("_total"), "counter sample {key}");
        let value = match value {
            "inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        assert!(samples.insert(key.to_owned(), value).is_none(), "duplicate sample {key}");
    }
    samples
}
