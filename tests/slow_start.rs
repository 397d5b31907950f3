//! `shift_slow_start` against real Nginx (two workers): a peer that starts taking requests gets
//! a share that follows the ramp's curve, measured from the answers; a peer taking requests at
//! Nginx start or across a reload does not ramp; a change may give its ramp a window of its own
//! (or none); the API and the metrics show the ramp; bad arguments fail `nginx -t`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::{check_config, Backend, BlueGreen, HttpClient, NginxOptions};

/// The window every test here uses, in seconds.
const WINDOW_S: f64 = 6.0;

/// The share (percent) a ramping peer of `weight` has next to `others` (the weight of the
/// peers that do not ramp), `t` seconds into its ramp: 10% of its weight at first, then
/// linear. Only the ratio of the weights counts.
fn expected_share(weight: f64, others: f64, t: f64) -> f64 {
    let effective = weight * (t / WINDOW_S).clamp(0.1, 1.0);
    effective * 100.0 / (effective + others)
}

/// Answers over `span` on four keep-alive connections (both workers): when each came, and
/// whether `backend` gave it.
fn answers(port: u16, backend: &str, span: Duration) -> Vec<(Instant, bool)> {
    let mut clients: Vec<HttpClient> = (0..4).map(|_| HttpClient::new(port)).collect();
    let mut seen = Vec::new();
    let end = Instant::now() + span;
    while Instant::now() < end {
        let response = clients[seen.len() % 4]
            .get("/")
            .expect("request through nginx");
        assert_eq!(response.status, 200, "{}", response.body);
        seen.push((Instant::now(), response.body == backend));
    }
    seen
}

/// The share (percent) of `backend` in `span`'s answers.
fn share_of(port: u16, backend: &str, span: Duration) -> (f64, usize) {
    let seen = answers(port, backend, span);
    let hits = seen.iter().filter(|(_, hit)| *hit).count();
    (hits as f64 * 100.0 / seen.len() as f64, seen.len())
}

/// When `server`'s ramp began, as an `Instant`, from the `ramp_ends_ms` the API shows.
fn ramp_start(site: &BlueGreen, server: &str) -> Instant {
    let ramp = site
        .admin
        .peer("app", server)
        .unwrap()
        .ramp
        .expect("it ramps");
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let since = unix_now.saturating_sub(ramp.ramp_ends_ms - (WINDOW_S * 1000.0) as u64);
    Instant::now() - Duration::from_millis(since)
}

/// Measures `backend`'s share half a second around `t` seconds into its ramp (begun at
/// `started`), and compares it with the curve at the times the answers came.
fn assert_on_the_curve(site: &BlueGreen, backend: &str, started: Instant, t: f64, others: f64) {
    let from = started + Duration::from_secs_f64(t - 0.25);
    std::thread::sleep(from.saturating_duration_since(Instant::now()));
    let seen = answers(site.port, backend, Duration::from_millis(500));
    assert!(
        seen.len() >= 50,
        "only {} answers in half a second",
        seen.len()
    );
    let share = seen.iter().filter(|(_, hit)| *hit).count() as f64 * 100.0 / seen.len() as f64;
    let expected = seen
        .iter()
        .map(|(at, _)| expected_share(1.0, others, (*at - started).as_secs_f64()))
        .sum::<f64>()
        / seen.len() as f64;
    assert!(
        (share - expected).abs() <= 5.0,
        "{t} s into the ramp: {backend} got {share:.1}% of {} answers, the curve says \
         {expected:.1}%",
        seen.len()
    );
}

#[test]
fn an_undrained_peer_of_weight_1_ramps_along_the_curve_also_across_a_reload_and_no_more_after() {
    let mut site = BlueGreen::start("shift_slow_start 6s;");
    let (blue, green) = (site.blue.addr().to_string(), site.green.addr().to_string());
    // Blue has taken requests since Nginx started: no ramp. Both keep Nginx's weight 1.
    assert_eq!(site.admin.peer("app", &blue).unwrap().ramp, None);
    let response = site.admin.patch(
        "app",
        &format!(r#"{{"peers": {{"{green}": {{"state": "up"}}}}}}"#),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    let started = ramp_start(&site, &green);
    let ends = site
        .admin
        .peer("app", &green)
        .unwrap()
        .ramp
        .unwrap()
        .ramp_ends_ms;
    assert_on_the_curve(&site, "green", started, 1.0, 1.0);
    assert_on_the_curve(&site, "green", started, 3.0, 1.0);
    // A reload in the middle: the ramp goes on where it was.
    site.nginx.reload(None);
    let ramp = site.admin.peer("app", &green).unwrap().ramp;
    assert_eq!(ramp.map(|ramp| ramp.ramp_ends_ms), Some(ends), "{ramp:?}");
    assert_on_the_curve(&site, "green", started, 5.0, 1.0);

    std::thread::sleep(
        (started + Duration::from_secs(6)).saturating_duration_since(Instant::now()),
    );
    assert_eq!(site.admin.peer("app", &green).unwrap().ramp, None);
    let (share, total) = share_of(site.port, "green", Duration::from_millis(500));
    assert!(
        (share - 50.0).abs() <= 5.0,
        "after the ramp: {share:.1}% of {total}"
    );

    // A reload to a longer window starts no ramp that had ended.
    let longer = BlueGreen::config(&site.blue, &site.green, "shift_slow_start 1h;", site.port);
    site.nginx.reload(Some(&longer));
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
    let server = canary.addr().to_string();
    let response = site.admin.add_peer("app", &server, r#""weight": 500"#);
    assert!(response.status < 300, "{}", response.body);
    let started = ramp_start(&site, &server);
    let ramp = site.admin.peer("app", &server).unwrap().ramp.unwrap();
    assert!(ramp.effective_weight < 500, "{ramp:?}");
    let metric = site
        .admin
        .metric(&format!(
            "nginx_shift_peer_effective_weight{{upstream=\"app\",peer=\"{server}\"}}"
        ))
        .expect("the effective weight gauge");
    assert!(metric < 500.0, "{metric}");
    for t in [1.0, 3.0, 5.0] {
        assert_on_the_curve(&site, "canary", started, t, 1.0);
    }
}

#[test]
fn a_change_with_a_slow_start_of_its_own_ramps_along_its_curve_where_the_upstream_has_none() {
    let site = BlueGreen::start("");
    let green = site.green.addr().to_string();
    let response = site.admin.patch(
        "app",
        &format!(r#"{{"peers": {{"{green}": {{"state": "up", "slow_start": "6s"}}}}}}"#),
    );
    assert_eq!(response.status, 200, "{}", response.body);
    let started = ramp_start(&site, &green);
    assert_on_the_curve(&site, "green", started, 1.0, 1.0);
    assert_on_the_curve(&site, "green", started, 3.0, 1.0);

    // "0s": a change that starts no ramp.
    let drain_and_up = |state: &str, slow_start: &str| {
        let response = site.admin.patch(
            "app",
            &format!(
                r#"{{"peers": {{"{green}": {{"state": "{state}", "slow_start": "{slow_start}"}}}}}}"#
            ),
        );
        assert_eq!(response.status, 200, "{}", response.body);
    };
    drain_and_up("drain", "0s");
    drain_and_up("up", "0s");
    assert_eq!(site.admin.peer("app", &green).unwrap().ramp, None);
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
