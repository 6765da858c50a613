//! Where a VM migrates to, and where `perfvmm --incoming` waits for one:
//! parsed once here, for the command line, the API and the policy's
//! `[migration]` alike.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Where a VM migrates to, and where `perfvmm --incoming` waits for one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    /// A numeric address: perfvmm resolves no names.
    Tcp(SocketAddr),
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const USAGE: &str = "give unix:PATH or tcp:IP:PORT";
        match s.split_once(':') {
            Some(("unix", p)) if !p.is_empty() && !p.contains('\0') => Ok(Endpoint::Unix(p.into())),
            Some(("tcp", a)) => a
                .parse()
                .map(Endpoint::Tcp)
                .map_err(|_| format!("{a:?} is not IP:PORT; {USAGE}")),
            _ => Err(format!("{s:?}: {USAGE}")),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_unix_paths_or_numeric_tcp_addresses() {
        assert_eq!(
            "unix:/run/m.sock".parse::<Endpoint>(),
            Ok(Endpoint::Unix("/run/m.sock".into()))
        );
        let tcp: Endpoint = "tcp:127.0.0.1:4444".parse().unwrap();
        assert_eq!(tcp.to_string(), "tcp:127.0.0.1:4444");
        for bad in [
            "",
            "unix:",
            "tcp:host:1",
            "tcp:1.2.3.4",
            "udp:1.2.3.4:5",
            "/path",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }
}
