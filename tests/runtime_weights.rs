//! Runtime weights against a real Nginx with two workers: a PATCH moves traffic in every worker
//! at once, the split is exact, ineligible peers get nothing, state survives reload and restart,
//! and bad input changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;

use harness::{shift_upstream_config as config, HttpClient, ShiftSetup as Setup};
use shift_wire::{ApiError, PeerState};

fn weights_and_states(upstream: &shift_wire::Upstream) -> Vec<(u32, PeerState)> {
    upstream
        .peers
        .iter()
        .map(|peer| (peer.weight, peer.state))
        .collect()
}

fn only(name: &str, count: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(name.to_string(), count)])
}

#[test]
fn a_patch_moves_the_next_requests_in_every_worker() {
    let setup = Setup::start(&[("blue", ""), ("green", "")], "", "");
    let (blue, green) = (setup.addr(0), setup.addr(1));
    let mut workers_seen = BTreeSet::new();
    for round in 0..6 {
        let (to, weights) = if round % 2 == 0 {
            ("green", [(blue.as_str(), 0), (green.as_str(), 100)])
        } else {
            ("blue", [(blue.as_str(), 100), (green.as_str(), 0)])
        };
        let upstream = setup.admin.set_weights("app", &weights);
        assert_eq!(upstream.generation, round + 2);
        // Every request after the PATCH's answer follows the new weights, whichever worker.
        let (served, workers) = setup.spread(40);
        assert_eq!(served, only(to, 40), "round {round}");
        workers_seen.extend(workers);
    }
    assert_eq!(
        workers_seen.len(),
        2,
        "both workers served: {workers_seen:?}"
    );
}

#[test]
fn a_95_5_split_holds_within_one_point_over_10000_requests() {
    let setup = Setup::start(&[("blue", ""), ("green", "")], "", "");
    setup
        .admin
        .set_weights("app", &[(&setup.addr(0), 95), (&setup.addr(1), 5)]);
    // Eight keep-alive connections, taken in turn, so both workers share the load.
    let mut clients: Vec<HttpClient> = (0..8).map(|_| HttpClient::new(setup.port)).collect();
    let mut served = BTreeMap::<String, usize>::new();
    let mut workers = BTreeSet::new();
    for i in 0..10_000 {
        let connections = clients.len();
        let response = clients[i % connections]
            .get("/")
            .expect("request through nginx");
        assert_eq!(response.status, 200);
        workers.extend(response.header("X-Worker").map(str::to_string));
        *served.entry(response.body).or_default() += 1;
    }
    let green = served.get("green").copied().unwrap_or(0) as f64;
    let green_share = green / 10_000.0 * 100.0;
    assert!(
        (4.0..=6.0).contains(&green_share),
        "green got {green_share:.2}%: {served:?}"
    );
    assert_eq!(workers.len(), 2, "both workers served: {workers:?}");

    let upstream = setup.admin.upstream("app");
    let requests: u64 = upstream.peers.iter().map(|peer| peer.requests).sum();
    let successes: u64 = upstream
        .peers
        .iter()
        .map(|peer| peer.responses.success)
        .sum();
    assert_eq!((requests, successes), (10_000, 10_000));
    assert_eq!(
        upstream.peers[1].requests, green as u64,
        "the API counts what green served"
    );
}

#[test]
fn zero_weight_drained_and_standby_peers_get_no_requests() {
    let setup = Setup::start(&[("a", ""), ("b", ""), ("c", "down")], "", "");
    // c is standby from the config: only a and b serve.
    let (served, _) = setup.spread(60);
    assert_eq!(served.keys().cloned().collect::<Vec<_>>(), ["a", "b"]);

    let patch = format!(
        r#"{{"peers": {{"{}": {{"weight": 0}}, "{}": {{"state": "drain"}}, "{}": {{"state": "up"}}}}}}"#,
        setup.addr(0),
        setup.addr(1),
        setup.addr(2)
    );
    assert_eq!(setup.admin.patch("app", &patch).status, 200);
    let hits_before = (setup.backends[0].hits(), setup.backends[1].hits());
    let (served, _) = setup.spread(60);
    assert_eq!(served, only("c", 60));
    assert_eq!(
        (setup.backends[0].hits(), setup.backends[1].hits()),
        hits_before
    );

    let states = weights_and_states(&setup.admin.upstream("app"));
    assert_eq!(
        states,
        [
            (0, PeerState::Up),
            (1, PeerState::Drain),
            (1, PeerState::Up)
        ]
    );
}

#[test]
fn no_eligible_peer_answers_502_and_logs_the_upstream() {
    let setup = Setup::start(&[("a", ""), ("b", "")], "", "");
    let patch = format!(
        r#"{{"peers": {{"{}": {{"state": "down"}}, "{}": {{"weight": 0}}}}}}"#,
        setup.addr(0),
        setup.addr(1)
    );
    assert_eq!(setup.admin.patch("app", &patch).status, 200);
    for _ in 0..10 {
        let response = HttpClient::new(setup.port).get("/").expect("nginx answers");
        assert_eq!(response.status, 502);
    }
    assert_eq!(setup.backends[0].hits() + setup.backends[1].hits(), 0);
    let log = setup.nginx.error_log();
    assert!(
        log.lines()
            .any(|line| line.contains("no live upstreams") && line.contains("http://app")),
        "no error-log line names the upstream:\n{log}"
    );
}

#[test]
fn a_dead_peer_is_retried_elsewhere_and_counted_as_failed() {
    let mut setup = Setup::start(&[("a", "max_fails=1 fail_timeout=30s"), ("b", "")], "", "");
    let dead = setup.backends.remove(0);
    drop(dead); // connection refused from now on
    let (served, _) = setup.spread(40);
    assert_eq!(
        served,
        only("b", 40),
        "proxy_next_upstream sends retries to b"
    );
    let upstream = setup.admin.upstream("app");
    assert!(upstream.peers[0].failures >= 1, "{:?}", upstream.peers[0]);
    assert_eq!(upstream.peers[0].failures, upstream.peers[0].requests);
    assert_eq!(upstream.peers[0].active, 0);
}

#[test]
fn runtime_weights_survive_a_reload_unless_the_config_line_changed() {
    let mut setup = Setup::start(&[("blue", ""), ("green", "down")], "", "");
    let (blue, green) = (setup.addr(0), setup.addr(1));
    let patch = format!(
        r#"{{"peers": {{"{blue}": {{"weight": 0}}, "{green}": {{"weight": 10, "state": "up"}}}}}}"#
    );
    assert_eq!(setup.admin.patch("app", &patch).status, 200);
    let generation = setup.admin.upstream("app").generation;

    setup.nginx.reload(None);
    let upstream = setup.admin.upstream("app");
    let live = weights_and_states(&upstream);
    assert_eq!(live, [(0, PeerState::Up), (10, PeerState::Up)]);
    assert_eq!(
        upstream.generation, generation,
        "a reload that changes nothing keeps the generation a controller read"
    );
    assert_eq!(setup.spread(30).0, only("green", 30));
    let log = setup.nginx.error_log();
    assert!(
        log.contains(&format!("peer {green} keeps weight=10 state=up")),
        "{log}"
    );

    // The operator edits green's line: green takes the config, blue keeps its runtime weight.
    let edited = config(
        &[(blue.clone(), ""), (green.clone(), "weight=3")],
        "",
        "",
        setup.port,
    );
    setup.nginx.reload(Some(&edited));
    let upstream = setup.admin.upstream("app");
    let live = weights_and_states(&upstream);
    assert_eq!(live, [(0, PeerState::Up), (3, PeerState::Up)]);
    assert!(
        upstream.generation > generation,
        "the config changed a peer"
    );
    assert!(
        setup
            .nginx
            .error_log()
            .contains(&format!("peer {green} changed in the config")),
        "{}",
        setup.nginx.error_log()
    );
}

#[test]
fn runtime_weights_survive_a_restart_through_the_state_file() {
    // The workers write the state file; when the tests run as root they run as nobody.
    let state_dir = tempfile::tempdir().unwrap();
    fs::set_permissions(state_dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let state_file = state_dir.path().join("app.json");
    let shift_args = format!("state={}", state_file.display());
    let mut setup = Setup::start(&[("blue", ""), ("green", "down")], &shift_args, "");
    let (blue, green) = (setup.addr(0), setup.addr(1));
    let patch =
        format!(r#"{{"peers": {{"{blue}": {{"state": "drain"}}, "{green}": {{"state": "up"}}}}}}"#);
    assert_eq!(setup.admin.patch("app", &patch).status, 200);
    assert!(state_file.exists(), "the PATCH saved the state file");

    setup.nginx.restart();
    let upstream = setup.admin.upstream("app");
    let live: Vec<_> = upstream.peers.iter().map(|peer| peer.state).collect();
    assert_eq!(live, [PeerState::Drain, PeerState::Up]);
    assert_eq!(
        setup.spread(30).0,
        only("green", 30),
        "no traffic back to the old version"
    );
}

#[test]
fn bad_requests_get_their_status_and_change_nothing() {
    let setup = Setup::start(&[("blue", ""), ("green", "")], "", "");
    let blue = setup.addr(0);
    let before = setup.admin.upstream("app");
    let big = format!(
        r#"{{"peers": {{"{blue}": {{"weight": 1}}}}, "pad": "{}"}}"#,
        "x".repeat(9000)
    );
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "PATCH",
            "upstreams/app",
            "{not json".into(),
            400,
            "bad_request",
        ),
        (
            "PATCH",
            "upstreams/app",
            format!(r#"{{"peers": {{"{blue}": {{"weigth": 1}}}}}}"#),
            400,
            "bad_request",
        ),
        (
            "PATCH",
            "upstreams/app",
            format!(r#"{{"peers": {{"{blue}": {{"weight": 1001}}}}}}"#),
            400,
            "bad_request",
        ),
        (
            "PATCH",
            "upstreams/app",
            format!(r#"{{"peers": {{"{blue}": {{"state": "off"}}}}}}"#),
            400,
            "bad_request",
        ),
        (
            "PATCH",
            "upstreams/nope",
            format!(r#"{{"peers": {{"{blue}": {{"weight": 1}}}}}}"#),
            404,
            "not_found",
        ),
        (
            "PATCH",
            "upstreams/app",
            r#"{"peers": {"10.9.9.9:80": {"weight": 1}}}"#.into(),
            404,
            "not_found",
        ),
        (
            "DELETE",
            "upstreams/app",
            String::new(),
            405,
            "method_not_allowed",
        ),
        (
            "PATCH",
            "upstreams/app",
            format!(r#"{{"peers": {{"{blue}": {{"weight": 1}}}}, "expect_generation": 99}}"#),
            409,
            "conflict",
        ),
        ("PATCH", "upstreams/app", big, 413, "payload_too_large"),
        ("GET", "nothing-here", String::new(), 404, "not_found"),
    ];
    for (method, path, body, status, code) in cases {
        let response = setup.admin.request(method, path, Some(&body));
        assert_eq!(
            response.status, status,
            "{method} {path} {body:.80}: {}",
            response.body
        );
        let error: ApiError = serde_json::from_str(&response.body)
            .unwrap_or_else(|_| panic!("not a JSON error: {}", response.body));
        assert_eq!(error.error, code, "{method} {path}");
        assert!(!error.detail.is_empty());
    }
    assert_eq!(setup.admin.upstream("app"), before, "nothing changed");
}

#[test]
fn a_caller_outside_the_allow_list_gets_403() {
    let me = nix::unistd::Uid::effective().as_raw();
    let stranger = me.wrapping_add(4242);
    // Only a stranger may write; anyone may read.
    let setup = Setup::start(
        &[("blue", "")],
        "",
        &format!("writers={stranger} readers=any"),
    );
    assert_eq!(setup.admin.request("GET", "upstreams", None).status, 200);
    let patch = format!(r#"{{"peers": {{"{}": {{"weight": 5}}}}}}"#, setup.addr(0));
    let response = setup.admin.patch("app", &patch);
    assert_eq!(response.status, 403, "{}", response.body);
    assert!(
        response.body.contains(&format!("uid {me}")),
        "{}",
        response.body
    );
    assert_eq!(setup.admin.upstream("app").peers[0].weight, 1);

    // Readers default to the writers: the stranger's list shuts us out of reads too.
    let setup = Setup::start(&[("blue", "")], "", &format!("writers={stranger}"));
    assert_eq!(setup.admin.request("GET", "upstreams", None).status, 403);

    // By default root and the master's user (us) may write.
    let setup = Setup::start(&[("blue", "")], "", "");
    let patch = format!(r#"{{"peers": {{"{}": {{"weight": 5}}}}}}"#, setup.addr(0));
    assert_eq!(setup.admin.patch("app", &patch).status, 200);
}

#[test]
fn a_peer_named_twice_in_one_patch_is_refused() {
    let setup = Setup::start(&[("blue", ""), ("green", "")], "", "");
    let green = setup.addr(1);
    let body =
        format!(r#"{{"peers": {{"{green}": {{"weight": 5}}, "{green}": {{"weight": 7}}}}}}"#);
    let response = setup.admin.patch("app", &body);
    assert_eq!(response.status, 400, "{}", response.body);
    assert!(response.body.contains("named twice"), "{}", response.body);
    assert_eq!(setup.admin.upstream("app").generation, 1, "nothing changed");
}

#[test]
fn an_oversized_body_announced_with_expect_is_refused_before_it_is_sent() {
    use std::io::{BufRead, BufReader, Write};
    let setup = Setup::start(&[("blue", "")], "", "");
    let mut stream = std::os::unix::net::UnixStream::connect(setup.nginx.path("api.sock")).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(
            b"PATCH /api/upstreams/app HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\
              Content-Type: application/json\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line).unwrap();
    assert!(
        status_line.starts_with("HTTP/1.1 413"),
        "the first answer is {status_line:?}, not 413"
    );
}

/// Opens `count` connections to the Unix socket `path` without blocking (a full backlog counts
/// as refused) and sends each a request head that never ends.
fn half_sent_requests(path: &std::path::Path, count: usize) -> Vec<std::os::fd::OwnedFd> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let address = UnixAddr::new(path).unwrap();
    (0..count)
        .filter_map(|_| {
            let fd = socket(
                AddressFamily::Unix,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK,
                None,
            )
            .ok()?;
            use std::os::fd::AsRawFd;
            connect(fd.as_raw_fd(), &address).ok()?;
            let _ = nix::unistd::write(&fd, b"GET /api/upstreams HTTP/1.1\r\nHost: x\r\n");
            Some(fd)
        })
        .collect()
}

#[test]
fn half_sent_api_requests_cannot_starve_the_data_path() {
    // 1024 worker_connections per worker (the harness's); the API capped at 8 per worker.
    let setup = Setup::start(&[("blue", "")], "", "connections=8");
    let held = half_sent_requests(&setup.nginx.path("api.sock"), 2200);
    assert!(!held.is_empty(), "no connection to the API socket");
    // Every request through the proxy still gets a connection and an answer.
    for round in 0..50 {
        let response = HttpClient::new(setup.port).get("/");
        assert!(
            response
                .as_ref()
                .is_ok_and(|response| response.status == 200),
            "round {round}: {response:?}"
        );
    }
    let log = setup.nginx.error_log();
    assert!(
        log.contains("\"shift_api connections=\" allows"),
        "the cap was never reached:\n{log}"
    );
    drop(held);
    // Once the holders are gone, the API answers again.
    let back = harness::wait_until(std::time::Duration::from_secs(10), || {
        harness::api_request(&setup.nginx.path("api.sock"), "GET", "/api/upstreams", None)
            .is_ok_and(|response| response.status == 200)
    });
    assert!(back.is_some(), "the API did not come back");
}
