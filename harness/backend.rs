//! Real HTTP/1.1 backends on loopback, served by a shared tokio runtime.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("start the backends' tokio runtime")
    })
}

/// How many requests a cold backend (`Backend::set_cold`) serves at once.
pub const COLD_CONCURRENCY: usize = 8;

struct Behaviour {
    name: String,
    status: AtomicU16,
    hang: AtomicBool,
    /// Added to every answer's time, in ms.
    delay_ms: AtomicU64,
    /// Answers 500 to this many of every 1,000 requests, at random (a flaky dependency).
    failures_per_mille: AtomicU64,
    /// A cold start: this many more requests (health checks aside) take `cold_ms` each, at
    /// most `COLD_CONCURRENCY` at a time, as a release with cold caches and a small warm pool.
    cold_left: AtomicU64,
    cold_ms: AtomicU64,
    cold_gate: tokio::sync::Semaphore,
    hits: AtomicU64,
    hits_by_path: Mutex<HashMap<String, u64>>,
    /// WebSocket-style and event-stream connections open now (`/ws`, `/events`).
    streams_open: AtomicU64,
}

/// A backend that answers every request with its name as the body. Its status code can be
/// changed, or it can be told to hang, to stand in for a failing version; a request for
/// `/slow/MS` is answered after MS milliseconds, to stand in for a long request. Two paths stay
/// open for as long as the client keeps them: `/ws` upgrades the connection (101, as a WebSocket
/// server would), says its name on a line and then echoes what it reads; `/events` is a
/// server-sent event stream that sends `data: NAME` every 200 ms. Dropping it closes the
/// listener and every open connection.
pub struct Backend {
    addr: SocketAddr,
    behaviour: Arc<Behaviour>,
    task: JoinHandle<()>,
}

impl Backend {
    /// Starts a backend on a free port of 127.0.0.1.
    pub fn start(name: &str) -> Backend {
        Backend::start_on(name, 0)
    }

    /// Starts a backend on the given port of 127.0.0.1 (0 for any free one).
    pub fn start_on(name: &str, port: u16) -> Backend {
        Backend::start_at(name, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Starts a backend on `address`, e.g. 127.0.0.3:8000 for one of several replicas that
    /// share a port on their own loopback addresses, as Compose replicas do on their IPs.
    pub fn start_at(name: &str, address: SocketAddr) -> Backend {
        let behaviour = Arc::new(Behaviour {
            name: name.to_string(),
            status: AtomicU16::new(200),
            hang: AtomicBool::new(false),
            delay_ms: AtomicU64::new(0),
            failures_per_mille: AtomicU64::new(0),
            cold_left: AtomicU64::new(0),
            cold_ms: AtomicU64::new(0),
            cold_gate: tokio::sync::Semaphore::new(COLD_CONCURRENCY),
            hits: AtomicU64::new(0),
            hits_by_path: Mutex::new(HashMap::new()),
            streams_open: AtomicU64::new(0),
        });
        let listener = runtime()
            .block_on(TcpListener::bind(address))
            .unwrap_or_else(|err| panic!("backend {name}: bind {address}: {err}"));
        let addr = listener.local_addr().expect("backend address");
        let task = runtime().spawn(serve(listener, behaviour.clone()));
        Backend {
            addr,
            behaviour,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn name(&self) -> &str {
        &self.behaviour.name
    }

    /// Requests answered (or, when hanging, received) so far.
    pub fn hits(&self) -> u64 {
        self.behaviour.hits.load(Ordering::SeqCst)
    }

    /// Its `/ws` and `/events` connections open now.
    pub fn streams_open(&self) -> u64 {
        self.behaviour.streams_open.load(Ordering::SeqCst)
    }

    /// Requests received for `path` so far (e.g. health probes on `/health` apart from traffic).
    pub fn hits_on(&self, path: &str) -> u64 {
        let hits = self.behaviour.hits_by_path.lock().expect("hits lock");
        hits.get(path).copied().unwrap_or(0)
    }

    /// The status code of the following answers.
    pub fn set_status(&self, status: u16) {
        self.behaviour.status.store(status, Ordering::SeqCst);
    }

    /// While set, requests are read but never answered.
    pub fn set_hang(&self, hang: bool) {
        self.behaviour.hang.store(hang, Ordering::SeqCst);
    }

    /// Every following answer comes `ms` milliseconds later (a slower version).
    pub fn set_delay(&self, ms: u64) {
        self.behaviour.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// A cold start: the next `requests` requests (health checks on `/health` aside) take
    /// `ms` each, at most `COLD_CONCURRENCY` at a time (the others wait their turn).
    pub fn set_cold(&self, requests: u64, ms: u64) {
        self.behaviour.cold_ms.store(ms, Ordering::SeqCst);
        self.behaviour.cold_left.store(requests, Ordering::SeqCst);
    }

    /// The following requests fail (500) at random, `per_mille` of every 1,000.
    pub fn set_failure_rate(&self, per_mille: u64) {
        self.behaviour
            .failures_per_mille
            .store(per_mille, Ordering::SeqCst);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, behaviour: Arc<Behaviour>) {
    // Connections live in a JoinSet so that aborting this task closes them all.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve_connection(stream, behaviour.clone()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, behaviour: Arc<Behaviour>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let Some((path, body_len)) = read_request_head(&mut reader).await else {
            return;
        };
        let mut body = vec![0; body_len];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        behaviour.hits.fetch_add(1, Ordering::SeqCst);
        *behaviour
            .hits_by_path
            .lock()
            .expect("hits lock")
            .entry(path.clone())
            .or_default() += 1;
        if behaviour.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if path == "/ws" || path == "/events" {
            behaviour.streams_open.fetch_add(1, Ordering::SeqCst);
            if path == "/ws" {
                echo_upgraded(reader, write, &behaviour.name).await;
            } else {
                stream_events(write, &behaviour.name).await;
            }
            behaviour.streams_open.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let cold = path != "/health"
            && behaviour
                .cold_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok();
        if cold {
            let _turn = behaviour.cold_gate.acquire().await;
            let ms = behaviour.cold_ms.load(Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        let delay = path_delay_ms(&path).unwrap_or(0) + behaviour.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        let flaky = behaviour.failures_per_mille.load(Ordering::SeqCst);
        let status = if flaky > 0 && rand::random_range(0..1000) < flaky {
            500
        } else {
            behaviour.status.load(Ordering::SeqCst)
        };
        let answer = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{}",
            reason(status),
            behaviour.name.len(),
            behaviour.name
        );
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `/ws`: switches protocols, says its name, then echoes until either side closes.
async fn echo_upgraded(
    mut reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    mut write: tokio::net::tcp::OwnedWriteHalf,
    name: &str,
) {
    let hello = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\
         {name}\n"
    );
    if write.write_all(hello.as_bytes()).await.is_err() {
        return;
    }
    let _ = tokio::io::copy(&mut reader, &mut write).await;
}

/// `/events`: a chunked event stream, one event every 200 ms, until the client goes.
async fn stream_events(mut write: tokio::net::tcp::OwnedWriteHalf, name: &str) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    if write.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let event = format!("data: {name}\n\n");
    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
    loop {
        if write.write_all(chunk.as_bytes()).await.is_err() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Reads a request's head; returns its path and body length, or `None` when the connection is
/// done.
async fn read_request_head<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> Option<(String, usize)> {
    let mut line = String::new();
    let mut body_len = 0;
    let mut first = true;
    let mut path = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            if first {
                continue; // tolerate stray CRLF between requests
            }
            return Some((path, body_len));
        }
        if first {
            path = trimmed.split(' ').nth(1).unwrap_or("").to_string();
        }
        first = false;
        if let Some((name, value)) = trimmed.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                body_len = value.trim().parse().ok()?;
            }
        }
    }
}

/// The delay a `/slow/MS` path asks for.
fn path_delay_ms(path: &str) -> Option<u64> {
    path.strip_prefix("/slow/")?.parse().ok()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
