//! The module loads into a real Nginx, its directives are checked by `nginx -t`, and a `shift`
//! upstream proxies like plain round robin.

use harness::{check_config, free_port, nginx_version, Backend, HttpClient, Nginx, NginxOptions};

fn upstream_config(extra_upstream: &str, servers: &[u16], listen: u16) -> String {
    let servers: String = servers
        .iter()
        .map(|port| format!("server 127.0.0.1:{port};\n"))
        .collect();
    format!(
        "upstream app {{\n{servers}{extra_upstream}\n}}\n\
         server {{ listen 127.0.0.1:{listen}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}\n"
    )
}

#[test]
fn nginx_t_accepts_shift_and_shift_api() {
    let check = check_config(&NginxOptions::new(upstream_config(
        "shift state={prefix}/app.state;",
        &[8000, 8001],
        free_port(),
    )));
    assert!(check.ok, "nginx -t failed:\n{}", check.output);
    assert!(
        check.output.contains("test is successful"),
        "{}",
        check.output
    );
}

#[test]
fn misspelt_shift_parameter_is_rejected_naming_the_directive() {
    let check = check_config(&NginxOptions::new(upstream_config(
        "shift stat=/tmp/app.state;",
        &[8000],
        free_port(),
    )));
    assert!(
        !check.ok,
        "nginx -t accepted a misspelt parameter:\n{}",
        check.output
    );
    assert!(
        check
            .output
            .contains("invalid parameter \"stat=/tmp/app.state\" in \"shift\" directive"),
        "{}",
        check.output
    );
    assert!(
        check.output.contains("nginx.conf:"),
        "no file and line: {}",
        check.output
    );
}

#[test]
fn misspelt_shift_api_parameter_is_rejected() {
    let mut config = upstream_config("shift;", &[8000], free_port());
    config = config.replace("shift_api;", "shift_api writer=0;");
    let check = check_config(&NginxOptions::new(config));
    assert!(!check.ok);
    assert!(
        check
            .output
            .contains("invalid parameter \"writer=0\" in \"shift_api\" directive"),
        "{}",
        check.output
    );
}

#[test]
fn shift_outside_an_upstream_is_rejected() {
    let config = format!(
        "shift;\nserver {{ listen 127.0.0.1:{}; location / {{ return 200; }} }}",
        free_port()
    );
    let check = check_config(&NginxOptions::new(config));
    assert!(!check.ok);
    assert!(
        check
            .output
            .contains("\"shift\" directive is not allowed here"),
        "{}",
        check.output
    );
}

#[test]
fn shift_refuses_another_balancer_and_zone() {
    let mut refused = vec![(
        "least_conn;\nshift;",
        "works with the default round robin only",
    )];
    // Before 1.29 `keepalive` wraps the balancer when its directive is read, so it must come
    // after `shift`; since 1.29 it is on by default and wraps it once the upstream is parsed,
    // in either order (`keepalive_before_shift_works_since_1_29`).
    if nginx_version() < (1, 29, 0) {
        refused.push((
            "keepalive 4;\nshift;",
            "\"shift\" must come before \"keepalive\"",
        ));
    }
    for (extra, expected) in refused.into_iter().chain([
        (
            "shift;\nleast_conn;",
            "uses another load balancing method after \"shift\"",
        ),
        (
            "zone app 64k;\nshift;",
            "\"shift\" cannot be used with \"zone\"",
        ),
    ]) {
        let check = check_config(&NginxOptions::new(upstream_config(
            extra,
            &[8000],
            free_port(),
        )));
        assert!(!check.ok, "accepted {extra:?}:\n{}", check.output);
        assert!(
            check.output.contains(expected),
            "for {extra:?}:\n{}",
            check.output
        );
    }
}

#[test]
fn keepalive_before_shift_works_since_1_29() {
    if nginx_version() < (1, 29, 0) {
        return; // refused there, as `shift_refuses_another_balancer_and_zone` checks
    }
    let blue = Backend::start("blue");
    let port = free_port();
    let _nginx = Nginx::start(NginxOptions::new(upstream_config(
        "keepalive 4;\nshift;",
        &[blue.port()],
        port,
    )));
    let response = HttpClient::new(port)
        .get("/")
        .expect("request through nginx");
    assert_eq!((response.status, response.body.as_str()), (200, "blue"));
}

#[test]
fn keepalive_after_shift_is_accepted() {
    let check = check_config(&NginxOptions::new(upstream_config(
        "shift;\nkeepalive 4;",
        &[8000],
        free_port(),
    )));
    assert!(check.ok, "{}", check.output);
}

#[test]
fn requests_through_a_shift_upstream_reach_both_backends() {
    let blue = Backend::start("blue");
    let green = Backend::start("green");
    let port = free_port();
    let _nginx = Nginx::start(NginxOptions::new(upstream_config(
        "shift;",
        &[blue.port(), green.port()],
        port,
    )));
    let mut client = HttpClient::new(port);
    let mut served = std::collections::HashMap::<String, u32>::new();
    for _ in 0..200 {
        let response = client.get("/").expect("request through nginx");
        assert_eq!(response.status, 200, "body: {}", response.body);
        *served.entry(response.body).or_default() += 1;
    }
    // Plain round robin with equal weights: an even split, give or take the two workers' phase.
    let blue_count = served.get("blue").copied().unwrap_or(0);
    let green_count = served.get("green").copied().unwrap_or(0);
    assert_eq!(
        blue_count + green_count,
        200,
        "unexpected answers: {served:?}"
    );
    assert!((95..=105).contains(&blue_count), "uneven split: {served:?}");
    assert_eq!(blue.hits() + green.hits(), 200);
}

#[test]
fn one_address_on_two_server_lines_is_refused_naming_both() {
    let port = free_port();
    let check = check_config(&NginxOptions::new(upstream_config(
        &format!("server localhost:{port};\nshift;"),
        &[port],
        free_port(),
    )));
    assert!(!check.ok, "accepted:\n{}", check.output);
    let expected = format!(
        "has address 127.0.0.1:{port} twice, from \"server 127.0.0.1:{port}\" and \"server localhost:{port}\""
    );
    assert!(check.output.contains(&expected), "{}", check.output);
}

#[test]
fn shift_check_refuses_what_would_inject_headers() {
    for (param, shown) in [
        (r#""host=a\r\nX-Injected: 1""#, r"host=a\r\nX-Injected: 1"),
        (
            r#""uri=/health\r\nX-Injected: 1""#,
            r"uri=/health\r\nX-Injected: 1",
        ),
        (r#""uri=/a b""#, "uri=/a b"),
    ] {
        let check = check_config(&NginxOptions::new(upstream_config(
            &format!("shift;\nshift_check {param};"),
            &[8000],
            free_port(),
        )));
        assert!(!check.ok, "accepted {param}:\n{}", check.output);
        let expected = format!("invalid parameter \"{shown}\" in \"shift_check\" directive");
        assert!(
            check.output.contains(&expected),
            "{param}:\n{}",
            check.output
        );
        assert!(check.output.contains("nginx.conf:"), "{}", check.output);
    }
}

#[test]
fn a_relative_state_path_is_taken_from_the_prefix_and_its_directory_is_checked() {
    let blue = Backend::start("blue");
    let config = upstream_config("shift state=state/app.json;", &[blue.port()], free_port());
    let check = check_config(&NginxOptions::new(config.clone()));
    assert!(
        !check.ok,
        "a missing state directory passed nginx -t:\n{}",
        check.output
    );
    assert!(
        check.output.contains("state/app.json") && check.output.contains("create it"),
        "{}",
        check.output
    );

    // Nginx runs from this test's working directory; the file lands under the prefix anyway.
    let nginx = Nginx::start_with_prefix_dirs(NginxOptions::new(config), &["state"]);
    let admin = harness::Admin::new(nginx.path("api.sock"), "/api/");
    let body = format!(
        r#"{{"peers": {{"127.0.0.1:{}": {{"weight": 4}}}}}}"#,
        blue.port()
    );
    assert_eq!(admin.patch("app", &body).status, 200);
    let saved =
        std::fs::read_to_string(nginx.path("state/app.json")).expect("saved under the prefix");
    assert!(saved.contains("\"weight\": 4"), "{saved}");
}

#[test]
fn error_log_debug_explains_picks_copies_and_api_answers() {
    if !harness::nginx_has_debug() {
        eprintln!("skipped: this Nginx is not built --with-debug, so it has no debug log");
        return;
    }
    let blue = Backend::start("blue");
    let port = free_port();
    let mut options = NginxOptions::new(upstream_config("shift;", &[blue.port()], port));
    options.log_level = "debug";
    let nginx = Nginx::start(options);
    let admin = harness::Admin::new(nginx.path("api.sock"), "/api/");
    let body = format!(
        r#"{{"peers": {{"127.0.0.1:{}": {{"weight": 3}}}}}}"#,
        blue.port()
    );
    assert_eq!(admin.patch("app", &body).status, 200);
    assert_eq!(HttpClient::new(port).get("/").unwrap().status, 200);
    let log = nginx.error_log();
    for expected in [
        "shift: API PATCH upstreams/app from uid".to_string(),
        "shift: upstream \"app\" takes the table at seq".to_string(),
        format!("127.0.0.1:{} weight=3", blue.port()),
        format!(
            "shift: upstream \"app\" picked peer 127.0.0.1:{}",
            blue.port()
        ),
    ] {
        assert!(log.contains(&expected), "no {expected:?} in the debug log");
    }
}
