//! Load benchmarks against real processes: the data-path cost of the module, how fast a switch
//! takes effect (the module's API, shiftctl, `nginx -s reload`, HAProxy's runtime API; idle and
//! under load), whether every change acknowledged during a reload storm is applied, how many
//! requests fail while traffic moves under load or while a peer fails real requests, and how
//! fast a fleet of Nginx hosts applies a desired state written to etcd.
//!
//! `cargo bench --bench load` runs them in full and prints a Markdown report (see
//! scripts/bench.sh and BENCHMARKS.md). Run without `--bench` — as `cargo test --all-targets`
//! does — it is a smoke test: every scenario runs briefly, so the benchmark cannot rot, and the
//! figures mean nothing.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use harness::{
    api_request, free_port, shiftctl_command, wait_until, Backend, HttpClient, Nginx, NginxOptions,
};

mod cold_switch;
mod data_path;
mod eject;
mod fleet;
mod fleet_history;
mod long_lived;
mod peers;
mod reload_storm;
mod resolve;
mod scale;
mod switch;
mod wrk;
mod zero_downtime;

use cold_switch::cold_switch;
use data_path::data_path;
use eject::failing_peer;
use fleet::fleet_sync;
use fleet_history::fleet_history;
use harness::{wrk, wrk_result};
use long_lived::websocket_drain;
use peers::peer_changes;
use reload_storm::reload_storm;
use resolve::resolve_cost;
use scale::api_at_scale;
use switch::{first_answer, plain_upstream, shift_nginx, switch_latency, Pair};
use wrk::{median, percentile};
use zero_downtime::zero_downtime;

struct Settings {
    full: bool,
    /// Seconds of wrk per data-path measurement.
    wrk_seconds: u32,
    /// Data-path rounds; each config's figure is the median (`SHIFT_BENCH_ROUNDS` overrides).
    rounds: usize,
    /// Switches through the API (and HAProxy's).
    switches: usize,
    /// Switches through the shiftctl binary.
    shiftctl_switches: usize,
    reloads: usize,
    /// Seconds of load in each zero-downtime scenario.
    load_seconds: u32,
    /// How long the old way's new backend takes to start after the old one stopped.
    restart_gap: Duration,
    /// Reloads in the storm, and seconds of load around it.
    storm_reloads: usize,
    storm_seconds: u32,
    /// Desired-state changes timed per fleet size.
    fleet_changes: usize,
}

impl Settings {
    fn new(full: bool) -> Settings {
        if full {
            Settings {
                full,
                wrk_seconds: 10,
                rounds: std::env::var("SHIFT_BENCH_ROUNDS")
                    .ok()
                    .and_then(|rounds| rounds.parse().ok())
                    .unwrap_or(3),
                switches: 1000,
                shiftctl_switches: 50,
                reloads: 10,
                load_seconds: 6,
                restart_gap: Duration::from_secs(1),
                storm_reloads: 50,
                storm_seconds: 30,
                fleet_changes: 200,
            }
        } else {
            Settings {
                full,
                wrk_seconds: 1,
                rounds: 1,
                switches: 20,
                shiftctl_switches: 3,
                reloads: 2,
                load_seconds: 2,
                restart_gap: Duration::from_millis(200),
                storm_reloads: 3,
                storm_seconds: 3,
                fleet_changes: 3,
            }
        }
    }
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let settings = Settings::new(full);
    for tool in ["wrk", "haproxy"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is not installed: apt-get install wrk haproxy (scripts/test.sh does)"
        );
    }
    println!(
        "# nginx-shift load benchmarks ({})\n",
        if full {
            "full run"
        } else {
            "smoke run: the figures mean nothing"
        }
    );
    println!("{}", machine());
    // Scenario names after the flags run only those (`-- --bench data_path`); none runs all.
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    type Scenario = (&'static str, fn(&Settings));
    let scenarios: [Scenario; 12] = [
        ("data_path", data_path),
        ("switch_latency", switch_latency),
        ("peer_changes", peer_changes),
        ("api_at_scale", api_at_scale),
        ("resolve_cost", resolve_cost),
        ("failing_peer", failing_peer),
        ("cold_switch", cold_switch),
        ("websocket_drain", websocket_drain),
        ("reload_storm", reload_storm),
        ("zero_downtime", zero_downtime),
        ("fleet_sync", fleet_sync),
        ("fleet_history", fleet_history),
    ];
    for (name, run) in scenarios {
        if chosen.is_empty() || chosen.iter().any(|chosen| chosen == name) {
            run(&settings);
        }
    }
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let nginx = Command::new(harness::nginx_binary())
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default();
    let haproxy = Command::new("haproxy")
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    format!("Machine: {cores} cores ({cpu}); {nginx}, 2 workers; {haproxy}; wrk -t2 -c32, keep-alive, loopback.\n")
}
