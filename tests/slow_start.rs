//! `shift_slow_start` against real Nginx (two workers): a peer that starts taking requests gets
//! a share that follows the ramp's curve, measured from the answers; a peer taking requests at
//! Nginx start or across a reload does not ramp; the API and the metrics show the ramp; bad
//! arguments fail `nginx -t`.

use std::time::{Duration, Instant};

use harness::{check_config, Backend, BlueGreen, HttpClient, NginxOptions};

/// The window every test here uses, in seconds.
const WINDOW_S: f64 = 6.0;

/// The share (percent) a ramping peer of `weight` has next to `others` (the weight of the
/// peers that do not ramp), `t` seconds into its ramp: 10% of its weight at first, then
/// linear.
fn expected_share(weight: f64, others: f64, t: f64) -> f64 {
    let effective = weight * (t / WINDOW_S).clamp(0.1, 1.0);
    effective * 100.0 / (effective + others)
}

/// The share (percent) of answers from `backend` over `span`, on four keep-alive
/// connections (both workers).
fn share_of(port: u16, backend: &str, span: Duration) -> (f64, usize) {
    let mut clients: Vec<HttpClient> = (0..4).map(|_| HttpClient::new(port)).collect();
    let (mut hits, mut total) = (0, 0);
    let end = Instant::now() + span;
    while Instant::now() < end {
        let response = clients[total % 4].get("/").expect("request through nginx");
        assert_eq!(response.status, 200, "{}", response.body);
        hits += usize::from(response.body == backend);
        total += 1;
    }
    (hits as f64 * 100.0 / total as f64, total)
}

/// Measures `backend`'s share half a second around `t` seconds after `started`, and compares
/// it with the curve.
fn assert_on_the_curve(site: &BlueGreen, backend: &str, started: Instant, t: f64, others: f64) {
    let from = started + Duration::from_secs_f64(t - 0.25);
    std::thread::sleep(from.saturating_duration_since(Instant::now()));
    let (share, total) = share_of(site.port, backend, Duration::from_millis(500));
    let expected = expected_share(500.0, others, t);
    assert!(
        (share - expected).abs() <= 5.0,
        "{t} s into the ramp: {backend} got {share:.1}% of {total} requests, the curve says \
         {expected:.1}%"
    );
}

#[test]
fn an_undrained_peer_ramps_up_along_the_curve_and_nothing_ramps_at_start_or_across_a_reload() {
    let mut site = BlueGreen::start("shift_slow_start 6s;");
    let (blue, green) = (site.blue.addr().to_string(), site.green.addr().to_string());
    // Blue has taken requests since Nginx started: no ramp.
    site.admin
        .set_weights("app", &[(&blue, 500), (&green, 500)]);
    let peer = site.admin.peer("app", &blue).unwrap();
    assert_eq!(peer.ramp, None, "{peer:?}");
    let (share, _) = share_of(site.port, "blue", Duration::from_millis(300));
    assert_eq!(share, 100.0);

    let response = site.admin.patch(
        "app",
        &format!(r#"{{"peers": {{"{green}": {{"state": "up"}}}}}}"#),
    );
    let started = Instant::now();
    assert_eq!(response.status, 200, "{}", response.body);
    let ramp = site
        .admin
        .peer("app", &green)
        .unwrap()
        .ramp
        .expect("green ramps");
    assert!(ramp.effective_weight < 500, "{ramp:?}");
    let metric = site
        .admin
        .metric(&format!(
            "nginx_shift_peer_effective_weight{{upstream=\"app\",peer=\"{green}\"}}"
        ))
        .expect("the effective weight gauge");
    assert!(metric < 500.0, "{metric}");
    for t in [1.0, 3.0, 5.0] {
        assert_on_the_curve(&site, "green", started, t, 500.0);
    }
    std::thread::sleep(
        (started + Duration::from_secs(6)).saturating_duration_since(Instant::now()),
    );
    assert_eq!(site.admin.peer("app", &green).unwrap().ramp, None);
    let (share, total) = share_of(site.port, "green", Duration::from_millis(500));
    assert!(
        (share - 50.0).abs() <= 5.0,
        "after the ramp: {share:.1}% of {total}"
    );

    // A reload changes nothing for peers that take requests.
    site.nginx.reload(None);
    assert_eq!(site.admin.peer("app", &green).unwrap().ramp, None);
    let (share, total) = share_of(site.port, "green", Duration::from_millis(500));
    assert!(
        (share - 50.0).abs() <= 5.0,
        "after a reload: {share:.1}% of {total}"
    );
}

#[test]
fn a_peer_added_at_run_time_ramps_up_along_the_curve() {
    let site = BlueGreen::start("shift_slow_start 6s;");
    let blue = site.blue.addr().to_string();
    site.admin.set_weights("app", &[(&blue, 500)]);
    let canary = Backend::start("canary");
    let response = site
        .admin
        .add_peer("app", &canary.addr().to_string(), r#""weight": 500"#);
    let started = Instant::now();
    assert!(response.status < 300, "{}", response.body);
    for t in [1.0, 3.0, 5.0] {
        assert_on_the_curve(&site, "canary", started, t, 500.0);
    }
}

#[test]
fn bad_slow_start_arguments_fail_nginx_t() {
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    for (extra, said) in [
        (
            "shift_slow_start 0s;",
            "invalid parameter \"0s\" in \"shift_slow_start\" directive",
        ),
        (
            "shift_slow_start 10s min=150%;",
            "invalid parameter \"min=150%\" in \"shift_slow_start\" directive",
        ),
        (
            "shift_slow_start 10s; shift_slow_start 20s;",
            "\"shift_slow_start\" directive is duplicate",
        ),
    ] {
        let config = BlueGreen::config(&blue, &green, extra, harness::free_port());
        let check = check_config(&NginxOptions::new(config));
        assert!(
            !check.ok && check.output.contains(said),
            "{extra}: {}",
            check.output
        );
    }
    let without_shift = format!(
        "upstream other {{ server {}; shift_slow_start 10s; }}\n",
        blue.addr()
    );
    let check = check_config(&NginxOptions::new(without_shift));
    assert!(
        !check.ok && check.output.contains("needs \"shift\""),
        "{}",
        check.output
    );
}
