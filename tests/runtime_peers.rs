//! Peers added and removed at run time through the API (`POST …/peers`, `DELETE …/peers/…`),
//! against a real Nginx: they take traffic in every worker at once, a removed one finishes its
//! requests and takes no new ones, and both survive reloads and restarts.

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::Duration;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use harness::{wait_until, Backend, HttpClient, ShiftSetup, Traffic};
use shift_wire::{PatchApplied, PeerOrigin, PeerRemoval};

fn decode<T: serde::de::DeserializeOwned>(response: &harness::Response, status: u16) -> T {
    assert_eq!(response.status, status, "answer: {}", response.body);
    serde_json::from_str(&response.body).expect("a JSON answer")
}

/// A request that takes `ms` on `server`, the only peer taking traffic, once it is in flight
/// there; the handle gives its answer.
fn slow_request_on(
    setup: &ShiftSetup,
    server: &str,
    ms: u64,
) -> thread::JoinHandle<std::io::Result<harness::Response>> {
    let port = setup.port;
    let slow = thread::spawn(move || HttpClient::new(port).get(&format!("/slow/{ms}")));
    let in_flight = wait_until(Duration::from_secs(5), || {
        setup
            .admin
            .peer("app", server)
            .is_some_and(|peer| peer.active == 1)
    });
    assert!(in_flight.is_some(), "the slow request reached {server}");
    slow
}

/// Upstream `app` with blue and a mandatory check every `interval`.
fn blue_with_mandatory_check(interval: &str) -> ShiftSetup {
    ShiftSetup::start_with(&[("blue", "")], "", "", |mut options| {
        options.http = options.http.replacen(
            "    shift ;\n",
            &format!("    shift ;\n    shift_check interval={interval} mandatory;\n"),
            1,
        );
        assert!(options.http.contains("shift_check"), "{}", options.http);
        options
    })
}

/// Who answered `count` requests, each on a new connection so that both workers take some.
fn spread(setup: &ShiftSetup, count: usize) -> BTreeMap<String, usize> {
    setup.spread(count).0
}

#[test]
fn an_added_peer_takes_traffic_in_every_worker_at_once() {
    let setup = ShiftSetup::start(&[("blue", "")], "", "");
    let green = Backend::start("green");
    let added: PatchApplied = decode(
        &setup
            .admin
            .add_peer("app", &green.addr().to_string(), r#""weight": 1"#),
        201,
    );
    assert_eq!(added.peers.len(), 1, "the answer holds the peer it added");
    let peer = &added.peers[0];
    assert_eq!(peer.server, green.addr().to_string());
    assert_eq!(peer.origin, PeerOrigin::Api);
    assert_eq!(added.generation, 2);
    // Both workers route to it from their next request on.
    let (served, workers) = setup.spread(200);
    assert_eq!(workers.len(), 2, "both workers answered: {workers:?}");
    assert!(served.get("green").copied().unwrap_or(0) > 50, "{served:?}");
    assert!(served.get("blue").copied().unwrap_or(0) > 50, "{served:?}");
    // It is a peer like the others: PATCH moves it, metrics count it.
    setup.admin.set_weights(
        "app",
        &[(&setup.addr(0), 0), (&green.addr().to_string(), 5)],
    );
    assert_eq!(
        spread(&setup, 40),
        BTreeMap::from([("green".to_string(), 40)])
    );
    let metrics = setup.admin.request("GET", "metrics", None).body;
    assert!(metrics.contains(&green.addr().to_string()), "{metrics}");
}

#[test]
fn a_removed_peer_finishes_its_requests_and_takes_no_new_ones() {
    let setup = ShiftSetup::start(&[("blue", "")], "", "");
    let green = Backend::start("green");
    let server = green.addr().to_string();
    decode::<PatchApplied>(&setup.admin.add_peer("app", &server, ""), 201);
    setup.admin.set_weights("app", &[(&setup.addr(0), 0)]);
    // A slow request on green is in flight when it is removed.
    let slow = slow_request_on(&setup, &server, 1500);
    let path = format!("upstreams/app/peers/{server}?full=1");
    let removal: PeerRemoval = decode(&setup.admin.request("DELETE", &path, None), 200);
    assert!(!removal.gone);
    assert_eq!(removal.active, 1);
    let rest = removal.upstream.expect("?full=1 answers with the upstream");
    assert_eq!(rest.generation, removal.generation);
    assert!(rest.peers.iter().all(|peer| peer.server != server));
    // New requests go to blue at once (weight 0 there, but it is the only peer: 502 if not).
    setup.admin.set_weights("app", &[(&setup.addr(0), 1)]);
    assert_eq!(
        spread(&setup, 20),
        BTreeMap::from([("blue".to_string(), 20)])
    );
    // The request in flight ends well.
    let answer = slow.join().unwrap().expect("the slow request");
    assert_eq!((answer.status, answer.body.as_str()), (200, "green"));
    assert!(setup.admin.peer("app", &server).is_none());
    // Gone for good: a second DELETE does not find it, and it can be added back.
    assert_eq!(setup.admin.remove_peer("app", &server).status, 404);
    decode::<PatchApplied>(&setup.admin.add_peer("app", &server, ""), 201);
    assert!(spread(&setup, 40).contains_key("green"));
}

#[test]
fn runtime_peers_stay_across_reloads_and_restarts() {
    // The workers write the state file; when the tests run as root they run as nobody.
    let state_dir = tempfile::tempdir().unwrap();
    fs::set_permissions(state_dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let shift_args = format!("state={}", state_dir.path().join("app.json").display());
    let mut setup = ShiftSetup::start(&[("blue", "")], &shift_args, "");
    let green = Backend::start("green");
    let server = green.addr().to_string();
    decode::<PatchApplied>(&setup.admin.add_peer("app", &server, r#""weight": 3"#), 201);
    setup.nginx.reload(None);
    let kept = |setup: &ShiftSetup| {
        let peer = setup.admin.peer("app", &server);
        peer.map(|peer| (peer.weight, peer.origin))
    };
    assert_eq!(
        kept(&setup),
        Some((3, PeerOrigin::Api)),
        "kept across the reload"
    );
    assert!(spread(&setup, 40).contains_key("green"));
    setup.nginx.restart();
    assert_eq!(
        kept(&setup),
        Some((3, PeerOrigin::Api)),
        "restored after the restart"
    );
    assert!(spread(&setup, 40).contains_key("green"));
    // Removed, it stays removed across a restart too.
    decode::<PeerRemoval>(&setup.admin.remove_peer("app", &server), 200);
    setup.nginx.restart();
    assert!(setup.admin.peer("app", &server).is_none());
}

#[test]
fn adds_and_removes_under_load_and_reloads_fail_no_request() {
    let mut setup = ShiftSetup::start(&[("blue", "")], "", "");
    let replicas: Vec<Backend> = ["green", "red", "gold"]
        .iter()
        .map(|name| Backend::start(name))
        .collect();
    let traffic = Traffic::start(setup.port, 3);
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for round in 0..24 {
        let replica = replicas[round % replicas.len()].addr().to_string();
        if expected.remove(&replica) {
            decode::<PeerRemoval>(&setup.admin.remove_peer("app", &replica), 200);
        } else {
            decode::<PatchApplied>(&setup.admin.add_peer("app", &replica, ""), 201);
            expected.insert(replica);
        }
        if round % 6 == 5 {
            setup.nginx.reload(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
    let report = traffic.stop();
    assert!(
        report.failed.is_empty(),
        "failed requests: {:?}",
        report.failed
    );
    let answered = report.total();
    assert!(answered > 100, "only {answered} requests went through");
    let runtime: BTreeSet<String> = setup
        .admin
        .upstream("app")
        .peers
        .iter()
        .filter(|peer| peer.origin == PeerOrigin::Api)
        .map(|peer| peer.server.clone())
        .collect();
    assert_eq!(runtime, expected, "every acknowledged add and remove holds");
}

#[test]
fn an_upstream_takes_more_run_time_peers_than_its_first_room() {
    let mut setup = ShiftSetup::start(&[("blue", "")], "", "");
    // Each configuration starts with room for 32 run-time peers here (docs/api.md), and grows.
    let replicas: Vec<Backend> = (0..70).map(|n| Backend::start(&format!("r{n}"))).collect();
    for replica in &replicas {
        decode::<PatchApplied>(
            &setup.admin.add_peer("app", &replica.addr().to_string(), ""),
            201,
        );
    }
    setup.admin.set_weights("app", &[(&setup.addr(0), 0)]);
    let check_every_replica_answers = |setup: &ShiftSetup| {
        let (served, workers) = setup.spread(300);
        assert_eq!(workers.len(), 2, "{served:?}");
        for replica in &replicas {
            assert!(
                served.contains_key(replica.name()),
                "{} never answered: {served:?}",
                replica.name()
            );
        }
    };
    check_every_replica_answers(&setup);
    // A request in flight on a peer past the first room is counted like any other.
    let last = replicas.last().unwrap().addr().to_string();
    let weights: Vec<(String, u32)> = replicas
        .iter()
        .map(|replica| {
            (
                replica.addr().to_string(),
                u32::from(replica.addr().to_string() == last),
            )
        })
        .collect();
    let weights: Vec<(&str, u32)> = weights.iter().map(|(s, w)| (s.as_str(), *w)).collect();
    setup.admin.set_weights("app", &weights);
    let port = setup.port;
    let slow = thread::spawn(move || HttpClient::new(port).get("/slow/1500"));
    let counted = wait_until(Duration::from_secs(5), || {
        setup
            .admin
            .peer("app", &last)
            .is_some_and(|peer| peer.active == 1)
    });
    assert!(counted.is_some(), "{:?}", setup.admin.peer("app", &last));
    assert_eq!(
        slow.join().unwrap().unwrap().body,
        replicas.last().unwrap().name()
    );
    // A reload carries them all into a configuration with room for them.
    let weights: Vec<(&str, u32)> = weights.iter().map(|(s, _)| (*s, 1)).collect();
    setup.admin.set_weights("app", &weights);
    setup.nginx.reload(None);
    assert_eq!(setup.admin.upstream("app").peers.len(), 71);
    check_every_replica_answers(&setup);
    for replica in &replicas {
        decode::<PeerRemoval>(
            &setup.admin.remove_peer("app", &replica.addr().to_string()),
            200,
        );
    }
    setup.admin.set_weights("app", &[(&setup.addr(0), 1)]);
    assert_eq!(
        spread(&setup, 20),
        BTreeMap::from([("blue".to_string(), 20)])
    );
}

#[test]
fn a_mandatory_check_keeps_an_added_peer_out_until_it_passes() {
    let setup = blue_with_mandatory_check("200ms");
    let green = Backend::start("green");
    let dead = format!("127.0.0.1:{}", harness::free_port());
    decode::<PatchApplied>(&setup.admin.add_peer("app", &dead, r#""weight": 100"#), 201);
    decode::<PatchApplied>(
        &setup
            .admin
            .add_peer("app", &green.addr().to_string(), r#""weight": 100"#),
        201,
    );
    let green_healthy = wait_until(Duration::from_secs(10), || {
        setup.admin.upstream("app").peers.iter().any(|peer| {
            peer.server == green.addr().to_string() && peer.health == shift_wire::Health::Healthy
        })
    });
    assert!(green_healthy.is_some(), "green was probed and passed");
    let upstream = setup.admin.upstream("app");
    let dead_peer = upstream
        .peers
        .iter()
        .find(|peer| peer.server == dead)
        .unwrap();
    assert!(
        !dead_peer.eligible,
        "a peer that never passed takes nothing: {dead_peer:?}"
    );
    let served = spread(&setup, 60);
    assert!(served.get("green").copied().unwrap_or(0) > 30, "{served:?}");
    assert_eq!(
        served.values().sum::<usize>(),
        60,
        "no request failed: {served:?}"
    );
}

/// A peer deleted while a request still runs on it (its slot kept) and added again is a new
/// instance: a later `joined_ms`, no counters, and unchecked, so that a mandatory check keeps
/// it out until the new instance passes one.
#[test]
fn a_peer_deleted_and_added_again_is_a_new_instance() {
    let setup = blue_with_mandatory_check("1s");
    let green = Backend::start("green");
    let server = green.addr().to_string();
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let added: PatchApplied = decode(&setup.admin.add_peer("app", &server, ""), 201);
    let first_joined = added.peers[0].joined_ms;
    assert!(
        (before_ms..before_ms + 60_000).contains(&first_joined),
        "joined when it was added: {first_joined} against {before_ms}"
    );
    let healthy = wait_until(Duration::from_secs(10), || {
        setup
            .admin
            .peer("app", &server)
            .is_some_and(|peer| peer.health == shift_wire::Health::Healthy)
    });
    assert!(healthy.is_some(), "green passed its checks");
    setup.admin.set_weights("app", &[(&setup.addr(0), 0)]);
    assert_eq!(spread(&setup, 10).get("green"), Some(&10));
    let slow = slow_request_on(&setup, &server, 2000);

    let path = format!("upstreams/app/peers/{server}");
    let removal: PeerRemoval = decode(&setup.admin.request("DELETE", &path, None), 200);
    assert!(!removal.gone, "its request holds it");
    let again: PatchApplied = decode(&setup.admin.add_peer("app", &server, ""), 201);
    let second = &again.peers[0];
    assert!(
        second.joined_ms > first_joined,
        "a new instance: {first_joined} then {second:?}"
    );
    assert_eq!((second.requests, second.failures), (0, 0), "{second:?}");
    assert_eq!(second.health, shift_wire::Health::Unchecked, "{second:?}");
    assert!(!second.eligible, "no traffic on the old instance's checks");
    assert!(
        second
            .check
            .as_ref()
            .is_some_and(|check| check.last_check_ms.is_none()),
        "{second:?}"
    );
    let healthy = wait_until(Duration::from_secs(10), || {
        setup
            .admin
            .peer("app", &server)
            .is_some_and(|peer| peer.eligible)
    });
    assert!(healthy.is_some(), "the new instance passed its own check");
    let answer = slow.join().unwrap().expect("the slow request");
    assert_eq!((answer.status, answer.body.as_str()), (200, "green"));
}

#[test]
fn an_added_peer_works_behind_keepalive() {
    let setup = ShiftSetup::start_with(&[("blue", "")], "", "", |mut options| {
        options.http = options
            .http
            .replacen("    shift ;\n", "    shift ;\n    keepalive 16;\n", 1)
            .replace(
                "proxy_pass http://app;",
                "proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\";",
            );
        options
    });
    let green = Backend::start("green");
    decode::<PatchApplied>(
        &setup.admin.add_peer("app", &green.addr().to_string(), ""),
        201,
    );
    // Upstream connections to the added peer are cached and reused by concurrent requests,
    // which copies its address into the keepalive cache each time.
    let port = setup.port;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut served = BTreeMap::new();
                for _ in 0..50 {
                    let response = HttpClient::new(port).get("/").expect("a request");
                    assert_eq!(response.status, 200, "{}", response.body);
                    *served.entry(response.body).or_insert(0) += 1;
                }
                served
            })
        })
        .collect();
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for client in clients {
        for (name, count) in client.join().expect("no request failed") {
            *served.entry(name).or_insert(0) += count;
        }
    }
    assert!(
        !setup.nginx.error_log().contains("exited on signal"),
        "a worker crashed"
    );
    assert!(
        served.contains_key("green") && served.contains_key("blue"),
        "{served:?}"
    );
}
