//! The metrics endpoint's HTTP: which answer a request head gets, parsed by `httparse`, and
//! the listen address. Pure: the endpoint worker (`dbconn_guard::endpoint`) does the I/O.

use std::net::SocketAddr;

/// The largest request head accepted (a scrape sends a few hundred bytes).
pub const MAX_REQUEST: usize = 8192;

/// Parses `host:port` with an IP address (no name lookup: a DNS wait must not stall the
/// worker): `127.0.0.1:9187`, `[::1]:9187`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse::<SocketAddr>().map_err(|_| {
        format!(
            "{:?} is not an address and port: give an IP address and a port, as in '127.0.0.1:9187' or '[::1]:9187'",
            s
        )
    })
}

/// What a request gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Health,
    NotFound,
    MethodNotAllowed,
    BadRequest,
    TooLarge,
}

/// Routes a complete request head, or says what is wrong with it; `None` while incomplete.
pub fn route(buf: &[u8]) -> Option<Route> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("");
            let path = path.split('?').next().unwrap_or("");
            Some(match (req.method, path) {
                (Some("GET"), "/metrics") => Route::Metrics,
                (Some("GET"), "/healthz") => Route::Health,
                (Some("GET"), _) => Route::NotFound,
                _ => Route::MethodNotAllowed,
            })
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_REQUEST => Some(Route::TooLarge),
        Ok(httparse::Status::Partial) => None,
        Err(httparse::Error::TooManyHeaders) => Some(Route::TooLarge),
        Err(_) => Some(Route::BadRequest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_or_refused() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(
            route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(route(b"GET /healthz HTTP/1.1\r\n\r\n"), Some(Route::Health));
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::MethodNotAllowed)
        );
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost"), None);
        assert_eq!(
            route(b"\x16\x03\x01\x02\x00 garbage\r\n\r\n"),
            Some(Route::BadRequest)
        );
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while big.len() < MAX_REQUEST {
            big.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(route(&big), Some(Route::TooLarge));
    }

    #[test]
    fn listen_addresses() {
        assert!(parse_listen("127.0.0.1:9187").is_ok());
        assert!(parse_listen("[::1]:9187").is_ok());
        let e = parse_listen("localhost:9187").unwrap_err();
        assert!(e.contains("127.0.0.1:9187"), "{e}");
        assert!(parse_listen("127.0.0.1").is_err());
        assert!(parse_listen("127.0.0.1:99999").is_err());
    }
}
