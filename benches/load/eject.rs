//! Passive ejection under load: a peer that answers 500 to every real request but 200 to its
//! check path, beside a healthy one, under `wrk -t2 -c32` on 2 workers; how many requests fail
//! with `shift_eject consecutive=5` and without it.

use super::*;
use harness::Admin;

pub(crate) fn failing_peer(settings: &Settings) {
    let seconds = if settings.full { 10 } else { 1 };
    let consecutive = 5;
    println!("## A peer that fails real requests while its check passes\n");
    println!(
        "Two peers (Nginx `return 200`, and Nginx answering 500 on `/` and 200 on `/health`), \
         `shift_check uri=/health interval=1s`, `wrk -t2 -c32` for {seconds} s, 2 workers; \
         failed requests are the 500 answers wrk saw. The bound with ejection is \
         `consecutive` + the requests in flight on the peer when it is ejected (at most 32).\n"
    );
    println!("| upstream | requests | failed | failed per second | requests/s |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let ejecting = format!("shift_eject consecutive={consecutive} base=5m max=5m max_percent=50;");
    // The failing peer `down` from the start: the throughput of the healthy peer alone.
    for (label, down, eject) in [
        ("without `shift_eject`".to_string(), "", ""),
        (
            format!("`shift_eject consecutive={consecutive}`"),
            "",
            ejecting.as_str(),
        ),
        (
            "the failing peer `down` (reference)".to_string(),
            " down",
            "",
        ),
    ] {
        let (port, good, bad) = (free_port(), free_port(), free_port());
        let nginx = Nginx::start(NginxOptions::new(format!(
            "upstream app {{ server 127.0.0.1:{good}; server 127.0.0.1:{bad}{down}; shift; \
             shift_check uri=/health interval=1s; {eject} }}\n\
             server {{ listen 127.0.0.1:{port}; access_log off; \
             location / {{ proxy_pass http://app; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; }} }}\n\
             server {{ listen 127.0.0.1:{good}; access_log off; return 200 ok; }}\n\
             server {{ listen 127.0.0.1:{bad}; access_log off; \
             location = /health {{ return 200 ok; }} location / {{ return 500 bad; }} }}\n\
             server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}"
        )));
        let admin = Admin::new(nginx.path("api.sock"), "/api/");
        let bad_server = format!("127.0.0.1:{bad}");
        assert!(
            wait_until(Duration::from_secs(5), || {
                admin
                    .peer("app", &bad_server)
                    .is_some_and(|peer| peer.health == shift_wire::Health::Healthy)
            })
            .is_some(),
            "the failing peer's check passes"
        );
        let result = wrk_result(wrk(port, seconds));
        println!(
            "| {label} | {} | {} | {:.1} | {:.0} |",
            result.requests,
            result.non_2xx,
            result.non_2xx as f64 / seconds as f64,
            result.requests_per_second
        );
        if !eject.is_empty() {
            let peer = admin.peer("app", &bad_server).unwrap();
            assert_eq!(peer.ejection.ejections, 1, "{peer:?}");
            assert!(
                result.non_2xx <= consecutive + 32,
                "{} failed: more than consecutive + wrk's connections",
                result.non_2xx
            );
        }
    }
    println!();
}
