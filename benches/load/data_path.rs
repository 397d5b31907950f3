//! The data path: requests/s through stock round robin, `zone`, and `shift` (plain, with ten
//! status pages open, with a sticky key that differs on every request so that each one pays
//! for the whole choice, with a run-time peer, and with resolved peers).

use super::*;
use harness::WrkResult;

pub(crate) fn data_path(settings: &Settings) {
    // A tiny local backend: an Nginx answering 200 on two ports.
    let (b1, b2) = (free_port(), free_port());
    let _backend = Nginx::start(
        NginxOptions::new(format!("server {{ listen 127.0.0.1:{b1}; listen 127.0.0.1:{b2}; location / {{ return 200 \"ok\"; }} }}")).workers(1),
    );
    let servers = format!("server 127.0.0.1:{b1}; server 127.0.0.1:{b2};");
    // `keepalive` holds more idle upstream connections than wrk's 32 requests in flight: with
    // fewer, a sticky spread that sends more requests than usual to one backend for a moment
    // opens (and later closes) connections, which costs more than any choice (with 16: 86% of
    // stock for sticky keys, 100% for the others, whose strict alternation never needs more).
    let configs = [
        ("stock round robin", format!("{servers} keepalive 64;")),
        (
            "stock round robin with zone",
            format!("zone app 64k; {servers} keepalive 64;"),
        ),
        (
            "shift, with shift_check",
            format!("{servers} shift; shift_check interval=1s; keepalive 64;"),
        ),
        (
            "shift, with shift_check and 10 status pages open",
            format!("{servers} shift; shift_check interval=1s; keepalive 64;"),
        ),
        (
            "shift, with shift_check and shift_eject",
            format!("{servers} shift; shift_check interval=1s; shift_eject; keepalive 64;"),
        ),
        (
            "shift, one peer ramping up all along (shift_slow_start 24h)",
            format!("{servers} shift; shift_check interval=1s; shift_slow_start 24h; keepalive 64;"),
        ),
        (
            "shift, shift_sticky with a new key per request",
            format!(
                "{servers} shift; shift_check interval=1s; shift_sticky $connection:$connection_requests; keepalive 64;"
            ),
        ),
        (
            "shift, second peer added at run time",
            format!("server 127.0.0.1:{b1}; shift; shift_check interval=1s; keepalive 64;"),
        ),
        (
            "shift, both peers from resolved names",
            format!(
                "shift_resolve one:{b1}; shift_resolve two:{b2}; shift; shift_check interval=1s; \
                 keepalive 64;"
            ),
        ),
    ];
    let dns = harness::Dnsmasq::start(&[("127.0.0.1", "one"), ("127.0.0.1", "two")]);
    let mut results: Vec<Vec<WrkResult>> = vec![Vec::new(); configs.len()];
    for _ in 0..settings.rounds {
        for (index, (_, upstream)) in configs.iter().enumerate() {
            let (port, status) = (free_port(), free_port());
            // The status page reads through a local proxy_pass to the API's socket, as the
            // docs set it up.
            let _nginx = Nginx::start(NginxOptions::new(format!(
                "resolver 127.0.0.1:{} valid=30s ipv6=off;\n\
                 upstream app {{ {upstream} }}\n\
                 server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
                 server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api readers=any; }} }}\n\
                 server {{ listen 127.0.0.1:{status}; location /status/ {{ proxy_pass http://unix:{{prefix}}/api.sock:/api/; }} }}",
                dns.port()
            )));
            if configs[index].0.contains("resolved") {
                let admin = harness::Admin::new(_nginx.path("api.sock"), "/api/");
                let resolved = wait_until(Duration::from_secs(10), || {
                    admin.upstream("app").peers.len() == 2
                });
                assert!(resolved.is_some(), "both names resolved");
            }
            if configs[index].0.contains("ramping") {
                // Drained and back: its ramp runs for the whole measurement.
                for state in ["drain", "up"] {
                    let body =
                        format!(r#"{{"peers": {{"127.0.0.1:{b2}": {{"state": "{state}"}}}}}}"#);
                    let response = api_request(
                        &_nginx.path("api.sock"),
                        "PATCH",
                        "/api/upstreams/app",
                        Some(&body),
                    )
                    .expect("PATCH");
                    assert_eq!(response.status, 200, "{}", response.body);
                }
            }
            if configs[index].0.contains("run time") {
                let body = format!(r#"{{"server": "127.0.0.1:{b2}"}}"#);
                let response = api_request(
                    &_nginx.path("api.sock"),
                    "POST",
                    "/api/upstreams/app/peers",
                    Some(&body),
                )
                .expect("POST");
                assert_eq!(response.status, 201, "{}", response.body);
            }
            let pages = configs[index]
                .0
                .contains("status pages")
                .then(|| StatusPages::open(status, 10));
            let result = wrk_result(wrk(port, settings.wrk_seconds));
            if let Some(pages) = pages {
                let reads = pages.close();
                assert!(
                    reads >= settings.wrk_seconds as u64 * 10 / 2,
                    "the pages read the API: {reads}"
                );
            }
            assert_eq!(
                result.failed(),
                0,
                "{}: requests failed: {result:?}",
                configs[index].0
            );
            results[index].push(result);
        }
    }
    println!("## Data path\n");
    println!("Requests/s and p99 latency through Nginx to a local backend (median of {} run(s) of {} s each, interleaved).\n", settings.rounds, settings.wrk_seconds);
    println!(
        "The ratio is the median over rounds of each round's ratio to that round's stock run: \
         the machine's drift between rounds cancels out of it.\n"
    );
    println!("| upstream | requests/s | ratio to stock | p99 |");
    println!("| --- | ---: | ---: | ---: |");
    for ((name, _), runs) in configs.iter().zip(&results) {
        let rps = median(
            &mut runs
                .iter()
                .map(|r| r.requests_per_second)
                .collect::<Vec<_>>(),
        );
        let ratio = median(
            &mut runs
                .iter()
                .zip(&results[0])
                .map(|(run, stock)| run.requests_per_second / stock.requests_per_second)
                .collect::<Vec<_>>(),
        );
        let p99 = median(&mut runs.iter().map(|r| r.p99_ms).collect::<Vec<_>>());
        println!(
            "| {name} | {rps:.0} | {:.1}% | {p99:.2} ms |",
            ratio * 100.0
        );
    }
    println!();
}

/// Open status pages, as far as Nginx sees them: each reads `GET upstreams` through the status
/// location once a second, as the page's script does.
struct StatusPages {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pages: Vec<thread::JoinHandle<u64>>,
}

impl StatusPages {
    fn open(port: u16, count: usize) -> StatusPages {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pages = (0..count)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut client = HttpClient::new(port);
                    let mut reads = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let answer = client.get("/status/upstreams").expect("a page's read");
                        assert_eq!(answer.status, 200, "{}", answer.body);
                        reads += 1;
                        thread::sleep(Duration::from_secs(1));
                    }
                    reads
                })
            })
            .collect();
        StatusPages { stop, pages }
    }

    /// Closes them; how many reads they made.
    fn close(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.pages
            .into_iter()
            .map(|page| page.join().expect("a page"))
            .sum()
    }
}
