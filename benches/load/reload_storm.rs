//! A reload storm: PATCHes sent while Nginx reloads again and again under load, each read back
//! at once; every acknowledged change must be the one that stays.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;

pub(crate) fn reload_storm(settings: &Settings) {
    let pair = Pair::new();
    let (mut nginx, port) = shift_nginx(&pair);
    let socket = nginx.path("api.sock");
    let load = wrk(port, settings.storm_seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, blue) = (stop.clone(), pair.blue.addr().to_string());
        thread::spawn(move || {
            let (mut acknowledged, mut lost, mut weight) = (0u64, 0u64, 0u32);
            while !stop.load(Ordering::Relaxed) {
                weight = weight % 1000 + 1;
                let body = format!(r#"{{"peers": {{"{blue}": {{"weight": {weight}}}}}}}"#);
                let Ok(response) = api_request(&socket, "PATCH", "/api/upstreams/app", Some(&body))
                else {
                    continue;
                };
                if response.status != 200 {
                    continue;
                }
                acknowledged += 1;
                let read = api_request(&socket, "GET", "/api/upstreams/app", None)
                    .ok()
                    .and_then(|response| {
                        serde_json::from_str::<shift_wire::Upstream>(&response.body).ok()
                    });
                let seen = read.and_then(|upstream| {
                    upstream
                        .peers
                        .iter()
                        .find(|p| p.server == blue)
                        .map(|p| p.weight)
                });
                lost += u64::from(seen != Some(weight));
            }
            (acknowledged, lost)
        })
    };
    let started = Instant::now();
    for _ in 0..settings.storm_reloads {
        nginx.reload(None);
    }
    let storm = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, lost) = writer.join().expect("the writer finishes");
    let traffic = wrk_result(load);
    println!("## Reload storm\n");
    println!(
        "PATCHes sent back to back, each read back at once, while Nginx reloads {} times in {:.1} s under `wrk -c32`.\n",
        settings.storm_reloads,
        storm.as_secs_f64()
    );
    println!("| PATCHes acknowledged | applied (read back, and kept) | lost | requests under load | failed requests |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {acknowledged} | {} | {lost} | {} | {} |\n",
        acknowledged - lost,
        traffic.requests,
        traffic.failed()
    );
    assert_eq!(lost, 0, "acknowledged PATCHes were lost in the storm");
}
