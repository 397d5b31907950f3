//! Zero downtime: failed requests while traffic moves under load.

use super::*;

pub(crate) fn zero_downtime(settings: &Settings) {
    let seconds = settings.load_seconds;
    let switch_at = Duration::from_secs_f64(seconds as f64 / 3.0);
    let mut rows = Vec::new();

    {
        let pair = Pair::new();
        let (nginx, port) = shift_nginx(&pair);
        let socket = nginx.path("api.sock");
        let start_body = format!(
            r#"{{"peers": {{"{}": {{"weight": 0}}}}}}"#,
            pair.green.addr()
        );
        assert_eq!(
            api_request(&socket, "PATCH", "/api/upstreams/app", Some(&start_body))
                .unwrap()
                .status,
            200
        );
        let load = wrk(port, seconds);
        thread::sleep(switch_at);
        let body = format!(
            r#"{{"peers": {{"{}": {{"weight": 0}}, "{}": {{"weight": 1}}}}}}"#,
            pair.blue.addr(),
            pair.green.addr()
        );
        assert_eq!(
            api_request(&socket, "PATCH", "/api/upstreams/app", Some(&body))
                .unwrap()
                .status,
            200
        );
        let result = wrk_result(load);
        assert!(pair.green.hits() > 0, "the switch moved traffic");
        rows.push(("shift: PATCH blue → green", result));
    }
    {
        let pair = Pair::new();
        let port = free_port();
        let mut nginx = Nginx::start(NginxOptions::new(plain_upstream(
            &pair.blue.addr().to_string(),
            port,
        )));
        let load = wrk(port, seconds);
        thread::sleep(switch_at);
        let old = nginx.begin_reload(Some(&plain_upstream(&pair.green.addr().to_string(), port)));
        let result = wrk_result(load);
        nginx.finish_reload(&old);
        assert!(pair.green.hits() > 0, "the reload moved traffic");
        rows.push(("stock Nginx: edit upstream + reload", result));
    }
    {
        let port = free_port();
        let backend_port = free_port();
        let blue = Backend::start_on("blue", backend_port);
        let _nginx = Nginx::start(NginxOptions::new(plain_upstream(
            &format!("127.0.0.1:{backend_port}"),
            port,
        )));
        let load = wrk(port, seconds);
        thread::sleep(switch_at);
        drop(blue); // stop the old version
        thread::sleep(settings.restart_gap); // the new one starts
        let green = Backend::start_on("green", backend_port);
        let result = wrk_result(load);
        assert!(green.hits() > 0);
        rows.push((
            "the seed's old way: stop old backend, start new on the same port",
            result,
        ));
    }

    println!("## Zero downtime under load\n");
    println!("wrk -c32 for {seconds} s; the switch happens after {:.1} s. Failed = non-2xx answers plus socket errors. The old way's new backend starts {:?} after the old one stops.\n", switch_at.as_secs_f64(), settings.restart_gap);
    println!("| how | requests | failed |");
    println!("| --- | ---: | ---: |");
    for (how, result) in rows {
        println!("| {how} | {} | {} |", result.requests, result.failed());
    }
    println!();
    if !settings.full {
        println!("smoke run done: every scenario ran");
    }
}
