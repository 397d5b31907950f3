//! Peers added and removed at run time: how long POST and DELETE take to be acknowledged, idle
//! and under load, and whether the next request sees the change.

use super::*;
use crate::switch::shift_nginx;

pub(crate) fn peer_changes(settings: &Settings) {
    println!("## Peers added and removed at run time\n");
    println!(
        "From sending `POST …/peers` or `DELETE …/peers/SERVER` over the Unix socket to its \
         answer; after each add, the next request on a new connection must reach the new peer \
         (the others are at weight 0), and after each remove it must not.\n"
    );
    println!("| how | changes | p50 | p99 | next request wrong |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for loaded in [false, true] {
        let pair = Pair::new();
        let (nginx, port) = shift_nginx(&pair);
        let socket = nginx.path("api.sock");
        // Only the run-time peer takes new requests while it is there; blue otherwise.
        let body = format!(
            r#"{{"peers": {{"{}": {{"weight": 1}}, "{}": {{"state": "down"}}}}}}"#,
            pair.blue.addr(),
            pair.green.addr()
        );
        let response =
            api_request(&socket, "PATCH", "/api/upstreams/app", Some(&body)).expect("PATCH");
        assert_eq!(response.status, 200, "{}", response.body);
        let red = Backend::start("red");
        let load = loaded.then(|| wrk(port, 600));
        let (mut adds, mut removes, mut wrong) = (Vec::new(), Vec::new(), 0);
        let add = format!(r#"{{"server": "{}", "weight": 1000}}"#, red.addr());
        let remove = format!("/api/upstreams/app/peers/{}", red.addr());
        for _ in 0..settings.switches / 2 {
            let start = Instant::now();
            let response =
                api_request(&socket, "POST", "/api/upstreams/app/peers", Some(&add)).expect("POST");
            adds.push(start.elapsed().as_secs_f64() * 1e6);
            assert_eq!(response.status, 201, "{}", response.body);
            wrong += usize::from(first_answer(port) != "red");
            let start = Instant::now();
            let response = api_request(&socket, "DELETE", &remove, None).expect("DELETE");
            removes.push(start.elapsed().as_secs_f64() * 1e6);
            assert_eq!(response.status, 200, "{}", response.body);
            wrong += usize::from(first_answer(port) == "red");
        }
        if let Some(mut wrk) = load {
            let _ = wrk.kill();
            let _ = wrk.wait();
        }
        let under = if loaded { ", under `wrk -c32`" } else { "" };
        for (what, mut micros) in [("POST (add)", adds), ("DELETE (remove)", removes)] {
            micros.sort_by(|a, b| a.total_cmp(b));
            println!(
                "| {what}{under} | {} | {:.0} µs | {:.0} µs | {wrong} |",
                micros.len(),
                percentile(&micros, 0.5),
                percentile(&micros, 0.99)
            );
        }
    }
    println!();
    peer_changes_at_scale(settings);
}

/// POST and DELETE in an upstream of 1,000 peers, with a new address every cycle (as
/// recreated replicas bring), and the zone's free memory after the first 10 changes and after
/// all of them: freed places are reused, so it must not shrink.
pub(crate) fn peer_changes_at_scale(settings: &Settings) {
    let changes = if settings.full { 10_000 } else { 40 };
    let blue = Backend::start("blue");
    let port = free_port();
    let standby: String = (0..999)
        .map(|n| format!("server 127.0.{}.{}:9 down; ", 10 + n / 250, 1 + n % 250))
        .collect();
    let nginx = Nginx::start(NginxOptions::new(format!(
        "upstream app {{ server {} weight=1; {standby} shift; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}",
        blue.addr()
    )));
    let socket = nginx.path("api.sock");
    // Read once every worker caught up (an idle one at its 1 s tick): until then its list may
    // hold the last removed peer's slot.
    let settled_free_bytes = || {
        thread::sleep(Duration::from_millis(1500));
        let _ = first_answer(port);
        let metrics = api_request(&socket, "GET", "/api/metrics", None).expect("metrics");
        metrics
            .body
            .lines()
            .find_map(|line| line.strip_prefix("nginx_shift_zone_free_bytes "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let (mut adds, mut removes) = (Vec::new(), Vec::new());
    let mut after_ten = f64::NAN;
    for cycle in 0..changes / 2 {
        let server = format!("127.0.{}.{}:9", 200 + cycle / 250 % 50, 1 + cycle % 250);
        let add = format!(r#"{{"server": "{server}"}}"#);
        let start = Instant::now();
        let response =
            api_request(&socket, "POST", "/api/upstreams/app/peers", Some(&add)).expect("POST");
        adds.push(start.elapsed().as_secs_f64() * 1e6);
        assert_eq!(response.status, 201, "cycle {cycle}: {}", response.body);
        let remove = format!("/api/upstreams/app/peers/{server}");
        let start = Instant::now();
        let response = api_request(&socket, "DELETE", &remove, None).expect("DELETE");
        removes.push(start.elapsed().as_secs_f64() * 1e6);
        assert_eq!(response.status, 200, "cycle {cycle}: {}", response.body);
        // Keep the workers' lists moving, as traffic would.
        let _ = first_answer(port);
        if cycle == 4 {
            after_ten = settled_free_bytes();
        }
    }
    let after_all = settled_free_bytes();
    println!(
        "With 1,000 peers in the upstream (999 standby `server` lines) and a new address every \
         cycle:\n"
    );
    println!("| how | changes | p50 | p99 |");
    println!("| --- | ---: | ---: | ---: |");
    for (what, mut micros) in [("POST (add)", adds), ("DELETE (remove)", removes)] {
        micros.sort_by(|a, b| a.total_cmp(b));
        println!(
            "| {what}, 1,000 peers | {} | {:.0} µs | {:.0} µs |",
            micros.len(),
            percentile(&micros, 0.5),
            percentile(&micros, 0.99)
        );
    }
    println!(
        "\nZone free once the workers caught up, after the first 10 changes: {:.0} KiB; after \
         {changes}: {:.0} KiB.\n",
        after_ten / 1024.0,
        after_all / 1024.0
    );
}
