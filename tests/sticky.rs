//! Sticky sessions (`shift_sticky`), pins (`shift_pin`) and labels (`shift_label`, the API),
//! against a real Nginx with two workers: 10,000 users with their own cookies through a
//! canary, requests pinned to a standby version, and pins that fall back.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use harness::{check_config, wait_until, Backend, BlueGreen, HttpClient, NginxOptions};
use shift_wire::{Health, Upstream};

const USERS: usize = 10_000;
/// Client threads, each with its own keep-alive connection (Nginx closes one after 1,000
/// requests, and the next may land on the other worker).
const THREADS: usize = 8;

/// Blue up, green a standby, both labelled, and `extra` directives in the upstream.
struct Site(BlueGreen);

impl std::ops::Deref for Site {
    type Target = BlueGreen;
    fn deref(&self) -> &BlueGreen {
        &self.0
    }
}

impl std::ops::DerefMut for Site {
    fn deref_mut(&mut self) -> &mut BlueGreen {
        &mut self.0
    }
}

impl Site {
    fn start(extra: &str) -> Site {
        Site(BlueGreen::start_with(|blue, green| {
            labelled(blue, green, extra)
        }))
    }

    /// Green's share (percent of the weight); green is up from the first step on.
    fn split(&self, green: u32) {
        let body = format!(
            r#"{{"peers": {{"{}": {{"weight": {}}}, "{}": {{"weight": {green}, "state": "up"}}}}}}"#,
            self.blue.addr(),
            100 - green,
            self.green.addr()
        );
        let response = self.admin.patch("app", &body);
        assert_eq!(response.status, 200, "{}", response.body);
    }

    fn get(&self, headers: &[(&str, &str)]) -> harness::Response {
        let response = HttpClient::new(self.port)
            .get_with("/", headers)
            .expect("request through nginx");
        assert_eq!(response.status, 200, "{}", response.body);
        response
    }

    fn upstream(&self) -> Upstream {
        self.admin.upstream("app")
    }
}

/// The two versions' labels, then `extra`.
fn labelled(blue: &Backend, green: &Backend, extra: &str) -> String {
    format!(
        "shift_label {} blue;\n    shift_label {} green;\n{extra}",
        blue.addr(),
        green.addr()
    )
}

/// Where each user's request went (the backend's name), and which workers answered. User `u`
/// is served by thread `(u + shift) % THREADS`: another `shift` sends it over another
/// connection.
fn pass(port: u16, shift: usize, workers: &Mutex<BTreeSet<String>>) -> Vec<String> {
    let placed = Mutex::new(vec![String::new(); USERS]);
    thread::scope(|scope| {
        for thread in 0..THREADS {
            let placed = &placed;
            scope.spawn(move || {
                let mut client = HttpClient::new(port);
                let mut seen = BTreeSet::new();
                let mut mine = Vec::new();
                for user in (0..USERS).filter(|user| (user + shift) % THREADS == thread) {
                    let cookie = format!("session=user-{user}");
                    let response = client
                        .get_with("/", &[("Cookie", &cookie)])
                        .expect("request through nginx");
                    assert_eq!(response.status, 200, "{}", response.body);
                    seen.extend(response.header("X-Worker").map(str::to_string));
                    mine.push((user, response.body));
                }
                let mut placed = placed.lock().unwrap();
                for (user, backend) in mine {
                    placed[user] = backend;
                }
                workers.lock().unwrap().extend(seen);
            });
        }
    });
    placed.into_inner().unwrap()
}

fn green_share(placed: &[String]) -> f64 {
    placed.iter().filter(|backend| *backend == "green").count() as f64 * 100.0 / USERS as f64
}

#[test]
fn ten_thousand_users_keep_their_version_through_a_canary_and_a_reload() {
    let mut site = Site::start("    shift_sticky $cookie_session;\n    keepalive 16;");
    let workers = Mutex::new(BTreeSet::new());
    let mut before = pass(site.port, 0, &workers);
    assert!(before.iter().all(|backend| backend == "blue"));
    for green in [5, 25, 50, 100] {
        site.split(green);
        let now = pass(site.port, 0, &workers);
        let again = pass(site.port, 3, &workers);
        for user in 0..USERS {
            assert_eq!(
                now[user], again[user],
                "user {user} moved within the {green}% step"
            );
            assert!(
                !(before[user] == "green" && now[user] == "blue"),
                "user {user} went back from green to blue at {green}%"
            );
        }
        let share = green_share(&now);
        assert!(
            (share - f64::from(green)).abs() <= 2.0,
            "{green}% step: {share:.2}% of users on green"
        );
        before = now;
        if green == 50 {
            // New workers after a reload place every user where the old ones did.
            let old_workers = std::mem::take(&mut *workers.lock().unwrap());
            assert_eq!(old_workers.len(), 2, "both workers served users");
            site.nginx.reload(None);
            let reloaded = pass(site.port, 5, &workers);
            assert_eq!(reloaded, before, "users moved across a reload");
        }
    }
    assert!(before.iter().all(|backend| backend == "green"));
    // A rollback sends every user back to blue.
    let body = format!(
        r#"{{"peers": {{"{}": {{"weight": 100}}, "{}": {{"state": "down"}}}}}}"#,
        site.blue.addr(),
        site.green.addr()
    );
    assert_eq!(site.admin.patch("app", &body).status, 200);
    let rolled_back = pass(site.port, 1, &workers);
    assert!(rolled_back.iter().all(|backend| backend == "blue"));
    assert_eq!(
        workers.lock().unwrap().len(),
        2,
        "both new workers served users"
    );
    // Requests without a cookie still follow the weights (smooth round robin).
    site.split(50);
    let mut greens = 0;
    for _ in 0..40 {
        greens += usize::from(site.get(&[]).body == "green");
    }
    assert!((10..=30).contains(&greens), "{greens} of 40 on green");
}

/// Who answered `count` requests with `headers`, each on a new connection (both workers).
fn answers(site: &Site, count: usize, headers: &[(&str, &str)]) -> BTreeSet<String> {
    (0..count).map(|_| site.get(headers).body).collect()
}

#[test]
fn a_pinned_request_reaches_a_standby_green_while_all_other_traffic_stays_on_blue() {
    let site = Site::start("    shift_pin $http_x_shift_to;");
    let green_address = site.green.addr().to_string();
    let only = |name: &str| BTreeSet::from([name.to_string()]);
    assert_eq!(answers(&site, 40, &[]), only("blue"));
    // By label and by address, whatever green's weight and state (standby, `down`).
    assert_eq!(
        answers(&site, 20, &[("X-Shift-To", "green")]),
        only("green")
    );
    assert_eq!(
        answers(&site, 20, &[("X-Shift-To", &green_address)]),
        only("green")
    );
    assert_eq!(
        answers(&site, 40, &[]),
        only("blue"),
        "nobody else on green"
    );
    // A pin that names nothing takes the normal pick, and is counted.
    assert_eq!(
        answers(&site, 10, &[("X-Shift-To", "purple")]),
        only("blue")
    );
    let pins = site.upstream().pins;
    assert_eq!((pins.pinned, pins.fallbacks), (40, 10));
    let metrics = site.admin.request("GET", "metrics", None).body;
    assert!(
        metrics.contains("nginx_shift_pinned_requests_total{upstream=\"app\"} 40\n")
            && metrics.contains("nginx_shift_pin_fallbacks_total{upstream=\"app\"} 10\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "nginx_shift_peer_info{{upstream=\"app\",peer=\"{green_address}\",label=\"green\"}} 1"
        )),
        "{metrics}"
    );
    // A replica added at run time with a label, weight 0: reachable by its label only.
    let canary = Backend::start("canary");
    let added = site.admin.add_peer(
        "app",
        &canary.addr().to_string(),
        r#""weight": 0, "label": "v2.3.1""#,
    );
    assert_eq!(added.status, 201, "{}", added.body);
    assert_eq!(
        answers(&site, 20, &[("X-Shift-To", "v2.3.1")]),
        only("canary")
    );
    assert_eq!(answers(&site, 20, &[]), only("blue"));
    // A label shared by two standby replicas of equal weight: pinned requests spread over both.
    let body = format!(
        r#"{{"peers": {{"{}": {{"label": "green", "weight": 1, "state": "down"}}}}}}"#,
        canary.addr()
    );
    assert_eq!(site.admin.patch("app", &body).status, 200);
    assert_eq!(
        answers(&site, 40, &[("X-Shift-To", "green")]),
        BTreeSet::from(["green".to_string(), "canary".to_string()])
    );
}

#[test]
fn a_pin_to_an_unhealthy_peer_falls_back_until_it_recovers() {
    let site = Site::start(
        "    shift_pin $cookie_shift_to;\n    shift_check interval=200ms timeout=150ms fails=1 passes=1;",
    );
    let pinned = [("Cookie", "shift_to=green")];
    let health = |site: &Site| {
        site.admin
            .peer("app", &site.green.addr().to_string())
            .unwrap()
            .health
    };
    assert!(wait_until(Duration::from_secs(5), || health(&site) == Health::Healthy).is_some());
    let only = |name: &str| BTreeSet::from([name.to_string()]);
    assert_eq!(answers(&site, 10, &pinned), only("green"));
    site.green.set_status(503);
    assert!(wait_until(Duration::from_secs(5), || health(&site)
        == Health::Unhealthy)
    .is_some());
    let before = site.upstream().pins;
    assert_eq!(answers(&site, 20, &pinned), only("blue"));
    let after = site.upstream().pins;
    assert_eq!(after.fallbacks - before.fallbacks, 20);
    site.green.set_status(200);
    assert!(wait_until(Duration::from_secs(5), || health(&site) == Health::Healthy).is_some());
    assert_eq!(answers(&site, 10, &pinned), only("green"));
}

#[test]
fn a_sticky_user_whose_peer_fails_goes_to_its_next_choice_every_time() {
    let site =
        Site::start("    shift_sticky $cookie_session;\n    server 127.0.0.1:1 max_fails=0;");
    // Green joins, and a third peer that refuses connections takes a share of the users.
    let body = format!(
        r#"{{"peers": {{"{}": {{"state": "up", "weight": 1}}, "127.0.0.1:1": {{"weight": 1}}}}}}"#,
        site.green.addr()
    );
    assert_eq!(site.admin.patch("app", &body).status, 200);
    // Every user is served (the refused attempt is retried), and each on one peer.
    for user in 0..200 {
        let cookie = format!("session=user-{user}");
        let first = site.get(&[("Cookie", &cookie)]).body;
        for _ in 0..3 {
            assert_eq!(site.get(&[("Cookie", &cookie)]).body, first, "user {user}");
        }
    }
}

#[test]
fn nginx_t_refuses_steering_directives_it_cannot_honour() {
    for (upstream, says) in [
        (
            "server 127.0.0.1:8001; shift; shift_label 127.0.0.1:9999 green;",
            "\"shift_label\" names \"127.0.0.1:9999\", which is no \"server\" line",
        ),
        (
            "server 127.0.0.1:8001; shift; shift_label 127.0.0.1:8001 \"two words\";",
            "invalid parameter \"two words\" in \"shift_label\" directive",
        ),
        (
            "server 127.0.0.1:8001; shift; shift_label 127.0.0.1:8001 a; \
             shift_label 127.0.0.1:8001 b;",
            "\"127.0.0.1:8001\" is labelled twice in upstream \"app\"",
        ),
        (
            "server 127.0.0.1:8001; shift_sticky $cookie_session;",
            "\"shift_sticky\" in upstream \"app\" needs \"shift\" in the same upstream",
        ),
        (
            "server 127.0.0.1:8001; shift; shift_pin $http_x_a; shift_pin $http_x_b;",
            "\"shift_pin\" directive is duplicate",
        ),
        (
            "server 127.0.0.1:8001; shift; shift_sticky $no_such_variable;",
            "unknown \"no_such_variable\" variable",
        ),
    ] {
        let check = check_config(&NginxOptions::new(format!(
            "upstream app {{ {upstream} }}\n\
             server {{ listen 127.0.0.1:1; location / {{ proxy_pass http://app; }} }}\n"
        )));
        assert!(!check.ok, "{upstream}: {}", check.output);
        assert!(check.output.contains(says), "{upstream}: {}", check.output);
    }
    let check = check_config(&NginxOptions::new(
        "upstream app { server localhost:8001; shift; shift_label localhost:8001 green; \
         shift_sticky $cookie_session$remote_addr; shift_pin $http_x_shift_to; }\n\
         server { listen 127.0.0.1:1; location / { proxy_pass http://app; } }\n",
    ));
    assert!(check.ok, "{}", check.output);
}

#[test]
fn labels_come_from_the_config_and_the_api_and_outlive_reloads() {
    let mut site = Site::start("");
    let labels = |site: &Site| -> Vec<Option<String>> {
        site.upstream()
            .peers
            .iter()
            .map(|peer| peer.label.clone())
            .collect()
    };
    assert_eq!(
        labels(&site),
        [Some("blue".to_string()), Some("green".to_string())]
    );
    let body = format!(
        r#"{{"peers": {{"{}": {{"label": "v2.3.1"}}}}}}"#,
        site.green.addr()
    );
    assert_eq!(site.admin.patch("app", &body).status, 200);
    // A reload with the same config keeps the API's label.
    site.nginx.reload(None);
    assert_eq!(labels(&site)[1].as_deref(), Some("v2.3.1"));
    // A reload that changes the line's `shift_label` takes the config's, and only that.
    let config = BlueGreen::config(
        &site.blue,
        &site.green,
        &labelled(&site.blue, &site.green, ""),
        site.port,
    )
    .replace(" green;\n", " green-2;\n");
    site.nginx.reload(Some(&config));
    assert_eq!(
        labels(&site),
        [Some("blue".to_string()), Some("green-2".to_string())]
    );
    // A bad label is refused and changes nothing.
    let body = format!(
        r#"{{"peers": {{"{}": {{"label": "a b", "weight": 9}}}}}}"#,
        site.green.addr()
    );
    let refused = site.admin.patch("app", &body);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.body.contains("label \\\"a b\\\" is not valid"),
        "{}",
        refused.body
    );
    assert_eq!(site.upstream().peers[1].weight, 1);
}

/// `shift_eject` with pins and sticky keys: an ejected peer takes no pinned request (the pin
/// falls back to the normal pick) and its sticky users move to the peers that take requests.
#[test]
fn an_ejected_peer_takes_no_pin_and_its_sticky_users_move() {
    let site = Site::start(
        "    shift_pin $http_x_shift_to;\n    shift_sticky $http_x_user;\n    \
         shift_eject consecutive=3 base=1h max=1h max_percent=50;",
    );
    site.split(50);
    site.green.set_status(500);
    // Requests pinned to green fail until the third failure in a row ejects it.
    let statuses: Vec<u16> = (0..10)
        .map(|_| {
            HttpClient::new(site.port)
                .get_with("/", &[("X-Shift-To", "green")])
                .expect("request through nginx")
                .status
        })
        .collect();
    assert_eq!(statuses[..3], [500, 500, 500], "{statuses:?}");
    assert_eq!(statuses[3..], [200; 7], "{statuses:?}");
    let green = &site.upstream().peers[1];
    assert_eq!(green.ejection.ejections, 1, "{green:?}");
    // Pinned and sticky requests alike go to blue now, whoever the user.
    for user in 0..40 {
        let user = format!("user-{user}");
        let pinned = site.get(&[("X-Shift-To", "green"), ("X-User", &user)]);
        assert_eq!(pinned.body, "blue");
        assert_eq!(site.get(&[("X-User", &user)]).body, "blue");
    }
}

/// Under `shift_slow_start`, sticky keys move to a peer that ramps up as its weight grows, and
/// a key that moved stays: a third of the way in, fewer users are on green than at two thirds,
/// fewer than at the end, and none goes back to blue.
#[test]
fn sticky_users_move_to_a_ramping_peer_as_its_weight_grows_and_stay() {
    let site = Site::start("    shift_sticky $http_x_user;\n    shift_slow_start 6s;");
    let users: Vec<String> = (0..300).map(|user| format!("user-{user}")).collect();
    let on_green = |site: &Site| -> BTreeSet<String> {
        let mut client = HttpClient::new(site.port);
        users
            .iter()
            .filter(|user| {
                let answer = client
                    .get_with("/", &[("X-User", user.as_str())])
                    .expect("request through nginx");
                answer.body == "green"
            })
            .cloned()
            .collect()
    };
    let body = format!(
        r#"{{"peers": {{"{}": {{"state": "up"}}}}}}"#,
        site.green.addr()
    );
    let response = site.admin.patch("app", &body);
    assert_eq!(response.status, 200, "{}", response.body);
    let start = std::time::Instant::now();
    let at = |seconds: f64| {
        let when = Duration::from_secs_f64(seconds);
        thread::sleep(when.saturating_sub(start.elapsed()));
    };
    at(1.5);
    let early = on_green(&site);
    at(4.0);
    let later = on_green(&site);
    at(6.5);
    let done = on_green(&site);
    let share = |set: &BTreeSet<String>| set.len() * 100 / users.len();
    assert!(
        share(&early) < share(&later) && share(&later) < share(&done),
        "green's users: {}% then {}% then {}%",
        share(&early),
        share(&later),
        share(&done)
    );
    assert!(share(&early) <= 35, "{}% of users early on", share(&early));
    assert!(
        (35..=65).contains(&share(&done)),
        "{}% once the ramp ended",
        share(&done)
    );
    assert!(
        early.is_subset(&later) && later.is_subset(&done),
        "a user went back to blue"
    );
}
