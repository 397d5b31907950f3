//! Active health checks against a real Nginx (two workers) and real backends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use harness::{free_port, wait_until, Admin, Backend, HttpClient, Nginx, NginxOptions};
use shift_wire::{Health, Upstream};

const PATIENCE: Duration = Duration::from_secs(10);

fn config(servers: &[(String, &str)], check: &str, port: u16) -> String {
    let servers: String = servers
        .iter()
        .map(|(address, params)| format!("    server {address} {params};\n"))
        .collect();
    format!(
        "upstream app {{\n{servers}    shift;\n    shift_check {check};\n}}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}\n"
    )
}

struct Setup {
    nginx: Nginx,
    admin: Admin,
    port: u16,
}

impl Setup {
    fn start(servers: &[(&Backend, &str)], check: &str) -> Setup {
        let servers: Vec<(String, &str)> = servers
            .iter()
            .map(|(backend, params)| (backend.addr().to_string(), *params))
            .collect();
        let port = free_port();
        let nginx = Nginx::start(NginxOptions::new(config(&servers, check, port)));
        let admin = Admin::new(nginx.path("api.sock"), "/api/");
        Setup { nginx, admin, port }
    }

    fn health(&self, peer: &Backend) -> Health {
        self.peer(peer).health
    }

    fn peer(&self, backend: &Backend) -> shift_wire::Peer {
        let upstream: Upstream = self.admin.upstream("app");
        let server = backend.addr().to_string();
        upstream
            .peers
            .into_iter()
            .find(|peer| peer.server == server)
            .expect("peer listed")
    }

    fn wait_for_health(&self, backend: &Backend, health: Health) -> Duration {
        wait_until(PATIENCE, || self.health(backend) == health).unwrap_or_else(|| {
            panic!(
                "{} never became {health:?}: {:?}",
                backend.name(),
                self.peer(backend)
            )
        })
    }

    fn traffic(&self, count: usize) -> BTreeMap<(u16, String), usize> {
        let mut answers = BTreeMap::new();
        for _ in 0..count {
            let response = HttpClient::new(self.port).get("/").expect("nginx answers");
            *answers.entry((response.status, response.body)).or_default() += 1;
        }
        answers
    }
}

fn ok_from(name: &str, count: usize) -> BTreeMap<(u16, String), usize> {
    BTreeMap::from([((200, name.to_string()), count)])
}

#[test]
fn a_failing_backend_is_taken_out_and_comes_back_after_passes() {
    let blue = Backend::start("blue");
    let green = Backend::start("green");
    let setup = Setup::start(
        &[(&blue, ""), (&green, "")],
        "uri=/health interval=200ms timeout=150ms fails=2 passes=2",
    );
    setup.wait_for_health(&blue, Health::Healthy);
    setup.wait_for_health(&green, Health::Healthy);

    green.set_status(503);
    let took = setup.wait_for_health(&green, Health::Unhealthy);
    eprintln!(
        "green marked unhealthy {took:?} after it started answering 503 (interval 200ms, fails=2)"
    );
    let peer = setup.peer(&green);
    let check = peer.check.expect("check status shown");
    assert_eq!(check.last_error.as_deref(), Some("status 503"));
    assert!(check.consecutive_fails >= 2, "{check:?}");

    let traffic_before = green.hits_on("/");
    assert_eq!(setup.traffic(40), ok_from("blue", 40));
    assert_eq!(
        green.hits_on("/"),
        traffic_before,
        "an unhealthy peer gets no requests"
    );

    green.set_status(200);
    setup.wait_for_health(&green, Health::Healthy);
    let check = setup.peer(&green).check.unwrap();
    assert!(
        check.consecutive_passes >= 2 && check.last_error.is_none(),
        "{check:?}"
    );
    let answers = setup.traffic(40);
    assert!(
        answers.contains_key(&(200, "green".to_string())),
        "green is back: {answers:?}"
    );

    let log = setup.nginx.error_log();
    let transitions: Vec<_> = log
        .lines()
        .filter(|line| line.contains("shift: upstream \"app\" peer"))
        .collect();
    let green_addr = green.addr().to_string();
    let green_lines: Vec<_> = transitions
        .iter()
        .filter(|line| line.contains(&green_addr))
        .collect();
    assert!(
        green_lines
            .iter()
            .filter(|line| line.contains("is unhealthy (was healthy): status 503"))
            .count()
            == 1
            && green_lines
                .iter()
                .filter(|line| line.contains("is healthy (was unhealthy)"))
                .count()
                == 1,
        "each transition logged once:\n{}",
        transitions.join("\n")
    );
}

#[test]
fn a_killed_and_a_hanging_backend_are_both_detected() {
    let killed = Backend::start("killed");
    let hanging = Backend::start("hanging");
    let fine = Backend::start("fine");
    let setup = Setup::start(
        &[(&killed, ""), (&hanging, ""), (&fine, "")],
        "interval=300ms timeout=200ms",
    );
    for backend in [&killed, &hanging, &fine] {
        setup.wait_for_health(backend, Health::Healthy);
    }
    let killed_peer = killed.addr();
    drop(killed);
    hanging.set_hang(true);

    let upstream_has = |server: String, error: &str| {
        wait_until(PATIENCE, || {
            let peer = setup
                .admin
                .upstream("app")
                .peers
                .into_iter()
                .find(|p| p.server == server)
                .unwrap();
            peer.health == Health::Unhealthy
                && peer.check.and_then(|c| c.last_error).as_deref() == Some(error)
        })
        .is_some()
    };
    assert!(
        upstream_has(killed_peer.to_string(), "connect refused"),
        "{:?}",
        setup.admin.upstream("app")
    );
    assert!(
        upstream_has(hanging.addr().to_string(), "timeout"),
        "{:?}",
        setup.admin.upstream("app")
    );
    assert_eq!(setup.traffic(20), ok_from("fine", 20));
}

#[test]
fn a_peer_that_resets_after_accepting_is_reported_as_such() {
    use nix::sys::socket::{setsockopt, sockopt::Linger};
    // Accepts every connection, then closes it with a reset (SO_LINGER 0).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let reset = nix::libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let _ = setsockopt(&stream, Linger, &reset);
        }
    });
    let nginx = Nginx::start(NginxOptions::new(config(
        &[(address.to_string(), "")],
        "interval=200ms",
        free_port(),
    )));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    let last_error = || {
        admin.upstream("app").peers[0]
            .check
            .clone()
            .and_then(|check| check.last_error)
    };
    let reported = wait_until(PATIENCE, || {
        last_error().as_deref() == Some("reset after connect")
    });
    assert!(reported.is_some(), "last error: {:?}", last_error());
    assert_eq!(admin.upstream("app").peers[0].health, Health::Unhealthy);
}

#[test]
fn two_workers_send_one_probe_per_interval() {
    let backend = Backend::start("solo");
    let setup = Setup::start(
        &[(&backend, "")],
        "uri=/health interval=250ms timeout=200ms",
    );
    setup.wait_for_health(&backend, Health::Healthy);
    let start = Instant::now();
    let before = backend.hits_on("/health");
    thread::sleep(Duration::from_millis(3000));
    let probes = backend.hits_on("/health") - before;
    let intervals = start.elapsed().as_millis() as u64 / 250;
    eprintln!(
        "{probes} probes in {intervals} intervals with {} workers",
        setup.nginx.worker_pids().len()
    );
    assert!(
        probes + 2 >= intervals && probes <= intervals + 2,
        "{probes} probes in {intervals} intervals: not one per interval"
    );
}

#[test]
fn when_every_peer_is_unhealthy_requests_fail_fast_with_502() {
    let blue = Backend::start("blue");
    let green = Backend::start("green");
    blue.set_status(500);
    green.set_status(500);
    let setup = Setup::start(&[(&blue, ""), (&green, "")], "uri=/health interval=200ms");
    setup.wait_for_health(&blue, Health::Unhealthy);
    setup.wait_for_health(&green, Health::Unhealthy);
    let start = Instant::now();
    assert_eq!(
        setup.traffic(10),
        BTreeMap::from([((502, expected_502_body()), 10)])
    );
    eprintln!(
        "10 requests with no healthy peer answered 502 in {:?}",
        start.elapsed()
    );
    assert_eq!(blue.hits_on("/") + green.hits_on("/"), 0);
}

fn expected_502_body() -> String {
    // Nginx's own error page; only its status matters, the body is compared whole to be sure
    // no backend answered.
    let nginx = std::process::Command::new(harness::nginx_binary())
        .arg("-v")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&nginx.stderr);
    let version = version.trim().trim_start_matches("nginx version: ");
    format!(
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad \
         Gateway</h1></center>\r\n<hr><center>{version}</center>\r\n</body>\r\n</html>\r\n"
    )
}

#[test]
fn mandatory_checks_keep_a_new_peer_out_until_it_passes_and_health_survives_reload() {
    let blue = Backend::start("blue");
    let green = Backend::start("green");
    // passes=2 at a 2s interval: green cannot pass before two seconds after the reload.
    let check = "uri=/health interval=2s timeout=500ms passes=2 mandatory";
    let mut setup = Setup::start(&[(&blue, "")], check);
    setup.wait_for_health(&blue, Health::Healthy);

    // Deploy green by reload: blue keeps its health, green starts unchecked and gets nothing.
    let servers = [
        (blue.addr().to_string(), ""),
        (green.addr().to_string(), ""),
    ];
    setup
        .nginx
        .reload(Some(&config(&servers, check, setup.port)));
    assert_eq!(
        setup.health(&blue),
        Health::Healthy,
        "health survives the reload"
    );
    assert_eq!(setup.health(&green), Health::Unchecked);
    assert_eq!(
        setup.traffic(20),
        ok_from("blue", 20),
        "an unchecked peer gets nothing"
    );
    assert_eq!(
        setup.health(&green),
        Health::Unchecked,
        "still unchecked during the traffic"
    );
    assert_eq!(green.hits_on("/"), 0);
    setup.wait_for_health(&green, Health::Healthy);
    let answers = setup.traffic(20);
    assert!(
        answers.contains_key(&(200, "green".to_string())),
        "{answers:?}"
    );
}

#[test]
fn killing_the_live_backend_under_load_costs_no_client_errors() {
    let blue = Backend::start("blue");
    let green = Backend::start("green");
    let setup = Setup::start(&[(&blue, ""), (&green, "")], "interval=200ms timeout=150ms");
    setup.wait_for_health(&blue, Health::Healthy);
    setup.wait_for_health(&green, Health::Healthy);

    let stop = Arc::new(AtomicBool::new(false));
    let loaders: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let port = setup.port;
            thread::spawn(move || {
                let mut client = HttpClient::new(port);
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    match client.get("/") {
                        Ok(response) if response.status == 200 => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    drop(blue);
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = loaders
        .into_iter()
        .map(|loader| loader.join().unwrap())
        .fold((0, 0), |(ok, failed), (o, f)| (ok + o, failed + f));
    eprintln!("killing blue under load: {ok} requests answered 200, {failed} failed");
    assert!(ok > 100, "the load ran: {ok}");
    assert_eq!(
        failed, 0,
        "proxy_next_upstream and the checks absorb the kill"
    );
}

#[test]
fn checks_go_on_when_the_probing_workers_are_killed() {
    let backend = Backend::start("solo");
    let setup = Setup::start(&[(&backend, "")], "uri=/health interval=200ms");
    setup.wait_for_health(&backend, Health::Healthy);
    // Kill every worker (the master starts new ones), whichever was probing.
    for pid in setup.nginx.worker_pids() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGKILL,
        )
        .expect("kill a worker");
    }
    backend.set_status(503);
    setup.wait_for_health(&backend, Health::Unhealthy);
    let before = backend.hits_on("/health");
    thread::sleep(Duration::from_millis(1000));
    let probes = backend.hits_on("/health") - before;
    assert!(
        (3..=7).contains(&probes),
        "{probes} probes in 5 intervals after the kill"
    );
}
