//! Just enough HTTP/1.x for the metrics port: parse one request head, write one response.
//!
//! Owns: check-then-parse of a request line and headers from bytes a connection has read,
//! and the bytes of a response. The metrics port serves `GET /metrics`, `/livez` and
//! `/readyz`: one request per connection, answered with `Connection: close`, which every
//! Prometheus scraper and health checker accepts. Written by hand (about a hundred lines)
//! rather than with `httparse` because the subset is this small and the limits below are
//! easier to state here than to wrap around a general parser.
//!
//! Must not: block, allocate before the whole head is present and within
//! `HTTP_HEAD_SIZE_MAX`, or panic on any input.
//!
//! A head is the bytes up to and including the first `\r\n\r\n` (a bare `\n\n` is accepted
//! too). Its first line is `METHOD SP TARGET SP HTTP/1.0|HTTP/1.1`; header lines are ignored
//! but counted (`HTTP_HEADERS_MAX`). A request body is never read: the methods served have none.

/// Largest request head, in bytes.
pub const HTTP_HEAD_SIZE_MAX: usize = 8 * 1024;

/// Most header lines in one request head.
pub const HTTP_HEADERS_MAX: usize = 64;

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path, without a query string.
    pub path: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    /// Any other token: answered 405.
    Other,
}

/// Why a head was refused; each maps to a status code.
#[derive(Debug, PartialEq, Eq)]
pub enum ParseError {
    /// No blank line within `HTTP_HEAD_SIZE_MAX` bytes (431).
    HeadTooLarge,
    /// More than `HTTP_HEADERS_MAX` header lines (431).
    TooManyHeaders,
    /// Not `METHOD SP TARGET SP HTTP/1.x` (400), with what was wrong.
    Malformed(&'static str),
}

impl ParseError {
    pub fn status(&self) -> u16 {
        match self {
            ParseError::HeadTooLarge | ParseError::TooManyHeaders => 431,
            ParseError::Malformed(_) => 400,
        }
    }
}

/// `Ok(None)`: the head is not complete yet (read more). `Ok(Some((req, n)))`: a request whose
/// head took `n` bytes.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, ParseError> {
    let window = &buf[..buf.len().min(HTTP_HEAD_SIZE_MAX)];
    let Some(end) = head_end(window) else {
        if buf.len() >= HTTP_HEAD_SIZE_MAX {
            return Err(ParseError::HeadTooLarge);
        }
        return Ok(None);
    };
    let head = &window[..end];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty());
    let first = lines.next().ok_or(ParseError::Malformed("empty request"))?;
    if lines.count() > HTTP_HEADERS_MAX {
        return Err(ParseError::TooManyHeaders);
    }
    let mut parts = first.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Malformed(
            "request line is not METHOD TARGET VERSION",
        ));
    };
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(ParseError::Malformed("version is not HTTP/1.0 or HTTP/1.1"));
    }
    if !target.starts_with(b"/") || !target.iter().all(|b| b.is_ascii_graphic()) {
        return Err(ParseError::Malformed("target is not an absolute path"));
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    let method = match method {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        m if !m.is_empty() && m.iter().all(|b| b.is_ascii_uppercase()) => Method::Other,
        _ => return Err(ParseError::Malformed("method is not a token")),
    };
    let path = String::from_utf8_lossy(path).into_owned();
    Ok(Some((Request { method, path }, end)))
}

/// The length of the head (through its blank line), if it is all in `b`.
fn head_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' {
            if b.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if b.get(i + 1) == Some(&b'\r') && b.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// A whole response with `Connection: close`. `body` is omitted (but its length still sent)
/// when `head_only`, as HEAD requires.
pub fn response(status: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_request_parses_with_its_query_dropped() {
        let req = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\nleftover";
        let (r, n) = parse_request(req).unwrap().unwrap();
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/metrics");
        assert_eq!(&req[n..], b"leftover");
    }

    #[test]
    fn every_prefix_of_a_head_is_incomplete() {
        let req = b"HEAD /livez HTTP/1.0\r\nUser-Agent: curl\r\n\r\n";
        for cut in 0..req.len() {
            assert_eq!(parse_request(&req[..cut]), Ok(None), "cut at {cut}");
        }
        let (r, n) = parse_request(req).unwrap().unwrap();
        assert_eq!((r.method, n), (Method::Head, req.len()));
    }

    #[test]
    fn bad_heads_are_refused_with_a_reason() {
        for (req, status) in [
            (&b"GET /metrics\r\n\r\n"[..], 400),
            (b"GET metrics HTTP/1.1\r\n\r\n", 400),
            (b"GET /metrics HTTP/2\r\n\r\n", 400),
            (b"get /metrics HTTP/1.1\r\n\r\n", 400),
            (b"GET /a b HTTP/1.1\r\n\r\n", 400),
            (b"\r\n\r\n", 400),
        ] {
            let err = parse_request(req).unwrap_err();
            assert_eq!(err.status(), status, "{:?}", String::from_utf8_lossy(req));
        }
        let (r, _) = parse_request(b"POST /metrics HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(r.method, Method::Other);
    }

    #[test]
    fn heads_past_the_limits_are_refused_before_they_grow() {
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        big.resize(HTTP_HEAD_SIZE_MAX, b'a');
        assert_eq!(parse_request(&big), Err(ParseError::HeadTooLarge));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..=HTTP_HEADERS_MAX {
            many.extend_from_slice(b"X: y\r\n");
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&many), Err(ParseError::TooManyHeaders));
        // Random bytes never panic.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let len = (x % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let alphabet = b"GET /\r\n HTP1.";
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = parse_request(&bytes);
        }
    }

    #[test]
    fn a_response_states_its_length_and_closes() {
        let r = response(503, "text/plain", b"no leader", false);
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("Content-Length: 9\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nno leader"));
        let head = response(200, "text/plain", b"ok", true);
        assert!(String::from_utf8(head)
            .unwrap()
            .ends_with("Content-Length: 2\r\nConnection: close\r\n\r\n"));
    }
}
