//! Several Nginx hosts moved together through etcd: a real etcd, three Nginx instances with the
//! module, and a `shiftctl agent` beside each. Commands with `--etcd` write the desired state;
//! every agent applies it and reports; `status --fleet` tells who is SYNCED, STALE or GONE.

use std::process::{Command, Output};
use std::time::Duration;

use harness::{shiftctl_binary, wait_until, Admin, Agent, Backend, Etcd, Nginx, NginxOptions};
use serde_json::Value;

/// How long an agent may take to apply a change (its tick is 200 ms; watches are faster).
const CONVERGE: Duration = Duration::from_secs(10);

struct Host {
    nginx: Nginx,
    agent: Agent,
}

impl Host {
    fn admin(&self) -> Admin {
        Admin::new(self.nginx.path("api.sock"), "/api/")
    }

    /// The weight each peer has in this host's module, by address.
    fn weights(&self) -> Vec<(String, u32)> {
        let mut weights: Vec<(String, u32)> = self
            .admin()
            .upstream("app")
            .peers
            .into_iter()
            .map(|peer| (peer.server, peer.weight))
            .collect();
        weights.sort();
        weights
    }
}

struct Fleet {
    etcd: Etcd,
    blue: Backend,
    green: Backend,
    hosts: Vec<Host>,
}

impl Fleet {
    fn start(count: usize) -> Fleet {
        Fleet::start_on(Etcd::start(), count)
    }

    fn start_on(etcd: Etcd, count: usize) -> Fleet {
        let blue = Backend::start("blue");
        let green = Backend::start("green");
        let hosts = (0..count)
            .map(|index| {
                let nginx = Nginx::start(NginxOptions::new(format!(
                    "upstream app {{ server {} weight=5; server {} weight=5; shift; }}\n\
                     server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}\n",
                    blue.addr(),
                    green.addr()
                )));
                let agent = Agent::start(&etcd, &nginx.path("api.sock"), &format!("host{index}"));
                Host { nginx, agent }
            })
            .collect();
        let fleet = Fleet {
            etcd,
            blue,
            green,
            hosts,
        };
        fleet.wait_for_status(|status| synced_hosts(status).len() == count);
        fleet
    }

    fn shiftctl(&self, args: &[&str]) -> Output {
        Command::new(shiftctl_binary())
            .env_remove("SHIFT_SOCKET")
            .env_remove("SHIFT_ETCD")
            .args(self.etcd.client_args())
            .args(args)
            .output()
            .expect("run shiftctl")
    }

    fn set(&self, blue: u32, green: u32) -> Output {
        let blue = format!("{}={blue}", self.blue.addr());
        let green = format!("{}={green}", self.green.addr());
        self.shiftctl(&["set", "app", &blue, &green])
    }

    fn status(&self) -> Value {
        let output = self.shiftctl(&["status", "--fleet", "--json"]);
        assert!(output.status.success(), "{}", text(&output));
        serde_json::from_slice(&output.stdout).expect("status --fleet --json")
    }

    fn wait_for_status(&self, mut condition: impl FnMut(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let met = wait_until(CONVERGE, || {
            last = self.status();
            condition(&last)
        });
        assert!(met.is_some(), "the fleet never got there: {last:#}");
        last
    }

    fn expected(&self, blue: u32, green: u32) -> Vec<(String, u32)> {
        let mut weights = vec![
            (self.blue.addr().to_string(), blue),
            (self.green.addr().to_string(), green),
        ];
        weights.sort();
        weights
    }

    /// Waits until host `index` has these weights.
    fn wait_for_weights(&self, index: usize, blue: u32, green: u32) {
        let expected = self.expected(blue, green);
        let mut last = Vec::new();
        let met = wait_until(CONVERGE, || {
            last = self.hosts[index].weights();
            last == expected
        });
        assert!(met.is_some(), "host{index} has {last:?}, not {expected:?}");
    }
}

fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The hosts `status --fleet --json` calls SYNCED.
fn synced_hosts(status: &Value) -> Vec<String> {
    hosts_with(status, "SYNCED")
}

fn hosts_with(status: &Value, sync: &str) -> Vec<String> {
    status["hosts"]
        .as_array()
        .map(|hosts| {
            hosts
                .iter()
                .filter(|host| host["status"] == sync)
                .map(|host| host["host"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_change_reaches_every_host() {
    let fleet = Fleet::start(3);
    let output = fleet.set(0, 100);
    assert!(output.status.success(), "{}", text(&output));
    for index in 0..3 {
        fleet.wait_for_weights(index, 0, 100);
    }
    let status = fleet.wait_for_status(|status| synced_hosts(status).len() == 3);
    let peers = &status["upstreams"][0]["peers"];
    let green = peers
        .as_array()
        .unwrap()
        .iter()
        .find(|peer| peer["server"] == fleet.green.addr().to_string())
        .expect("green in the split");
    assert_eq!(green["share"], 1.0, "{status:#}");
}

#[test]
fn a_host_down_during_a_change_is_reported_and_converges_when_back() {
    let mut fleet = Fleet::start(3);
    fleet.hosts[2].nginx.stop_for_now();
    let output = fleet.set(20, 80);
    assert!(output.status.success(), "{}", text(&output));
    fleet.wait_for_weights(0, 20, 80);
    fleet.wait_for_weights(1, 20, 80);
    // STALE as soon as the desired state moves; its agent's report says why once its attempt
    // to apply it failed.
    let status = fleet.wait_for_status(|status| {
        hosts_with(status, "STALE") == ["host2"]
            && status["hosts"][2]["problems"]
                .as_array()
                .is_some_and(|problems| !problems.is_empty())
    });
    let host2 = &status["hosts"][2];
    assert_eq!(host2["behind_changes"], 1, "{status:#}");
    assert!(
        host2["problems"][0]
            .as_str()
            .unwrap_or_default()
            .contains("cannot reach Nginx"),
        "{status:#}"
    );

    // Back without `state=`: it starts from its config (5/5) and its agent puts it right.
    fleet.hosts[2].nginx.start_again();
    fleet.wait_for_weights(2, 20, 80);
    fleet.wait_for_status(|status| synced_hosts(status).len() == 3);
}

#[test]
fn a_stopped_agent_is_gone_and_a_restarted_one_resumes_from_its_revision() {
    let mut fleet = Fleet::start(2);
    fleet.hosts[1].agent.kill();
    fleet.wait_for_status(|status| hosts_with(status, "GONE") == ["host1"]);
    assert!(fleet.set(30, 70).status.success());
    fleet.wait_for_weights(0, 30, 70);
    assert_eq!(
        fleet.hosts[1].weights(),
        fleet.expected(5, 5),
        "no agent, no change"
    );

    fleet.hosts[1].agent.start_again();
    fleet.wait_for_weights(1, 30, 70);
    fleet.wait_for_status(|status| synced_hosts(status).len() == 2);
    let log = fleet.hosts[1].agent.log();
    assert!(log.contains("resuming from revision"), "{log}");

    // A direct change to its module (drift) is put back.
    fleet.hosts[1]
        .admin()
        .set_weights("app", &[(&fleet.blue.addr().to_string(), 99)]);
    fleet.wait_for_weights(1, 30, 70);
}

#[test]
fn an_agent_behind_a_compaction_lists_again() {
    let mut fleet = Fleet::start(2);
    fleet.hosts[1].agent.kill();
    for green in [60, 70, 80] {
        assert!(fleet.set(100 - green, green).status.success());
    }
    fleet.etcd.compact();
    fleet.hosts[1].agent.start_again();
    fleet.wait_for_weights(1, 20, 80);
    let log = fleet.hosts[1].agent.log();
    assert!(log.contains("was compacted"), "{log}");
    fleet.wait_for_status(|status| synced_hosts(status).len() == 2);
}

#[test]
fn two_controllers_at_once_lose_no_change() {
    let fleet = Fleet::start(1);
    for round in 1..=8u32 {
        let (blue_weight, green_weight) = (round, 100 + round);
        let blue = format!("{}={blue_weight}", fleet.blue.addr());
        let green = format!("{}={green_weight}", fleet.green.addr());
        let url = fleet.etcd.url();
        let spawn = |assignment: &str| {
            Command::new(shiftctl_binary())
                .args(["--etcd", &url, "set", "app", assignment])
                .output()
        };
        let (one, two) = std::thread::scope(|scope| {
            let one = scope.spawn(|| spawn(&blue));
            let two = scope.spawn(|| spawn(&green));
            (one.join().unwrap().unwrap(), two.join().unwrap().unwrap())
        });
        // Each either wrote, on top of what the other wrote, or was told and wrote nothing.
        let desired = fleet
            .etcd
            .etcdctl(&["get", "/nginx-shift/upstreams/app", "--print-value-only"])
            .expect("the desired state");
        let desired: Value = serde_json::from_str(&desired).expect("desired JSON");
        let weight_of = |server: String| {
            desired["peers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|peer| peer["server"] == server)
                .map(|peer| peer["weight"].as_u64().unwrap())
        };
        for (output, server, weight) in [
            (&one, fleet.blue.addr().to_string(), blue_weight),
            (&two, fleet.green.addr().to_string(), green_weight),
        ] {
            if output.status.success() {
                assert_eq!(
                    weight_of(server),
                    Some(weight as u64),
                    "round {round}: a lost change"
                );
            } else {
                assert_eq!(output.status.code(), Some(1), "{}", text(output));
                assert!(
                    text(output).contains("changed in etcd since it was read"),
                    "{}",
                    text(output)
                );
            }
        }
        assert!(
            one.status.success() || two.status.success(),
            "round {round}: nobody wrote"
        );
    }
}

/// A canary through etcd, running in the background: `--interval` per step, no traffic needed
/// (`--min-requests 0`).
fn spawn_canary(
    fleet: &Fleet,
    steps: &str,
    interval: &str,
    state_dir: &std::path::Path,
) -> std::process::Child {
    Command::new(shiftctl_binary())
        .env_remove("SHIFT_SOCKET")
        .env_remove("SHIFT_ETCD")
        .args(fleet.etcd.client_args())
        .arg("--state-dir")
        .arg(state_dir)
        .args(["canary", "app", "--to"])
        .arg(fleet.green.addr().to_string())
        .args([
            "--steps",
            steps,
            "--interval",
            interval,
            "--min-requests",
            "0",
        ])
        .args(["--sync-timeout", "3s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run shiftctl canary")
}

/// Step weights out of 1000: the target takes `percent`.
fn step_weights(percent: u32) -> (u32, u32) {
    (1000 - 10 * percent, 10 * percent)
}

#[test]
fn a_canary_step_starts_on_every_host_and_a_host_that_cannot_apply_rolls_it_back() {
    let mut fleet = Fleet::start(3);
    let state_dir = tempfile::tempdir().unwrap();

    // Every host takes every step; the canary ends with all of them on green.
    let canary = spawn_canary(&fleet, "50,100", "1s", state_dir.path());
    let output = canary.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    for index in 0..3 {
        let (blue, green) = step_weights(100);
        fleet.wait_for_weights(index, blue, green);
    }

    // Back to the start (the canary drained blue at its end), then a host goes down after the
    // first step: the next step cannot be applied there, so the canary rolls every host back.
    assert!(fleet.set(5, 5).status.success());
    let blue_addr = fleet.blue.addr().to_string();
    let undrain = fleet.shiftctl(&["undrain", "app", &blue_addr]);
    assert!(undrain.status.success(), "{}", text(&undrain));
    fleet.wait_for_status(|status| synced_hosts(status).len() == 3);
    let mut canary = spawn_canary(&fleet, "10,50,100", "2s", state_dir.path());
    let (blue, green) = step_weights(10);
    let expected = fleet.expected(blue, green);
    let started = wait_until(CONVERGE, || {
        fleet.hosts[0].weights() == expected || canary.try_wait().unwrap().is_some()
    });
    if started.is_none() || canary.try_wait().unwrap().is_some() {
        panic!(
            "step 1 never came: {}",
            text(&canary.wait_with_output().unwrap())
        );
    }
    fleet.hosts[2].nginx.stop_for_now();
    let output = canary.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let said = text(&output);
    assert!(
        said.contains("could not be applied") && said.contains("host2"),
        "{said}"
    );
    assert!(said.contains("rolled back"), "{said}");
    fleet.wait_for_weights(0, 5, 5);
    fleet.wait_for_weights(1, 5, 5);
    fleet.hosts[2].nginx.start_again();
    fleet.wait_for_weights(2, 5, 5);
}

#[test]
fn a_controller_killed_mid_canary_leaves_a_state_another_rolls_back() {
    let fleet = Fleet::start(3);
    let state_dir = tempfile::tempdir().unwrap();
    let mut canary = spawn_canary(&fleet, "10,50,100", "60s", state_dir.path());
    let (blue, green) = step_weights(10);
    for index in 0..3 {
        fleet.wait_for_weights(index, blue, green);
    }
    canary.kill().unwrap();
    canary.wait().unwrap();

    // Every host holds step 1, the desired state says so, and a controller elsewhere (another
    // state directory) finds the stable set in etcd.
    fleet.wait_for_status(|status| synced_hosts(status).len() == 3);
    let elsewhere = tempfile::tempdir().unwrap();
    let output = fleet.shiftctl(&[
        "--state-dir",
        &elsewhere.path().display().to_string(),
        "rollback",
        "app",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    for index in 0..3 {
        fleet.wait_for_weights(index, 5, 5);
    }
}

#[test]
fn a_canary_rides_out_an_etcd_restart() {
    let mut fleet = Fleet::start(3);
    let state_dir = tempfile::tempdir().unwrap();
    let canary = spawn_canary(&fleet, "20,100", "3s", state_dir.path());
    let (blue, green) = step_weights(20);
    fleet.wait_for_weights(0, blue, green);
    fleet.etcd.stop();
    std::thread::sleep(Duration::from_millis(500));
    fleet.etcd.start_again();
    let output = canary.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", text(&output));
    let (blue, green) = step_weights(100);
    for index in 0..3 {
        fleet.wait_for_weights(index, blue, green);
    }
    fleet.wait_for_status(|status| synced_hosts(status).len() == 3);
}

#[test]
fn a_fleet_over_mutual_tls_takes_changes_and_refuses_a_client_without_a_certificate() {
    let fleet = Fleet::start_on(Etcd::start_with_mutual_tls(), 2);
    assert!(fleet.etcd.url().starts_with("https://"));
    let output = fleet.set(40, 60);
    assert!(output.status.success(), "{}", text(&output));
    fleet.wait_for_weights(0, 40, 60);
    fleet.wait_for_weights(1, 40, 60);
    fleet.wait_for_status(|status| synced_hosts(status).len() == 2);

    // The CA alone (no client certificate) is not let in; nothing is written.
    let ca = fleet.etcd.client_args()[1].clone();
    let stranger = Command::new(shiftctl_binary())
        .args([&format!("--etcd={}", fleet.etcd.url()), &ca])
        .args(["status", "--fleet"])
        .output()
        .unwrap();
    assert!(!stranger.status.success(), "{}", text(&stranger));
    assert!(text(&stranger).contains("etcd"), "{}", text(&stranger));
}

#[test]
fn a_peer_added_through_etcd_reaches_every_host_and_goes_with_remove() {
    let fleet = Fleet::start(2);
    let extra = Backend::start("extra");
    let server = extra.addr().to_string();
    let output = fleet.shiftctl(&["add", "app", &server, "--weight", "3", "--label", "v2"]);
    assert!(output.status.success(), "{}", text(&output));
    for host in &fleet.hosts {
        let added = wait_until(CONVERGE, || {
            host.admin().peer("app", &server).is_some_and(|peer| {
                peer.weight == 3
                    && peer.label.as_deref() == Some("v2")
                    && peer.origin == shift_wire::PeerOrigin::Api
            })
        });
        assert!(added.is_some(), "{:?}", host.admin().upstream("app"));
    }
    fleet.wait_for_status(|status| synced_hosts(status).len() == 2);

    // A server line stays: only the config removes it.
    let blue = fleet.blue.addr().to_string();
    let refused = fleet.shiftctl(&["remove", "app", &blue]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("server line"), "{}", text(&refused));

    let output = fleet.shiftctl(&["remove", "app", &server]);
    assert!(output.status.success(), "{}", text(&output));
    for host in &fleet.hosts {
        let gone = wait_until(CONVERGE, || host.admin().peer("app", &server).is_none());
        assert!(gone.is_some(), "{:?}", host.admin().upstream("app"));
    }
}

/// A restarted agent reports a revision as applied only once its Nginx shows it: the watch's
/// first answer carries etcd's newest revision before the changes up to it have arrived. Five
/// restarts, each after changes it missed; `status --fleet` is polled as fast as it answers, and
/// whenever it calls the host SYNCED, the module (read after it) must have the weights.
#[test]
fn a_restarted_agent_never_reports_a_change_before_its_nginx_has_it() {
    let mut fleet = Fleet::start(2);
    for round in 0..5u32 {
        fleet.hosts[1].agent.kill();
        fleet.wait_for_status(|status| hosts_with(status, "GONE") == ["host1"]);
        // Changes it misses, the last one what it must reach.
        for step in 0..3 {
            let blue = 10 + round * 10 + step;
            assert!(fleet.set(blue, 100 - blue).status.success());
        }
        let (blue, green) = (12 + round * 10, 88 - round * 10);
        fleet.hosts[1].agent.start_again();
        let expected = fleet.expected(blue, green);
        let synced = wait_until(CONVERGE, || {
            let status = fleet.status();
            if !synced_hosts(&status).contains(&"host1".to_string()) {
                return false;
            }
            let weights = fleet.hosts[1].weights();
            assert_eq!(
                weights, expected,
                "round {round}: host1 reported SYNCED before its Nginx had the change: {status:#}"
            );
            true
        });
        assert!(synced.is_some(), "round {round}: host1 never synced");
    }
}

/// A key under `upstreams/` that holds no readable desired state (garbage, or written by
/// something else) is skipped, by a running agent and by a restarted one alike: every other
/// upstream is still applied, and the host is STALE with a problem that names the key until it
/// is fixed; commands on the other upstreams are not held back by it.
#[test]
fn a_bad_desired_state_key_stops_nothing_else_and_is_reported() {
    let mut fleet = Fleet::start(2);
    let key = "/nginx-shift/upstreams/other";
    fleet
        .etcd
        .etcdctl(&["put", key, "{not json"])
        .expect("etcdctl put");
    let named = |status: &Value| {
        status["hosts"].as_array().is_some_and(|hosts| {
            hosts
                .iter()
                .all(|host| host["status"] == "STALE" && host["problems"].to_string().contains(key))
        })
    };
    fleet.wait_for_status(named);
    assert!(fleet.set(20, 80).status.success());
    fleet.wait_for_weights(0, 20, 80);

    // A restarted agent lists the keys afresh: the same.
    fleet.hosts[1].agent.kill();
    fleet.hosts[1].agent.start_again();
    assert!(fleet.set(40, 60).status.success());
    fleet.wait_for_weights(1, 40, 60);
    fleet.wait_for_status(named);

    // The problem is the other upstream's: a switch of app, which waits for every host to
    // have app in sync, is not held back by it.
    let green = fleet.green.addr().to_string();
    let switch = fleet.shiftctl(&["switch", "app", "--to", &green, "--timeout", "5s"]);
    assert!(switch.status.success(), "{}", text(&switch));

    fleet.etcd.etcdctl(&["del", key]).expect("etcdctl del");
    fleet.wait_for_status(|status| synced_hosts(status).len() == 2);
}

/// While etcd is away the agent keeps putting back the last desired state it knows: a host
/// whose Nginx restarts during the outage (without `state=`, so from its config) is back at the
/// fleet's weights while etcd is still down, and says it works from a copy.
#[test]
fn an_nginx_restarted_while_etcd_is_down_gets_the_fleets_weights_back() {
    let mut fleet = Fleet::start(2);
    assert!(fleet.set(30, 70).status.success());
    fleet.wait_for_weights(0, 30, 70);
    fleet.etcd.stop();
    fleet.hosts[0].nginx.restart();
    fleet.wait_for_weights(0, 30, 70);
    let log = fleet.hosts[0].agent.log();
    assert!(log.contains("working from the copy"), "{log}");

    fleet.etcd.start_again();
    fleet.wait_for_status(|status| synced_hosts(status).len() == 2);
}

/// An idle fleet adds no revision to etcd: each agent writes its report when what it says
/// changed (or its counters moved and are due), and its lease lives on etcd's keep-alive.
#[test]
fn an_idle_fleet_adds_no_revision() {
    let fleet = Fleet::start(3);
    // The first reports are out once every host is SYNCED; a moment for the last one.
    std::thread::sleep(Duration::from_secs(1));
    let before = fleet.etcd.revision();
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(
        fleet.etcd.revision(),
        before,
        "revisions written by an idle fleet of 3 in 20 s"
    );
    // A change still reaches every host, and is reported at once.
    assert!(fleet.set(20, 80).status.success());
    fleet.wait_for_status(|status| synced_hosts(status).len() == 3);
}

/// A host key of another version (here one that lacks fields this build needs) stops no
/// command: `set` writes, `status --fleet` lists that host STALE with a problem naming its key
/// and writer, and `switch` counts it: exit 1 with nothing changed, or with `--allow-partial`
/// it goes on with the hosts that report and names it.
#[test]
fn a_host_report_of_another_version_is_stale_and_blocks_no_write() {
    let fleet = Fleet::start(2);
    let ghost = r#"{"host":"ghost","applied_revision":3,"written_by":"shiftctl 9.0.0"}"#;
    fleet
        .etcd
        .etcdctl(&["put", "/nginx-shift/hosts/ghost", ghost])
        .expect("etcdctl put");
    let set = fleet.set(20, 80);
    assert!(set.status.success(), "{}", text(&set));
    fleet.wait_for_weights(0, 20, 80);
    fleet.wait_for_weights(1, 20, 80);
    let status = fleet.wait_for_status(|status| {
        hosts_with(status, "STALE") == ["ghost"] && synced_hosts(status).len() == 2
    });
    let problems = status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|host| host["host"] == "ghost")
        .map(|host| host["problems"].to_string())
        .unwrap_or_default();
    assert!(
        problems.contains("hosts/ghost") && problems.contains("shiftctl 9.0.0"),
        "{status:#}"
    );

    let green = fleet.green.addr().to_string();
    let refused = fleet.shiftctl(&["switch", "app", "--to", &green, "--timeout", "2s"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let said = text(&refused);
    assert!(
        said.contains("STALE: ghost") && said.contains("nothing was changed"),
        "{said}"
    );
    fleet.wait_for_weights(0, 20, 80);

    let went = fleet.shiftctl(&[
        "switch",
        "app",
        "--to",
        &green,
        "--timeout",
        "2s",
        "--allow-partial",
    ]);
    assert!(went.status.success(), "{}", text(&went));
    assert!(
        text(&went).contains("not yet on STALE: ghost"),
        "{}",
        text(&went)
    );
    for host in &fleet.hosts {
        let blue = fleet.blue.addr().to_string();
        let drained = wait_until(CONVERGE, || {
            host.admin()
                .peer("app", &blue)
                .is_some_and(|peer| peer.state == shift_wire::PeerState::Drain)
        });
        assert!(drained.is_some(), "{:?}", host.admin().upstream("app"));
    }
}

/// A desired state of a newer format is applied as far as this build knows it, and each host
/// says its agent is older; no command of this build rewrites it (exit 2), so the field it
/// does not know stays. A field it does not know in its own format is ignored by the agents
/// and kept by a rewrite.
#[test]
fn a_desired_state_of_a_newer_format_is_applied_as_far_as_known_and_never_rewritten() {
    let fleet = Fleet::start(2);
    let key = "/nginx-shift/upstreams/app";
    let desired = |format: u32, blue: u32, green: u32, extra: &str| {
        format!(
            r#"{{"format":{format},"written_by":"shiftctl 9.0.0","peers":[
                {{"server":"{}","weight":{blue},"state":"up"}},
                {{"server":"{}","weight":{green},"state":"up"}}],"written_ms":1,{extra}}}"#,
            fleet.blue.addr(),
            fleet.green.addr()
        )
    };
    let newer = desired(2, 30, 70, r#""canary_group":"eu""#);
    fleet.etcd.etcdctl(&["put", key, &newer]).expect("put");
    fleet.wait_for_weights(0, 30, 70);
    fleet.wait_for_weights(1, 30, 70);
    fleet.wait_for_status(|status| {
        hosts_with(status, "STALE").len() == 2 && status.to_string().contains("format 2")
    });
    let refused = fleet.set(50, 50);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("format 2") && text(&refused).contains("nothing was written"),
        "{}",
        text(&refused)
    );
    let stored = fleet.etcd.etcdctl(&["get", key, "--print-value-only"]);
    assert!(stored.unwrap_or_default().contains("canary_group"));

    let same_format = desired(1, 40, 60, r#""note":"kept""#);
    fleet
        .etcd
        .etcdctl(&["put", key, &same_format])
        .expect("put");
    fleet.wait_for_weights(0, 40, 60);
    fleet.wait_for_status(|status| synced_hosts(status).len() == 2);
    let set = fleet.set(45, 55);
    assert!(set.status.success(), "{}", text(&set));
    let stored: Value = serde_json::from_str(
        &fleet
            .etcd
            .etcdctl(&["get", key, "--print-value-only"])
            .unwrap_or_default(),
    )
    .expect("desired JSON");
    assert_eq!(stored["note"], "kept", "{stored:#}");
    let version = Command::new(shiftctl_binary())
        .arg("--version")
        .output()
        .expect("shiftctl --version");
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    assert_eq!(stored["written_by"], version.as_str(), "{stored:#}");
    fleet.wait_for_weights(1, 45, 55);
}

/// `switch` and `rollback` count GONE hosts: a switch stops with exit 1 before writing
/// anything and names the host; with `--allow-partial` it moves the hosts that report; a
/// rollback writes, then exits 1 naming the host still without it, which takes it when its
/// agent is back.
#[test]
fn a_switch_and_a_rollback_name_gone_hosts_and_go_on_only_when_allowed() {
    let mut fleet = Fleet::start(3);
    fleet.hosts[2].agent.kill();
    fleet.wait_for_status(|status| hosts_with(status, "GONE") == ["host2"]);
    let (blue, green) = (
        fleet.blue.addr().to_string(),
        fleet.green.addr().to_string(),
    );
    let state_of = |host: &Host, server: &str| host.admin().peer("app", server).map(|p| p.state);

    let refused = fleet.shiftctl(&["switch", "app", "--to", &green]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let said = text(&refused);
    assert!(
        said.contains("GONE: host2") && said.contains("nothing was changed"),
        "{said}"
    );
    assert_eq!(
        state_of(&fleet.hosts[0], &blue),
        Some(shift_wire::PeerState::Up)
    );

    let went = fleet.shiftctl(&["switch", "app", "--to", &green, "--allow-partial"]);
    assert!(went.status.success(), "{}", text(&went));
    assert!(text(&went).contains("GONE: host2"), "{}", text(&went));
    for host in &fleet.hosts[..2] {
        assert_eq!(state_of(host, &blue), Some(shift_wire::PeerState::Drain));
    }

    let rollback = fleet.shiftctl(&["rollback", "app"]);
    assert_eq!(rollback.status.code(), Some(1), "{}", text(&rollback));
    let said = text(&rollback);
    assert!(
        said.contains("GONE: host2") && said.contains("written in etcd"),
        "{said}"
    );
    for host in &fleet.hosts[..2] {
        let back = wait_until(CONVERGE, || {
            state_of(host, &blue) == Some(shift_wire::PeerState::Up)
        });
        assert!(back.is_some(), "{:?}", host.admin().upstream("app"));
    }
    fleet.hosts[2].agent.start_again();
    fleet.wait_for_status(|status| synced_hosts(status).len() == 3);
}

/// What answers at --etcd decides the exit: a server that is not etcd is named, exit 3, like
/// no server at all; and a command whose first contact finds nothing fails at once (the wait
/// for an etcd that went away is for one that answered before).
#[test]
fn a_server_that_is_not_etcd_is_named_and_exits_3() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let _ = stream.read(&mut [0; 1024]);
            let _ = stream.write_all(b"HTTP/1.0 404 Not Found\r\nServer: not-etcd/1.0\r\n\r\n");
        }
    });
    let run = |url: &str, args: &[&str]| {
        Command::new(shiftctl_binary())
            .env_remove("SHIFT_ETCD")
            .arg(format!("--etcd={url}"))
            .args(args)
            .output()
            .expect("run shiftctl")
    };
    let not_etcd = format!("http://{address}");
    for args in [&["status", "--fleet"][..], &["set", "app", "127.0.0.1:1=1"]] {
        let output = run(&not_etcd, args);
        assert_eq!(output.status.code(), Some(3), "{}", text(&output));
        let said = text(&output);
        assert!(
            said.contains("is not etcd") && said.contains("not-etcd/1.0"),
            "{said}"
        );
    }
    let nothing = format!("http://127.0.0.1:{}", harness::free_port());
    let started = std::time::Instant::now();
    let output = run(&nothing, &["set", "app", "127.0.0.1:1=1"]);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    assert!(
        text(&output).contains("cannot reach etcd"),
        "{}",
        text(&output)
    );
    // Before, it waited out the 15 s outage window on a port nothing ever answered.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// An etcd out of space (its NOSPACE alarm raised at a small quota) is shown by `status
/// --fleet`, and a write fails with exit 1 saying so and what to do.
#[test]
fn etcd_out_of_space_is_shown_by_status_and_by_a_write() {
    let fleet = Fleet::start_on(Etcd::start_with_quota(1 << 20), 1);
    let filler = "x".repeat(100_000);
    let full = (0..100).any(|_| fleet.etcd.etcdctl(&["put", "/filler", &filler]).is_none());
    assert!(full, "etcd never ran out of space");
    let status = fleet.shiftctl(&["status", "--fleet"]);
    assert!(status.status.success(), "{}", text(&status));
    assert!(
        text(&status).contains("WARNING: etcd alarm NOSPACE"),
        "{}",
        text(&status)
    );
    let set = fleet.set(20, 80);
    assert_eq!(set.status.code(), Some(1), "{}", text(&set));
    assert!(
        text(&set).contains("etcd is out of space") && text(&set).contains("refused this write"),
        "{}",
        text(&set)
    );
}

/// `status --watch --etcd` asks the agents for fresh reports for as long as it runs (the
/// `fresh-reports` key under its lease), so its counters move at the agents' `--every`, not
/// every `--report-every`; the key goes with it.
#[test]
fn a_status_watch_asks_for_fresh_reports_while_it_runs() {
    let fleet = Fleet::start(1);
    let key = "/nginx-shift/fresh-reports";
    let asked = || {
        fleet
            .etcd
            .etcdctl(&["get", key, "--print-value-only"])
            .is_some_and(|value| !value.trim().is_empty())
    };
    assert!(!asked());
    let mut watch = Command::new(shiftctl_binary())
        .env_remove("SHIFT_ETCD")
        .args(fleet.etcd.client_args())
        .args(["status", "--watch", "--every", "200ms"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run shiftctl status --watch");
    let held = wait_until(CONVERGE, asked);
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        held.is_some(),
        "status --watch did not ask for fresh reports"
    );
    // Its lease (5 s) runs out.
    assert!(wait_until(CONVERGE, || !asked()).is_some());
}
