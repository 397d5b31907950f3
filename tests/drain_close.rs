//! Drains that finish, against real Nginx (two workers): a drain or removal with `close_after`
//! closes the WebSockets and event streams its peer still carries once the deadline passes,
//! spread over `close_spread`, and none before; requests that end by themselves are untouched,
//! as are other peers' connections; `up` before the deadline cancels it; `shiftctl drain|remove
//! --close-after` end in bounded time; bad values are refused.

use std::thread;
use std::time::{Duration, Instant};

use harness::{
    shiftctl_command, wait_for, Admin, Backend, HttpClient, LongLived, Nginx, NginxOptions,
};

/// Blue (up) and green (standby) behind upstream `app`, with WebSocket and event-stream
/// locations, two workers, and the API.
struct Site {
    nginx: Nginx,
    admin: Admin,
    port: u16,
    blue: Backend,
    green: Backend,
}

impl Site {
    fn start() -> Site {
        let (blue, green) = (Backend::start("blue"), Backend::start("green"));
        let port = harness::free_port();
        let config = format!(
            "upstream app {{\n    server {blue};\n    server {green} down;\n    shift;\n}}\n\
             server {{\n    listen 127.0.0.1:{port};\n    proxy_read_timeout 1h;\n    \
             location / {{ proxy_pass http://app; }}\n    \
             location = /ws {{\n        proxy_pass http://app;\n        \
             proxy_http_version 1.1;\n        proxy_set_header Upgrade $http_upgrade;\n        \
             proxy_set_header Connection \"upgrade\";\n    }}\n    \
             location = /events {{\n        proxy_pass http://app;\n        \
             proxy_http_version 1.1;\n        proxy_buffering off;\n    }}\n}}\n\
             server {{\n    listen unix:{{prefix}}/api.sock;\n    location /api/ {{ shift_api; }}\n}}\n",
            blue = blue.addr(),
            green = green.addr()
        );
        let nginx = Nginx::start(NginxOptions::new(config));
        let admin = Admin::new(nginx.path("api.sock"), "/api/");
        Site {
            nginx,
            admin,
            port,
            blue,
            green,
        }
    }

    /// `count` WebSockets and `count / 2` event streams, each on its own connection (both
    /// workers take some), all served by `backend`.
    fn open(&self, count: usize, backend: &str) -> Vec<LongLived> {
        let mut open = Vec::new();
        for index in 0..count + count / 2 {
            let connection = if index < count {
                LongLived::websocket(self.port)
            } else {
                LongLived::events(self.port)
            }
            .expect("a long-lived connection through nginx");
            assert_eq!(connection.backend, backend);
            open.push(connection);
        }
        open
    }

    fn shiftctl(&self, args: &[&str]) -> std::process::Output {
        shiftctl_command(&[self.nginx.path("api.sock")], None)
            .args(args)
            .output()
            .expect("run shiftctl")
    }
}

/// When each connection was closed, waiting at most `timeout` for all (`None`: still open).
fn closes(connections: Vec<LongLived>, timeout: Duration) -> Vec<Option<Instant>> {
    let waits: Vec<_> = connections
        .into_iter()
        .map(|connection| thread::spawn(move || connection.wait_closed(timeout)))
        .collect();
    waits
        .into_iter()
        .map(|wait| wait.join().expect("waiter"))
        .collect()
}

fn closed_by_drain(admin: &Admin, server: &str) -> u64 {
    admin
        .peer("app", server)
        .map_or(0, |peer| peer.drain_close.closed_by_drain)
}

#[test]
fn a_drain_closes_long_lived_connections_at_its_deadline_spread_over_the_window() {
    let site = Site::start();
    let (blue, green) = (site.blue.addr().to_string(), site.green.addr().to_string());
    let on_blue = site.open(16, "blue");
    // A request that ends by itself before the deadline.
    let port = site.port;
    let short = thread::spawn(move || HttpClient::new(port).get("/slow/700"));
    thread::sleep(Duration::from_millis(100));

    let before = Instant::now();
    let body = format!(
        r#"{{"peers": {{"{blue}": {{"state": "drain", "close_after": "2s", "close_spread": "3s"}},
            "{green}": {{"state": "up"}}}}}}"#
    );
    let reply = site.admin.patch("app", &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let sent = Instant::now();
    let peer = site.admin.peer("app", &blue).unwrap();
    assert!(peer.drain_close.close_at_ms.is_some());
    assert_eq!(peer.drain_close.close_spread_ms, Some(3_000));
    // New connections go to green, and stay open through blue's window.
    let mut on_green = site.open(4, "green");

    let short = short.join().unwrap().expect("the short request");
    assert_eq!((short.status, short.body.as_str()), (200, "blue"));
    let count = on_blue.len();
    let closed_at = closes(on_blue, Duration::from_secs(15));
    let mut offsets: Vec<Duration> = closed_at
        .iter()
        .map(|at| at.expect("closed within 15 s").duration_since(before))
        .collect();
    offsets.sort();
    let (first, last) = (offsets[0], offsets[count - 1]);
    assert!(
        first >= Duration::from_secs(2),
        "none before the deadline: first at {first:?}"
    );
    let window_end = sent.duration_since(before) + Duration::from_secs(5);
    assert!(
        last <= window_end + Duration::from_millis(1_500),
        "all by the end of the window: last at {last:?}"
    );
    // Spread, not all at once: the closes span most of the 3 s, and the first second of the
    // window holds about a third of them, far from all.
    assert!(
        last - first >= Duration::from_millis(1_800),
        "spread: {offsets:?}"
    );
    let early = offsets
        .iter()
        .filter(|offset| **offset < Duration::from_secs(3))
        .count();
    assert!(
        early <= count * 2 / 3,
        "{early} of {count} in the first second: {offsets:?}"
    );

    assert!(
        wait_for(Duration::from_secs(5), || {
            (closed_by_drain(&site.admin, &blue) == count as u64).then_some(())
        })
        .is_some(),
        "closed_by_drain counts them: {}",
        closed_by_drain(&site.admin, &blue)
    );
    assert!(
        wait_for(Duration::from_secs(5), || (site.blue.streams_open() == 0)
            .then_some(()))
        .is_some(),
        "blue's side of each connection closed too"
    );
    // The first four are WebSockets.
    for connection in &mut on_green[..4] {
        assert_eq!(connection.echo("still here").unwrap(), "still here");
    }
    assert_eq!(
        site.green.streams_open(),
        6,
        "green's connections are untouched"
    );
    assert_eq!(closed_by_drain(&site.admin, &green), 0);
    let metrics = site.admin.request("GET", "metrics", None).body;
    assert!(
        metrics.contains(&format!(
            "nginx_shift_peer_closed_by_drain_total{{upstream=\"app\",peer=\"{blue}\"}} {count}\n"
        )),
        "{metrics}"
    );
    let log = site.nginx.error_log();
    assert!(
        log.contains(&format!("peer {blue} closed"))
            && log.contains("at the deadline of its drain"),
        "{log}"
    );
}
