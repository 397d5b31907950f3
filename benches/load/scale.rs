//! The admin API in a large zone: 2,000 `shift` upstreams of 5 peers (10,000 peers). What a
//! PATCH and a GET of one upstream take, what a GET of every upstream and of the metrics take,
//! and what a status poll four times a second does to proxied traffic through one of them.

use super::*;

/// One figure per request kind, on a new connection each.
struct Timed {
    how: String,
    micros: Vec<f64>,
    note: String,
}

pub(crate) fn api_at_scale(settings: &Settings) {
    let upstreams = if settings.full { 2000 } else { 100 };
    let samples = settings.switches;
    let blue = Backend::start("blue");
    let port = free_port();
    let standby = "server 127.0.0.1:9 down; server 127.0.0.2:9 down; \
                   server 127.0.0.3:9 down; server 127.0.0.4:9 down;";
    let mut http = format!(
        "upstream u0000 {{ server {} weight=1; {standby} shift; }}\n",
        blue.addr()
    );
    for index in 1..upstreams {
        http.push_str(&format!(
            "upstream u{index:04} {{ server 127.0.0.5:9 weight=1; {standby} shift; }}\n"
        ));
    }
    http.push_str(&format!(
        "server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://u0000; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} \
         location = /ping {{ return 200 ok; }} }}\n\
         server {{ listen unix:{{prefix}}/api-threads.sock; location /api/ {{ shift_api threads=2; }} }}"
    ));
    let nginx = Nginx::start(NginxOptions::new(http));
    let socket = nginx.path("api.sock");
    let threads = nginx.path("api-threads.sock");
    let middle = format!("/api/upstreams/u{:04}", upstreams / 2);

    let mut rows = vec![
        Timed {
            how: "bare `return 200` on the API socket".into(),
            micros: time_requests(&socket, "GET", "/ping", None, samples),
            note: "Nginx's own floor".into(),
        },
        Timed {
            how: "PATCH of one upstream".into(),
            micros: time_patches(&socket, &middle, samples),
            note: "answer: the generation and the peer it named".into(),
        },
        Timed {
            how: "PATCH of one upstream, served by `threads=2`".into(),
            micros: time_patches(&threads, &middle, samples),
            note: "off the event loop".into(),
        },
        Timed {
            how: "GET of one upstream".into(),
            micros: time_requests(&socket, "GET", &middle, None, samples),
            note: String::new(),
        },
    ];
    let whole = samples.clamp(3, 50);
    let list_bytes = api_request(&socket, "GET", "/api/upstreams", None)
        .expect("GET upstreams")
        .body
        .len();
    rows.push(Timed {
        how: "GET of every upstream".into(),
        micros: time_requests(&socket, "GET", "/api/upstreams", None, whole),
        note: format!(
            "{:.1} MB, built a page of peers at a time",
            list_bytes as f64 / 1e6
        ),
    });
    rows.push(Timed {
        how: "GET of every upstream, served by `threads=2`".into(),
        micros: time_requests(&threads, "GET", "/api/upstreams", None, whole),
        note: "the same, read by a thread, off the event loop".into(),
    });
    rows.push(Timed {
        how: "GET metrics".into(),
        micros: time_requests(&socket, "GET", "/api/metrics", None, whole),
        note: String::new(),
    });

    // Proxied traffic through u0000, alone and beside a poll every 250 ms: a warm-up run, then
    // the three in turn for each round, each figure the median of its rounds.
    let _ = wrk_result(wrk(port, 2));
    let configs = [
        ("no API requests", None),
        (
            "GET of one upstream every 250 ms",
            Some((&socket, middle.as_str())),
        ),
        (
            "GET of every upstream every 250 ms",
            Some((&socket, "/api/upstreams")),
        ),
        (
            "GET of every upstream every 250 ms, served by `threads=2`",
            Some((&threads, "/api/upstreams")),
        ),
    ];
    let mut runs: Vec<Vec<harness::WrkResult>> = vec![Vec::new(); configs.len()];
    // Each round starts with the next configuration, so that none is always first.
    let order = (0..settings.rounds)
        .flat_map(|round| (0..configs.len()).map(move |step| (round + step) % configs.len()));
    for config in order {
        let (what, poll_path) = configs[config];
        let load = wrk(port, settings.wrk_seconds);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let poller = poll_path.map(|(socket, path)| {
            let (socket, path, stop) = (socket.clone(), path.to_string(), stop.clone());
            thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let answer = api_request(&socket, "GET", &path, None).expect("poll");
                    assert_eq!(answer.status, 200, "{}", answer.body);
                    thread::sleep(Duration::from_millis(250));
                }
            })
        });
        let result = wrk_result(load);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(poller) = poller {
            poller.join().expect("the poller ends");
        }
        assert_eq!(result.failed(), 0, "proxied requests failed beside {what}");
        runs[config].push(result);
    }
    let loaded = wrk(port, settings.wrk_seconds.max(2));
    thread::sleep(Duration::from_millis(300));
    rows.push(Timed {
        how: "PATCH of one upstream, under `wrk -c32`".into(),
        micros: time_patches(&socket, &middle, samples.min(500)),
        note: "traffic through another upstream".into(),
    });
    rows.push(Timed {
        how: "PATCH of one upstream, under `wrk -c32`, served by `threads=2`".into(),
        micros: time_patches(&threads, &middle, samples.min(500)),
        note: "traffic through another upstream".into(),
    });
    let _ = wrk_result(loaded);

    let peers = upstreams * 5;
    println!("## The admin API in a large zone\n");
    println!(
        "{upstreams} `shift` upstreams of 5 peers ({peers} peers), 2 workers; each request on a \
         new connection to the API's Unix socket, from sending it to the whole answer.\n"
    );
    println!("| request | samples | p50 | p99 | max | note |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    for row in rows {
        let mut micros = row.micros;
        micros.sort_by(|a, b| a.total_cmp(b));
        println!(
            "| {} | {} | {:.0} µs | {:.0} µs | {:.0} µs | {} |",
            row.how,
            micros.len(),
            percentile(&micros, 0.5),
            percentile(&micros, 0.99),
            micros.last().copied().unwrap_or(f64::NAN),
            row.note
        );
    }
    println!();
    println!(
        "Proxied traffic through one of them (`wrk -t2 -c32`, {} s each; {} rounds in turn, \
         medians):\n",
        settings.wrk_seconds, settings.rounds
    );
    println!("| beside it | requests/s | p99 | p99 of each round | failed |");
    println!("| --- | ---: | ---: | --- | ---: |");
    for ((what, _), results) in configs.iter().zip(runs) {
        let mut rps: Vec<f64> = results.iter().map(|r| r.requests_per_second).collect();
        let mut p99: Vec<f64> = results.iter().map(|r| r.p99_ms).collect();
        let each: Vec<String> = p99.iter().map(|ms| format!("{ms:.1}")).collect();
        println!(
            "| {what} | {:.0} | {:.2} ms | {} ms | {} |",
            median(&mut rps),
            median(&mut p99),
            each.join(" / "),
            results.iter().map(harness::WrkResult::failed).sum::<u64>()
        );
    }
    println!();
}

/// `count` requests, each timed from connecting to the whole answer; every one must be 200.
fn time_requests(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    count: usize,
) -> Vec<f64> {
    (0..count)
        .map(|_| {
            let start = Instant::now();
            let answer = api_request(socket, method, path, body).expect("API request");
            let micros = start.elapsed().as_secs_f64() * 1e6;
            assert_eq!(answer.status, 200, "{method} {path}: {}", answer.body);
            micros
        })
        .collect()
}

/// `count` PATCHes of the upstream at `path`, each timed: its peer 127.0.0.5:9's weight goes
/// 2, 1, 2, … so that every one is a change.
fn time_patches(socket: &Path, path: &str, count: usize) -> Vec<f64> {
    (0..count)
        .flat_map(|index| {
            let weight = 2 - index % 2;
            let body = format!(r#"{{"peers": {{"127.0.0.5:9": {{"weight": {weight}}}}}}}"#);
            time_requests(socket, "PATCH", path, Some(&body), 1)
        })
        .collect()
}
