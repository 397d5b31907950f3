//! Long-lived connections through Nginx, as a deploy meets them: a WebSocket-style upgrade
//! (`/ws`) or a server-sent event stream (`/events`) of the harness's backends. Each knows which
//! backend it reached and tells when Nginx closed it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The `http {}` body of an upstream `app` over `blue` (up) and `green` (standby) with
/// WebSocket and event-stream locations on `port`, and the API.
pub fn long_lived_site(blue: &str, green: &str, port: u16, upstream_extra: &str) -> String {
    format!(
        "upstream app {{\n    server {blue};\n    server {green} down;\n    shift;\n    \
         {upstream_extra}\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    proxy_read_timeout 1h;\n    \
         location / {{ proxy_pass http://app; }}\n    \
         location = /ws {{\n        proxy_pass http://app;\n        \
         proxy_http_version 1.1;\n        proxy_set_header Upgrade $http_upgrade;\n        \
         proxy_set_header Connection \"upgrade\";\n    }}\n    \
         location = /events {{\n        proxy_pass http://app;\n        \
         proxy_http_version 1.1;\n        proxy_buffering off;\n    }}\n}}\n\
         server {{\n    listen unix:{{prefix}}/api.sock;\n    location /api/ {{ shift_api; }}\n}}\n"
    )
}

/// An open long-lived connection.
pub struct LongLived {
    reader: BufReader<TcpStream>,
    /// The backend that serves it (its name).
    pub backend: String,
}

impl LongLived {
    /// Upgrades a connection to Nginx's `port` at `/ws`; the backend's first line names it.
    pub fn websocket(port: u16) -> io::Result<LongLived> {
        let mut reader = open(
            port,
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "101",
        )?;
        let mut name = String::new();
        reader.read_line(&mut name)?;
        Ok(LongLived {
            reader,
            backend: name.trim_end().to_string(),
        })
    }

    /// Opens an event stream at `/events`; its first event names the backend.
    pub fn events(port: u16) -> io::Result<LongLived> {
        let mut reader = open(
            port,
            "GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
            "200",
        )?;
        let mut line = String::new();
        while !line.starts_with("data: ") {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no event"));
            }
        }
        Ok(LongLived {
            backend: line["data: ".len()..].trim_end().to_string(),
            reader,
        })
    }

    /// Sends `text` on an upgraded connection and reads its echo.
    pub fn echo(&mut self, text: &str) -> io::Result<String> {
        self.reader
            .get_mut()
            .write_all(format!("{text}\n").as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    }

    /// Reads (and drops) what comes until Nginx closes the connection; when it did, or `None`
    /// if it was still open after `timeout`.
    pub fn wait_closed(mut self, timeout: Duration) -> Option<Instant> {
        let give_up = Instant::now() + timeout;
        let mut buffer = [0u8; 4096];
        loop {
            let left = give_up.checked_duration_since(Instant::now())?;
            let stream = self.reader.get_ref();
            stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            match self.reader.read(&mut buffer) {
                Ok(0) => return Some(Instant::now()),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) if err.kind() == io::ErrorKind::TimedOut => {}
                // Reset: closed all the same.
                Err(_) => return Some(Instant::now()),
            }
        }
    }
}

/// Connects, sends `request`, and reads the response head, which must have `status`.
fn open(port: u16, request: &str, status: &str) -> io::Result<BufReader<TcpStream>> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream);
    reader.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.split(' ').nth(1) != Some(status) {
        return Err(io::Error::other(format!("answered {}", line.trim_end())));
    }
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            return Ok(reader);
        }
    }
}
