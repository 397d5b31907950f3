//! Run-time membership under hostile sequences, against a real Nginx (two workers): each
//! scenario here once made the module route to a freed peer, count one backend's requests on
//! another, run out of room, or take a live worker for dead. Long churns take their length
//! from `SHIFT_TEST_CHURN` (1 = the full length, the default; the runs against other Nginx
//! builds set a fraction to keep CI's time).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use harness::{
    free_port, shift_upstream_config, wait_until, Admin, Backend, Dnsmasq, HttpClient, Nginx,
    NginxOptions, ShiftSetup, Traffic,
};
use shift_wire::{Health, PeerOrigin, Upstream};

/// `full` scaled by `SHIFT_TEST_CHURN` (a fraction such as 0.2), at least `floor`.
fn churn_length(full: usize, floor: usize) -> usize {
    let scale: f64 = std::env::var("SHIFT_TEST_CHURN")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1.0);
    ((full as f64 * scale) as usize).max(floor)
}

fn status(response: &harness::Response) -> u16 {
    response.status
}

fn requests_of(upstream: &Upstream, server: &str) -> u64 {
    upstream
        .peers
        .iter()
        .find(|peer| peer.server == server)
        .map_or(0, |peer| peer.requests)
}

/// Nginx's error log lines that say a worker died of a signal other than `allowed` (a
/// test's own SIGKILL).
fn signal_deaths(log: &str, allowed: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("exited on signal"))
        .filter(|line| !allowed.iter().any(|signal| line.contains(signal)))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_runtime_peer_written_as_a_server_line_becomes_the_configs() {
    let mut setup = ShiftSetup::start(&[("blue", "")], "", "");
    let green = Backend::start("green");
    let red = Backend::start("red");
    let green_server = green.addr().to_string();
    assert_eq!(status(&setup.admin.add_peer("app", &green_server, "")), 201);
    // The operator writes the run-time peer into the config and reloads.
    let servers = [(setup.addr(0), ""), (green_server.clone(), "")];
    let http = shift_upstream_config(&servers, "", "", setup.port);
    setup.nginx.reload(Some(&http));
    let peer = setup
        .admin
        .peer("app", &green_server)
        .expect("still listed");
    assert_eq!(peer.origin, PeerOrigin::Config, "the config owns its lines");
    let delete = setup.admin.remove_peer("app", &green_server);
    assert_eq!(
        delete.status, 409,
        "a server line cannot be deleted: {}",
        delete.body
    );
    assert!(
        delete.body.contains("remove the line and reload"),
        "{}",
        delete.body
    );
    // A new peer must not take over the line's slot: every backend's requests are counted on
    // its own peer.
    assert_eq!(
        status(&setup.admin.add_peer("app", &red.addr().to_string(), "")),
        201
    );
    let (served, _) = setup.spread(200);
    assert_eq!(served.values().sum::<usize>(), 200);
    let upstream = setup.admin.upstream("app");
    for backend in [&setup.backends[0], &green, &red] {
        assert!(
            backend.hits() > 0,
            "{} got traffic: {served:?}",
            backend.name()
        );
        assert_eq!(
            requests_of(&upstream, &backend.addr().to_string()),
            backend.hits(),
            "{}'s requests are counted on its own peer: {upstream:?}",
            backend.name()
        );
    }
    // The line removed again: the config took the peer, the config drops it.
    let servers = [(setup.addr(0), "")];
    let http = shift_upstream_config(&servers, "", "", setup.port);
    setup.nginx.reload(Some(&http));
    assert!(setup.admin.peer("app", &green_server).is_none());
    let green_before = green.hits();
    let (served, _) = setup.spread(60);
    assert_eq!(
        green.hits(),
        green_before,
        "no request after the line went: {served:?}"
    );
    assert!(served.contains_key("red"), "{served:?}");
    assert!(signal_deaths(&setup.nginx.error_log(), &[]).is_empty());
}

#[test]
#[ignore = "200 address changes take about 6 minutes, mostly waiting on DNS: scripts/test.sh \
            runs it with --ignored beside the runs against the other Nginx builds"]
fn a_name_rotated_through_hundreds_of_addresses_keeps_exactly_its_one_peer() {
    let changes = churn_length(200, 40);
    let port = free_port();
    let replicas: Vec<Backend> = (0..=changes)
        .map(|n| {
            let address = format!("127.0.{}.{}:{port}", 1 + n / 250, 2 + n % 250);
            Backend::start_at(&format!("r{n}"), address.parse().unwrap())
        })
        .collect();
    let ip = |n: usize| replicas[n].addr().ip().to_string();
    let dns = Dnsmasq::start(&[(&ip(0), "backend")]);
    let http = free_port();
    let config = format!(
        "resolver 127.0.0.1:{} valid=1s ipv6=off;\nresolver_timeout 1s;\n\
         upstream app {{ shift_resolve backend:{port}; shift; }}\n\
         server {{ listen 127.0.0.1:{http}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}\n",
        dns.port()
    );
    let nginx = Nginx::start(NginxOptions::new(config));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    let listed = || -> Vec<String> {
        admin
            .upstream("app")
            .peers
            .into_iter()
            .filter(|peer| peer.origin == PeerOrigin::Resolved)
            .map(|peer| peer.server)
            .collect()
    };
    let follow = |n: usize| {
        let wanted = vec![replicas[n].addr().to_string()];
        let followed = wait_until(Duration::from_secs(15), || listed() == wanted);
        assert!(
            followed.is_some(),
            "change {n}: listed {:?}, not {wanted:?}\n{}",
            listed(),
            nginx.error_log()
        );
    };
    follow(0);
    let free_at_start = admin.metric("nginx_shift_zone_free_bytes").unwrap();
    let traffic = Traffic::start(http, 2);
    let mut late = Vec::new();
    for (n, replica) in replicas.iter().enumerate().skip(1) {
        dns.set(&[(&ip(n), "backend")]);
        follow(n);
        // Every worker routes to the new address from its next request on.
        for _ in 0..4 {
            let answer = HttpClient::new(http).get("/").map(|response| response.body);
            if answer.as_deref().ok() != Some(replica.name()) {
                late.push(format!("change {n}: {answer:?}"));
            }
        }
    }
    let report = traffic.stop();
    assert!(
        late.is_empty(),
        "requests after a change went elsewhere: {late:?}"
    );
    assert!(
        report.failed.is_empty(),
        "failed requests: {:?}",
        &report.failed[..report.failed.len().min(10)]
    );
    assert!(report.total() > changes as u64, "traffic ran: {report:?}");
    let log = nginx.error_log();
    assert!(!log.contains("not added"), "{log}");
    // Every replaced address gave its place back (a GET reclaims what nothing holds).
    let freed = wait_until(Duration::from_secs(5), || {
        admin.metric("nginx_shift_zone_free_bytes").unwrap() >= free_at_start
    });
    assert!(
        freed.is_some(),
        "zone: {} free bytes at the start, {} now",
        free_at_start,
        admin.metric("nginx_shift_zone_free_bytes").unwrap()
    );
}

/// Blue behind `app`, with one of the debug builds' test hooks (`VARIABLE=VALUE` through
/// Nginx's `env`), which the log must confirm.
fn with_test_hook(variable: &str, logged: &str) -> ShiftSetup {
    let setup = ShiftSetup::start_with(&[("blue", "")], "", "", |mut options| {
        options.main = format!("env {variable};");
        options
    });
    // Each worker says so as it starts, which may be just after Nginx answers.
    let active = wait_until(Duration::from_secs(5), || {
        setup.nginx.error_log().contains(logged)
    });
    assert!(
        active.is_some(),
        "the test hook {variable} is active (a debug build of the module)"
    );
    setup
}

#[test]
fn unreadable_proc_entries_never_make_a_live_worker_dead() {
    // As under hidepid=2: the workers cannot read the other processes' /proc entries.
    let setup = with_test_hook("SHIFT_TEST_HIDE_PROC=1", "/proc entries are hidden");
    let blue = setup.addr(0);
    // A slow request in flight on one worker; API requests answered by both workers must keep
    // counting it (a worker taken for dead would have its record freed, and its count gone).
    let port = setup.port;
    let slow = thread::spawn(move || HttpClient::new(port).get("/slow/2500"));
    let started = wait_until(Duration::from_secs(5), || {
        setup
            .admin
            .peer("app", &blue)
            .is_some_and(|peer| peer.active == 1)
    });
    assert!(started.is_some(), "the slow request reached blue");
    let green = Backend::start("green");
    for round in 0..40 {
        let active = setup.admin.peer("app", &blue).map(|peer| peer.active);
        assert_eq!(
            active,
            Some(1),
            "round {round}: the slow request still counts"
        );
        // Writes take the table lock and place peers: they work as before.
        let server = green.addr().to_string();
        assert_eq!(status(&setup.admin.add_peer("app", &server, "")), 201);
        assert_eq!(status(&setup.admin.remove_peer("app", &server)), 200);
    }
    let answer = slow.join().unwrap().expect("the slow request");
    assert_eq!(answer.status, 200);
    assert_eq!(
        setup.admin.peer("app", &blue).map(|peer| peer.active),
        Some(0)
    );
    let (served, workers) = setup.spread(40);
    assert_eq!(workers.len(), 2, "both workers serve: {served:?}");
    assert!(signal_deaths(&setup.nginx.error_log(), &[]).is_empty());
}

#[test]
fn a_worker_without_a_record_routes_to_server_lines_only() {
    // Worker 1 does not register, as a worker that found the zone full.
    let setup = with_test_hook(
        "SHIFT_TEST_UNREGISTERED_WORKER=1",
        "worker 1 does not register",
    );
    let replicas: Vec<Backend> = (0..4).map(|n| Backend::start(&format!("r{n}"))).collect();
    let mut served_by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for round in 0..20 {
        let replica = &replicas[round % replicas.len()];
        let server = replica.addr().to_string();
        assert_eq!(status(&setup.admin.add_peer("app", &server, "")), 201);
        for _ in 0..20 {
            let response = HttpClient::new(setup.port).get("/").expect("a request");
            assert_eq!(response.status, 200, "{}", response.body);
            let worker = response.header("X-Worker").unwrap_or_default().to_string();
            served_by.entry(worker).or_default().insert(response.body);
        }
        assert_eq!(status(&setup.admin.remove_peer("app", &server)), 200);
    }
    assert_eq!(served_by.len(), 2, "both workers served: {served_by:?}");
    let (only_blue, with_replicas): (Vec<_>, Vec<_>) = served_by
        .values()
        .partition(|names| names.iter().all(|name| name == "blue"));
    assert_eq!(
        (only_blue.len(), with_replicas.len()),
        (1, 1),
        "the unregistered worker routes to blue only, the other to the replicas too: \
         {served_by:?}"
    );
    assert!(setup
        .nginx
        .error_log()
        .contains("has no record in the shared zone"));
    assert!(signal_deaths(&setup.nginx.error_log(), &[]).is_empty());
}

/// A DELETE that lands while a worker builds its peer list (the list is made under the zone's
/// lock, its routes read after it) is not missed: no request sent after the DELETE was
/// acknowledged reaches the deleted peer, on either worker. The test hook stops each worker for
/// 400 ms right after it builds a list; the DELETE is answered by the other worker meanwhile.
#[test]
fn a_delete_while_a_worker_builds_its_list_is_not_missed() {
    let setup = with_test_hook(
        "SHIFT_TEST_PAUSE_AFTER_LIST_MS=400",
        "pauses 400 ms after each peer list",
    );
    let green = Backend::start("green");
    let server = green.addr().to_string();
    for round in 0..3 {
        let added = setup.admin.add_peer("app", &server, r#""weight": 100"#);
        assert_eq!(status(&added), 201, "round {round}");
        // The worker that takes this request builds its list with green, and pauses.
        let port = setup.port;
        let first = thread::spawn(move || HttpClient::new(port).get("/"));
        thread::sleep(Duration::from_millis(150));
        let removed = setup.admin.remove_peer("app", &server);
        assert_eq!(status(&removed), 200, "round {round}");
        first
            .join()
            .unwrap()
            .expect("the request sent before the DELETE");
        for _ in 0..20 {
            let response = HttpClient::new(setup.port).get("/").expect("a request");
            assert_eq!(
                response.body,
                "blue",
                "round {round}: worker {:?} routed to the deleted peer",
                response.header("X-Worker")
            );
        }
    }
}

#[test]
fn a_peer_unhealthy_when_checks_are_removed_takes_traffic_again() {
    let blue = Backend::start("blue");
    let green = Backend::start("green");
    green.set_status(503);
    let port = free_port();
    let config = |check: &str| {
        format!(
            "upstream app {{\n    server {};\n    server {};\n    shift;\n    {check}\n}}\n\
             server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
             server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}\n",
            blue.addr(),
            green.addr()
        )
    };
    let mut nginx = Nginx::start(NginxOptions::new(config(
        "shift_check interval=200ms fails=1 passes=1;",
    )));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    let health = |admin: &Admin| {
        admin
            .peer("app", &green.addr().to_string())
            .map(|peer| peer.health)
    };
    let unhealthy = wait_until(Duration::from_secs(10), || {
        health(&admin) == Some(Health::Unhealthy)
    });
    assert!(unhealthy.is_some(), "green failed its checks");
    // Green recovers, and the operator removes the checks: nothing would ever probe it again.
    green.set_status(200);
    nginx.reload(Some(&config("")));
    assert_eq!(health(&admin), Some(Health::Unchecked));
    let peer = admin.peer("app", &green.addr().to_string()).unwrap();
    assert!(peer.eligible, "{peer:?}");
    let before = green.hits();
    for _ in 0..20 {
        let response = HttpClient::new(port).get("/").expect("a request");
        assert_eq!(response.status, 200);
    }
    assert!(green.hits() > before, "green takes traffic again");
}

#[test]
fn a_state_file_whose_runtime_peer_is_no_address_is_refused_and_set_aside() {
    let state_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        state_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let state = state_dir.path().join("app.json");
    let blue = Backend::start("blue");
    let port = free_port();
    let servers = [(blue.addr().to_string(), "")];
    let http = shift_upstream_config(&servers, &format!("state={}", state.display()), "", port);
    // A hand-edited file: a run-time peer that is a name, not an address.
    let saved = serde_json::json!({
        "upstream": "app",
        "generation": 5,
        "peers": [
            {"server": blue.addr().to_string(), "config_weight": 1, "config_down": false,
             "backup": false, "weight": 1, "state": "up", "origin": "config"},
            {"server": "backend:8000", "config_weight": 1, "config_down": false,
             "backup": false, "weight": 1, "state": "up", "origin": "api"}
        ]
    });
    std::fs::write(&state, saved.to_string()).unwrap();
    let nginx = Nginx::start(NginxOptions::new(http));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    let log = nginx.error_log();
    assert!(log.contains("not an address IP:PORT"), "{log}");
    assert!(log.contains("moved to"), "{log}");
    let upstream = admin.upstream("app");
    assert_eq!(upstream.peers.len(), 1, "{upstream:?}");
    // Peers added from now on take traffic, and removed ones stop.
    let green = Backend::start("green");
    let server = green.addr().to_string();
    assert_eq!(status(&admin.add_peer("app", &server, "")), 201);
    let answered = wait_until(Duration::from_secs(5), || {
        HttpClient::new(port)
            .get("/")
            .is_ok_and(|response| response.body == "green")
    });
    assert!(answered.is_some(), "the added peer takes traffic");
    assert_eq!(status(&admin.remove_peer("app", &server)), 200);
    let before = green.hits();
    for _ in 0..20 {
        assert_eq!(HttpClient::new(port).get("/").unwrap().body, "blue");
    }
    assert_eq!(green.hits(), before);
}

#[test]
fn ten_thousand_adds_and_removes_under_traffic_give_the_zone_back() {
    let cycles = churn_length(10_000, 1_000);
    let setup = ShiftSetup::start(&[("blue", "")], "", "");
    let replicas: Vec<Backend> = (0..8).map(|n| Backend::start(&format!("r{n}"))).collect();
    // One cycle first: the allocator's first page for slots of this size.
    let first = replicas[0].addr().to_string();
    assert_eq!(status(&setup.admin.add_peer("app", &first, "")), 201);
    assert_eq!(status(&setup.admin.remove_peer("app", &first)), 200);
    let free_at_start = setup.admin.metric("nginx_shift_zone_free_bytes").unwrap();
    let traffic = Traffic::start(setup.port, 2);
    let started = Instant::now();
    for cycle in 0..cycles {
        let server = replicas[cycle % replicas.len()].addr().to_string();
        let added = setup.admin.add_peer("app", &server, "");
        assert_eq!(added.status, 201, "cycle {cycle}: {}", added.body);
        let removed = setup.admin.remove_peer("app", &server);
        assert_eq!(removed.status, 200, "cycle {cycle}: {}", removed.body);
    }
    let took = started.elapsed();
    let report = traffic.stop();
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    assert!(report.total() > 0);
    let back = wait_until(Duration::from_secs(5), || {
        setup.admin.metric("nginx_shift_zone_free_bytes").unwrap() == free_at_start
    });
    assert!(
        back.is_some(),
        "after {cycles} cycles ({took:?}): {} free bytes, {} at the start",
        setup.admin.metric("nginx_shift_zone_free_bytes").unwrap(),
        free_at_start
    );
    assert_eq!(setup.admin.upstream("app").peers.len(), 1);
    assert!(signal_deaths(&setup.nginx.error_log(), &[]).is_empty());
}

/// What the request loop of `random_churn_never_routes_to_a_deleted_peer` saw: when each
/// request was sent and who answered (None: it failed).
type Answers = Vec<(Instant, Option<String>)>;

#[test]
fn random_churn_never_routes_to_a_deleted_peer() {
    let seed: u64 = std::env::var("SHIFT_TEST_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("random churn: SHIFT_TEST_SEED={seed}");
    let steps = churn_length(300, 60);
    let mut rng = seed.max(1);
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    let mut setup = ShiftSetup::start(&[("blue", "")], "", "");
    let replicas: Vec<Backend> = (0..6).map(|n| Backend::start(&format!("r{n}"))).collect();
    let servers: Vec<String> = replicas.iter().map(|r| r.addr().to_string()).collect();
    let line = servers[0].clone(); // r0 comes and goes as a server line too

    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Answers>> = Arc::default();
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let (stop, answers, port) = (stop.clone(), answers.clone(), setup.port);
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let answer = HttpClient::new(port)
                        .get("/")
                        .ok()
                        .filter(|response| response.status == 200)
                        .map(|response| response.body);
                    answers.lock().unwrap().push((sent, answer));
                }
            })
        })
        .collect();

    // When each replica was last deleted (the answer's time), and when it may have come back
    // (a POST or a reload with its line, from the moment it was sent).
    let mut deleted: BTreeMap<String, Instant> = BTreeMap::new();
    let mut returning: BTreeMap<String, Vec<Instant>> = BTreeMap::new();
    let mut kills = 0;
    let mut with_line = false;
    for step in 0..steps {
        let pick = next(servers.len());
        let (name, server) = (replicas[pick].name().to_string(), &servers[pick]);
        match next(100) {
            0..=39 => {
                returning.entry(name).or_default().push(Instant::now());
                let answer = setup.admin.add_peer("app", server, "");
                assert!(
                    matches!(answer.status, 201 | 409),
                    "step {step}: POST {server}: {} {}",
                    answer.status,
                    answer.body
                );
            }
            40..=74 => {
                let answer = setup.admin.remove_peer("app", server);
                match answer.status {
                    200 => {
                        deleted.insert(name, Instant::now());
                    }
                    404 | 409 => {}
                    other => panic!("step {step}: DELETE {server}: {other} {}", answer.body),
                }
            }
            75..=84 => {
                let weight = next(5);
                let answer = setup.admin.patch(
                    "app",
                    &format!(r#"{{"peers": {{"{server}": {{"weight": {weight}}}}}}}"#),
                );
                assert!(
                    matches!(answer.status, 200 | 404),
                    "step {step}: PATCH: {} {}",
                    answer.status,
                    answer.body
                );
                // Keep blue up so that every request has somewhere to go.
                setup.admin.set_weights("app", &[(&setup.addr(0), 1)]);
            }
            85..=92 => {
                with_line = !with_line;
                let mut lines = vec![(setup.addr(0), "")];
                if with_line {
                    returning
                        .entry(replicas[0].name().to_string())
                        .or_default()
                        .push(Instant::now());
                    // Often a run-time peer first, which the line then takes over.
                    if next(2) == 0 {
                        let _ = setup.admin.add_peer("app", &line, "");
                    }
                    lines.push((line.clone(), ""));
                }
                let http = shift_upstream_config(&lines, "", "", setup.port);
                setup.nginx.reload(Some(&http));
                if !with_line {
                    // The config dropped the line (and the peer with it), once the reload
                    // finished and the old workers were gone.
                    deleted.insert(replicas[0].name().to_string(), Instant::now());
                }
            }
            _ => {
                let workers = setup.nginx.worker_pids();
                let victim = workers[next(workers.len())];
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(victim as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                kills += 1;
                let respawned = wait_until(Duration::from_secs(10), || {
                    let now = setup.nginx.worker_pids();
                    now.len() == 2 && !now.contains(&victim)
                });
                assert!(
                    respawned.is_some(),
                    "step {step}: the master starts another worker"
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for handle in loops {
        handle.join().unwrap();
    }
    let answers = answers.lock().unwrap();
    let mut late = Vec::new();
    for (sent, answer) in answers.iter() {
        let Some(name) = answer else { continue };
        let Some(&gone) = deleted.get(name) else {
            continue;
        };
        let came_back = returning
            .get(name)
            .is_some_and(|times| times.iter().any(|&time| time > gone && time <= *sent));
        if *sent > gone && !came_back {
            late.push(format!("{name}, {:?} after its removal", *sent - gone));
        }
    }
    assert!(
        late.is_empty(),
        "seed {seed}: requests sent after their peer's removal was answered: {late:?}"
    );
    let failed = answers
        .iter()
        .filter(|(_, answer)| answer.is_none())
        .count();
    assert!(
        failed <= kills * 4,
        "seed {seed}: {failed} failed requests with {kills} workers killed"
    );
    let deaths = signal_deaths(&setup.nginx.error_log(), &["signal 9"]);
    assert!(deaths.is_empty(), "seed {seed}: {deaths:?}");
    assert!(answers.len() > steps, "traffic ran: {}", answers.len());
}
