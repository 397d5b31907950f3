//! The admin API over HTTP/1.1 without Nginx: what a worker's API threads (`shift_api
//! threads=N`) speak on a connection they accepted. One request per connection, answered with
//! `Connection: close`: a thread serves one connection at a time, and a client that kept one open
//! between requests would hold a thread. What is read is what the API needs (the request line,
//! `Content-Length`, `Expect`, a body of at most `MAX_BODY_BYTES`); anything else is refused
//! with the status Nginx would give, as the API's JSON error.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use shift_wire::MAX_BODY_BYTES;

use super::{Failure, Reply};

/// The most bytes a request's line and headers may take (Nginx's `large_client_header_buffers`
/// default buffer).
pub const MAX_HEAD_BYTES: usize = 8192;

/// The most header lines read.
const MAX_HEADERS: usize = 64;

/// How long each part of an exchange may take: the whole head (`client_header_timeout`), the
/// whole body (`client_body_timeout`), and each write of the answer (`send_timeout`).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub head: Duration,
    pub body: Duration,
    pub send: Duration,
}

/// A request as the API reads it: `path` is decoded and relative to the API's prefix.
#[derive(Debug)]
pub struct RequestLine<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub args: &'a str,
}

/// How an exchange ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Exchange {
    /// An answer with this status was written.
    Answered(u16),
    /// The client closed, or took longer than its timeout, before a whole request came; nothing
    /// was answered (as Nginx closes such a connection).
    Abandoned,
}

/// Serves one request on `stream`: reads it, calls `answer` with it and its body unless it is
/// refused first, writes the reply, and closes the writing side.
pub fn serve(
    stream: &UnixStream,
    prefix: &str,
    timeouts: &Timeouts,
    answer: impl FnOnce(&RequestLine, &[u8]) -> Reply,
) -> io::Result<Exchange> {
    let mut buffer = Vec::with_capacity(1024);
    let head_deadline = Instant::now() + timeouts.head;
    let head = loop {
        match parse_head(&buffer) {
            Ok(Some(head)) => break head,
            Ok(None) if buffer.len() >= MAX_HEAD_BYTES => {
                let refusal = Failure::new(
                    400,
                    "bad_request",
                    format!("the request line and headers are over {MAX_HEAD_BYTES} bytes"),
                );
                return reply_and_close(stream, timeouts, &refusal.into_reply(), false, true);
            }
            Ok(None) => {
                if !read_more(stream, &mut buffer, head_deadline, MAX_HEAD_BYTES)? {
                    return Ok(Exchange::Abandoned);
                }
            }
            Err(refusal) => {
                return reply_and_close(stream, timeouts, &refusal.into_reply(), false, true)
            }
        }
    };
    let head_only = head.method == "HEAD";
    // A refusal leaves the body, or whatever else was sent, unread.
    let unread = buffer.len() > head.length || head.content_length > 0 || head.chunked;
    let refuse = |failure: Failure| {
        reply_and_close(stream, timeouts, &failure.into_reply(), head_only, unread)
    };
    let Some(relative) = head.path.strip_prefix(prefix) else {
        return refuse(Failure::new(
            404,
            "not_found",
            format!(
                "nothing at \"{}\": this socket serves the shift API under \"{prefix}\"",
                head.path
            ),
        ));
    };
    if head.chunked {
        return refuse(Failure::new(
            411,
            "length_required",
            "send the body with a Content-Length (chunked bodies are not read)",
        ));
    }
    if head.content_length > MAX_BODY_BYTES {
        return refuse(super::too_large());
    }
    let mut body = buffer.split_off(head.length);
    if body.len() < head.content_length && head.expects_continue {
        let deadline = Instant::now() + timeouts.send;
        write_all(stream, b"HTTP/1.1 100 Continue\r\n\r\n", deadline)?;
    }
    let body_deadline = Instant::now() + timeouts.body;
    while body.len() < head.content_length {
        if !read_more(stream, &mut body, body_deadline, head.content_length)? {
            return Ok(Exchange::Abandoned);
        }
    }
    // Bytes past the body would be a second request: one is served per connection.
    let unread = body.len() > head.content_length;
    body.truncate(head.content_length);
    let line = RequestLine {
        method: &head.method,
        path: relative,
        args: &head.args,
    };
    let reply = answer(&line, &body);
    reply_and_close(stream, timeouts, &reply, head_only, unread)
}

/// Answers `reply` at once, before the request is read (a caller refused whatever it asks),
/// and drops what it already sent, so that the answer is not lost to a reset. No lingering:
/// a caller refused cannot hold the connection.
pub fn refuse_unread(
    stream: &UnixStream,
    timeouts: &Timeouts,
    reply: &Reply,
) -> io::Result<Exchange> {
    let answered = reply_and_close(stream, timeouts, reply, false, false)?;
    stream.set_nonblocking(true)?;
    let mut dropped = [0u8; 4096];
    for _ in 0..16 {
        match (&*stream).read(&mut dropped) {
            Ok(count) if count > 0 => {}
            _ => break,
        }
    }
    Ok(answered)
}

/// A request head as far as the API reads it.
#[derive(Debug)]
struct Head {
    /// Its length in bytes, up to the blank line.
    length: usize,
    method: String,
    path: String,
    args: String,
    content_length: usize,
    chunked: bool,
    expects_continue: bool,
}

/// The head at the start of `bytes`, `None` while it is incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<Head>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let length = match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(bad_request(format!("the request is not HTTP/1.x: {error}"))),
    };
    let (Some(method), Some(target)) = (request.method, request.path) else {
        return Err(bad_request("the request has no method or target".into()));
    };
    let (path, args) = target.split_once('?').unwrap_or((target, ""));
    if !path.starts_with('/') {
        return Err(bad_request(format!(
            "the target \"{target}\" is not a path"
        )));
    }
    let path = percent_decode(path)
        .ok_or_else(|| bad_request(format!("the path \"{path}\" has a bad %-escape")))?;
    let mut head = Head {
        length,
        method: method.to_string(),
        path,
        args: args.to_string(),
        content_length: 0,
        chunked: false,
        expects_continue: false,
    };
    let mut lengths = request
        .headers
        .iter()
        .filter(|header| header.name.eq_ignore_ascii_case("content-length"));
    if let Some(header) = lengths.next() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        let digits = !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit());
        head.content_length = match value.parse::<usize>() {
            Ok(length) if digits && lengths.next().is_none() => length,
            _ => {
                return Err(bad_request(
                    "one Content-Length, a number, is expected".into(),
                ))
            }
        };
    }
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        }
        if header.name.eq_ignore_ascii_case("expect")
            && header.value.eq_ignore_ascii_case(b"100-continue")
        {
            head.expects_continue = true;
        }
    }
    Ok(Some(head))
}

fn bad_request(detail: String) -> Failure {
    Failure::new(400, "bad_request", detail)
}

/// `path` with its `%XX` escapes decoded, as Nginx decodes a request's URI; `None` for a bad
/// escape or bytes that are not UTF-8.
fn percent_decode(path: &str) -> Option<String> {
    if !path.contains('%') {
        return Some(path.to_string());
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = bytes.get(at + 1..at + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            decoded.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

/// Reads what is there into `buffer`, up to `limit` bytes in all, before `deadline`; `false`
/// when the client closed or the deadline passed.
fn read_more(
    stream: &UnixStream,
    buffer: &mut Vec<u8>,
    deadline: Instant,
    limit: usize,
) -> io::Result<bool> {
    let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
    else {
        return Ok(false);
    };
    stream.set_read_timeout(Some(left))?;
    let start = buffer.len();
    buffer.resize(limit.max(start + 1), 0);
    let read = (&*stream).read(&mut buffer[start..]);
    match read {
        Ok(0) => {
            buffer.truncate(start);
            Ok(false)
        }
        Ok(count) => {
            buffer.truncate(start + count);
            Ok(true)
        }
        Err(error) => {
            buffer.truncate(start);
            match error.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Ok(false),
                io::ErrorKind::Interrupted => Ok(true),
                _ => Err(error),
            }
        }
    }
}

/// Writes `reply` (its head only for HEAD), then closes the writing side. With `unread` bytes
/// left, reads and drops what else comes for a while, as Nginx's lingering close does: a Unix
/// socket closed with unread data makes the client's next read fail with `ECONNRESET`, and it
/// could lose the answer.
fn reply_and_close(
    stream: &UnixStream,
    timeouts: &Timeouts,
    reply: &Reply,
    head_only: bool,
    unread: bool,
) -> io::Result<Exchange> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        reply.status,
        reason(reply.status),
        reply.content_type,
        reply.body.len()
    );
    if let Some(allow) = reply.allow {
        head.push_str(&format!("Allow: {allow}\r\n"));
    }
    for (name, value) in reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    let body = if head_only { "" } else { reply.body.as_str() };
    // The whole answer within `send_timeout`: a client that reads it slowly cannot hold the
    // thread for longer.
    let deadline = Instant::now() + timeouts.send;
    if body.len() <= ONE_WRITE_BYTES {
        // One write for the head and the body: the client wakes once for the whole answer.
        let mut answer = head.into_bytes();
        answer.extend_from_slice(body.as_bytes());
        write_all(stream, &answer, deadline)?;
    } else {
        write_all(stream, head.as_bytes(), deadline)?;
        write_all(stream, body.as_bytes(), deadline)?;
    }
    // The client may be gone already; the answer is written either way.
    let _ = stream.shutdown(Shutdown::Write);
    if unread {
        linger(stream);
    }
    Ok(Exchange::Answered(reply.status))
}

/// The largest body copied after its head to be written with it (a listing is written apart).
const ONE_WRITE_BYTES: usize = 64 * 1024;

/// How long, and how many bytes, a lingering close reads at most.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Reads and drops what the client still sends, until it closes or `LINGER` passes.
fn linger(stream: &UnixStream) {
    let deadline = Instant::now() + LINGER;
    let mut dropped = Vec::new();
    let mut total = 0;
    while total < LINGER_BYTES {
        dropped.clear();
        match read_more(stream, &mut dropped, deadline, 64 * 1024) {
            Ok(true) => total += dropped.len(),
            _ => return,
        }
    }
}

/// Writes all of `bytes` before `deadline`.
fn write_all(stream: &UnixStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))?;
        stream.set_write_timeout(Some(left))?;
        match (&*stream).write(bytes) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(written) => bytes = &bytes[written..],
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// The reason phrase of the statuses the API answers with.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Request Entity Too Large",
        422 => "Unprocessable Entity",
        500 => "Internal Server Error",
        503 => "Service Temporarily Unavailable",
        507 => "Insufficient Storage",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUTS: Timeouts = Timeouts {
        head: Duration::from_secs(5),
        body: Duration::from_secs(5),
        send: Duration::from_secs(5),
    };

    /// Serves `request` on one end of a socket pair, with an answer that echoes what it was
    /// given; returns what the client read and what `serve` returned.
    fn exchange(request: &[u8]) -> (String, Exchange, Option<String>) {
        let (server, mut client) = UnixStream::pair().unwrap();
        client.write_all(request).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut seen = None;
        let outcome = serve(&server, "/api/", &TIMEOUTS, |line, body| {
            seen = Some(format!(
                "{} {} {} {}",
                line.method,
                line.path,
                line.args,
                String::from_utf8_lossy(body)
            ));
            Reply {
                status: 200,
                content_type: "application/json",
                body: "{}\n".into(),
                allow: None,
                headers: &[],
            }
        })
        .unwrap();
        drop(server);
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        (answer, outcome, seen)
    }

    #[test]
    fn a_patch_is_read_with_its_body_and_answered_once() {
        let (answer, outcome, seen) = exchange(
            b"PATCH /api/upstreams/app?full=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{\"peers\":{}}\nEXTRA",
        );
        assert_eq!(outcome, Exchange::Answered(200));
        assert_eq!(
            seen.as_deref(),
            Some("PATCH upstreams/app full=1 {\"peers\":{}}\n")
        );
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("Content-Length: 3\r\n"), "{answer}");
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n{}\n"), "{answer}");
    }

    #[test]
    fn a_path_outside_the_prefix_is_404_and_never_answered_by_the_api() {
        let (answer, outcome, seen) = exchange(b"GET /other HTTP/1.1\r\n\r\n");
        assert_eq!(outcome, Exchange::Answered(404));
        assert!(seen.is_none());
        assert!(
            answer.contains("this socket serves the shift API under \\\"/api/\\\""),
            "{answer}"
        );
    }

    #[test]
    fn escapes_in_the_path_are_decoded_and_bad_ones_refused() {
        let (_, _, seen) =
            exchange(b"GET /api/upstreams/app/peers/%5B%3A%3A1%5D%3A80 HTTP/1.1\r\n\r\n");
        assert_eq!(seen.as_deref(), Some("GET upstreams/app/peers/[::1]:80  "));
        let (answer, outcome, seen) = exchange(b"GET /api/up%4 HTTP/1.1\r\n\r\n");
        assert_eq!(outcome, Exchange::Answered(400));
        assert!(seen.is_none());
        assert!(answer.contains("bad %-escape"), "{answer}");
    }

    #[test]
    fn chunked_too_large_and_malformed_requests_are_refused_before_the_api() {
        for (request, status) in [
            (
                &b"POST /api/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                411,
            ),
            (
                b"PATCH /api/x HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
                413,
            ),
            (
                b"PATCH /api/x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"PATCH /api/x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (b"PATCH /api/x HTTP/1.1\r\nContent-Length: +1\r\n\r\n", 400),
            (b"GET /api/%+f HTTP/1.1\r\n\r\n", 400),
            (b"NOT HTTP\r\n\r\n", 400),
        ] {
            let (answer, outcome, seen) = exchange(request);
            assert_eq!(outcome, Exchange::Answered(status), "{answer}");
            assert!(seen.is_none());
            assert!(answer.contains("\"error\""), "{answer}");
        }
    }

    #[test]
    fn a_head_over_the_limit_is_refused() {
        let mut request = b"GET /api/x HTTP/1.1\r\nX: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES));
        let (answer, outcome, _) = exchange(&request);
        assert_eq!(outcome, Exchange::Answered(400));
        assert!(answer.contains("over 8192 bytes"), "{answer}");
    }

    #[test]
    fn a_client_gone_before_its_body_ends_is_abandoned_unanswered() {
        let (answer, outcome, seen) =
            exchange(b"PATCH /api/x HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"a\"");
        assert_eq!(outcome, Exchange::Abandoned);
        assert!(seen.is_none());
        assert_eq!(answer, "");
    }

    #[test]
    fn a_client_that_expects_100_continue_gets_it_before_its_body_is_read() {
        let (server, mut client) = UnixStream::pair().unwrap();
        client
            .write_all(
                b"PATCH /api/x HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            )
            .unwrap();
        let serving = std::thread::spawn(move || {
            serve(&server, "/api/", &TIMEOUTS, |_, body| Reply {
                status: 200,
                content_type: "application/json",
                body: String::from_utf8_lossy(body).into_owned(),
                allow: None,
                headers: &[],
            })
            .unwrap()
        });
        let mut interim = [0u8; 25];
        client.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"{}").unwrap();
        assert_eq!(serving.join().unwrap(), Exchange::Answered(200));
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert!(answer.ends_with("\r\n\r\n{}"), "{answer}");
    }

    #[test]
    fn a_head_answer_has_no_body_and_a_slow_head_is_abandoned() {
        let (answer, outcome, _) = exchange(b"HEAD /api/x HTTP/1.1\r\n\r\n");
        assert_eq!(outcome, Exchange::Answered(200));
        assert!(
            answer.ends_with("Content-Length: 3\r\nConnection: close\r\n\r\n"),
            "{answer}"
        );

        let (server, mut client) = UnixStream::pair().unwrap();
        client.write_all(b"GET /api/x HTTP/1.1\r\n").unwrap();
        let quick = Timeouts {
            head: Duration::from_millis(50),
            ..TIMEOUTS
        };
        let outcome = serve(&server, "/api/", &quick, |_, _| unreachable!()).unwrap();
        assert_eq!(outcome, Exchange::Abandoned);
    }
}
