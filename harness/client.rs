//! Small blocking HTTP/1.1 clients: keep-alive over TCP for traffic through Nginx, and one-shot
//! requests over the admin API's Unix socket.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A response: status code, headers and body text.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// A keep-alive client for one Nginx port; it reconnects when Nginx closes the connection.
pub struct HttpClient {
    port: u16,
    conn: Option<BufReader<TcpStream>>,
}

impl HttpClient {
    pub fn new(port: u16) -> HttpClient {
        HttpClient { port, conn: None }
    }

    /// `GET path`, retried once on a fresh connection if a reused one was closed under us.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        self.get_with(path, &[])
    }

    /// `GET path` with extra request headers (`name`, value), e.g. a cookie.
    pub fn get_with(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        let reused = self.conn.is_some();
        match self.get_once(path, headers) {
            Err(_) if reused => {
                self.conn = None;
                self.get_once(path, headers)
            }
            other => other,
        }
    }

    fn get_once(&mut self, path: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
        if self.conn.is_none() {
            let stream = TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.set_nodelay(true)?;
            self.conn = Some(BufReader::new(stream));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let headers: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n");
        conn.get_mut().write_all(request.as_bytes())?;
        let (response, keep_alive) = read_response(conn).inspect_err(|_| self.conn = None)?;
        if !keep_alive {
            self.conn = None;
        }
        Ok(response)
    }
}

/// One request to the admin API over its Unix socket.
pub fn api_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> io::Result<Response> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut reader = BufReader::new(stream);
    reader.get_mut().write_all(request.as_bytes())?;
    read_response(&mut reader).map(|(response, _)| response)
}

/// Reads one response with a Content-Length or chunked body; also says whether the server
/// keeps the connection open.
fn read_response<R: BufRead>(reader: &mut R) -> io::Result<(Response, bool)> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut keep_alive = true;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        headers.push((name.to_string(), value.to_string()));
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse().map_err(|_| invalid("bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    let body = if chunked {
        read_chunked(reader)?
    } else if let Some(len) = content_length {
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        body
    } else {
        keep_alive = false;
        let mut body = Vec::new();
        reader.read_to_end(&mut body)?;
        body
    };
    let body = String::from_utf8(body).map_err(|_| invalid("body is not UTF-8"))?;
    Ok((
        Response {
            status,
            headers,
            body,
        },
        keep_alive,
    ))
}

fn read_chunked<R: BufRead>(reader: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let size = usize::from_str_radix(line.trim(), 16).map_err(|_| invalid("bad chunk size"))?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk)?;
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}
