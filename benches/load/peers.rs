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
}
