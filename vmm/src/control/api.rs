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
//! | PUT    | /snapshot        | `{"name": "s1"}`, `"stop": true` ends the VM after |
//! | PUT    | /migrate         | `{"to": "unix:PATH"}` or `"tcp:IP:PORT"`, `"downtime_ms": 300` |
//!
//! The socket, its access rules and the connection threads are in
//! [`super::api_server`]; this module answers requests.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use virtio_perf_device::Counters;

use super::http::{Request, Response};
use super::snapshot::{Endpoint, RequestError, SnapshotRequests};
use super::{metrics, Controller, ReloadError};
use crate::devices::bus::lock;
use crate::policy::{Policy, Resource};

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

/// What the API serves from.
pub struct ApiState {
    pub controller: Arc<Mutex<Controller>>,
    pub counters: Arc<Counters>,
    pub snapshots: SnapshotRequests,
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

/// `PUT /policy/reload`: the file is resolved and read without holding the
/// controller, so a slow file never stalls the VM's event loop.
fn reload(state: &ApiState, req: &Request) -> Response {
    let path = serde_json::from_slice::<Value>(&req.body)
        .ok()
        .and_then(|v| v.get("path")?.as_str().map(PathBuf::from));
    let scope = lock(&state.controller).reload_scope().clone();
    let loaded = scope
        .resolve(path.as_deref())
        .and_then(|p| Ok((Policy::load(&p)?, p)));
    match loaded {
        Ok((policy, p)) => Response::json(200, &lock(&state.controller).put_policy(p, policy)),
        Err(e @ ReloadError::NotAllowed) => Response::error(403, e),
        Err(e) => Response::error(400, e),
    }
}

/// `PUT /snapshot`: taken by the main thread; this thread waits for it
/// without holding anything the VM needs.
fn snapshot(state: &ApiState, req: &Request) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        name: String,
        #[serde(default)]
        stop: bool,
    }
    let body: Body = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return Response::error(400, format!("body: {e}")),
    };
    match state.snapshots.request(&body.name, body.stop) {
        Ok(report) => Response::json(200, &serde_json::to_value(report).unwrap_or_default()),
        Err(e @ (RequestError::Disabled | RequestError::BadName)) => Response::error(400, e),
        Err(e) => Response::error(500, e),
    }
}

/// `PUT /migrate`: carried out by the main thread; this thread waits for
/// its end.
fn migrate(state: &ApiState, req: &Request) -> Response {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        to: String,
        #[serde(default = "default_downtime")]
        downtime_ms: u64,
    }
    fn default_downtime() -> u64 {
        300
    }
    let body: Body = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return Response::error(400, format!("body: {e}")),
    };
    let to: Endpoint = match body.to.parse() {
        Ok(t) => t,
        Err(e) => return Response::error(400, format!("to: {e}")),
    };
    let downtime = std::time::Duration::from_millis(body.downtime_ms);
    match state.snapshots.migrate(to, downtime) {
        Ok(report) => Response::json(200, &serde_json::to_value(report).unwrap_or_default()),
        Err(e @ (RequestError::MigrationDisabled | RequestError::BadDowntime)) => {
            Response::error(400, e)
        }
        Err(e) => Response::error(500, e),
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
        ("PUT", "/policy/reload") => reload(state, req),
        ("PUT", "/snapshot") => snapshot(state, req),
        ("PUT", "/migrate") => migrate(state, req),
        (
            _,
            "/status" | "/decisions" | "/metrics" | "/resize" | "/policy/reload" | "/snapshot"
            | "/migrate",
        ) => Response::error(405, format!("{} is not allowed here", req.method)),
        _ => Response::error(404, format!("no such endpoint: {}", req.path)),
    }
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
}
