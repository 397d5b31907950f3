//! What answers at `--etcd` when gRPC fails there before etcd ever answered: an HTTP/1 server
//! is named in the error (exit 3, "not etcd"); etcd itself, which answers HTTP/1 too, is not.

use std::time::Duration;

/// What answers at the first of `endpoints` where gRPC failed, if it is not etcd: an HTTP/1
/// server's status line and `Server` header (etcd answers HTTP/1 too, and `GET /version` tells
/// it apart). `None` when nothing answers in time, or etcd does. The exchange runs on its own
/// thread and is given one second in all, name lookup included, so a command that is failing
/// anyway, or an agent retrying, is held up no longer.
pub(super) fn not_etcd_at(endpoints: &str) -> Option<String> {
    let first = endpoints.split(',').next().unwrap_or_default();
    if first.starts_with("https://") {
        return None;
    }
    let address = first
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let (sender, answer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(http_version_at(&address));
    });
    let head = answer.recv_timeout(Duration::from_secs(1)).ok().flatten()?;
    if head.contains("etcdserver") {
        return None;
    }
    let status = head
        .lines()
        .next()
        .filter(|line| line.starts_with("HTTP/"))?;
    let server = head.lines().find_map(|line| {
        line.strip_prefix("Server: ")
            .or(line.strip_prefix("server: "))
    });
    Some(match server {
        Some(server) => format!("an HTTP server: \"{status}\", Server: {server}"),
        None => format!("an HTTP server: \"{status}\""),
    })
}

/// The start of the answer to `GET /version` at `address` (HOST:PORT), if any.
fn http_version_at(address: &str) -> Option<String> {
    use std::io::{Read, Write};
    let address = std::net::ToSocketAddrs::to_socket_addrs(address)
        .ok()?
        .next()?;
    let timeout = Duration::from_millis(500);
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET /version HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .ok()?;
    let mut head = vec![0; 2048];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(more) => read += more,
        }
    }
    (read > 0).then(|| String::from_utf8_lossy(&head[..read]).into_owned())
}
