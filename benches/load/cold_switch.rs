//! A switch to a cold release, with and without slow start: the new version's first 500
//! requests take 50 ms each, at most 8 at a time (cold caches, a small warm pool), later ones
//! 2 ms as the old version's. Traffic comes at a fixed rate (an open loop: a slow answer does
//! not slow the arrivals, as with real users), and each request's latency counts from when it
//! was due, so that a queue in front of the cold version shows in full.

use std::sync::{Arc, Mutex};

use super::*;
use harness::{BlueGreen, COLD_CONCURRENCY};

/// What one paced request saw: when it was due (from the load's start) and how long it took
/// from then; `None` for a failure.
type Sample = (Duration, Option<Duration>);

pub(crate) fn cold_switch(settings: &Settings) {
    let (rate, cold_requests, window_s) = if settings.full {
        (1000, 500, 12)
    } else {
        (200, 50, 3)
    };
    let before_s = 2;
    println!("## A switch to a cold release\n");
    println!(
        "Paced traffic at {rate} requests/s over 64 keep-alive connections; at {before_s} s, \
         `shiftctl switch` to green, whose first {cold_requests} requests take 50 ms each, at \
         most {COLD_CONCURRENCY} at a time (later ones 2 ms, as blue's). Latencies count from \
         when each request was due; figures over the {window_s} s from the switch.\n"
    );
    println!("| upstream | requests | p50 | p99 | max | over 100 ms | failed |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (label, extra) in [
        ("no slow start", ""),
        ("`shift_slow_start 10s`", "shift_slow_start 10s;"),
    ] {
        let (blue, green) = (Backend::start("blue"), Backend::start("green"));
        blue.set_delay(2);
        green.set_delay(2);
        green.set_cold(cold_requests, 50);
        let port = free_port();
        let nginx = Nginx::start(NginxOptions::new(BlueGreen::config(
            &blue, &green, extra, port,
        )));
        let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
        let start = Instant::now();
        let load = paced(port, rate, before_s + window_s + 1, start, samples.clone());
        thread::sleep(Duration::from_secs(before_s));
        let switched_at = start.elapsed();
        let state_dir = tempfile::tempdir().expect("shiftctl state dir");
        let switched = shiftctl_command(&[nginx.path("api.sock")], Some(state_dir.path()))
            .args(["switch", "app", "--to", &green.addr().to_string()])
            .output()
            .expect("run shiftctl");
        assert!(
            switched.status.success(),
            "{}",
            String::from_utf8_lossy(&switched.stderr)
        );
        for thread in load {
            thread.join().expect("load thread");
        }
        let window = switched_at..switched_at + Duration::from_secs(window_s);
        let samples = samples.lock().unwrap();
        let in_window: Vec<&Sample> = samples
            .iter()
            .filter(|(due, _)| window.contains(due))
            .collect();
        let failed = in_window.iter().filter(|(_, took)| took.is_none()).count();
        let mut millis: Vec<f64> = in_window
            .iter()
            .filter_map(|(_, took)| took.map(|took| took.as_secs_f64() * 1000.0))
            .collect();
        millis.sort_by(f64::total_cmp);
        let slow = millis.iter().filter(|&&ms| ms > 100.0).count();
        println!(
            "| {label} | {} | {:.1} ms | {:.1} ms | {:.0} ms | {slow} | {failed} |",
            in_window.len(),
            percentile(&millis, 0.50),
            percentile(&millis, 0.99),
            millis.last().copied().unwrap_or(0.0),
        );
        assert!(
            green.hits() >= cold_requests,
            "green warmed up during the run"
        );
    }
    println!();
}

/// `rate` requests a second for `seconds`, over 64 threads with a keep-alive connection each;
/// each request is due at its slot of the schedule, and a thread that fell behind sends at
/// once, its latency counted from when the request was due.
fn paced(
    port: u16,
    rate: u32,
    seconds: u64,
    start: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
) -> Vec<thread::JoinHandle<()>> {
    let threads = 64u32;
    let every = Duration::from_secs(1) * threads / rate;
    let end = Duration::from_secs(seconds);
    (0..threads)
        .map(|index| {
            let samples = samples.clone();
            thread::spawn(move || {
                let mut client = HttpClient::new(port);
                let mut due = every * index / threads;
                let mut seen = Vec::new();
                while due < end {
                    if let Some(wait) = (start + due).checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                    let answered = client.get("/").ok().filter(|answer| answer.status == 200);
                    let took = answered.map(|_| start.elapsed().saturating_sub(due));
                    if took.is_none() {
                        client = HttpClient::new(port);
                    }
                    seen.push((due, took));
                    due += every;
                }
                samples.lock().unwrap().extend(seen);
            })
        })
        .collect()
}
