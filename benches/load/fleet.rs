//! Fleet sync: from a write of an upstream's desired state in etcd to every host's module
//! applying it, through the hosts' `shiftctl agent`s watching etcd.

use shift_wire::fleet::{DesiredPeer, DesiredUpstream};
use shift_wire::PeerState;

use super::*;
use harness::{Admin, Agent, Etcd};

pub(crate) fn fleet_sync(settings: &Settings) {
    println!("## Fleet sync through etcd\n");
    println!("From starting `etcdctl put` of an upstream's desired state to the moment every host's module has the new weights (each host's admin API polled every 0.2 ms), with a `shiftctl agent` per Nginx watching etcd; one worker per Nginx, etcd {}, everything on this machine. The `etcdctl put` alone (a process start, a connection, the write) is the first row: it is part of every figure.\n", etcd_version());
    println!("| Nginx hosts | changes | p50 | p99 | max | etcdctl put alone, p50 |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    for hosts in [3, 10] {
        let (mut samples, mut puts) = sync_times(hosts, settings.fleet_changes);
        samples.sort_by(f64::total_cmp);
        puts.sort_by(f64::total_cmp);
        println!(
            "| {hosts} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            samples.len(),
            percentile(&samples, 0.5) / 1000.0,
            percentile(&samples, 0.99) / 1000.0,
            samples.last().copied().unwrap_or_default() / 1000.0,
            percentile(&puts, 0.5) / 1000.0,
        );
    }
    println!();
}

pub(crate) fn etcd_version() -> String {
    Command::new("etcd")
        .arg("--version")
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .next()
                .unwrap_or_default()
                .replace("etcd Version: ", "")
        })
        .unwrap_or_default()
}

/// Microseconds from each write to the last host applying it, and of each write alone.
fn sync_times(count: usize, changes: usize) -> (Vec<f64>, Vec<f64>) {
    let etcd = Etcd::start();
    let pair = Pair::new();
    let servers = [pair.blue.addr().to_string(), pair.green.addr().to_string()];
    let hosts = start_hosts(&etcd, &servers, count);
    let admins: Vec<Admin> = hosts
        .iter()
        .map(|(nginx, _)| Admin::new(nginx.path("api.sock"), "/api/"))
        .collect();
    let (mut samples, mut puts) = (Vec::new(), Vec::new());
    // Change 0 warms up (agents listing, connections) and is not counted.
    for change in 0..=changes {
        let green = 100 + change as u32 % 800;
        let desired = DesiredUpstream {
            peers: vec![peer(&servers[0], 1000 - green), peer(&servers[1], green)],
            ..Default::default()
        };
        let value = serde_json::to_string(&desired).expect("desired JSON");
        let started = Instant::now();
        etcd.etcdctl(&["put", "/nginx-shift/upstreams/app", &value])
            .expect("etcdctl put");
        let put = started.elapsed();
        for admin in &admins {
            let deadline = started + Duration::from_secs(10);
            while !admin
                .upstream("app")
                .peers
                .iter()
                .any(|p| p.server == servers[1] && p.weight == green)
            {
                assert!(
                    Instant::now() < deadline,
                    "a host did not apply change {change}"
                );
                thread::sleep(Duration::from_micros(200));
            }
        }
        if change > 0 {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
            puts.push(put.as_secs_f64() * 1e6);
        }
        // Apart, as changes come in practice: each is measured on its own.
        thread::sleep(Duration::from_millis(20));
    }
    drop(hosts);
    (samples, puts)
}

fn peer(server: &str, weight: u32) -> DesiredPeer {
    DesiredPeer {
        server: server.to_string(),
        weight,
        state: PeerState::Up,
        label: None,
        runtime: false,
        ..Default::default()
    }
}

/// `count` Nginx hosts (one worker each) with upstream `app` over `servers`, each with an
/// agent on `etcd` named host0, host1, …
pub(crate) fn start_hosts(etcd: &Etcd, servers: &[String; 2], count: usize) -> Vec<(Nginx, Agent)> {
    (0..count)
        .map(|index| {
            let nginx = Nginx::start(
                NginxOptions::new(format!(
                    "upstream app {{ server {} weight=5; server {} weight=5; shift; }}\n\
                     server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}\n",
                    servers[0], servers[1]
                ))
                .workers(1),
            );
            let agent = Agent::start(etcd, &nginx.path("api.sock"), &format!("host{index}"));
            (nginx, agent)
        })
        .collect()
}
