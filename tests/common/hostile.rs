//! Probes of a hostile or broken client, over raw TCP on loopback, shared by
//! the hostile-input suites of `pulse up` (`tests/hostile.rs`) and of the
//! sidecar (`sidecar/tests/hostile.rs`). Each probe is bounded in bytes and
//! time; none depends on how fast the machine is.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any probe waits for an answer before it fails: far above what an
/// answer takes, so it only bounds a hung test.
pub const ANSWER_WAIT: Duration = Duration::from_secs(60);

/// One HTTP/1.1 answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the status and the one error shape, with `code` if given.
    pub fn assert_error(&self, what: &str, status: u16, code: Option<&str>) {
        let body = self.json();
        assert_eq!(
            self.status,
            status,
            "{what}: status; body {}",
            String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
        );
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{what}: not JSON: {:?}",
            self.headers
        );
        let error = &body["error"];
        assert!(
            error["code"].is_string() && error["message"].is_string(),
            "{what}: not the error shape: {body}"
        );
        if let Some(code) = code {
            assert_eq!(error["code"], code, "{what}: {body}");
        }
    }
}

/// A request as bytes: `head_lines` are extra header lines without CRLF.
pub fn request(method: &str, target: &str, head_lines: &[String], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: probe\r\n");
    for line in head_lines {
        out.push_str(line);
        out.push_str("\r\n");
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Sends `bytes` on a new connection and reads one answer. The answer is
/// read while the request is still being written: the server may answer
/// (and close) before taking a whole oversized request, and what it answered
/// is what counts.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Answer {
    let stream = TcpStream::connect(addr).await.expect("connects");
    let (mut reader, mut writer) = stream.into_split();
    let bytes = bytes.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&bytes).await;
        writer
    });
    let answer = read_answer(&mut reader).await.expect("an answer");
    writing.abort();
    answer
}

/// Reads one answer from `stream` (Content-Length or chunked); `None` when
/// the server closed the connection without one.
pub async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> Option<Answer> {
    tokio::time::timeout(ANSWER_WAIT, read_answer_inner(stream))
        .await
        .expect("the server answers in time")
}

async fn read_answer_inner(stream: &mut (impl AsyncRead + Unpin)) -> Option<Answer> {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(at) = find(&buffer, b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0u8; 8192];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut rest = buffer[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(length) = get("content-length") {
        let length: usize = length.parse().ok()?;
        while rest.len() < length {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
        rest.truncate(length);
        rest
    } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            if find(&rest, b"0\r\n\r\n").is_some() {
                break;
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
        dechunk(&rest)
    } else {
        rest
    };
    Some(Answer {
        status,
        headers,
        body,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = find(data, b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// Whether the server closes `stream` within `within`, reading (and
/// dropping) whatever it sends first.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let closed = async {
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, closed).await.is_ok()
}

/// `bytes` gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// `[1,1,...,1]` of `n` elements: tiny per element, the worst case of a
/// parser that holds every element.
pub fn element_flood(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 * n + 2);
    out.push(b'[');
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'1');
    }
    out.push(b']');
    out
}

/// `depth` nested arrays.
pub fn deep_nesting(depth: usize) -> Vec<u8> {
    let mut out = vec![b'['; depth];
    out.extend(std::iter::repeat_n(b']', depth));
    out
}

/// Every JSON type in every field of a point, with the field the error must
/// name when the type is wrong (`None`: the point is valid).
pub fn every_type_in_every_field() -> Vec<(String, Option<&'static str>)> {
    let types = [
        "null",
        "true",
        "0",
        "-1.5e3",
        "\"text\"",
        "[]",
        "[1]",
        "{}",
        "{\"a\":\"b\"}",
    ];
    let mut cases = Vec::new();
    for field in ["metric_name", "value", "timestamp", "tags"] {
        for json in types {
            let mut point = serde_json::Map::new();
            point.insert("metric_name".into(), Value::from("cpu"));
            point.insert("value".into(), Value::from(1.0));
            let value: Value = serde_json::from_str(json).unwrap();
            point.insert(field.into(), value.clone());
            let valid = match field {
                "metric_name" => value.as_str().is_some(),
                "value" => value.is_number(),
                // Absent and null are the same; a number must be recent
                // Unix seconds, so only null passes here.
                "timestamp" => value.is_null(),
                _ => value.is_null() || value.as_object().is_some(),
            };
            cases.push((Value::Object(point).to_string(), (!valid).then_some(field)));
        }
    }
    cases
}

/// The peak resident memory (`VmHWM`) of process `pid`, in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("a VmHWM line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM in kB");
    kib * 1024
}
