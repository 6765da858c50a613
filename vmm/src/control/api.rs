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

use std::io::{self, BufReader, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use virtio_perf_device::Counters;

use super::http::{read_request, Request, Response};
use super::{metrics, Controller};
use crate::devices::bus::lock;
use crate::policy::Resource;

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A `PUT /resize` body that could not be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ResizeBodyError {
    #[error("body: {0}")]
    Json(String),
    #[error("vcpus: expected a number")]
    Vcpus,
    #[error("memory: {0}")]
    MemorySize(String),
    #[error("memory: expected a size such as \"768M\" or bytes")]
    Memory,
    #[error("give exactly one of \"vcpus\" and \"memory\"")]
    Which,
}

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

/// What the API serves from.
pub struct ApiState {
    pub controller: Arc<Mutex<Controller>>,
    pub counters: Arc<Counters>,
}

/// Parses a resize body: `{"vcpus": N}` or `{"memory": "SIZE" | bytes}`.
pub fn parse_resize(body: &[u8]) -> Result<(Resource, u64), ResizeBodyError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ResizeBodyError::Json(e.to_string()))?;
    match (v.get("vcpus"), v.get("memory")) {
        (Some(n), None) => n
            .as_u64()
            .map(|n| (Resource::Vcpus, n))
            .ok_or(ResizeBodyError::Vcpus),
        (None, Some(Value::String(s))) => guest_hints::size::parse_size(s)
            .map(|b| (Resource::Memory, b))
            .map_err(|e| ResizeBodyError::MemorySize(e.to_string())),
        (None, Some(n)) => n
            .as_u64()
            .map(|b| (Resource::Memory, b))
            .ok_or(ResizeBodyError::Memory),
        _ => Err(ResizeBodyError::Which),
    }
}

/// Answers one request.
pub fn route(state: &ApiState, req: &Request) -> Response {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/status") => {
            let mut v = lock(&state.controller).status();
            v["hint_counters"] =
                serde_json::to_value(state.counters.snapshot()).unwrap_or_default();
            Response::json(200, &v)
        }
        ("GET", "/decisions") => Response::json(
            200,
            &Value::Array(lock(&state.controller).recent_decisions()),
        ),
        ("GET", "/metrics") => Response(
            200,
            "text/plain; version=0.0.4",
            metrics::render(&lock(&state.controller), &state.counters),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_bodies() {
        assert_eq!(parse_resize(br#"{"vcpus":3}"#), Ok((Resource::Vcpus, 3)));
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
