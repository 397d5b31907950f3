//! Load benchmarks against real processes: the data-path cost of the module, how fast a switch
//! takes effect (the module's API, shiftctl, `nginx -s reload`, HAProxy's runtime API), and how
//! many requests fail while traffic moves under load.
//!
//! `cargo bench --bench load` runs them in full and prints a Markdown report (see
//! scripts/bench.sh and BENCHMARKS.md). Run without `--bench` — as `cargo test --all-targets`
//! does — it is a smoke test: every scenario runs briefly, so the benchmark cannot rot, and the
//! figures mean nothing.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use harness::{
    api_request, free_port, shiftctl_command, wait_until, Backend, HttpClient, Nginx, NginxOptions,
};

struct Settings {
    full: bool,
    /// Seconds of wrk per data-path measurement.
    wrk_seconds: u32,
    /// Data-path rounds; each config's figure is the median.
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
}

impl Settings {
    fn new(full: bool) -> Settings {
        if full {
            Settings {
                full,
                wrk_seconds: 10,
                rounds: 3,
                switches: 1000,
                shiftctl_switches: 50,
                reloads: 10,
                load_seconds: 6,
                restart_gap: Duration::from_secs(1),
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
    data_path(&settings);
    switch_latency(&settings);
    zero_downtime(&settings);
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

// ---------------------------------------------------------------------------------------------
// wrk

#[derive(Debug, Default, Clone)]
struct WrkResult {
    requests: u64,
    requests_per_second: f64,
    p99_ms: f64,
    non_2xx: u64,
    socket_errors: u64,
}

impl WrkResult {
    fn failed(&self) -> u64 {
        self.non_2xx + self.socket_errors
    }
}

fn wrk(port: u16, seconds: u32) -> Child {
    Command::new("wrk")
        .args([
            "-t2",
            "-c32",
            &format!("-d{seconds}s"),
            "--latency",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wrk")
}

fn wrk_result(child: Child) -> WrkResult {
    let output = child.wait_with_output().expect("wrk finishes");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut result = WrkResult::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with("Requests/sec:") {
            result.requests_per_second = words[1].parse().unwrap_or(0.0);
        } else if line.starts_with("99%") {
            result.p99_ms = millis(words[1]);
        } else if line.contains("requests in") {
            result.requests = words[0].parse().unwrap_or(0);
        } else if line.starts_with("Non-2xx or 3xx responses:") {
            result.non_2xx = words[4].parse().unwrap_or(0);
        } else if line.starts_with("Socket errors:") {
            result.socket_errors = line
                .trim_start_matches("Socket errors:")
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        }
    }
    result
}

fn millis(text: &str) -> f64 {
    let split = text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        _ => f64::NAN,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn percentile(sorted_micros: &[f64], p: f64) -> f64 {
    let index = ((sorted_micros.len() as f64 - 1.0) * p).round() as usize;
    sorted_micros[index]
}

// ---------------------------------------------------------------------------------------------
// Data path

fn data_path(settings: &Settings) {
    // A tiny local backend: an Nginx answering 200 on two ports.
    let (b1, b2) = (free_port(), free_port());
    let _backend = Nginx::start(
        NginxOptions::new(format!("server {{ listen 127.0.0.1:{b1}; listen 127.0.0.1:{b2}; location / {{ return 200 \"ok\"; }} }}")).workers(1),
    );
    let servers = format!("server 127.0.0.1:{b1}; server 127.0.0.1:{b2};");
    let configs = [
        ("stock round robin", format!("{servers} keepalive 16;")),
        (
            "stock round robin with zone",
            format!("zone app 64k; {servers} keepalive 16;"),
        ),
        (
            "shift, with shift_check",
            format!("{servers} shift; shift_check interval=1s; keepalive 16;"),
        ),
    ];
    let mut results: Vec<Vec<WrkResult>> = vec![Vec::new(); configs.len()];
    for _ in 0..settings.rounds {
        for (index, (_, upstream)) in configs.iter().enumerate() {
            let port = free_port();
            let _nginx = Nginx::start(NginxOptions::new(format!(
                "upstream app {{ {upstream} }}\n\
                 server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
                 server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}"
            )));
            let result = wrk_result(wrk(port, settings.wrk_seconds));
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
    println!("| upstream | requests/s | ratio to stock | p99 |");
    println!("| --- | ---: | ---: | ---: |");
    let stock = median(
        &mut results[0]
            .iter()
            .map(|r| r.requests_per_second)
            .collect::<Vec<_>>(),
    );
    for ((name, _), runs) in configs.iter().zip(&results) {
        let rps = median(
            &mut runs
                .iter()
                .map(|r| r.requests_per_second)
                .collect::<Vec<_>>(),
        );
        let p99 = median(&mut runs.iter().map(|r| r.p99_ms).collect::<Vec<_>>());
        println!(
            "| {name} | {rps:.0} | {:.1}% | {p99:.2} ms |",
            rps * 100.0 / stock
        );
    }
    println!();
}

// ---------------------------------------------------------------------------------------------
// Switch latency

/// Blue and green backends, and who answers the next request on a new connection.
struct Pair {
    blue: Backend,
    green: Backend,
}

impl Pair {
    fn new() -> Pair {
        Pair {
            blue: Backend::start("blue"),
            green: Backend::start("green"),
        }
    }

    fn name(index: usize) -> &'static str {
        if index % 2 == 0 {
            "green"
        } else {
            "blue"
        }
    }
}

fn first_answer(port: u16) -> String {
    HttpClient::new(port)
        .get("/")
        .map_or_else(|err| format!("error: {err}"), |response| response.body)
}

struct SwitchFigures {
    how: String,
    samples: usize,
    p50_us: f64,
    p99_us: f64,
    stale: usize,
    note: String,
}

fn switch_latency(settings: &Settings) {
    let mut rows = vec![
        shift_api_switches(settings),
        shiftctl_switches(settings),
        haproxy_switches(settings),
    ];
    rows.push(reload_switches(settings));
    println!("## Switch latency\n");
    println!("From issuing the change to its acknowledgement (for a reload: to the first answer from the new version), and stale answers (the old version) on the first request after it, each on a new connection.\n");
    println!("| how | switches | p50 | p99 | stale answers after the ack | note |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    for row in rows {
        println!(
            "| {} | {} | {:.0} µs | {:.0} µs | {} | {} |",
            row.how, row.samples, row.p50_us, row.p99_us, row.stale, row.note
        );
    }
    println!();
}

fn shift_nginx(pair: &Pair) -> (Nginx, u16) {
    let port = free_port();
    let nginx = Nginx::start(NginxOptions::new(format!(
        "upstream app {{ server {} weight=1; server {} weight=1; shift; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}",
        pair.blue.addr(),
        pair.green.addr()
    )));
    (nginx, port)
}

fn weights_for(pair: &Pair, index: usize) -> (String, String) {
    let (blue, green) = if Pair::name(index) == "green" {
        (0, 1)
    } else {
        (1, 0)
    };
    (
        format!("{}={blue}", pair.blue.addr()),
        format!("{}={green}", pair.green.addr()),
    )
}

fn figures(how: &str, mut micros: Vec<f64>, stale: usize, note: &str) -> SwitchFigures {
    micros.sort_by(|a, b| a.total_cmp(b));
    SwitchFigures {
        how: how.into(),
        samples: micros.len(),
        p50_us: percentile(&micros, 0.5),
        p99_us: percentile(&micros, 0.99),
        stale,
        note: note.into(),
    }
}

fn shift_api_switches(settings: &Settings) -> SwitchFigures {
    let pair = Pair::new();
    let (nginx, port) = shift_nginx(&pair);
    let socket = nginx.path("api.sock");
    let (mut micros, mut stale) = (Vec::new(), 0);
    for index in 0..settings.switches {
        let (blue, green) = weights_for(&pair, index);
        let body = format!(
            r#"{{"peers": {{"{}": {{"weight": {}}}, "{}": {{"weight": {}}}}}}}"#,
            pair.blue.addr(),
            blue.rsplit('=').next().unwrap(),
            pair.green.addr(),
            green.rsplit('=').next().unwrap()
        );
        let start = Instant::now();
        let response =
            api_request(&socket, "PATCH", "/api/upstreams/app", Some(&body)).expect("PATCH");
        micros.push(start.elapsed().as_secs_f64() * 1e6);
        assert_eq!(response.status, 200, "{}", response.body);
        stale += usize::from(first_answer(port) != Pair::name(index));
    }
    figures(
        "shift API (PATCH over the Unix socket)",
        micros,
        stale,
        "one request on a new connection per PATCH",
    )
}

fn shiftctl_switches(settings: &Settings) -> SwitchFigures {
    let pair = Pair::new();
    let (nginx, port) = shift_nginx(&pair);
    let (mut micros, mut stale) = (Vec::new(), 0);
    for index in 0..settings.shiftctl_switches {
        let (blue, green) = weights_for(&pair, index);
        let start = Instant::now();
        let status = shiftctl_command(&[nginx.path("api.sock")], None)
            .args(["set", "app", &blue, &green])
            .stdout(Stdio::null())
            .status()
            .expect("run shiftctl");
        micros.push(start.elapsed().as_secs_f64() * 1e6);
        assert!(status.success());
        stale += usize::from(first_answer(port) != Pair::name(index));
    }
    figures(
        "`shiftctl set`",
        micros,
        stale,
        "a process start, a GET and a PATCH",
    )
}

fn haproxy_switches(settings: &Settings) -> SwitchFigures {
    let pair = Pair::new();
    let dir = tempfile::tempdir().expect("haproxy dir");
    let port = free_port();
    let socket = dir.path().join("haproxy.sock");
    let config = format!(
        "global\n  stats socket {} level admin\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
         backend be\n  balance roundrobin\n  server blue {} weight 1\n  server green {} weight 0\n",
        socket.display(),
        pair.blue.addr(),
        pair.green.addr()
    );
    fs::write(dir.path().join("haproxy.cfg"), config).unwrap();
    let mut haproxy = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(dir.path().join("haproxy.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    assert!(
        wait_until(Duration::from_secs(10), || socket.exists()
            && HttpClient::new(port).get("/").is_ok())
        .is_some(),
        "haproxy did not start"
    );
    let (mut micros, mut stale) = (Vec::new(), 0);
    for index in 0..settings.switches {
        let (blue, green) = if Pair::name(index) == "green" {
            (0, 1)
        } else {
            (1, 0)
        };
        let command =
            format!("set server be/blue weight {blue};set server be/green weight {green}\n");
        let start = Instant::now();
        haproxy_command(&socket, &command);
        micros.push(start.elapsed().as_secs_f64() * 1e6);
        stale += usize::from(first_answer(port) != Pair::name(index));
    }
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    figures(
        "HAProxy runtime API (`set server ... weight` over its socket)",
        micros,
        stale,
        "one request on a new connection per change",
    )
}

fn haproxy_command(socket: &Path, command: &str) -> String {
    let mut stream = UnixStream::connect(socket).expect("haproxy socket");
    stream
        .write_all(command.as_bytes())
        .expect("send to haproxy");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("haproxy answers");
    answer
}

/// A stock upstream with one server, `target` (an address).
fn plain_upstream(target: &str, port: u16) -> String {
    format!(
        "upstream app {{ server {target}; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}"
    )
}

fn reload_switches(settings: &Settings) -> SwitchFigures {
    let pair = Pair::new();
    let port = free_port();
    let mut nginx = Nginx::start(NginxOptions::new(plain_upstream(
        &pair.blue.addr().to_string(),
        port,
    )));
    let (mut micros, mut stale) = (Vec::new(), 0);
    for index in 0..settings.reloads {
        let target = if Pair::name(index) == "green" {
            &pair.green
        } else {
            &pair.blue
        };
        let start = Instant::now();
        let old = nginx.begin_reload(Some(&plain_upstream(&target.addr().to_string(), port)));
        // Until the new workers answer, new connections still reach the old ones.
        loop {
            let answer = first_answer(port);
            if answer == Pair::name(index) {
                break;
            }
            stale += 1;
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the reload never took effect: {answer}"
            );
        }
        micros.push(start.elapsed().as_secs_f64() * 1e6);
        nginx.finish_reload(&old);
    }
    figures(
        "stock `nginx -s reload` with an edited upstream",
        micros,
        stale,
        "time until the new version answers; stale = old answers after the signal",
    )
}

// ---------------------------------------------------------------------------------------------
// Zero downtime under load

fn zero_downtime(settings: &Settings) {
    let seconds = settings.load_seconds;
    let switch_at = Duration::from_secs_f64(seconds as f64 / 3.0);
    let mut rows = Vec::new();

    {
        let pair = Pair::new();
        let (nginx, port) = shift_nginx(&pair);
        let socket = nginx.path("api.sock");
        let start_body = format!(
            r#"{{"peers": {{"{}": {{"weight": 0}}}}}}"#,
            pair.green.addr()
        );
        assert_eq!(
            api_request(&socket, "PATCH", "/api/upstreams/app", Some(&start_body))
                .unwrap()
                .status,
            200
        );
        let load = wrk(port, seconds);
        thread::sleep(switch_at);
        let body = format!(
            r#"{{"peers": {{"{}": {{"weight": 0}}, "{}": {{"weight": 1}}}}}}"#,
            pair.blue.addr(),
            pair.green.addr()
        );
        assert_eq!(
            api_request(&socket, "PATCH", "/api/upstreams/app", Some(&body))
                .unwrap()
                .status,
            200
        );
        let result = wrk_result(load);
        assert!(pair.green.hits() > 0, "the switch moved traffic");
        rows.push(("shift: PATCH blue → green", result));
    }
    {
        let pair = Pair::new();
        let port = free_port();
        let mut nginx = Nginx::start(NginxOptions::new(plain_upstream(
            &pair.blue.addr().to_string(),
            port,
        )));
        let load = wrk(port, seconds);
        thread::sleep(switch_at);
        let old = nginx.begin_reload(Some(&plain_upstream(&pair.green.addr().to_string(), port)));
        let result = wrk_result(load);
        nginx.finish_reload(&old);
        assert!(pair.green.hits() > 0, "the reload moved traffic");
        rows.push(("stock Nginx: edit upstream + reload", result));
    }
    {
        let port = free_port();
        let backend_port = free_port();
        let blue = Backend::start_on("blue", backend_port);
        let _nginx = Nginx::start(NginxOptions::new(plain_upstream(
            &format!("127.0.0.1:{backend_port}"),
            port,
        )));
        let load = wrk(port, seconds);
        thread::sleep(switch_at);
        drop(blue); // stop the old version
        thread::sleep(settings.restart_gap); // the new one starts
        let green = Backend::start_on("green", backend_port);
        let result = wrk_result(load);
        assert!(green.hits() > 0);
        rows.push((
            "the seed's old way: stop old backend, start new on the same port",
            result,
        ));
    }

    println!("## Zero downtime under load\n");
    println!("wrk -c32 for {seconds} s; the switch happens after {:.1} s. Failed = non-2xx answers plus socket errors. The old way's new backend starts {:?} after the old one stops.\n", switch_at.as_secs_f64(), settings.restart_gap);
    println!("| how | requests | failed |");
    println!("| --- | ---: | ---: |");
    for (how, result) in rows {
        println!("| {how} | {} | {} |", result.requests, result.failed());
    }
    println!();
    if !settings.full {
        println!("smoke run done: every scenario ran");
    }
}
