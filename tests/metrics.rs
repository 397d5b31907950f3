//! `GET {prefix}metrics` answers valid Prometheus text that matches the API.

use harness::{free_port, shiftctl_command, Admin, Backend, HttpClient, Nginx, NginxOptions};
use prometheus_parse::{Scrape, Value};

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).expect("valid Prometheus text")
}

fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match found.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => panic!("{name} is not a plain value"),
    }
}

/// The labels of one peer of upstream `app`, and one more if given.
fn peer<'a>(server: &'a str, extra: Option<(&'a str, &'a str)>) -> Vec<(&'a str, &'a str)> {
    let mut labels = vec![("upstream", "app"), ("peer", server)];
    labels.extend(extra);
    labels
}

#[test]
fn metrics_are_valid_prometheus_text_matching_the_api() {
    let blue = Backend::start("blue");
    let green = Backend::start("green");
    let port = free_port();
    let nginx = Nginx::start(NginxOptions::new(format!(
        "upstream app {{ server {} weight=3; server {} down; shift; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}\n",
        blue.addr(),
        green.addr()
    )));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    let mut client = HttpClient::new(port);
    for _ in 0..25 {
        assert_eq!(client.get("/").unwrap().status, 200);
    }

    let response = admin.request("GET", "metrics", None);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let metrics = scrape(&response.body);
    let (b, g) = (blue.addr().to_string(), green.addr().to_string());
    assert_eq!(
        sample(&metrics, "nginx_shift_peer_weight", &peer(&b, None)),
        3.0
    );
    assert_eq!(
        sample(&metrics, "nginx_shift_peer_requests_total", &peer(&b, None)),
        25.0
    );
    let two_xx = peer(&b, Some(("class", "2xx")));
    assert_eq!(
        sample(&metrics, "nginx_shift_peer_responses_total", &two_xx),
        25.0
    );
    let down = peer(&g, Some(("state", "down")));
    assert_eq!(sample(&metrics, "nginx_shift_peer_state", &down), 1.0);
    assert_eq!(
        sample(
            &metrics,
            "nginx_shift_upstream_generation",
            &[("upstream", "app")]
        ),
        1.0
    );
    let counters: Vec<_> = metrics
        .samples
        .iter()
        .filter(|s| s.metric.ends_with("_total"))
        .collect();
    assert!(
        counters
            .iter()
            .all(|s| matches!(s.value, Value::Counter(_))),
        "counters typed as counters"
    );

    // shiftctl reads the same.
    let output = shiftctl_command(&[nginx.path("api.sock")], None)
        .arg("metrics")
        .output()
        .unwrap();
    assert!(output.status.success());
    let via_shiftctl = scrape(&String::from_utf8(output.stdout).unwrap());
    assert_eq!(
        sample(&via_shiftctl, "nginx_shift_peer_weight", &peer(&b, None)),
        3.0
    );
}

#[test]
fn latency_histograms_in_the_api_and_metrics_match_a_known_delay() {
    let slow = Backend::start("slow");
    let port = free_port();
    let nginx = Nginx::start(NginxOptions::new(format!(
        "upstream app {{ server {}; shift; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}\n",
        slow.addr()
    )));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    // The backend answers after 50 ms, header and body together.
    for _ in 0..20 {
        let response = HttpClient::new(port).get("/slow/50").unwrap();
        assert_eq!(response.status, 200);
    }
    let measured = admin.upstream("app").peers.remove(0);
    for (what, times) in [
        ("response", &measured.response_time),
        ("header", &measured.header_time),
    ] {
        assert_eq!(times.count(), 20, "{what}: {times:?}");
        let (p50, p99) = (
            times.quantile_ms(0.5).unwrap(),
            times.quantile_ms(0.99).unwrap(),
        );
        assert!((40.0..=60.0).contains(&p50), "{what} p50 {p50} ms");
        assert!((40.0..=80.0).contains(&p99), "{what} p99 {p99} ms");
        assert!(
            (1000..=1400).contains(&times.sum_ms),
            "{what}: {} ms in all",
            times.sum_ms
        );
    }
    let text = admin.request("GET", "metrics", None).body;
    let scrape = scrape(&text);
    let server = slow.addr().to_string();
    let bucket = |le: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "nginx_shift_peer_response_seconds"
                    && s.labels.get("peer") == Some(server.as_str())
            })
            .map(|s| match &s.value {
                Value::Histogram(buckets) => buckets
                    .iter()
                    .find(|b| (b.less_than - le.parse::<f64>().unwrap()).abs() < 1e-9)
                    .map_or(-1.0, |b| b.count),
                other => panic!("not a histogram: {other:?}"),
            })
            .expect("a response-time histogram for the peer")
    };
    assert_eq!(bucket("0.04"), 0.0, "{text}");
    assert_eq!(bucket("0.08"), 20.0, "{text}");
    let count = sample(
        &scrape,
        "nginx_shift_peer_response_seconds_count",
        &peer(&server, None),
    );
    assert_eq!(count, 20.0);
}
