//! `shift_eject` against real Nginx (two workers): a peer whose real requests fail is taken out
//! after exactly `consecutive` failures, counted in the zone whichever worker saw them, however its health check
//! fares; it comes back when its time is over, and its next ejection lasts longer; the bounds
//! keep one peer of two serving; the API, the metrics and the log say it; bad arguments fail
//! `nginx -t`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::{check_config, free_port, wait_for, Admin, Backend, HttpClient, Nginx, NginxOptions};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An upstream `app` of `good` and a peer served by Nginx itself that answers 500 to every real
/// request but 200 to its check path, checked every 200 ms; with `eject` and the API; once
/// that peer passed its check.
fn site(good: &Backend, eject: &str) -> (Nginx, Admin, u16, String) {
    let (port, bad_port) = (free_port(), free_port());
    let bad = format!("127.0.0.1:{bad_port}");
    let nginx = Nginx::start(NginxOptions::new(site_config(good, &bad, port, eject)));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    // Its check passes: healthy, and taking requests.
    assert!(
        wait_for(Duration::from_secs(5), || {
            (admin.peer("app", &bad)?.health == shift_wire::Health::Healthy).then_some(())
        })
        .is_some(),
        "the check path answers 200"
    );
    (nginx, admin, port, bad)
}

/// The `http {}` body of `site`.
fn site_config(good: &Backend, bad: &str, port: u16, eject: &str) -> String {
    format!(
        "upstream app {{\n    server {good};\n    server {bad};\n    shift;\n    \
         shift_check uri=/health interval=200ms;\n    {eject}\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://app; }}\n}}\n\
         server {{\n    listen {bad};\n    location = /health {{ return 200 ok; }}\n    \
         location / {{ return 500 bad; }}\n}}\n\
         server {{\n    listen unix:{{prefix}}/api.sock;\n    location /api/ {{ shift_api; }}\n}}\n",
        good = good.addr()
    )
}

/// `count` requests, one after another, each on a new connection so that both workers take
/// some; returns how many were answered 500.
fn failed_of(port: u16, count: usize) -> usize {
    (0..count)
        .filter(|_| {
            let response = HttpClient::new(port)
                .get("/")
                .expect("request through nginx");
            response.status == 500
        })
        .count()
}

#[test]
fn a_peer_failing_real_requests_is_out_after_exactly_n_failures_until_its_time_then_longer() {
    let good = Backend::start("good");
    let (nginx, admin, port, bad) = site(
        &good,
        "shift_eject consecutive=3 base=2s max=3s max_percent=50;",
    );
    // One request after another on both workers: exactly three reach the bad peer.
    let before = unix_ms();
    assert_eq!(failed_of(port, 30), 3, "three failures, then no more");
    let peer = admin.peer("app", &bad).unwrap();
    assert!(!peer.eligible);
    assert_eq!(peer.ejection.ejections, 1);
    let until = peer.ejection.ejected_until_ms.expect("ejected");
    assert!(
        (before + 2_000..=unix_ms() + 2_000).contains(&until),
        "ejected until {until}, 2 s after its third failure"
    );
    assert_eq!(
        admin.metric(&format!(
            "nginx_shift_peer_ejected{{upstream=\"app\",peer=\"{bad}\"}}"
        )),
        Some(1.0)
    );

    // The check keeps passing; the peer stays out until its time.
    std::thread::sleep(Duration::from_millis(until.saturating_sub(unix_ms() + 300)));
    let peer = admin.peer("app", &bad).unwrap();
    assert_eq!(peer.health, shift_wire::Health::Healthy);
    assert!(peer.ejection.ejected_until_ms.is_some(), "{peer:?}");
    assert_eq!(failed_of(port, 6), 0);

    // Then it is back (the workers look once a second), with its count.
    let back = wait_for(Duration::from_secs(3), || {
        let peer = admin.peer("app", &bad)?;
        peer.eligible.then_some(peer)
    })
    .expect("back after its time");
    assert!(unix_ms() >= until);
    assert_eq!(
        (back.ejection.ejections, back.ejection.ejected_until_ms),
        (1, None)
    );
    assert_eq!(
        admin.metric(&format!(
            "nginx_shift_peer_ejections_total{{upstream=\"app\",peer=\"{bad}\"}}"
        )),
        Some(1.0)
    );

    // Three failures again: out for twice as long, capped at max.
    let before = unix_ms();
    assert_eq!(failed_of(port, 30), 3);
    let peer = admin.peer("app", &bad).unwrap();
    assert_eq!(peer.ejection.ejections, 2);
    let until = peer.ejection.ejected_until_ms.expect("ejected again");
    assert!(
        (before + 3_000..=unix_ms() + 3_000).contains(&until),
        "ejected until {until}: 3 s (max), not 4 s (2 × base)"
    );

    let log = nginx.error_log();
    let said = |text: &str| log.matches(text).count();
    assert_eq!(
        said(&format!(
            "peer {bad} ejected for 2000 ms after 3 failed attempts in a row (ejection 1)"
        )),
        1,
        "{log}"
    );
    assert_eq!(
        said(&format!(
            "peer {bad} ejected for 3000 ms after 3 failed attempts in a row (ejection 2)"
        )),
        1,
        "{log}"
    );
    assert_eq!(
        said(&format!("peer {bad} is back from its ejection")),
        1,
        "{log}"
    );
}

#[test]
fn a_reload_that_takes_shift_eject_away_lets_the_ejected_peer_back() {
    let good = Backend::start("good");
    let (mut nginx, admin, port, bad) = site(&good, "shift_eject consecutive=2 base=1h max=1h;");
    assert_eq!(failed_of(port, 10), 2);
    assert!(!admin.peer("app", &bad).unwrap().eligible);

    nginx.reload(Some(&site_config(&good, &bad, port, "")));
    let back = wait_for(Duration::from_secs(5), || {
        let peer = admin.peer("app", &bad)?;
        peer.eligible.then_some(peer)
    })
    .expect("back once shift_eject is gone");
    assert_eq!(back.ejection.ejected_until_ms, None);
    assert!(failed_of(port, 10) > 0, "it takes requests again");
    assert!(
        nginx.error_log().contains(&format!(
            "peer {bad} is back from its ejection: the upstream has no shift_eject any more"
        )),
        "{}",
        nginx.error_log()
    );
}

#[test]
fn an_ejected_peer_comes_back_through_its_slow_start() {
    let good = Backend::start("good");
    let (_nginx, admin, port, bad) = site(
        &good,
        "shift_eject consecutive=2 base=1s max_percent=50; shift_slow_start 1h;",
    );
    assert_eq!(failed_of(port, 10), 2);
    let back = wait_for(Duration::from_secs(4), || {
        let peer = admin.peer("app", &bad)?;
        peer.eligible.then_some(peer)
    })
    .expect("back after a second");
    let ramp = back.ramp.expect("it ramps up again");
    assert!(ramp.ramp_ends_ms > unix_ms() + 3_000_000, "{ramp:?}");
}

#[test]
fn no_ejection_takes_more_than_max_percent_and_a_lone_peer_is_never_out() {
    // Two failing peers, 10% at most: one goes, the other stays and keeps failing.
    let (port, bad_a, bad_b) = (free_port(), free_port(), free_port());
    let failing =
        |port: u16| format!("server {{\n    listen 127.0.0.1:{port};\n    return 500 bad;\n}}\n");
    let config = format!(
        "upstream app {{\n    server 127.0.0.1:{bad_a};\n    server 127.0.0.1:{bad_b};\n    \
         shift;\n    shift_eject consecutive=2 base=1m;\n}}\n\
         upstream lone {{\n    server 127.0.0.1:{bad_a};\n    shift;\n    \
         shift_eject consecutive=2 base=1m;\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://app; }}\n    \
         location /lone {{ proxy_pass http://lone; }}\n}}\n\
         {}{}\
         server {{\n    listen unix:{{prefix}}/api.sock;\n    location /api/ {{ shift_api; }}\n}}\n",
        failing(bad_a),
        failing(bad_b)
    );
    let nginx = Nginx::start(NginxOptions::new(config));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    assert_eq!(failed_of(port, 20), 20);
    let ejections: Vec<u32> = admin
        .upstream("app")
        .peers
        .iter()
        .map(|peer| peer.ejection.ejections)
        .collect();
    assert_eq!(
        ejections.iter().sum::<u32>(),
        1,
        "one of the two: {ejections:?}"
    );

    for _ in 0..10 {
        let response = HttpClient::new(port).get("/lone").unwrap();
        assert_eq!(response.status, 500);
    }
    let lone = &admin.upstream("lone").peers[0];
    assert_eq!(lone.ejection.ejections, 0, "nothing would be left");
    assert!(lone.eligible);
}

#[test]
fn bad_eject_arguments_fail_nginx_t() {
    let backend = Backend::start("blue");
    let upstream = |extra: &str| {
        NginxOptions::new(format!(
            "upstream app {{\n    server {};\n    shift;\n    {extra}\n}}\n",
            backend.addr()
        ))
    };
    for (extra, said) in [
        (
            "shift_eject consecutive=0;",
            "invalid parameter \"consecutive=0\" in \"shift_eject\" directive",
        ),
        (
            "shift_eject base=10m max=1m;",
            "base (600000 ms) is longer than max (60000 ms)",
        ),
        (
            "shift_eject status=5xx;",
            "invalid parameter \"status=5xx\" in \"shift_eject\" directive",
        ),
        (
            "shift_eject; shift_eject;",
            "\"shift_eject\" directive is duplicate",
        ),
    ] {
        let check = check_config(&upstream(extra));
        assert!(
            !check.ok && check.output.contains(said),
            "{extra}: {}",
            check.output
        );
    }
    let without_shift = NginxOptions::new(format!(
        "upstream other {{ server {}; shift_eject; }}\n",
        backend.addr()
    ));
    let check = check_config(&without_shift);
    assert!(
        !check.ok && check.output.contains("needs \"shift\""),
        "{}",
        check.output
    );
    assert!(check_config(&upstream("shift_eject consecutive=5 status=500,502-504;")).ok);
}
