//! wrk, the HTTP load generator: starting it against a port and reading its report.

use std::process::{Child, Command, Stdio};

#[derive(Debug, Default, Clone)]
pub struct WrkResult {
    pub requests: u64,
    pub requests_per_second: f64,
    pub p99_ms: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

impl WrkResult {
    /// Requests that did not get a 2xx or 3xx answer.
    pub fn failed(&self) -> u64 {
        self.non_2xx + self.socket_errors
    }
}

/// `wrk -t2 -c32` (keep-alive) against 127.0.0.1:`port` for `seconds`.
pub fn wrk(port: u16, seconds: u32) -> Child {
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
        .expect("run wrk (apt-get install wrk; scripts/test.sh does)")
}

/// Waits for wrk to finish and reads its report.
pub fn wrk_result(child: Child) -> WrkResult {
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

/// A wrk duration (`850.00us`, `3.21ms`, `1.02s`) in milliseconds.
pub fn millis(text: &str) -> f64 {
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
