//! The runtime state's lifecycle against a real Nginx with two workers, as operators meet it:
//! reloads right after a change and in storms under load, reloads that fail, slow requests that
//! outlive many reloads, workers killed mid-request, a zone too small and then grown, and a state
//! file that cannot be trusted. Every scenario is bounded in time.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use harness::{
    check_config, free_port, shift_upstream_config, wait_until, Admin, HttpClient, NginxOptions,
    ShiftSetup,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shift_wire::{PeerState, Upstream};

fn weight_of(upstream: &Upstream, server: &str) -> u32 {
    upstream
        .peers
        .iter()
        .find(|peer| peer.server == server)
        .unwrap_or_else(|| panic!("no peer {server} in {upstream:?}"))
        .weight
}

fn set_weight(admin: &Admin, server: &str, weight: u32) -> u16 {
    let body = format!(r#"{{"peers": {{"{server}": {{"weight": {weight}}}}}}}"#);
    admin.patch("app", &body).status
}

/// A directory the workers (nobody, when the tests run as root) may write state files in.
fn state_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// The same config as `setup`'s, plus `extra` at the end of the `http {}` block.
fn config_with(setup: &ShiftSetup, shift_args: &str, extra: &str) -> String {
    let servers: Vec<(String, &str)> = (0..setup.backends.len())
        .map(|index| (setup.addr(index), ""))
        .collect();
    format!(
        "{}{extra}\n",
        shift_upstream_config(&servers, shift_args, "", setup.port)
    )
}

#[test]
fn a_patch_sent_while_a_reload_is_under_way_is_never_lost() {
    let dir = state_dir();
    let state = dir.path().join("app.json");
    let shift_args = format!("state={}", state.display());
    let mut setup = ShiftSetup::start(&[("blue", ""), ("green", "")], &shift_args, "");
    let blue = setup.addr(0);
    for round in 0..10u32 {
        let old = setup.nginx.begin_reload(None);
        // From at once to 225 ms after SIGHUP: while the master builds the new configuration,
        // commits it, and while old workers still accept on the API socket.
        thread::sleep(Duration::from_millis(u64::from(round) * 25));
        let weight = 100 + round;
        assert_eq!(
            set_weight(&setup.admin, &blue, weight),
            200,
            "round {round}"
        );
        setup.nginx.finish_reload(&old);
        let upstream = setup.admin.upstream("app");
        assert_eq!(
            weight_of(&upstream, &blue),
            weight,
            "round {round}: the change was lost"
        );
        let saved = fs::read_to_string(&state).unwrap();
        assert!(
            saved.contains(&format!("\"weight\": {weight}")),
            "round {round}: the state file disagrees: {saved}"
        );
    }
}

#[test]
fn patches_during_a_reload_storm_under_load_are_all_applied() {
    let mut setup = ShiftSetup::start(&[("blue", ""), ("green", "")], "", "");
    let blue = setup.addr(0);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, port) = (stop.clone(), setup.port);
        thread::spawn(move || {
            let mut client = HttpClient::new(port);
            let mut answered = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if client.get("/").is_ok_and(|response| response.status == 200) {
                    answered += 1;
                }
            }
            answered
        })
    };
    let writer = {
        let (stop, socket, blue) = (stop.clone(), setup.nginx.path("api.sock"), blue.clone());
        thread::spawn(move || {
            let admin = Admin::new(socket, "/api/");
            let (mut acknowledged, mut lost, mut last) = (0u32, Vec::new(), None);
            let mut weight = 0;
            while !stop.load(Ordering::Relaxed) {
                weight = weight % 1000 + 1;
                if set_weight(&admin, &blue, weight) != 200 {
                    continue;
                }
                acknowledged += 1;
                last = Some(weight);
                // Read it back at once, from whichever worker of whichever generation answers.
                let seen = weight_of(&admin.upstream("app"), &blue);
                if seen != weight {
                    lost.push((weight, seen));
                }
            }
            (acknowledged, lost, last)
        })
    };
    for _ in 0..30 {
        setup.nginx.reload(None);
    }
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, lost, last) = writer.join().unwrap();
    let answered = traffic.join().unwrap();
    assert!(
        acknowledged >= 30,
        "only {acknowledged} PATCHes were acknowledged"
    );
    assert!(answered > 0, "no traffic went through during the storm");
    assert!(
        lost.is_empty(),
        "acknowledged, then read back otherwise: {lost:?}"
    );
    assert_eq!(
        Some(weight_of(&setup.admin.upstream("app"), &blue)),
        last,
        "the last acknowledged weight is the one that stays"
    );
}

#[test]
fn failed_reloads_change_nothing_and_leak_nothing() {
    let mut setup = ShiftSetup::start(&[("blue", ""), ("green", "")], "", "");
    let (blue, green) = (setup.addr(0), setup.addr(1));
    setup.nginx.reload(None);
    let free_after_one_reload = settled_free(&setup.admin);

    // A port someone else holds: the reload fails after our zone has been set up, and it brings
    // an upstream of its own that must never show.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let ghost = format!(
        "upstream ghost {{ server {green}; shift; }}\n\
         server {{ listen {}; location / {{ proxy_pass http://ghost; }} }}",
        taken.local_addr().unwrap()
    );
    let failing = config_with(&setup, "", &ghost);
    for round in 0..6u32 {
        let why = setup.nginx.failed_reload(&failing);
        assert!(why.contains("bind()"), "{why}");
        assert_eq!(set_weight(&setup.admin, &blue, 10 + round), 200);
        let names: Vec<String> = setup
            .admin
            .upstreams()
            .upstreams
            .into_iter()
            .map(|upstream| upstream.name)
            .collect();
        assert_eq!(names, ["app"], "round {round}");
        let (served, _) = setup.spread(10);
        assert_eq!(served.values().sum::<usize>(), 10, "round {round}");
    }
    setup.nginx.reload(None);
    let upstream = setup.admin.upstream("app");
    assert_eq!(
        weight_of(&upstream, &blue),
        15,
        "the last PATCH survived every reload"
    );
    assert_eq!(
        settled_free(&setup.admin),
        free_after_one_reload,
        "failed reloads left memory behind"
    );
}

#[test]
fn a_long_request_across_many_reloads_counts_on_its_own_peer() {
    let mut setup = ShiftSetup::start(&[("blue", "")], "", "");
    let blue = setup.addr(0);
    let slow = {
        let port = setup.port;
        thread::spawn(move || HttpClient::new(port).get("/slow/4000").unwrap().status)
    };
    let active = |setup: &ShiftSetup| setup.admin.upstream("app").peers[0].active;
    assert!(
        wait_until(Duration::from_secs(5), || active(&setup) == 1).is_some(),
        "the slow request never showed as active"
    );
    let before = setup.admin.upstream("app").peers[0].responses.success;
    // Reloads that add and drop another upstream, so that memory is freed and placed again
    // while the slow request's worker still runs.
    let other =
        format!("upstream other {{ server {blue} weight=7; server 127.0.0.1:9 down; shift; }}");
    for round in 0..8 {
        let extra = if round % 2 == 0 { other.as_str() } else { "" };
        let old = setup
            .nginx
            .begin_reload(Some(&config_with(&setup, "", extra)));
        wait_until(Duration::from_secs(10), || {
            setup
                .nginx
                .worker_pids()
                .iter()
                .filter(|pid| !old.contains(pid))
                .count()
                == 2
        })
        .expect("new workers");
        assert_eq!(
            active(&setup),
            1,
            "round {round}: the request in flight still counts"
        );
    }
    assert_eq!(slow.join().unwrap(), 200);
    let upstream = setup.admin.upstream("app");
    assert_eq!(upstream.peers[0].active, 0);
    assert_eq!(upstream.peers[0].responses.success, before + 1);
    let lists = setup.admin.upstreams().upstreams;
    assert_eq!(lists.len(), 1, "the last config has no upstream \"other\"");
}

#[test]
fn workers_killed_mid_request_leave_no_active_request_behind() {
    let setup = ShiftSetup::start(&[("blue", "")], "", "");
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let port = setup.port;
            thread::spawn(move || HttpClient::new(port).get("/slow/8000").map(|r| r.status))
        })
        .collect();
    let active = || setup.admin.upstream("app").peers[0].active;
    assert!(
        wait_until(Duration::from_secs(5), || active() == 4).is_some(),
        "active: {}",
        active()
    );
    for pid in setup.nginx.worker_pids() {
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    }
    assert!(
        wait_until(Duration::from_secs(5), || active() == 0).is_some(),
        "requests of killed workers still count as active: {}",
        active()
    );
    for request in slow {
        let answer = request.join().unwrap();
        assert!(
            !answer.as_ref().is_ok_and(|&status| status == 200),
            "a request of a killed worker was answered: {answer:?}"
        );
    }
}

#[test]
fn every_counter_carries_across_a_reload() {
    let mut setup = ShiftSetup::start(&[("blue", "")], "", "");
    setup.backends[0].set_status(503);
    for _ in 0..5 {
        let _ = HttpClient::new(setup.port).get("/");
    }
    let before = setup.admin.upstream("app").peers.remove(0);
    assert_eq!(before.responses.server_error, 5);
    setup.nginx.reload(None);
    let after = setup.admin.upstream("app").peers.remove(0);
    assert_eq!(
        (after.requests, after.failures, after.responses),
        (before.requests, before.failures, before.responses),
        "a canary's error rate must not read 0 after a reload"
    );
}

/// `count` extra peers that nothing listens on, standing by.
fn standby_peers(count: u16) -> String {
    (0..count)
        .map(|i| format!("server 127.0.0.1:{} down;", 20000 + i))
        .collect()
}

#[test]
fn a_zone_too_small_once_does_not_stick_and_a_grown_zone_keeps_the_state() {
    let mut setup = ShiftSetup::start(&[("blue", ""), ("green", "")], "", "");
    let (blue, green) = (setup.addr(0), setup.addr(1));
    assert_eq!(set_weight(&setup.admin, &blue, 42), 200);
    let crowded = format!("upstream crowd {{ {} shift; }}", standby_peers(700));

    let too_small = format!("shift_zone 128k;\n{}", config_with(&setup, "", &crowded));
    let check = check_config(&NginxOptions::new(too_small.clone()));
    assert!(
        !check.ok && check.output.contains("is full"),
        "{}",
        check.output
    );
    for _ in 0..3 {
        let why = setup.nginx.failed_reload(&too_small);
        assert!(
            why.contains("is full") && why.contains("shift_zone"),
            "{why}"
        );
    }
    // The running configuration reloads as before, with its state.
    setup.nginx.reload(None);
    assert_eq!(weight_of(&setup.admin.upstream("app"), &blue), 42);

    // Without shift_zone the zone grows to fit: a new zone, which takes the state over.
    let size_before = setup.admin.metric("nginx_shift_zone_size_bytes").unwrap();
    let requests_before = setup.admin.upstream("app").peers[1].requests;
    setup.nginx.reload(Some(&config_with(&setup, "", &crowded)));
    assert!(setup.admin.metric("nginx_shift_zone_size_bytes").unwrap() > size_before);
    let upstream = setup.admin.upstream("app");
    assert_eq!(
        weight_of(&upstream, &blue),
        42,
        "the grown zone lost the weight"
    );
    assert_eq!(upstream.peers[1].server, green);
    assert_eq!(upstream.peers[1].requests, requests_before);
    assert_eq!(setup.admin.upstream("crowd").peers.len(), 700);
    let (served, _) = setup.spread(20);
    assert_eq!(served.values().sum::<usize>(), 20);
}

#[test]
fn a_state_file_with_out_of_range_values_is_set_aside_not_applied() {
    let dir = state_dir();
    let state = dir.path().join("app.json");
    let blue_port = free_port();
    let blue = format!("127.0.0.1:{blue_port}");
    fs::write(
        &state,
        format!(
            r#"{{"upstream": "app", "generation": 5, "peers": [
                {{"server": "{blue}", "config_weight": 1, "config_down": false, "backup": false,
                  "weight": 99999, "state": "up"}}]}}"#
        ),
    )
    .unwrap();
    let config = shift_upstream_config(
        &[(blue.clone(), "")],
        &format!("state={}", state.display()),
        "",
        free_port(),
    );
    let check = check_config(&NginxOptions::new(config.clone()));
    assert!(
        check.ok,
        "a bad state file does not fail nginx -t: {}",
        check.output
    );
    assert!(check.output.contains("not valid"), "{}", check.output);
    assert!(state.exists(), "nginx -t leaves the file where it is");

    let nginx = harness::Nginx::start(NginxOptions::new(config));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    let upstream = admin.upstream("app");
    assert_eq!(
        (upstream.peers[0].weight, upstream.peers[0].state),
        (1, PeerState::Up)
    );
    assert_eq!(upstream.generation, 1);
    assert!(!state.exists());
    assert!(state_file_rejected(&state).exists());
    let log = nginx.error_log();
    assert!(
        log.contains("out of range") && log.contains("starts from its configuration"),
        "{log}"
    );
    // The next change is saved afresh.
    assert_eq!(set_weight(&admin, &blue, 3), 200);
    assert!(fs::read_to_string(&state)
        .unwrap()
        .contains("\"weight\": 3"));
}

fn state_file_rejected(path: &std::path::Path) -> std::path::PathBuf {
    shift_core::state_file::rejected_path(path)
}

#[test]
fn a_thousand_upstreams_of_ten_peers_reload_a_hundred_times_and_keep_their_state() {
    let port = free_port();
    let upstreams: String = (0..1000u32)
        .map(|u| {
            let servers: String = (0..10u32)
                .map(|p| {
                    format!(
                        "server 127.0.{}.{}:{} down;",
                        u / 250,
                        u % 250 + 1,
                        10000 + p
                    )
                })
                .collect();
            format!("upstream u{u} {{ {servers} shift; }}\n")
        })
        .collect();
    let http = format!(
        "{upstreams}server {{ listen 127.0.0.1:{port}; location / {{ return 204; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}\n"
    );
    let mut nginx = harness::Nginx::start(NginxOptions::new(http));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    let peer = "127.0.3.250:10009";
    let body = format!(r#"{{"peers": {{"{peer}": {{"weight": 9, "state": "up"}}}}}}"#);
    assert_eq!(admin.patch("u999", &body).status, 200);
    nginx.reload(None);
    let free = settled_free(&admin);
    let started = Instant::now();
    for _ in 0..99 {
        nginx.reload(None);
    }
    eprintln!("99 reloads of 10,000 peers took {:?}", started.elapsed());
    let upstream = admin.upstream("u999");
    let kept = upstream.peers.iter().find(|p| p.server == peer).unwrap();
    assert_eq!((kept.weight, kept.state), (9, PeerState::Up));
    assert_eq!(admin.upstreams().upstreams.len(), 1000);
    assert_eq!(
        settled_free(&admin),
        free,
        "a hundred reloads left memory behind"
    );
}

/// The zone's free bytes once the workers' housekeeping has given back what the reloads before
/// left (it runs at most every 900 ms, on a worker's 1 s tick, once the old workers are gone):
/// the same figure twice, 2.5 s apart.
fn settled_free(admin: &Admin) -> f64 {
    let free = || admin.metric("nginx_shift_zone_free_bytes").unwrap();
    let mut last = free();
    for _ in 0..8 {
        thread::sleep(Duration::from_millis(2500));
        let now = free();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the zone's free bytes never settled: {last} at the end");
}

/// The weight of `server` as the API answers, asking again while a superseded worker answers.
fn read_weight(admin: &Admin, server: &str) -> u32 {
    for _ in 0..200 {
        let response = admin.request("GET", "upstreams/app", None);
        if response.status == 200 {
            let upstream: Upstream = serde_json::from_str(&response.body).unwrap();
            return weight_of(&upstream, server);
        }
        assert!(response.body.contains("superseded"), "{}", response.body);
        thread::sleep(Duration::from_millis(5));
    }
    panic!("only superseded workers answered");
}

#[test]
fn a_binary_upgrade_keeps_every_acknowledged_change() {
    let dir = state_dir();
    let state = dir.path().join("app.json");
    let shift_args = format!("state={}", state.display());
    let names = [("blue", ""), ("green", "")];
    let mut setup = ShiftSetup::start_with(&names, &shift_args, "", NginxOptions::daemon);
    let blue = setup.addr(0);
    assert_eq!(set_weight(&setup.admin, &blue, 7), 200);

    // USR2: a second master with its own workers; both generations accept on the API socket.
    let new_master = setup.nginx.begin_binary_upgrade();
    let (mut last, mut refused) = (7, 0);
    for weight in 10..70 {
        let body = format!(r#"{{"peers": {{"{blue}": {{"weight": {weight}}}}}}}"#);
        let response = setup.admin.patch("app", &body);
        match response.status {
            200 => last = weight,
            503 if response.body.contains("superseded") => refused += 1,
            status => panic!(
                "PATCH during the upgrade answered {status}: {}",
                response.body
            ),
        }
        assert_eq!(read_weight(&setup.admin, &blue), last, "weight {weight}");
    }
    assert!(
        refused > 0,
        "the old binary's workers never answered during the overlap"
    );
    assert!(
        last >= 10,
        "the new binary's workers never answered during the overlap"
    );

    setup.nginx.finish_binary_upgrade(new_master);
    assert_eq!(weight_of(&setup.admin.upstream("app"), &blue), last);
    let (served, _) = setup.spread(10);
    assert_eq!(served.values().sum::<usize>(), 10);
}

#[test]
fn a_state_file_save_that_waits_stalls_no_other_worker() {
    let dir = state_dir();
    let state = dir.path().join("app.json");
    let setup = ShiftSetup::start(
        &[("blue", ""), ("green", "")],
        &format!("state={}", state.display()),
        "",
    );
    let blue = setup.addr(0);
    // The directory's lock held, as by a disk that takes its time: a PATCH's save waits for it.
    let held = shift_core::state_file::lock_dir(&state).expect("lock the state directory");
    let socket = setup.nginx.path("api.sock");
    let body = format!(r#"{{"peers": {{"{blue}": {{"weight": 9}}}}}}"#);
    let patch = thread::spawn(move || Admin::new(socket, "/api/").patch("app", &body));
    thread::sleep(Duration::from_millis(300));
    // Meanwhile the other worker answers the API and proxies: the zone is not locked while a
    // file is written (a worker waiting on the disk with it would stall every other one).
    for round in 0..5 {
        let socket = setup.nginx.path("api.sock");
        let (sender, receiver) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let _ = sender.send(Admin::new(socket, "/api/").request("GET", "upstreams/app", None));
        });
        let answer = receiver.recv_timeout(Duration::from_secs(5));
        assert!(
            answer.as_ref().is_ok_and(|response| response.status == 200),
            "round {round}: a GET waited for the PATCH's save: {answer:?}"
        );
        let response = HttpClient::new(setup.port).get("/").expect("a request");
        assert_eq!(response.status, 200);
    }
    assert!(!patch.is_finished(), "the PATCH waits for the directory");
    drop(held);
    let answer = patch.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let saved = shift_core::state_file::load(&state, "app")
        .unwrap()
        .unwrap();
    let weight = saved
        .peers
        .iter()
        .find(|peer| peer.server == blue)
        .unwrap()
        .weight;
    assert_eq!(weight, 9, "saved before it was acknowledged");
}

#[test]
fn a_binary_upgrade_keeps_every_post_acknowledged_while_it_starts() {
    let dir = state_dir();
    let state = dir.path().join("app.json");
    let shift_args = format!("state={}", state.display());
    let mut setup = ShiftSetup::start_with(&[("blue", "")], &shift_args, "", NginxOptions::daemon);
    // POSTs and DELETEs without pause from before the USR2 until the new binary's workers run:
    // the new master reads the state file while they are being saved. At most 8 are kept.
    let stop = Arc::new(AtomicBool::new(false));
    let deletes = Arc::new(AtomicUsize::new(0));
    let socket = setup.nginx.path("api.sock");
    let poster = {
        let (stop, deletes) = (stop.clone(), deletes.clone());
        thread::spawn(move || {
            let admin = Admin::new(socket, "/api/");
            let (mut live, mut deleted) = (std::collections::VecDeque::new(), Vec::new());
            for n in 0u16..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let server = format!("127.0.{}.{}:8000", 2 + n / 250, 1 + n % 250);
                if admin.add_peer("app", &server, "").status == 201 {
                    live.push_back(server);
                }
                if live.len() > 8 {
                    let oldest = live.pop_front().unwrap();
                    // Not acknowledged (an old worker, superseded): it may be either way.
                    if admin.remove_peer("app", &oldest).status == 200 {
                        deleted.push(oldest);
                        deletes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            (Vec::from(live), deleted)
        })
    };
    thread::sleep(Duration::from_millis(100));
    let new_master = setup.nginx.begin_binary_upgrade();
    // At least 200 ms of changes while the new binary starts, and a dozen acknowledged
    // deletes in that time however loaded the machine is.
    let from = deletes.load(Ordering::Relaxed);
    thread::sleep(Duration::from_millis(200));
    wait_until(Duration::from_secs(10), || {
        deletes.load(Ordering::Relaxed) >= from + 12
    });
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, deleted) = poster.join().unwrap();
    setup.nginx.finish_binary_upgrade(new_master);
    let listed: std::collections::BTreeSet<String> = setup
        .admin
        .upstream("app")
        .peers
        .into_iter()
        .map(|peer| peer.server)
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|server| !listed.contains(*server))
        .collect();
    assert!(
        deleted.len() > 10,
        "POSTs and DELETEs ran: {}",
        deleted.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged, then lost by the upgrade: {lost:?}"
    );
    let back: Vec<&String> = deleted
        .iter()
        .filter(|server| listed.contains(*server))
        .collect();
    assert!(
        back.is_empty(),
        "deleted, then back after the upgrade: {back:?}"
    );
}
