//! The admin API in a zone of many upstreams, against a real Nginx: an upstream is found by name
//! whatever its place, a GET of every upstream (read a page of peers per event-loop turn) and
//! the metrics hold each of them exactly once and agree with a GET of each, a PATCH answers with
//! what it changed, and the API keeps answering while reloads add and drop upstreams under a
//! listing.

use std::collections::BTreeMap;
use std::thread;

use harness::{Admin, Nginx, NginxOptions};
use shift_wire::{PatchApplied, Upstream, UpstreamList};

/// `count` upstreams `u0000`… of 3 standby peers each (more peers than one page holds), the
/// names given in reverse so that the configuration's order is not the API's.
fn upstreams_conf(count: usize, first: usize) -> String {
    let mut http = String::new();
    for index in (first..first + count).rev() {
        http.push_str(&format!(
            "upstream u{index:04} {{ server 127.0.0.1:9 down; server 127.0.0.2:9 down; \
             server 127.0.0.3:9 weight=2; shift; }}\n"
        ));
    }
    http.push_str("server { listen unix:{prefix}/api.sock; location /api/ { shift_api; } }\n");
    http
}

fn decode<T: serde::de::DeserializeOwned>(admin: &Admin, method: &str, path: &str) -> T {
    let answer = admin.request(method, path, None);
    assert_eq!(answer.status, 200, "{method} {path}: {}", answer.body);
    serde_json::from_str(&answer.body).unwrap_or_else(|err| panic!("{path}: {err}"))
}

#[test]
fn every_upstream_is_found_listed_once_and_matches_its_own_answer() {
    let count = 300;
    let nginx = Nginx::start(NginxOptions::new(upstreams_conf(count, 0)));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");

    let body = r#"{"peers": {"127.0.0.2:9": {"weight": 7, "state": "up"}}}"#;
    let answer = admin.request("PATCH", "upstreams/u0150", Some(body));
    assert_eq!(answer.status, 200, "{}", answer.body);
    let applied: PatchApplied = serde_json::from_str(&answer.body).unwrap();
    assert_eq!((applied.name.as_str(), applied.generation), ("u0150", 2));
    let named: Vec<_> = applied
        .peers
        .iter()
        .map(|peer| (peer.server.as_str(), peer.weight))
        .collect();
    assert_eq!(named, [("127.0.0.2:9", 7)], "only the peer it named");

    let list: UpstreamList = decode(&admin, "GET", "upstreams");
    let names: Vec<&str> = list.upstreams.iter().map(|u| u.name.as_str()).collect();
    let expected: Vec<String> = (0..count).map(|index| format!("u{index:04}")).collect();
    assert_eq!(names, expected, "every upstream once, in name order");
    for index in [0, 1, 149, 150, 151, 298, 299] {
        let listed = &list.upstreams[index];
        let own: Upstream = decode(&admin, "GET", &format!("upstreams/{}", listed.name));
        assert_eq!(own.generation, listed.generation, "{}", listed.name);
        let weights = |upstream: &Upstream| -> Vec<(String, u32)> {
            upstream
                .peers
                .iter()
                .map(|peer| (peer.server.clone(), peer.weight))
                .collect()
        };
        assert_eq!(weights(&own), weights(listed), "{}", listed.name);
    }
    assert_eq!(list.upstreams[150].peers[1].weight, 7);
    assert_eq!(list.upstreams[149].peers[1].weight, 1);

    let metrics = admin.request("GET", "metrics", None);
    assert_eq!(metrics.status, 200);
    let generations: BTreeMap<&str, &str> = metrics
        .body
        .lines()
        .filter_map(|line| line.strip_prefix("nginx_shift_upstream_generation{upstream=\""))
        .filter_map(|rest| rest.split_once("\"} "))
        .collect();
    assert_eq!(generations.len(), count, "one generation line per upstream");
    assert_eq!(generations["u0150"], "2");
    assert_eq!(generations["u0000"], "1");

    let missing = admin.request("GET", "upstreams/nope", None);
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("u0000, u0001") && missing.body.contains("and 280 more"),
        "the 404 names the first upstreams and counts the rest: {}",
        missing.body
    );

    let full: Upstream = {
        let answer = admin.request("PATCH", "upstreams/u0299?full=1", Some(body));
        assert_eq!(answer.status, 200, "{}", answer.body);
        serde_json::from_str(&answer.body).unwrap()
    };
    assert_eq!((full.peers.len(), full.generation), (3, 2));
}

#[test]
fn listings_under_reloads_that_add_and_drop_upstreams_never_repeat_one() {
    let mut nginx = Nginx::start(NginxOptions::new(upstreams_conf(200, 0)));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    let socket = nginx.path("api.sock");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lister = {
        let stop = stop.clone();
        thread::spawn(move || {
            let admin = Admin::new(socket, "/api/");
            let mut listings = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || listings < 3 {
                let answer = admin.request("GET", "upstreams", None);
                if answer.status == 503 {
                    continue; // an old worker after a zone resize: the new ones answer
                }
                assert_eq!(answer.status, 200, "{}", answer.body);
                let list: UpstreamList = serde_json::from_str(&answer.body).unwrap();
                let names: Vec<&str> = list.upstreams.iter().map(|u| u.name.as_str()).collect();
                assert!(
                    names.windows(2).all(|pair| pair[0] < pair[1]),
                    "listing {listings}: names out of order or repeated"
                );
                listings += 1;
            }
            listings
        })
    };
    // Each reload drops the lowest 20 names and adds 20 past the highest.
    for round in 1..=5 {
        nginx.reload(Some(&upstreams_conf(200, round * 20)));
        let first = format!("upstreams/u{:04}", round * 20);
        let found: Upstream = decode(&admin, "GET", &first);
        assert_eq!(found.peers.len(), 3);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let listings = lister
        .join()
        .expect("the lister's listings were all in order");
    assert!(listings >= 3, "{listings} listings");
    let list: UpstreamList = decode(&admin, "GET", "upstreams");
    let names: Vec<String> = list.upstreams.into_iter().map(|u| u.name).collect();
    let expected: Vec<String> = (100..300).map(|index| format!("u{index:04}")).collect();
    assert_eq!(names, expected);
}

#[test]
fn clients_gone_mid_listing_give_their_connections_back() {
    // Few API connections per worker, and a listing of many pages: each client below sends a
    // GET of the metrics and leaves at once, while its listing is under way. A connection that
    // was not closed when its answer could not be sent would count against the cap for good.
    let mut http = upstreams_conf(1000, 0);
    http = http.replace("{ shift_api; }", "{ shift_api connections=3; }");
    let nginx = Nginx::start(NginxOptions::new(http).workers(1));
    let socket = nginx.path("api.sock");
    for _ in 0..12 {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        std::io::Write::write_all(
            &mut stream,
            b"GET /api/metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        drop(stream);
        thread::sleep(std::time::Duration::from_millis(50));
    }
    // Every listing ends (about 10 ms each alone, longer beside other tests), and each one's
    // connection with it: the API takes connections again. One that was never given back would
    // hold its place for good, and this would time out.
    let taken = harness::wait_for(std::time::Duration::from_secs(10), || {
        harness::api_request(&socket, "GET", "/api/upstreams/u0001", None)
            .ok()
            .filter(|answer| answer.status == 200)
    });
    assert!(taken.is_some(), "the API takes connections again");
    for _ in 0..5 {
        let answer = harness::api_request(&socket, "GET", "/api/upstreams/u0001", None)
            .expect("the API still takes connections");
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
}
