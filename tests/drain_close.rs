//! Drains that finish, against real Nginx (two workers): a drain or removal with `close_after`
//! closes the WebSockets and event streams its peer still carries once the deadline passes,
//! spread over `close_spread`, and none before; requests that end by themselves are untouched,
//! as are other peers' connections; `up` before the deadline cancels it; `shiftctl drain|remove
//! --close-after` end in bounded time; bad values are refused.

use std::thread;
use std::time::{Duration, Instant};

use harness::{
    free_port, long_lived_site, run_ok, shiftctl_command, wait_for, Admin, Backend, HookedBackends,
    HttpClient, LongLived, Nginx, NginxOptions,
};

/// Blue (up) and green (standby) behind upstream `app` (`long_lived_site`), two workers.
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
        let port = free_port();
        let config = long_lived_site(
            &blue.addr().to_string(),
            &green.addr().to_string(),
            port,
            "",
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

    /// A backend `extra` added at run time, and blue put `down`: new connections go to it.
    fn runtime_peer_alone(&self) -> (Backend, String) {
        let extra = Backend::start("extra");
        let (blue, server) = (self.blue.addr().to_string(), extra.addr().to_string());
        assert_eq!(self.admin.add_peer("app", &server, "").status, 201);
        let down = format!(r#"{{"peers": {{"{blue}": {{"state": "down"}}}}}}"#);
        assert_eq!(self.admin.patch("app", &down).status, 200);
        (extra, server)
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

#[test]
fn up_before_the_deadline_cancels_it() {
    let site = Site::start();
    let blue = site.blue.addr().to_string();
    let mut on_blue = site.open(4, "blue");
    let drain = format!(r#"{{"peers": {{"{blue}": {{"state": "drain", "close_after": "1s"}}}}}}"#);
    assert_eq!(site.admin.patch("app", &drain).status, 200);
    let up = format!(r#"{{"peers": {{"{blue}": {{"state": "up"}}}}}}"#);
    assert_eq!(site.admin.patch("app", &up).status, 200);
    let peer = site.admin.peer("app", &blue).unwrap();
    assert_eq!(peer.drain_close, Default::default(), "no deadline left");
    thread::sleep(Duration::from_millis(2_500));
    for connection in &mut on_blue[..4] {
        assert_eq!(connection.echo("kept").unwrap(), "kept");
    }
    assert_eq!(site.blue.streams_open(), 6);
    assert_eq!(closed_by_drain(&site.admin, &blue), 0);
}

#[test]
fn old_workers_of_a_reload_close_what_they_carry_at_the_deadline() {
    let mut site = Site::start();
    let blue = site.blue.addr().to_string();
    let on_blue = site.open(4, "blue");
    // The workers that hold them now live on after the reload, for their connections' sake.
    let old = site.nginx.begin_reload(None);
    let green = site.green.addr().to_string();
    let body = format!(
        r#"{{"peers": {{"{blue}": {{"state": "drain", "close_after": "1s"}}, "{green}": {{"state": "up"}}}}}}"#
    );
    let before = Instant::now();
    assert_eq!(site.admin.patch("app", &body).status, 200);
    for closed in closes(on_blue, Duration::from_secs(10)) {
        let after = closed
            .expect("closed by the old worker")
            .duration_since(before);
        assert!(after >= Duration::from_secs(1), "closed at {after:?}");
    }
    site.nginx.finish_reload(&old);
    assert_eq!(closed_by_drain(&site.admin, &blue), 6);
}

#[test]
fn shiftctl_remove_with_close_after_ends_a_runtime_peers_connections_and_its_wait() {
    let site = Site::start();
    let (extra, server) = site.runtime_peer_alone();
    let on_extra = site.open(4, "extra");
    let started = Instant::now();
    let waiters = thread::spawn(move || closes(on_extra, Duration::from_secs(20)));
    let removed = site.shiftctl(&[
        "remove",
        "app",
        &server,
        "--wait",
        "--timeout",
        "20s",
        "--close-after",
        "1s",
        "--close-spread",
        "1s",
    ]);
    let took = started.elapsed();
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(15),
        "the wait ends once the window did: {took:?}"
    );
    for closed in waiters.join().unwrap() {
        let after = closed.expect("closed").duration_since(started);
        assert!(after >= Duration::from_secs(1), "closed at {after:?}");
    }
    assert!(site.admin.peer("app", &server).is_none(), "removed");
    // An event stream's backend notices at its next event.
    assert!(
        wait_for(Duration::from_secs(5), || (extra.streams_open() == 0)
            .then_some(()))
        .is_some()
    );
}

#[test]
fn a_delete_with_close_after_closes_what_the_removed_peer_carries() {
    let site = Site::start();
    let (_extra, server) = site.runtime_peer_alone();
    let on_extra = site.open(2, "extra");
    let before = Instant::now();
    let path = format!("upstreams/app/peers/{server}?close_after=1s&close_spread=500ms");
    let reply = site.admin.request("DELETE", &path, None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let removal: shift_wire::PeerRemoval = serde_json::from_str(&reply.body).unwrap();
    assert_eq!((removal.gone, removal.active), (false, 3));
    for closed in closes(on_extra, Duration::from_secs(10)) {
        let after = closed.expect("closed").duration_since(before);
        assert!(after >= Duration::from_secs(1), "closed at {after:?}");
    }
    assert!(site.admin.peer("app", &server).is_none());
    assert!(site
        .nginx
        .error_log()
        .contains(&format!("peer {server} closed")));
}

#[test]
fn shiftctl_refuses_bad_close_options_and_changes_nothing() {
    let site = Site::start();
    let blue = site.blue.addr().to_string();
    for args in [
        vec!["drain", "app", &blue, "--close-spread", "1s"],
        vec!["drain", "app", &blue, "--close-after", "soon"],
        vec!["drain", "app", &blue, "--close-after", "25h"],
        vec![
            "drain",
            "app",
            &blue,
            "--wait",
            "--timeout",
            "2s",
            "--close-after",
            "5s",
        ],
        vec!["remove", "app", &blue, "--close-spread", "1s"],
    ] {
        let output = site.shiftctl(&args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let peer = site.admin.peer("app", &blue).unwrap();
    assert_eq!(peer.state, shift_wire::PeerState::Up);
    assert_eq!(peer.drain_close, Default::default());
    // The API refuses them as well, naming what was wrong.
    let bad = format!(r#"{{"peers": {{"{blue}": {{"state": "up", "close_after": "1s"}}}}}}"#);
    let reply = site.admin.patch("app", &bad);
    assert_eq!(reply.status, 400);
    assert!(
        reply.body.contains("close_after goes with"),
        "{}",
        reply.body
    );
}

#[test]
fn a_deploy_plan_with_close_after_stops_the_old_side_after_the_drain_closed_it() {
    let sides = HookedBackends::new();
    let (blue_port, green_port, port) = (free_port(), free_port(), free_port());
    let (blue, green) = (
        format!("127.0.0.1:{blue_port}"),
        format!("127.0.0.1:{green_port}"),
    );
    let nginx = Nginx::start(NginxOptions::new(long_lived_site(
        &blue,
        &green,
        port,
        "shift_check interval=200ms;",
    )));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    sides.start_now("blue", blue_port);
    assert!(wait_for(Duration::from_secs(10), || {
        (admin.peer("app", &blue)?.health == shift_wire::Health::Healthy).then_some(())
    })
    .is_some());
    let plan = sides.dir().join("deploy.toml");
    std::fs::write(
        &plan,
        format!(
            "upstream = \"app\"\nstrategy = \"switch\"\nhealth_timeout = \"10s\"\n\
             close_after = \"1s\"\nclose_spread = \"1s\"\n\
             [sides.blue]\nserver = \"{blue}\"\nstart = \"{start_blue}\"\nstop = \"{stop}\"\n\
             [sides.green]\nserver = \"{green}\"\nstart = \"{start_green}\"\nstop = \"{stop}\"\n",
            start_blue = sides.start_hook(blue_port),
            start_green = sides.start_hook(green_port),
            stop = sides.stop_hook(),
        ),
    )
    .unwrap();
    let mut on_blue = Vec::new();
    for _ in 0..4 {
        let socket = LongLived::websocket(port).expect("a WebSocket through nginx");
        assert_eq!(socket.backend, "blue");
        on_blue.push(socket);
    }
    let state_dir = tempfile::TempDir::new().unwrap();
    let started = Instant::now();
    let waiters = thread::spawn(move || closes(on_blue, Duration::from_secs(30)));
    let output = run_ok(
        shiftctl_command(&[nginx.path("api.sock")], Some(state_dir.path()))
            .arg("deploy")
            .arg(&plan),
    );
    assert_eq!(sides.log(), "start green\nstop blue\n");
    for closed in waiters.join().unwrap() {
        assert!(closed.expect("closed").duration_since(started) >= Duration::from_secs(1));
    }
    // The drain closed them, not the stop hook: blue was stopped after its window.
    assert_eq!(closed_by_drain(&admin, &blue), 4);
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("closes what it still carries"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
