//! HTTP/1.1 framing for the control API: reading one request within size
//! limits, writing one response, and the client `perfvmm ctl` uses.

use std::io::{self, BufRead, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

/// Longest request head the server reads.
pub const MAX_HEAD: usize = 8 * 1024;
/// Longest request body the server reads.
pub const MAX_BODY: usize = 64 * 1024;

/// A request that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("reading the request: {0}")]
    Read(io::Error),
    #[error("connection closed before the request ended")]
    Closed,
    #[error("request head longer than {MAX_HEAD} bytes")]
    HeadTooLong,
    #[error("request head is not UTF-8")]
    NotUtf8,
    #[error("malformed request line")]
    RequestLine,
    #[error("bad Content-Length")]
    ContentLength,
    #[error("body longer than {MAX_BODY} bytes")]
    BodyTooLong,
}

/// A parsed request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Reads one HTTP/1.x request, within the size limits.
pub fn read_request(r: &mut impl BufRead) -> Result<Request, HttpError> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r
            .take((MAX_HEAD - head.len().min(MAX_HEAD)) as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(HttpError::Read)?;
        if n == 0 {
            return Err(HttpError::Closed);
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(HttpError::HeadTooLong);
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let text = String::from_utf8(head).map_err(|_| HttpError::NotUtf8)?;
    let mut lines = text.lines();
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let (Some(method), Some(path)) = (first.next(), first.next()) else {
        return Err(HttpError::RequestLine);
    };
    let mut len = 0usize;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().map_err(|_| HttpError::ContentLength)?;
            }
        }
    }
    if len > MAX_BODY {
        return Err(HttpError::BodyTooLong);
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).map_err(HttpError::Read)?;
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
        body,
    })
}

/// A response: status code, content type, body.
pub struct Response(pub u16, pub &'static str, pub String);

impl Response {
    pub fn json(code: u16, v: &Value) -> Self {
        Response(code, "application/json", format!("{v:#}\n"))
    }

    pub fn error(code: u16, msg: impl std::fmt::Display) -> Self {
        Self::json(code, &json!({ "error": msg.to_string() }))
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let reason = match self.0 {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            503 => "Service Unavailable",
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

    fn parse(text: &str) -> Result<Request, HttpError> {
        read_request(&mut io::Cursor::new(text.as_bytes().to_vec()))
    }

    #[test]
    fn requests_and_limits() {
        let r = parse("PUT /resize HTTP/1.1\r\nContent-Length: 11\r\n\r\n{\"vcpus\":3}").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", "/resize"));
        assert_eq!(r.body, b"{\"vcpus\":3}");
        assert!(parse("GET\r\n\r\n").is_err());
        assert!(
            parse("GET /status HTTP/1.1\r\n").is_err(),
            "unterminated head"
        );
        let big = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(parse(&big).unwrap_err().to_string().contains("longer"));
        let e = parse("PUT /resize HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").unwrap_err();
        assert!(e.to_string().contains("body longer"), "{e}");
        assert!(parse("PUT /resize HTTP/1.1\r\nContent-Length: 5\r\n\r\nab").is_err());
    }
}
