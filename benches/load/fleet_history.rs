//! What a fleet writes into etcd's history, which etcd keeps until it is compacted: revisions
//! and bytes while idle and per change, and how soon after a change every host's report says
//! it has it (what `status --fleet` and a switch wait for).

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;

use super::fleet::start_hosts;
use super::*;
use harness::{shiftctl_binary, Etcd};

pub(crate) fn fleet_history(settings: &Settings) {
    let hosts = 10;
    let idle = if settings.full {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(3)
    };
    let changes = if settings.full { 50 } else { 3 };
    let etcd = Etcd::start();
    let pair = Pair::new();
    let servers = [pair.blue.addr().to_string(), pair.green.addr().to_string()];
    let events = EventLog::watch(&etcd);
    let started = Instant::now();
    let fleet = start_hosts(&etcd, &servers, hosts);
    // Every host's first report is out.
    let joined = harness::wait_until(Duration::from_secs(30), || {
        events.reports_since(started) >= hosts
    });
    assert!(joined.is_some(), "not every host reported");
    thread::sleep(Duration::from_secs(2));

    let before = etcd.revision();
    thread::sleep(idle);
    let idle_revisions = etcd.revision() - before;

    let (mut synced, mut per_change, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    for change in 0..changes {
        let green = 100 + change as u32 % 800;
        let revision = etcd.revision();
        let written = events.bytes();
        let started = Instant::now();
        let set = Command::new(shiftctl_binary())
            .args(etcd.client_args())
            .args(["set", "app"])
            .arg(format!("{}={}", servers[0], 1000 - green))
            .arg(format!("{}={green}", servers[1]))
            .output()
            .expect("run shiftctl set");
        assert!(
            set.status.success(),
            "{}",
            String::from_utf8_lossy(&set.stderr)
        );
        let reported = events.wait_for_reports(hosts, started, &servers[1], green);
        synced.push((reported - started).as_secs_f64() * 1000.0);
        // The writes that follow (members, reports) have landed by now; a moment for stragglers.
        thread::sleep(Duration::from_millis(300));
        per_change.push((etcd.revision() - revision) as f64);
        bytes.push((events.bytes() - written) as f64);
    }
    let mut report_bytes = events.report_sizes();
    drop(fleet);
    synced.sort_by(f64::total_cmp);

    println!("## What a fleet writes to etcd\n");
    println!(
        "{hosts} Nginx hosts, each with a `shiftctl agent` (`--every 200ms`), etcd {}, everything on this machine. Idle: no traffic and no command for {} s. Changes: `shiftctl --etcd set` of upstream `app`'s two weights, {changes} times; synced is from starting the command to the last host's report with the new weight (what `status --fleet` and a switch wait for), seen through a watch of the prefix.\n",
        super::fleet::etcd_version(),
        idle.as_secs()
    );
    println!("| idle revisions | per hour | revisions per change | bytes per change | one report | synced p50 | synced max |");
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {idle_revisions} | {:.0} | {:.0} | {:.0} | {:.0} B | {:.1} ms | {:.1} ms |\n",
        idle_revisions as f64 * 3600.0 / idle.as_secs_f64(),
        median(&mut per_change),
        median(&mut bytes),
        median(&mut report_bytes),
        percentile(&synced, 0.5),
        synced.last().copied().unwrap_or_default(),
    );
}

/// Every write under the fleet's prefix, as `etcdctl watch` prints it, timed as it arrives.
struct EventLog {
    watcher: Child,
    received: mpsc::Receiver<(Instant, String)>,
    /// What arrived so far: when, and the value.
    seen: std::cell::RefCell<Vec<(Instant, String)>>,
}

impl EventLog {
    fn watch(etcd: &Etcd) -> EventLog {
        let mut watcher = Command::new("etcdctl")
            .arg(format!("--endpoints={}", etcd.url()))
            .args(["watch", "--prefix", "/nginx-shift/"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run etcdctl watch");
        let stdout = watcher.stdout.take().expect("watch output");
        let (sender, received) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if sender.send((Instant::now(), line)).is_err() {
                    return;
                }
            }
        });
        EventLog {
            watcher,
            received,
            seen: Default::default(),
        }
    }

    fn drain(&self) {
        self.seen.borrow_mut().extend(self.received.try_iter());
    }

    /// Bytes of the values written so far (each line the watch printed).
    fn bytes(&self) -> usize {
        self.drain();
        self.seen.borrow().iter().map(|(_, line)| line.len()).sum()
    }

    /// The size of each host report seen, in bytes.
    fn report_sizes(&self) -> Vec<f64> {
        self.drain();
        self.seen
            .borrow()
            .iter()
            .filter(|(_, line)| line.starts_with("{\"host\""))
            .map(|(_, line)| line.len() as f64)
            .collect()
    }

    /// How many host reports arrived since `since`.
    fn reports_since(&self, since: Instant) -> usize {
        self.drain();
        self.seen
            .borrow()
            .iter()
            .filter(|(at, line)| *at >= since && line.starts_with("{\"host\""))
            .count()
    }

    /// When the last of `hosts` reported `server` at `weight`, after `since`.
    fn wait_for_reports(&self, hosts: usize, since: Instant, server: &str, weight: u32) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.drain();
            let mut last: std::collections::BTreeMap<String, Instant> = Default::default();
            for (at, line) in self.seen.borrow().iter().filter(|(at, _)| *at >= since) {
                let Ok(report) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let has = report["upstreams"][0]["peers"]
                    .as_array()
                    .is_some_and(|peers| {
                        peers
                            .iter()
                            .any(|p| p["server"] == server && p["weight"] == weight)
                    });
                if has {
                    let host = report["host"].as_str().unwrap_or_default().to_string();
                    last.entry(host).or_insert(*at);
                }
            }
            if last.len() >= hosts {
                return last.into_values().max().expect("hosts");
            }
            assert!(
                Instant::now() < deadline,
                "not every host reported the change"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        let _ = self.watcher.kill();
        let _ = self.watcher.wait();
    }
}
