//! `shiftctl canary`'s verdicts against real Nginx and backends under paced traffic (about
//! 1,000 requests/s): the target is judged against the stable peers over the same window, on
//! errors and on latency.

use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use harness::{BlueGreen, HttpClient};

/// One test at a time: each paces its own traffic, and their verdicts compare timings.
fn alone() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `shiftctl canary app --to GREEN ARGS` on `site`.
fn canary(site: &BlueGreen, args: &[&str]) -> Output {
    let green = site.green.addr().to_string();
    let mut all = vec!["canary", "app", "--to", &green];
    all.extend(args);
    site.shiftctl(&all).output().expect("run shiftctl")
}

fn green_peer(site: &BlueGreen) -> shift_wire::Peer {
    site.admin
        .peer("app", &site.green.addr().to_string())
        .unwrap()
}

/// About `rate` requests per second over 40 keep-alive connections until dropped.
struct PacedLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl PacedLoad {
    fn start(port: u16, rate: u32) -> PacedLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let connections = 40;
        let every = Duration::from_secs(1) * connections / rate;
        let threads = (0..connections)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut client = HttpClient::new(port);
                    let mut next = Instant::now();
                    while !stop.load(Ordering::SeqCst) {
                        let _ = client.get("/");
                        next += every;
                        if let Some(wait) = next.checked_duration_since(Instant::now()) {
                            thread::sleep(wait);
                        }
                    }
                })
            })
            .collect();
        PacedLoad { stop, threads }
    }
}

impl Drop for PacedLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_target_as_flaky_as_the_stable_version_is_promoted() {
    let _alone = alone();
    let site = BlueGreen::start("");
    // A flaky dependency: both versions fail 6% of requests at random.
    site.blue.set_failure_rate(60);
    site.green.set_failure_rate(60);
    let _load = PacedLoad::start(site.port, 1000);
    let output = canary(&site, &["--steps", "25,100", "--interval", "4s"]);
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stdout}\n{stderr}");
    eprintln!("{stdout}");
    // The per-step table: both steps passed, with both sides' figures.
    let passed: Vec<&str> = stdout
        .lines()
        .filter(|line| line.ends_with("passed"))
        .collect();
    assert_eq!(passed.len(), 2, "{stdout}");
    assert!(stdout.starts_with("STEP"), "{stdout}");
}

#[test]
fn a_target_that_fails_every_request_is_rolled_back_within_fifty_failures() {
    let _alone = alone();
    let site = BlueGreen::start("");
    site.green.set_status(500);
    let _load = PacedLoad::start(site.port, 1000);
    let output = canary(&site, &["--steps", "5,25,50,100", "--interval", "10s"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rolled back because step 1/4") && stderr.contains("error rate"),
        "{stderr}"
    );
    let failed = green_peer(&site).responses.server_error;
    eprintln!("green failed {failed} requests before the rollback");
    assert!(
        (1..=50).contains(&failed),
        "green failed {failed} requests before the rollback"
    );
}

#[test]
fn a_target_ejected_by_shift_eject_fails_its_step_at_once() {
    let _alone = alone();
    // Its failures eject it long before the error gate has the requests it needs.
    let site = BlueGreen::start("shift_eject consecutive=3 base=5m max=5m max_percent=50;");
    site.green.set_status(500);
    let _load = PacedLoad::start(site.port, 1000);
    let output = canary(
        &site,
        &[
            "--steps",
            "5,25,50,100",
            "--interval",
            "10s",
            "--min-requests",
            "500",
        ],
    );
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let green = site.green.addr().to_string();
    assert!(
        stderr.contains("rolled back because step 1/4")
            && stderr.contains(&format!("{green} was ejected")),
        "{stderr}"
    );
    let peer = green_peer(&site);
    assert_eq!(peer.ejection.ejections, 1);
    assert!(peer.responses.server_error <= 10, "{peer:?}");
}

#[test]
fn a_target_three_times_slower_is_rolled_back_one_ten_percent_slower_is_not() {
    let _alone = alone();
    let site = BlueGreen::start("");
    site.blue.set_delay(10);
    site.green.set_delay(30);
    let load = PacedLoad::start(site.port, 1000);
    let output = canary(&site, &["--steps", "50,100", "--interval", "10s"]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("rolled back because step 1/2") && stderr.contains("p99"),
        "{stderr}"
    );
    drop(load);

    site.green.set_delay(11);
    let _load = PacedLoad::start(site.port, 1000);
    let output = canary(&site, &["--steps", "50,100", "--interval", "3s"]);
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}
