//! The status page in a real browser (Debian's Chromium, headless): served by `shift_api` at its
//! prefix, through a local `proxy_pass` to the API's Unix socket and on a `readers=any` TCP
//! location, it draws each peer with traffic running, its share bar follows a PATCH within
//! 3 s, and it logs no error and asks nothing of any other origin, nor anything but GETs.

use std::time::{Duration, Instant};

use harness::{free_port, Admin, Backend, Browser, HttpClient, Nginx, NginxOptions, Traffic};
use serde_json::Value;

/// Blue and green behind upstream `app` (both up), traffic on `port`, and the API: on its Unix
/// socket (read by the workers that proxy `/status/` to it), and read-only for anyone on the
/// TCP port `status` under `/api/`, beside a TCP location with the defaults (which no TCP
/// caller may read).
struct Site {
    nginx: Nginx,
    admin: Admin,
    port: u16,
    status: u16,
    blue: Backend,
    green: Backend,
}

impl Site {
    fn start() -> Site {
        let (blue, green) = (Backend::start("blue"), Backend::start("green"));
        let (port, status) = (free_port(), free_port());
        let nginx = Nginx::start(NginxOptions::new(format!(
            "upstream app {{\n    server {blue};\n    server {green};\n    shift;\n}}\n\
             server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://app; }}\n}}\n\
             server {{\n    listen unix:{{prefix}}/api.sock;\n    \
             location /api/ {{ shift_api readers=any; }}\n}}\n\
             server {{\n    listen 127.0.0.1:{status};\n    \
             location /status/ {{ proxy_pass http://unix:{{prefix}}/api.sock:/api/; }}\n    \
             location /api/ {{ shift_api readers=any; }}\n    \
             location /closed/ {{ shift_api; }}\n}}\n",
            blue = blue.addr(),
            green = green.addr()
        )));
        let admin = Admin::new(nginx.path("api.sock"), "/api/");
        Site {
            nginx,
            admin,
            port,
            status,
            blue,
            green,
        }
    }
}

/// Each row the page drew: server, the weight shown, the share bar's width.
const ROWS: &str = r#"JSON.stringify([...document.querySelectorAll("tr[data-server]")].map(row => [
    row.dataset.server,
    row.querySelector("td.weight").textContent,
    row.querySelector(".fill").style.width]))"#;

fn rows(browser: &mut Browser) -> Vec<(String, String, f64)> {
    let text = browser.eval(ROWS);
    let rows: Vec<(String, String, String)> =
        serde_json::from_str(text.as_str().unwrap_or("[]")).expect("rows");
    rows.into_iter()
        .map(|(server, weight, width)| {
            let width = width.trim_end_matches('%').parse().unwrap_or(-1.0);
            (server, weight, width)
        })
        .collect()
}

fn width_of(rows: &[(String, String, f64)], server: &str) -> f64 {
    rows.iter()
        .find(|(row, _, _)| row == server)
        .map_or(-1.0, |(_, _, width)| *width)
}

#[test]
fn the_page_draws_the_peers_and_follows_a_patch_in_a_real_browser() {
    let site = Site::start();
    let (blue, green) = (site.blue.addr().to_string(), site.green.addr().to_string());
    let traffic = Traffic::start(site.port, 2);
    let origin = format!("http://127.0.0.1:{}", site.status);
    let mut browser = Browser::open(&format!("{origin}/status/"));

    // Both peers, their weights, and bars near half each (round robin with 1 and 1).
    let (_, drawn) = browser.wait_for(
        "document.querySelectorAll('tr[data-server]').length",
        Duration::from_secs(10),
        |count| count == 2,
    );
    assert!(drawn, "two peer rows: {:?}", browser.errors);
    let (_, even) = browser.wait_for(ROWS, Duration::from_secs(10), |_| true);
    assert!(even);
    let before = rows(&mut browser);
    assert_eq!(before.len(), 2, "{before:?}");
    assert!(
        before.iter().all(|(_, weight, _)| weight == "1"),
        "{before:?}"
    );

    // Everything to green: its bar fills within 3 s.
    site.admin.set_weights("app", &[(&blue, 0), (&green, 5)]);
    let patched = Instant::now();
    let mut followed = None;
    while patched.elapsed() < Duration::from_secs(3) {
        let now = rows(&mut browser);
        if width_of(&now, &green) >= 90.0 && width_of(&now, &blue) <= 10.0 {
            followed = Some((patched.elapsed(), now));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (took, after) = followed.unwrap_or_else(|| panic!("no follow: {:?}", rows(&mut browser)));
    assert!(after
        .iter()
        .any(|(server, weight, _)| server == &green && weight == "5"));
    eprintln!("the bars followed the PATCH in {took:?}");

    // The change is in the upstream's history under it, with who made it.
    let (history, listed) = browser.wait_for(
        "document.querySelector('[data-history=app]').textContent",
        Duration::from_secs(5),
        |text| {
            text.as_str()
                .is_some_and(|text| text.contains("weight 1 → 5"))
        },
    );
    assert!(listed, "{history}");
    assert!(
        history.as_str().unwrap_or("").contains(" · api uid "),
        "{history}"
    );

    let screenshot = browser.screenshot();
    assert!(screenshot.starts_with(b"\x89PNG"), "a PNG");
    let artifact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&artifact, &screenshot).expect("keep the screenshot");
    eprintln!("screenshot: {}", artifact.display());

    let generation = browser.eval("document.querySelector('[data-generation]').dataset.generation");
    assert_eq!(
        generation,
        Value::from(site.admin.upstream("app").generation.to_string())
    );
    assert!(browser.errors.is_empty(), "{:?}", browser.errors);
    assert!(browser.requests.len() > 2, "{:?}", browser.requests);
    for request in &browser.requests {
        assert!(
            request.starts_with(&format!("GET {origin}/status/")),
            "only GETs of its own origin: {request}"
        );
    }
    assert!(
        browser
            .requests
            .iter()
            .any(|request| request.ends_with("/upstreams/app/history")),
        "{:?}",
        browser.requests
    );
    traffic.stop();
    drop(site.nginx);
}

#[test]
fn the_page_is_served_on_a_readers_any_tcp_location_and_refused_where_tcp_may_not_read() {
    let site = Site::start();
    let mut browser = Browser::open(&format!("http://127.0.0.1:{}/api/", site.status));
    let (_, drawn) = browser.wait_for(
        "document.querySelectorAll('tr[data-server]').length",
        Duration::from_secs(10),
        |count| count == 2,
    );
    assert!(drawn, "{:?}", browser.errors);
    assert!(browser.errors.is_empty(), "{:?}", browser.errors);

    let mut client = HttpClient::new(site.status);
    let page = client.get("/api/index.html").unwrap();
    assert_eq!(page.status, 200);
    assert!(page
        .header("Content-Security-Policy")
        .is_some_and(|policy| policy.contains("connect-src 'self'")));
    assert!(page.body.len() < 64 * 1024);
    // TCP callers have no uid: with the default readers, the page is as closed as the API.
    assert_eq!(client.get("/closed/").unwrap().status, 403);
    // The page is only read; a change sent to it is refused before its body is looked at.
    let post = harness::api_request(&site.nginx.path("api.sock"), "POST", "/api/", Some("{}"))
        .expect("a POST to the page");
    assert_eq!(
        (post.status, post.header("Allow")),
        (405, Some("GET, HEAD"))
    );
}
