//! A deploy under WebSockets: connections open on blue when traffic moves to green with a
//! drain that closes them after `close_after`, spread over `close_spread`. Each client
//! reconnects as soon as its connection closes; the figures say when they landed on green, how
//! bunched the reconnects were, whether plain requests in the same run failed, and whether blue
//! carried nothing at the end (it could be stopped).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;
use harness::{long_lived_site, Admin, LongLived, Traffic};

/// What one client saw: when its connection on blue closed (from the change), and which
/// backend its reconnect reached (`None`: it failed).
type Reconnect = (Duration, Option<String>);

pub(crate) fn websocket_drain(settings: &Settings) {
    let (connections, after_s, spread_s) = if settings.full {
        (1000, 5, 10)
    } else {
        (40, 1, 2)
    };
    println!("## WebSockets through a deploy\n");
    println!(
        "{connections} WebSockets open on blue (harness echo backends, 2 workers); one PATCH \
         puts green up and drains blue with `close_after {after_s}s`, `close_spread \
         {spread_s}s`. Each client reconnects when its connection closes; plain requests \
         (4 threads, a new connection each) run throughout. The even rate is \
         {connections} / {spread_s} s.\n"
    );
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    let port = free_port();
    let nginx = Nginx::start(
        NginxOptions::new(long_lived_site(
            &blue.addr().to_string(),
            &green.addr().to_string(),
            port,
            "",
        ))
        .worker_connections(8192),
    );
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        let socket = LongLived::websocket(port).expect("a WebSocket through nginx");
        assert_eq!(socket.backend, "blue");
        sockets.push(socket);
    }
    let traffic = Traffic::start(port, 4);
    thread::sleep(Duration::from_millis(500));
    let changed = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let stop = stop.clone();
            thread::spawn(move || -> Option<Reconnect> {
                let closed = socket.wait_closed(Duration::from_secs(60))?;
                let again = LongLived::websocket(port).ok();
                let at = closed.duration_since(changed);
                let backend = again.as_ref().map(|socket| socket.backend.clone());
                // Held open (on green) until the run ends.
                while !stop.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(50));
                }
                Some((at, backend))
            })
        })
        .collect();
    let (blue_server, green_server) = (blue.addr().to_string(), green.addr().to_string());
    let reply = admin.patch(
        "app",
        &format!(
            r#"{{"peers": {{"{blue_server}": {{"state": "drain", "close_after": "{after_s}s",
                "close_spread": "{spread_s}s"}}, "{green_server}": {{"state": "up"}}}}}}"#
        ),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let window_end = Duration::from_secs(after_s + spread_s);
    let settled = wait_until(window_end + Duration::from_secs(10), || {
        blue.streams_open() == 0 && green.streams_open() == connections as u64
    });
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Option<Reconnect>> = clients
        .into_iter()
        .map(|client| client.join().expect("client"))
        .collect();
    let report = traffic.stop();

    let reconnects: Vec<&Reconnect> = seen.iter().flatten().collect();
    let on_green = reconnects
        .iter()
        .filter(|(_, backend)| backend.as_deref() == Some("green"))
        .count();
    let mut per_second = vec![0usize; (after_s + spread_s + 10) as usize];
    for (at, _) in &reconnects {
        if let Some(bin) = per_second.get_mut(at.as_secs() as usize) {
            *bin += 1;
        }
    }
    let even = connections as f64 / spread_s as f64;
    // The most reconnects in any one-second window, wherever it starts.
    let mut times: Vec<Duration> = reconnects.iter().map(|(at, _)| *at).collect();
    times.sort();
    let busiest = (0..times.len())
        .map(|first| {
            times[first..]
                .iter()
                .take_while(|at| **at < times[first] + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    let before_deadline = reconnects
        .iter()
        .filter(|(at, _)| *at < Duration::from_secs(after_s))
        .count();
    let last = reconnects
        .iter()
        .map(|(at, _)| *at)
        .max()
        .unwrap_or_default();
    println!(
        "| WebSockets | on green at the end | closed before the deadline | last closed | most in \
         any second | even rate | plain requests | failed | blue open at the end |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {connections} | {on_green} | {before_deadline} | {:.1} s | {busiest}/s ({:.2}×) | \
         {even:.0}/s | {} | {} | {} |",
        last.as_secs_f64(),
        busiest as f64 / even,
        report.total(),
        report.failed.len(),
        blue.streams_open()
    );
    println!(
        "\nReconnects per second from the change: {}\n",
        per_second
            .iter()
            .map(|count| count.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    assert!(settled.is_some(), "every WebSocket moved to green");
    assert_eq!(on_green, connections);
    assert_eq!(before_deadline, 0, "none closed before the deadline");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        admin
            .peer("app", &blue_server)
            .unwrap()
            .drain_close
            .closed_by_drain,
        connections as u64
    );
}
