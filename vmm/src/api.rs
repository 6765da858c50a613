//! The control API: HTTP/1.1 over a Unix socket (`--api-sock`), one request
//! per connection, JSON bodies (Prometheus text for `/metrics`). `perfvmm
//! ctl` is its client; `curl --unix-socket PATH http://vm/status` works too.
//!
//! | method | path             | body                                   |
//! |--------|------------------|----------------------------------------|
//! | GET    | /status          |                                        |
//! | GET    | /decisions       |                                        |
//! | GET    | /metrics         |                                        |
//! | PUT    | /resize          | `{"vcpus": 3}` or `{"memory": "768M"}` |
//! | PUT    | /policy/reload   | `{}` or `{"path": "new.toml"}`         |
//!
//! Requests are read with a timeout and size limits, on a thread of their
//! own: a stuck or hostile client never stalls the VM.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use virtio_perf_device::{Counters, DropReason};

use crate::devices::bus::lock;
use crate::policy::controller::Controller;
use crate::policy::Resource;

/// Longest request head and body the server reads.
pub const MAX_HEAD: usize = 8 * 1024;
pub const MAX_BODY: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds the socket. A stale socket file (nobody listening) is replaced; a
/// live one, or any other kind of file, is an error.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is serving this socket",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            ))
        }
        Err(_) => {}
    }
    UnixListener::bind(path)
}

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Reads one HTTP/1.x request, within the size limits.
pub fn read_request(r: &mut impl BufRead) -> Result<Request, String> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r
            .take((MAX_HEAD - head.len().min(MAX_HEAD)) as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading the request: {e}"))?;
        if n == 0 {
            return Err("connection closed before the request ended".into());
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(format!("request head longer than {MAX_HEAD} bytes"));
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = String::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = text.lines();
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(path)) = (first.next(), first.next()) else {
        return Err("malformed request line".into());
    };
    let mut len = 0usize;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().map_err(|_| "bad Content-Length")?;
            }
        }
    }
    if len > MAX_BODY {
        return Err(format!("body longer than {MAX_BODY} bytes"));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        body,
    })
}

/// A response: status code, content type, body.
pub struct Response(pub u16, pub &'static str, pub String);

impl Response {
    fn json(code: u16, v: &Value) -> Self {
        Response(code, "application/json", format!("{v:#}\n"))
    }

    fn error(code: u16, msg: impl std::fmt::Display) -> Self {
        Self::json(code, &json!({ "error": msg.to_string() }))
    }

    fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let reason = match self.0 {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Error",
        };
        write!(
            w,
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
            self.0,
            self.1,
            self.2.len(),
            self.2
        )
    }
}

/// What the API serves from.
pub struct ApiState {
    pub controller: Arc<Mutex<Controller>>,
    pub counters: Arc<Counters>,
}

/// Parses a resize body: `{"vcpus": N}` or `{"memory": "SIZE" | bytes}`.
pub fn parse_resize(body: &[u8]) -> Result<(Resource, u64), String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body: {e}"))?;
    match (v.get("vcpus"), v.get("memory")) {
        (Some(n), None) => n
            .as_u64()
            .map(|n| (Resource::Vcpus, n))
            .ok_or_else(|| "vcpus: expected a number".into()),
        (None, Some(Value::String(s))) => guest_hints::size::parse_size(s)
            .map(|b| (Resource::Memory, b))
            .map_err(|e| format!("memory: {e}")),
        (None, Some(n)) => n
            .as_u64()
            .map(|b| (Resource::Memory, b))
            .ok_or_else(|| "memory: expected a size such as \"768M\" or bytes".into()),
        _ => Err("give exactly one of \"vcpus\" and \"memory\"".into()),
    }
}

/// Answers one request.
pub fn route(state: &ApiState, req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/status") => {
            let mut v = lock(&state.controller).status();
            v["hint_counters"] =
                serde_json::from_str(&state.counters.snapshot().to_json()).unwrap_or_default();
            Response::json(200, &v)
        }
        ("GET", "/decisions") => Response::json(
            200,
            &Value::Array(lock(&state.controller).recent_decisions()),
        ),
        ("GET", "/metrics") => Response(
            200,
            "text/plain; version=0.0.4",
            metrics(&lock(&state.controller), &state.counters),
        ),
        ("PUT", "/resize") => match parse_resize(&req.body) {
            Ok((r, to)) => Response::json(200, &lock(&state.controller).manual_resize(r, to)),
            Err(e) => Response::error(400, e),
        },
        ("PUT", "/policy/reload") => {
            let path = serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|v| v.get("path")?.as_str().map(PathBuf::from));
            match lock(&state.controller).reload_policy(path) {
                Ok(v) => Response::json(200, &v),
                Err(e) => Response::error(400, e),
            }
        }
        (_, "/status" | "/decisions" | "/metrics" | "/resize" | "/policy/reload") => {
            Response::error(405, format!("{} is not allowed here", req.method))
        }
        _ => Response::error(404, format!("no such endpoint: {}", req.path)),
    }
}

/// Prometheus text exposition of allocations, memory and hint counters.
pub fn metrics(c: &Controller, counters: &Counters) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    let allocs = lock(c.engine()).allocations();
    for a in &allocs {
        let (unit, what) = match a.resource {
            Resource::Vcpus => ("", "vCPUs"),
            Resource::Memory => ("_bytes", "guest memory"),
        };
        let r = a.resource.as_str();
        gauge(
            &format!("perfvmm_{r}_allocated{unit}"),
            &format!("{what} the policy allocates"),
            a.allocated,
        );
        gauge(
            &format!("perfvmm_{r}_wanted{unit}"),
            &format!("{what} the hints ask for (0: no hint)"),
            a.wanted.unwrap_or(0),
        );
    }
    let m = c.memory().status();
    gauge(
        "perfvmm_guest_memory_bytes",
        "memory the guest has: boot size - balloon + virtio-mem plugged",
        m.guest_bytes,
    );
    gauge(
        "perfvmm_balloon_actual_bytes",
        "memory the guest has given to the balloon",
        m.balloon_actual_bytes,
    );
    gauge(
        "perfvmm_virtio_mem_plugged_bytes",
        "memory plugged through virtio-mem",
        m.virtio_mem_plugged_bytes,
    );
    if let Some(s) = &m.guest_stats {
        if let Some(v) = s.available_memory {
            gauge(
                "perfvmm_guest_available_bytes",
                "memory the guest reports available",
                v,
            );
        }
        if let Some(v) = s.total_memory {
            gauge(
                "perfvmm_guest_total_bytes",
                "memory the guest reports in total",
                v,
            );
        }
    }
    let counts = c.counts();
    let _ = writeln!(
        out,
        "# HELP perfvmm_decisions_total policy decisions, by resource and result\n\
         # TYPE perfvmm_decisions_total counter"
    );
    for r in Resource::ALL {
        let i = r as usize;
        let _ = writeln!(
            out,
            "perfvmm_decisions_total{{resource=\"{}\",result=\"applied\"}} {}\n\
             perfvmm_decisions_total{{resource=\"{}\",result=\"refused\"}} {}",
            r.as_str(),
            counts.applied[i],
            r.as_str(),
            counts.refused[i]
        );
    }
    let s = counters.snapshot();
    let _ = writeln!(
        out,
        "# HELP perfvmm_hints_total hints received, by outcome\n# TYPE perfvmm_hints_total counter"
    );
    for (outcome, v) in [
        ("accepted", s.accepted),
        ("clamped", s.clamped),
        ("rate_limited", s.rate_limited),
        ("rejected", s.rejected),
    ] {
        let _ = writeln!(out, "perfvmm_hints_total{{outcome=\"{outcome}\"}} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP perfvmm_hint_messages_dropped_total malformed messages dropped, by reason\n\
         # TYPE perfvmm_hint_messages_dropped_total counter"
    );
    for r in DropReason::ALL {
        let _ = writeln!(
            out,
            "perfvmm_hint_messages_dropped_total{{reason=\"{}\"}} {}",
            r.as_str(),
            s.dropped(r)
        );
    }
    out
}

fn serve(state: &ApiState, stream: UnixStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let response = match read_request(&mut reader) {
        Ok(req) => {
            log::debug!("api: {} {}", req.method, req.path);
            route(state, &req)
        }
        Err(e) => Response::error(400, e),
    };
    let mut w = stream;
    response.write_to(&mut w)?;
    w.flush()
}

/// Serves the API on a thread of its own until the process ends.
pub fn spawn(
    listener: UnixListener,
    controller: Arc<Mutex<Controller>>,
    counters: Arc<Counters>,
) -> io::Result<()> {
    let state = ApiState {
        controller,
        counters,
    };
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(e) = serve(&state, s) {
                            log::debug!("api: {e}");
                        }
                    }
                    Err(e) => log::warn!("api: accept: {e}"),
                }
            }
        })?;
    Ok(())
}

/// The client side (`perfvmm ctl`): sends one request, returns the status
/// code and body.
pub fn call(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> io::Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: perfvmm\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other("malformed response"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other("malformed status line"))?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Request, String> {
        read_request(&mut io::Cursor::new(text.as_bytes().to_vec()))
    }

    #[test]
    fn requests_and_limits() {
        let r = parse("PUT /resize HTTP/1.1\r\nContent-Length: 11\r\n\r\n{\"vcpus\":3}").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", "/resize"));
        assert_eq!(parse_resize(&r.body), Ok((Resource::Vcpus, 3)));
        assert!(parse("GET\r\n\r\n").is_err());
        assert!(
            parse("GET /status HTTP/1.1\r\n").is_err(),
            "unterminated head"
        );
        let big = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(parse(&big).unwrap_err().contains("longer"));
        let e = parse("PUT /resize HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").unwrap_err();
        assert!(e.contains("body longer"), "{e}");
        assert!(parse("PUT /resize HTTP/1.1\r\nContent-Length: 5\r\n\r\nab").is_err());
    }

    #[test]
    fn resize_bodies() {
        assert_eq!(
            parse_resize(br#"{"memory":"768M"}"#),
            Ok((Resource::Memory, 768 << 20))
        );
        assert_eq!(
            parse_resize(br#"{"memory":1048576}"#),
            Ok((Resource::Memory, 1 << 20))
        );
        assert!(parse_resize(br#"{"memory":"12XB"}"#).is_err());
        assert!(parse_resize(br#"{"vcpus":-1}"#).is_err());
        assert!(parse_resize(br#"{"vcpus":2,"memory":"1G"}"#).is_err());
        assert!(parse_resize(b"not json").is_err());
    }

    #[test]
    fn bind_replaces_a_stale_socket_but_not_a_live_one_or_a_file() {
        let dir = std::env::temp_dir().join(format!("perfvmm-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("s");
        let live = bind(&sock).unwrap();
        assert_eq!(bind(&sock).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        drop(live);
        let again = bind(&sock).expect("stale socket replaced");
        drop(again);
        let file = dir.join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(bind(&file).is_err());
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"x",
            "a file is never removed"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
