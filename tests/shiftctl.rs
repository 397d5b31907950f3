//! `shiftctl`, the real binary, against real Nginx instances and real backends.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use harness::{
    free_port, shiftctl_command, wait_until, Admin, Backend, BlueGreen, HookedBackends, HttpClient,
    Nginx, NginxOptions, Traffic,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shift_wire::{Health, PeerState, Upstream};
use tempfile::TempDir;

/// Nginx with upstream `app` over blue (live) and green (standby), the admin API, and
/// shiftctl's state directory.
struct Setup(BlueGreen);

impl std::ops::Deref for Setup {
    type Target = BlueGreen;
    fn deref(&self) -> &BlueGreen {
        &self.0
    }
}

impl Setup {
    /// With `check` (e.g. a `shift_check` line) in the upstream.
    fn start(check: &str) -> Setup {
        Setup(BlueGreen::start(check))
    }

    fn run(&self, args: &[&str]) -> Output {
        self.shiftctl(args).output().expect("run shiftctl")
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.shiftctl(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shiftctl")
    }

    fn green(&self) -> String {
        self.green.addr().to_string()
    }

    fn blue(&self) -> String {
        self.blue.addr().to_string()
    }

    fn weights(&self) -> (u32, u32) {
        let upstream = self.admin.upstream("app");
        (upstream.peers[0].weight, upstream.peers[1].weight)
    }

    /// Green's share of `count` requests, over eight keep-alive connections (both workers).
    fn green_share(&self, count: usize) -> f64 {
        let mut clients: Vec<HttpClient> = (0..8).map(|_| HttpClient::new(self.port)).collect();
        let mut green = 0;
        for i in 0..count {
            let response = clients[i % 8].get("/").expect("request through nginx");
            assert_eq!(response.status, 200, "{}", response.body);
            green += usize::from(response.body == "green");
        }
        green as f64 * 100.0 / count as f64
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Requests in a loop on four connections until stopped; counts answers by status.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<BTreeMap<u16, u64>>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..4)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut client = HttpClient::new(port);
                    let mut counts = BTreeMap::new();
                    while !stop.load(Ordering::SeqCst) {
                        let status = client.get("/").map_or(0, |response| response.status);
                        *counts.entry(status).or_default() += 1;
                    }
                    counts
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn stop(self) -> BTreeMap<u16, u64> {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = BTreeMap::new();
        for thread in self.threads {
            for (status, count) in thread.join().unwrap() {
                *total.entry(status).or_default() += count;
            }
        }
        total
    }
}

#[test]
fn status_prints_the_table_and_json() {
    let setup = Setup::start("");
    let output = setup.run(&["status", "app"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let table = text(&output.stdout);
    assert!(table.contains("upstream app (generation 1)"), "{table}");
    assert!(
        table.contains(&setup.blue()) && table.contains("100.0%"),
        "{table}"
    );

    let output = setup.run(&["--json", "status"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let upstreams: Vec<Upstream> = serde_json::from_value(json[0]["upstreams"].clone()).unwrap();
    assert_eq!(upstreams[0].peers[1].state, PeerState::Down);

    let output = shiftctl_command(&["/nonexistent/shift.sock"], None)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    assert!(
        text(&output.stderr).contains("is Nginx running with shift_api"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn set_changes_weights_atomically_and_rejects_bad_input() {
    let setup = Setup::start("");
    let blue_weight = format!("{}=70", setup.blue());
    let green_weight = format!("{}=30", setup.green());
    let output = setup.run(&["set", "app", &blue_weight, &green_weight]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(setup.weights(), (70, 30));
    assert_eq!(setup.admin.upstream("app").generation, 2);

    let output = setup.run(&["set", "app", "10.1.1.1:80=5"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("has no peer \"10.1.1.1:80\""),
        "{}",
        text(&output.stderr)
    );
    let output = setup.run(&["set", "app", &format!("{}=1001", setup.blue())]);
    assert_eq!(output.status.code(), Some(2));
    let (green_5, green_7) = (
        format!("{}=5", setup.green()),
        format!("{}=7", setup.green()),
    );
    let output = setup.run(&["set", "app", &green_5, &green_7]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("given twice"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(setup.admin.upstream("app").generation, 2, "nothing changed");
}

#[test]
fn zero_durations_and_impossible_error_rates_are_refused_on_the_command_line_and_in_plans() {
    let setup = Setup::start("");
    let green = setup.green();
    for args in [
        vec!["--interval", "0s"],
        vec!["--timeout", "0s"],
        vec!["--max-error-rate", "7.0"],
        vec!["--max-error-rate", "-1"],
        vec!["--max-error-rate", "NaN"],
    ] {
        let mut command = vec!["canary", "app", "--to", green.as_str()];
        command.extend(&args);
        let output = setup.run(&command);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&output.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for line in [
        "interval = \"0s\"",
        "health_timeout = \"0s\"",
        "max_error_rate = 7.0",
        "max_error_rate = nan",
    ] {
        let plan = dir.path().join("plan.toml");
        std::fs::write(
            &plan,
            format!(
                "upstream = \"app\"\nstrategy = \"canary\"\n{line}\n\
                 [sides.blue]\nserver = \"{}\"\n[sides.green]\nserver = \"{green}\"\n",
                setup.blue()
            ),
        )
        .unwrap();
        let output = setup.run(&["deploy", plan.to_str().unwrap()]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{line}: {}",
            text(&output.stderr)
        );
    }
    assert_eq!(setup.admin.upstream("app").generation, 1, "nothing moved");
}

#[test]
fn upstream_names_that_would_reach_another_upstream_are_refused() {
    let setup = Setup::start("");
    let weight = format!("{}=9", setup.blue());
    for name in ["app?x", "app#x", "x/../app", "..", "app%2F"] {
        let output = setup.run(&["set", name, &weight]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{name}: {}",
            text(&output.stderr)
        );
        assert!(
            text(&output.stderr).contains("is not an upstream name"),
            "{name}: {}",
            text(&output.stderr)
        );
    }
    assert_eq!(
        setup.admin.upstream("app").generation,
        1,
        "app was not changed"
    );
}

#[test]
fn a_socket_that_is_not_the_shift_api_is_as_good_as_none() {
    let setup = Setup::start("");
    // The same Nginx, but a prefix where no shift_api location is: Nginx's own 404 page.
    let output = setup.run(&["status", "--prefix", "/nope/"]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("not the shift API's"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn canary_walks_the_steps_and_traffic_follows_each() {
    let setup = Setup::start("");
    let mut canary = setup.spawn(&[
        "canary",
        "app",
        "--to",
        &setup.green(),
        "--steps",
        "5,25,50,100",
        "--interval",
        "2s",
        // The shares are measured with a few hundred requests per step; the gates are tested
        // apart.
        "--min-requests",
        "0",
    ]);
    let mut measured = BTreeMap::new();
    while canary.try_wait().unwrap().is_none() {
        let green = setup.admin.upstream("app").peers.remove(1);
        let percent = green.weight / 10;
        if green.state == PeerState::Up && !measured.contains_key(&percent) {
            measured.insert(percent, setup.green_share(400));
        }
        thread::sleep(Duration::from_millis(50));
    }
    let output = canary.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "canary failed: {}",
        text(&output.stderr)
    );
    assert_eq!(
        measured.keys().copied().collect::<Vec<_>>(),
        [5, 25, 50, 100],
        "{measured:?}"
    );
    for (percent, share) in &measured {
        assert!(
            (share - *percent as f64).abs() <= 3.0,
            "step {percent}%: green got {share:.1}%"
        );
    }
    let upstream = setup.admin.upstream("app");
    assert_eq!(
        upstream.peers[0].state,
        PeerState::Drain,
        "the stable peer is drained at 100%"
    );
}

/// A canary on an upstream without traffic ends: a step that has not had the requests a verdict
/// needs by `--quiet-timeout` is quiet, and `--on-quiet` decides. `rollback` puts the stable set
/// back (exit 1); `hold` keeps the step and exits 4 saying how to go on, its waiting line
/// counting down to it; `promote` takes the next steps to the end.
#[test]
fn a_canary_on_a_quiet_upstream_ends_as_on_quiet_says() {
    let setup = Setup::start("");
    let green = setup.green();
    let canary = |on_quiet: &str, quiet_timeout: &str| {
        setup.run(&[
            "canary",
            "app",
            "--to",
            &green,
            "--steps",
            "10,50,100",
            "--interval",
            "1s",
            "--quiet-timeout",
            quiet_timeout,
            "--on-quiet",
            on_quiet,
        ])
    };
    let green_peer = || setup.admin.upstream("app").peers.remove(1);
    for (on_quiet, quiet_timeout) in [("wait", "2s"), ("hold", "0s"), ("hold", "soon")] {
        let refused = canary(on_quiet, quiet_timeout);
        assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    }
    assert_eq!(green_peer().state, PeerState::Down);

    let rolled_back = canary("rollback", "2s");
    assert_eq!(
        rolled_back.status.code(),
        Some(1),
        "{}",
        text(&rolled_back.stderr)
    );
    assert!(
        text(&rolled_back.stderr).contains("step 1/3 (10% to"),
        "{}",
        text(&rolled_back.stderr)
    );
    assert!(text(&rolled_back.stderr).contains("is quiet"));
    assert_eq!(green_peer().state, PeerState::Down);

    let held = canary("hold", "7s");
    let said = text(&held.stderr);
    assert_eq!(held.status.code(), Some(4), "{said}");
    assert!(
        said.contains("is quiet: the target served 0 of the 100 requests a step needs"),
        "{said}"
    );
    assert!(said.contains("(then hold)"), "the waiting line: {said}");
    assert!(said.contains("shiftctl rollback app"), "{said}");
    let held_at = green_peer();
    assert_eq!((held_at.state, held_at.weight / 10), (PeerState::Up, 10));

    let back = setup.run(&["rollback", "app"]);
    assert!(back.status.success(), "{}", text(&back.stderr));
    let promoted = canary("promote", "2s");
    assert!(promoted.status.success(), "{}", text(&promoted.stderr));
    assert!(text(&promoted.stderr).contains("promoted, as --on-quiet says"));
    let upstream = setup.admin.upstream("app");
    assert_eq!(
        (upstream.peers[0].state, upstream.peers[1].state),
        (PeerState::Drain, PeerState::Up)
    );
}

/// With `shift_slow_start`, a canary step's weight is where its target's ramp ends, and the
/// step is watched from there: the first step (the target up from standby) waits for its ramp;
/// the second (a higher weight for a target already taking requests) has none.
#[test]
fn a_canary_step_is_watched_from_the_end_of_its_targets_ramp() {
    let setup = Setup::start("shift_slow_start 2s;");
    let output = setup.run(&[
        "canary",
        "app",
        "--to",
        &setup.green(),
        "--steps",
        "50,100",
        "--interval",
        "1s",
        "--min-requests",
        "0",
    ]);
    let said = text(&output.stderr);
    assert!(output.status.success(), "{said}");
    let ramps: Vec<&str> = said
        .lines()
        .filter(|line| line.contains("ramps up (slow start)"))
        .collect();
    assert_eq!(ramps.len(), 1, "{said}");
    assert!(ramps[0].contains("step 1/2 (50% to"), "{said}");
}

/// Under `shift_slow_start` a switch brings the target up beside the others and drains them
/// once the target's ramp ended: while it ramps, the target has a part of the traffic, not all
/// of it; then all of it.
#[test]
fn a_switch_under_slow_start_ramps_the_target_up_beside_the_others_then_drains_them() {
    switch_ramps_beside_the_others("shift_slow_start 3s;", &[]);
}

/// `--slow-start` does the same where the upstream has no `shift_slow_start`.
#[test]
fn a_switch_with_a_slow_start_of_its_own_ramps_where_the_upstream_has_none() {
    switch_ramps_beside_the_others("", &["--slow-start", "3s"]);
}

/// `--slow-start 0s` moves all traffic at once under `shift_slow_start`.
#[test]
fn a_switch_with_no_slow_start_moves_at_once_whatever_the_upstream_says() {
    let setup = Setup::start("shift_slow_start 1h;");
    let green = setup.green();
    let output = setup.run(&["switch", "app", "--to", &green, "--slow-start", "0s"]);
    let said = text(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(!said.contains("ramps up"), "{said}");
    assert_eq!(setup.admin.peer("app", &green).unwrap().ramp, None);
    assert_eq!(setup.green_share(100), 100.0);
}

fn switch_ramps_beside_the_others(upstream_extra: &str, args: &[&str]) {
    let setup = Setup::start(upstream_extra);
    let green = setup.green();
    let mut all = vec!["switch", "app", "--to", &green];
    all.extend(args);
    let switch = setup.spawn(&all);
    let ramping = wait_until(Duration::from_secs(10), || {
        setup
            .admin
            .peer("app", &green)
            .is_some_and(|peer| peer.ramp.is_some())
    });
    assert!(ramping.is_some(), "{:?}", setup.admin.upstream("app"));
    let share = setup.green_share(200);
    assert!(
        share > 0.0 && share < 60.0,
        "green's share while it ramps: {share}%"
    );
    let output = switch.wait_with_output().unwrap();
    let said = text(&output.stderr);
    assert!(output.status.success(), "{said}");
    assert!(said.contains("ramps up (slow start)"), "{said}");
    assert_eq!(setup.green_share(100), 100.0);
}

#[test]
fn a_canary_whose_target_fails_is_rolled_back() {
    let setup = Setup::start("");
    let load = Load::start(setup.port);
    let canary = setup.spawn(&[
        "canary",
        "app",
        "--to",
        &setup.green(),
        "--steps",
        "5,25,50,100",
        "--interval",
        "3s",
        "--max-error-rate",
        "0.05",
    ]);
    // Green starts failing once the canary reaches 25%.
    let reached = wait_until(Duration::from_secs(20), || setup.weights().1 == 250);
    assert!(reached.is_some(), "the canary never reached 25%");
    setup.green.set_status(500);
    let output = canary.wait_with_output().unwrap();
    let counts = load.stop();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rolled back because step 2/4 (25%"),
        "{stderr}"
    );
    assert!(stderr.contains("error rate"), "{stderr}");
    eprintln!("load during the canary: {counts:?}");

    let upstream = setup.admin.upstream("app");
    assert_eq!(
        upstream.peers[1].state,
        PeerState::Down,
        "green is standby again"
    );
    let before = setup.green.hits_on("/");
    assert_eq!(setup.green_share(100), 0.0);
    assert_eq!(
        setup.green.hits_on("/"),
        before,
        "green gets no requests after the rollback"
    );
}

#[test]
fn switch_refuses_an_unhealthy_target_and_rollback_returns() {
    let setup = Setup::start("shift_check interval=200ms;");
    setup.green.set_status(500);
    let unhealthy = wait_until(Duration::from_secs(10), || {
        setup.admin.upstream("app").peers[1].health == Health::Unhealthy
    });
    assert!(unhealthy.is_some());
    let output = setup.run(&["switch", "app", "--to", &setup.green(), "--timeout", "5s"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("refusing to shift to") && stderr.contains("unhealthy"),
        "{stderr}"
    );
    assert_eq!(setup.admin.upstream("app").generation, 1, "nothing changed");

    setup.green.set_status(200);
    let healthy = wait_until(Duration::from_secs(10), || {
        setup.admin.upstream("app").peers[1].health == Health::Healthy
    });
    assert!(healthy.is_some());
    let output = setup.run(&["switch", "app", "--to", &setup.green(), "--timeout", "10s"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(setup.green_share(50), 100.0);
    assert_eq!(setup.admin.upstream("app").peers[0].state, PeerState::Drain);

    let output = setup.run(&["rollback", "app"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(setup.green_share(50), 0.0);
}

/// The plan of a blue-green deploy over `sides`, blue on `blue` and green on `green`, whose
/// green side starts with `start_green`.
fn plan(sides: &HookedBackends, blue: u16, green: u16, start_green: &str) -> std::path::PathBuf {
    let plan = format!(
        "upstream = \"app\"\nstrategy = \"switch\"\nhealth_timeout = \"10s\"\n\
         [sides.blue]\nserver = \"127.0.0.1:{blue}\"\nstart = \"{start_blue}\"\nstop = \"{stop}\"\n\
         [sides.green]\nserver = \"127.0.0.1:{green}\"\nstart = \"{start_green}\"\nstop = \"{stop}\"\n\
         check_url = \"http://127.0.0.1:{green}/health\"\n",
        start_blue = sides.start_hook(blue),
        stop = sides.stop_hook(),
    );
    let path = sides.dir().join("deploy.toml");
    fs::write(&path, plan).unwrap();
    path
}

#[test]
fn deploy_runs_the_hooks_in_order_and_alternates_sides() {
    let sides = HookedBackends::new();
    let (blue, green, port) = (free_port(), free_port(), free_port());
    let nginx = Nginx::start(NginxOptions::new(format!(
        "upstream app {{\n    server 127.0.0.1:{blue} ;\n    server 127.0.0.1:{green} down;\n    shift;\n\
             shift_check interval=200ms;\n}}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}\n"
    )));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    let state_dir = TempDir::new().unwrap();
    let plan = plan(&sides, blue, green, &sides.start_hook(green));
    // Blue runs, as the previous deploy left it; green is stopped.
    sides.start_now("blue", blue);
    let healthy = |index: usize| admin.upstream("app").peers[index].health == Health::Healthy;
    assert!(wait_until(Duration::from_secs(10), || healthy(0)).is_some());
    let deploy = || {
        shiftctl_command(&[nginx.path("api.sock")], Some(state_dir.path()))
            .arg("deploy")
            .arg(&plan)
            .output()
            .unwrap()
    };
    let served = || {
        let mut client = HttpClient::new(port);
        (0..20)
            .map(|_| client.get("/").unwrap().body)
            .collect::<std::collections::BTreeSet<_>>()
    };

    let output = deploy();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(sides.log(), "start green\nstop blue\n");
    assert_eq!(served(), ["green".to_string()].into());
    assert!(
        wait_until(Duration::from_secs(10), || !healthy(0)).is_some(),
        "blue was stopped"
    );

    let output = deploy();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        sides.log(),
        "start green\nstop blue\nstart blue\nstop green\n"
    );
    assert_eq!(served(), ["blue".to_string()].into());
}

/// A new side that never passes its health check takes no traffic; the deploy stops it with
/// its own stop hook (it could take traffic by mistake later) and says so.
#[test]
fn a_release_that_fails_its_checks_is_stopped_and_traffic_stays() {
    deploy_a_release_that_fails_its_checks(false);
}

/// As Compose's `up -d --force-recreate` of a standby side: the healthy container is replaced
/// by the bad release at the same address. The side's health is still `healthy` until enough
/// checks failed, so the deploy waits for a check that passed after its start hook.
#[test]
fn a_release_recreated_at_a_healthy_address_must_pass_a_check_itself() {
    deploy_a_release_that_fails_its_checks(true);
}

fn deploy_a_release_that_fails_its_checks(green_runs_before: bool) {
    let sides = HookedBackends::new();
    let (blue, green, port) = (free_port(), free_port(), free_port());
    let nginx = Nginx::start(NginxOptions::new(format!(
        "upstream app {{\n    server 127.0.0.1:{blue};\n    server 127.0.0.1:{green} down;\n    shift;\n\
             shift_check interval=200ms fails=50;\n}}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}\n"
    )));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    // Green's release answers 500, to its checks too; a green running before is replaced.
    let dir = sides.dir().display();
    let broken = sides
        .start_hook(green)
        .replace(&format!(" {green} >"), &format!(" 127.0.0.1:{green} 500 >"));
    let recreate = format!(
        "pid=$(cat {dir}/green.pid 2>/dev/null) && kill $pid && \
         while kill -0 $pid 2>/dev/null; do sleep 0.05; done; {broken}"
    );
    let plan = plan(&sides, blue, green, &recreate);
    fs::write(
        &plan,
        fs::read_to_string(&plan)
            .unwrap()
            .replace("health_timeout = \"10s\"", "health_timeout = \"2s\"")
            .replace(
                &format!("check_url = \"http://127.0.0.1:{green}/health\"\n"),
                "",
            ),
    )
    .unwrap();
    sides.start_now("blue", blue);
    if green_runs_before {
        sides.start_now("green", green);
    }
    let healthy = wait_until(Duration::from_secs(10), || {
        let peers = admin.upstream("app").peers;
        peers[0].health == Health::Healthy
            && (!green_runs_before || peers[1].health == Health::Healthy)
    });
    assert!(healthy.is_some(), "{:?}", admin.upstream("app"));

    let state_dir = TempDir::new().unwrap();
    let output = shiftctl_command(&[nginx.path("api.sock")], Some(state_dir.path()))
        .arg("deploy")
        .arg(&plan)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("deploy of green stopped; traffic stays on blue; green is stopped")
            && stderr.contains("status 500"),
        "{stderr}"
    );
    assert_eq!(sides.log(), "start green\nstop green\n");
    let mut client = HttpClient::new(port);
    for _ in 0..10 {
        assert_eq!(client.get("/").unwrap().body, "blue");
    }
}

#[test]
fn a_failing_start_hook_leaves_traffic_on_the_old_side() {
    let setup = Setup::start("");
    let sides = HookedBackends::new();
    let plan = plan(&sides, setup.blue.port(), setup.green.port(), "exit 7");
    let output = setup.run(&["deploy", plan.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("start hook of green (exit 7) failed")
            && stderr.contains("traffic stays on blue"),
        "{stderr}"
    );
    assert_eq!(setup.admin.upstream("app").generation, 1);
    assert_eq!(setup.green_share(20), 0.0);
}

/// A start hook that never finishes, and leaves a child: both record their pids in `dir`.
fn hanging_hook(dir: &std::path::Path) -> String {
    let dir = dir.display();
    format!("echo $$ > {dir}/hook.pid; sleep 300 & echo $! > {dir}/child.pid; wait")
}

/// The pids a `hanging_hook` recorded, once both have.
fn hook_pids(dir: &std::path::Path) -> Option<[u32; 2]> {
    let read = |name: &str| fs::read_to_string(dir.join(name)).ok()?.trim().parse().ok();
    Some([read("hook.pid")?, read("child.pid")?])
}

fn all_gone(pids: [u32; 2]) -> bool {
    pids.iter()
        .all(|&pid| !shift_core::process::process_alive(pid))
}

#[test]
fn a_hanging_hook_is_ended_with_its_children_at_its_timeout() {
    let setup = Setup::start("");
    let sides = HookedBackends::new();
    let plan = plan(
        &sides,
        setup.blue.port(),
        setup.green.port(),
        &hanging_hook(sides.dir()),
    );
    let with_timeout = format!(
        "hook_timeout = \"1s\"\n{}",
        fs::read_to_string(&plan).unwrap()
    );
    fs::write(&plan, with_timeout).unwrap();
    let started = Instant::now();
    let output = setup.run(&["deploy", plan.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("start hook of green")
            && stderr.contains("did not finish within 1s")
            && stderr.contains("traffic stays on blue"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
    let pids = hook_pids(sides.dir()).expect("the hook ran");
    assert!(
        wait_until(Duration::from_secs(5), || all_gone(pids)).is_some(),
        "the hook or its child still runs: {pids:?}"
    );
    assert_eq!(
        setup.admin.upstream("app").generation,
        1,
        "no traffic moved"
    );
}

#[test]
fn sigterm_during_a_hook_ends_the_hook_and_its_children() {
    let setup = Setup::start("");
    let sides = HookedBackends::new();
    let plan = plan(
        &sides,
        setup.blue.port(),
        setup.green.port(),
        &hanging_hook(sides.dir()),
    );
    let mut deploy = setup.spawn(&["deploy", plan.to_str().unwrap()]);
    let pids = wait_until(Duration::from_secs(10), || hook_pids(sides.dir()).is_some())
        .and_then(|_| hook_pids(sides.dir()))
        .expect("the hook started");
    kill(Pid::from_raw(deploy.id() as i32), Signal::SIGTERM).unwrap();
    let exited = wait_until(Duration::from_secs(15), || {
        deploy.try_wait().ok().flatten().is_some()
    });
    assert!(exited.is_some(), "shiftctl did not exit on SIGTERM");
    let output = deploy.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("interrupted"),
        "{}",
        text(&output.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(5), || all_gone(pids)).is_some(),
        "the hook or its child outlived shiftctl: {pids:?}"
    );
}

#[test]
fn a_fleet_change_applies_everywhere_or_nowhere() {
    let first = Setup::start("");
    let second = Setup::start("");
    let both = |args: &[&str]| {
        let sockets = [first.nginx.path("api.sock"), second.nginx.path("api.sock")];
        shiftctl_command(&sockets, Some(&first.state_dir()))
            .args(args)
            .output()
            .unwrap()
    };
    // Each Nginx has its own backends: a peer of the first is unknown to the second, so the
    // change fails there after it succeeded on the first, which must be put back.
    let output = both(&["set", "app", &format!("{}=9", first.blue())]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("put back the 1 Nginx(es) already changed"),
        "{}",
        text(&output.stderr)
    );
    assert_eq!(first.weights(), (1, 1), "the first Nginx is as it was");

    // With the second Nginx down, nothing is written anywhere.
    let second_socket = second.nginx.path("api.sock");
    drop(second);
    let output = shiftctl_command(&[first.nginx.path("api.sock"), second_socket], None)
        .args(["set", "app", &format!("{}=9", first.blue())])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", text(&output.stderr));
    let upstream = first.admin.upstream("app");
    assert_eq!((upstream.peers[0].weight, upstream.generation), (1, 3));
}

fn blue_active(setup: &Setup) -> u64 {
    setup.admin.upstream("app").peers[0].active
}

#[test]
fn drain_waits_for_active_requests_and_undrain_brings_the_peer_back() {
    let setup = Setup::start("");
    let output = setup.run(&["drain", "app", &setup.blue(), "--wait", "--timeout", "5s"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(setup.admin.upstream("app").peers[0].state, PeerState::Drain);
    let output = setup.run(&["undrain", "app", &setup.blue()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(setup.admin.upstream("app").peers[0].state, PeerState::Up);

    // A request held by a hanging blue keeps the drain waiting until the timeout.
    setup.blue.set_hang(true);
    let port = setup.port;
    let _held = thread::spawn(move || HttpClient::new(port).get("/"));
    assert!(wait_until(Duration::from_secs(5), || blue_active(&setup) == 1).is_some());
    let output = setup.run(&["drain", "app", &setup.blue(), "--wait", "--timeout", "1s"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("still has 1 active request"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn a_paused_canary_waits_for_promote() {
    let setup = Setup::start("");
    let canary = setup.spawn(&[
        "canary",
        "app",
        "--to",
        &setup.green(),
        "--steps",
        "50,100",
        "--interval",
        "500ms",
        "--pause",
        // No traffic here: the steps pass on time alone.
        "--min-requests",
        "0",
    ]);
    assert!(wait_until(Duration::from_secs(10), || setup.weights().1 == 500).is_some());
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        setup.weights().1,
        500,
        "still at the first step, waiting for promote"
    );
    let output = setup.run(&["promote", "app"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let output = canary.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(setup.weights(), (0, 1000));
}

#[test]
fn a_signal_during_a_canary_rolls_back_or_holds() {
    for (mode, expected_green) in [("rollback", 1), ("hold", 500)] {
        let setup = Setup::start("");
        let canary = setup.spawn(&[
            "canary",
            "app",
            "--to",
            &setup.green(),
            "--steps",
            "50,100",
            "--interval",
            "30s",
            "--on-interrupt",
            mode,
        ]);
        assert!(wait_until(Duration::from_secs(10), || setup.weights().1 == 500).is_some());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(canary.id() as i32),
            nix::sys::signal::SIGTERM,
        )
        .unwrap();
        let output = canary.wait_with_output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(1),
            "{mode}: {}",
            text(&output.stderr)
        );
        assert_eq!(
            setup.weights().1,
            expected_green,
            "{mode}: {}",
            text(&output.stderr)
        );
        assert!(
            text(&output.stderr).contains("interrupted"),
            "{}",
            text(&output.stderr)
        );
    }
}

#[test]
fn add_and_remove_change_every_nginx_or_none() {
    let first = Setup::start("");
    let second = Setup::start("");
    let sockets = [first.nginx.path("api.sock"), second.nginx.path("api.sock")];
    let both = |args: &[&str]| {
        shiftctl_command(&sockets, Some(&first.state_dir()))
            .args(args)
            .output()
            .unwrap()
    };
    let red = Backend::start("red");
    let server = red.addr().to_string();
    let output = both(&["add", "app", &server, "--weight", "3", "--slow-start", "1h"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for setup in [&first, &second] {
        let peer = setup.admin.peer("app", &server).expect("added");
        assert_eq!((peer.weight, peer.state), (3, PeerState::Up));
        // A ramp of its own, though the upstream has no shift_slow_start.
        let ramp = peer.ramp.expect("it ramps up");
        assert_eq!(ramp.effective_weight, 1, "{ramp:?}");
    }
    // Added twice: the first Nginx refuses (409), nothing changes anywhere.
    let output = both(&["add", "app", &server]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("already a peer"),
        "{}",
        text(&output.stderr)
    );

    // Removed from the first only (by hand): removing it everywhere is refused before anything
    // is removed, as the first no longer has it.
    assert_eq!(first.admin.remove_peer("app", &server).status, 200);
    let output = both(&["remove", "app", &server]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(second.admin.peer("app", &server).is_some());

    // Added back on the first, removed everywhere after draining.
    assert_eq!(first.admin.add_peer("app", &server, "").status, 201);
    let output = both(&["remove", "app", &server, "--wait", "--timeout", "5s"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for setup in [&first, &second] {
        assert!(setup.admin.peer("app", &server).is_none());
    }
    // A name is refused before anything is sent; a config line by the module.
    let output = both(&["add", "app", "backend:8000"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    let output = first.run(&["remove", "app", &first.blue()]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    assert!(
        text(&output.stderr).contains("remove the line and reload"),
        "{}",
        text(&output.stderr)
    );
    assert!(first
        .admin
        .upstream("app")
        .peers
        .iter()
        .any(|peer| peer.server == first.blue()));
}

/// Three replicas of one service on 127.0.0.2–4, one port, as Compose replicas on their own
/// IPs; hooks that start a new replica on the next loopback address (writing it to
/// `$SHIFT_ADDRESS_FILE`) and stop the one at `$SHIFT_SERVER`.
struct Replicas {
    dir: TempDir,
    port: u16,
}

impl Replicas {
    fn start(port: u16) -> Replicas {
        let replicas = Replicas {
            dir: TempDir::new().unwrap(),
            port,
        };
        fs::write(replicas.dir.path().join("next"), "2").unwrap();
        for _ in 0..3 {
            let status = Command::new("sh")
                .arg("-c")
                .arg(replicas.start_hook())
                .env("SHIFT_ADDRESS_FILE", replicas.dir.path().join("ignored"))
                .status()
                .unwrap();
            assert!(status.success());
        }
        replicas
    }

    fn start_hook(&self) -> String {
        let (dir, port) = (self.dir.path().display(), self.port);
        format!(
            "n=$(cat {dir}/next); echo $((n + 1)) > {dir}/next; \
             {backend} v$n 127.0.0.$n:{port} >/dev/null 2>&1 & echo $! > {dir}/127.0.0.$n:{port}.pid; \
             echo 127.0.0.$n:{port} > \"$SHIFT_ADDRESS_FILE\"; echo start 127.0.0.$n >> {dir}/log",
            backend = harness::backend_binary().display()
        )
    }

    fn stop_hook(&self) -> String {
        let dir = self.dir.path().display();
        format!("kill $(cat {dir}/$SHIFT_SERVER.pid) && echo stop $SHIFT_SERVER >> {dir}/log")
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for entry in fs::read_dir(self.dir.path()).unwrap().flatten() {
            if entry.path().extension().is_some_and(|ext| ext == "pid") {
                if let Ok(pid) = fs::read_to_string(entry.path())
                    .unwrap_or_default()
                    .trim()
                    .parse()
                {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                }
            }
        }
    }
}

fn rolling_setup(check: &str) -> (Nginx, Admin, u16, Replicas, TempDir) {
    let replicas = Replicas::start(free_port());
    let port = free_port();
    let servers: String = (2..=4)
        .map(|n| format!("server 127.0.0.{n}:{};", replicas.port))
        .collect();
    let nginx = Nginx::start(NginxOptions::new(format!(
        "upstream app {{ {servers} shift; {check} }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}\n"
    )));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    let plan_dir = TempDir::new().unwrap();
    (nginx, admin, port, replicas, plan_dir)
}

#[test]
fn a_rolling_deploy_replaces_three_replicas_one_at_a_time_without_a_failed_request() {
    let (nginx, admin, port, replicas, plan_dir) = rolling_setup("shift_check interval=200ms;");
    let plan = plan_dir.path().join("plan.toml");
    fs::write(
        &plan,
        format!(
            "upstream = \"app\"\nstrategy = \"rolling\"\ninterval = \"1s\"\nhealth_timeout = \"10s\"\n\
             [rolling]\nstart = '{}'\nstop = '{}'\n",
            replicas.start_hook(),
            replicas.stop_hook()
        ),
    )
    .unwrap();
    let traffic = Traffic::start(port, 1);
    let output = shiftctl_command(&[nginx.path("api.sock")], Some(plan_dir.path()))
        .args(["deploy", plan.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report = traffic.stop();
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        report.failed.is_empty(),
        "failed requests: {:?}",
        report.failed
    );
    let answers = report.answers;
    for new in ["v5", "v6", "v7"] {
        assert!(
            answers.contains_key(new),
            "{new} never answered: {answers:?}"
        );
    }
    // One at a time: each old replica stopped after its successor started.
    let p = replicas.port;
    assert_eq!(
        replicas.log(),
        format!(
            "start 127.0.0.2\nstart 127.0.0.3\nstart 127.0.0.4\n\
             start 127.0.0.5\nstop 127.0.0.2:{p}\nstart 127.0.0.6\nstop 127.0.0.3:{p}\n\
             start 127.0.0.7\nstop 127.0.0.4:{p}\n"
        )
    );
    let taking: BTreeSet<String> = admin
        .upstream("app")
        .peers
        .iter()
        .filter(|peer| peer.eligible)
        .map(|peer| peer.server.clone())
        .collect();
    let expected: BTreeSet<String> = (5..=7).map(|n| format!("127.0.0.{n}:{p}")).collect();
    assert_eq!(taking, expected);
}

#[test]
fn a_rolling_deploy_whose_new_replica_fails_its_check_takes_it_out_and_stops() {
    let (nginx, admin, port, replicas, plan_dir) = rolling_setup("shift_check interval=200ms;");
    // The "new replica" never listens: its check cannot pass.
    let dead = format!("127.0.0.9:{}", replicas.port);
    let plan = plan_dir.path().join("plan.toml");
    fs::write(
        &plan,
        format!(
            "upstream = \"app\"\nstrategy = \"rolling\"\nhealth_timeout = \"2s\"\n\
             [rolling]\nstart = 'echo {dead} > \"$SHIFT_ADDRESS_FILE\"'\nstop = '{}'\n",
            replicas.stop_hook()
        ),
    )
    .unwrap();
    let output = shiftctl_command(&[nginx.path("api.sock")], Some(plan_dir.path()))
        .args(["deploy", plan.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("rolling deploy stopped at replica 1/3"),
        "{stderr}"
    );
    assert!(stderr.contains("0 replica(s) were replaced"), "{stderr}");
    let upstream = admin.upstream("app");
    assert!(
        upstream.peers.iter().all(|peer| peer.server != dead),
        "taken out"
    );
    let taking = upstream.peers.iter().filter(|peer| peer.eligible).count();
    assert_eq!(taking, 3, "the old replicas keep serving");
    assert_eq!(HttpClient::new(port).get("/").unwrap().status, 200);
}

#[test]
fn a_label_moves_every_replica_of_a_version_together() {
    let setup = Setup::start("");
    let green2 = Backend::start("green2");
    let server2 = green2.addr().to_string();
    let labelled = setup.run(&["label", "app", &setup.green(), "green"]);
    assert!(labelled.status.success(), "{}", text(&labelled.stderr));
    let added = setup.run(&[
        "add", "app", &server2, "--state", "down", "--label", "green",
    ]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    let status = text(&setup.run(&["status", "app"]).stdout);
    assert!(
        status.contains("LABEL") && status.matches(" green ").count() == 2,
        "{status}"
    );

    let switched = setup.run(&["switch", "app", "--to", "green"]);
    assert!(switched.status.success(), "{}", text(&switched.stderr));
    let served: BTreeSet<String> = (0..40)
        .map(|_| HttpClient::new(setup.port).get("/").unwrap().body)
        .collect();
    assert_eq!(
        served,
        BTreeSet::from(["green".to_string(), "green2".to_string()])
    );
    assert!(setup.run(&["rollback", "app"]).status.success());
    assert_eq!(setup.green_share(40), 0.0, "back on blue");

    let canary = setup.run(&[
        "canary",
        "app",
        "--to",
        "green",
        "--steps",
        "50,100",
        "--interval",
        "1s",
        "--min-requests",
        "0",
    ]);
    assert!(canary.status.success(), "{}", text(&canary.stderr));
    let upstream = setup.admin.upstream("app");
    let summary: Vec<_> = upstream
        .peers
        .iter()
        .map(|peer| (peer.label.as_deref(), peer.weight, peer.state))
        .collect();
    assert_eq!(
        summary,
        [
            (None, 0, PeerState::Drain),
            (Some("green"), 500, PeerState::Up),
            (Some("green"), 500, PeerState::Up),
        ]
    );
    let unknown = setup.run(&["switch", "app", "--to", "purple"]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown.stderr));
    assert!(
        text(&unknown.stderr).contains("no peer or label \"purple\""),
        "{}",
        text(&unknown.stderr)
    );
}

#[test]
fn status_watch_draws_the_split_and_the_error_rate_on_a_terminal() {
    let setup = Setup::start("");
    let body = format!(
        r#"{{"peers": {{"{}": {{"weight": 3}}, "{}": {{"weight": 1, "state": "up"}}}}}}"#,
        setup.blue(),
        setup.green()
    );
    assert_eq!(setup.admin.patch("app", &body).status, 200);
    setup.green.set_status(500);
    let load = Load::start(setup.port);
    // `script` gives shiftctl a terminal, where --watch draws; SIGINT ends both.
    let command = format!(
        "{} --socket {} status app --watch --every 300ms",
        harness::shiftctl_binary().display(),
        setup.nginx.path("api.sock").display()
    );
    let output = Command::new("timeout")
        .args(["-s", "INT", "3", "script", "-qefc", &command, "/dev/null"])
        .output()
        .expect("run script");
    load.stop();
    let screen = text(&output.stdout);
    let last = screen
        .rsplit("upstream app")
        .next()
        .expect("a drawn upstream");
    let line = |server: String| {
        last.lines()
            .find(|line| line.starts_with(&server))
            .unwrap_or_else(|| panic!("no line for {server}: {screen}"))
            .to_string()
    };
    let (blue, green) = (line(setup.blue()), line(setup.green()));
    assert!(blue.contains('█') && blue.contains("errors ▁"), "{blue}");
    // Green answers 500 to everything: its sparkline is at full height.
    assert!(
        green.contains('█') && green.trim_end().ends_with('█'),
        "{green}"
    );
    let share = |line: &str| -> f64 {
        line.split_whitespace()
            .find_map(|word| word.strip_suffix('%')?.parse().ok())
            .unwrap()
    };
    assert!((55.0..=95.0).contains(&share(&blue)), "{blue}");
}
