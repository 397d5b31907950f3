//! An upstream's history against real Nginx (two workers): each kind of change is recorded
//! once, with who made it (the test process's uid and pid for API writes; `reload`, `health`,
//! `eject` for the others), in generation order; `since=` pages; the ring keeps its bound; the
//! history outlives reloads, also one that resizes it or replaces the zone; `shiftctl history`
//! prints it.

use std::time::Duration;

use harness::{
    run_ok, shiftctl_command, wait_for, Admin, Backend, HttpClient, Nginx, NginxOptions,
};
use shift_wire::{HistoryEntry, UpstreamHistory};

/// The `http {}` body: upstream `app` over blue and green (a standby `down` line) with `extra`
/// directives; traffic on `port`.
fn config(blue: &Backend, green: &Backend, port: u16, extra: &str) -> String {
    format!(
        "upstream app {{\n    server {blue} weight=1;\n    server {green} down;\n    shift;\n    \
         {extra}\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://app; }}\n}}\n\
         server {{\n    listen unix:{{prefix}}/api.sock;\n    location /api/ {{ shift_api; }}\n}}\n",
        blue = blue.addr(),
        green = green.addr()
    )
}

fn history(admin: &Admin, since: u64) -> UpstreamHistory {
    let reply = admin.request("GET", &format!("upstreams/app/history?since={since}"), None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).expect("a history")
}

fn of<'a>(entries: &'a [HistoryEntry], actor: &str, field: &str) -> Vec<&'a HistoryEntry> {
    entries
        .iter()
        .filter(|entry| entry.actor == actor && entry.field == field)
        .collect()
}

/// Checked every 200 ms (a connect: a peer that answers 500 stays healthy), ejected after 2
/// failed requests.
const CHECKED: &str = "shift_check type=tcp interval=200ms;\n    \
                       shift_eject consecutive=2 base=30s max_percent=50;";

#[test]
fn each_kind_of_change_is_recorded_once_with_who_made_it() {
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    let port = harness::free_port();
    let mut nginx = Nginx::start(NginxOptions::new(config(&blue, &green, port, CHECKED)));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    let (blue_server, green_server) = (blue.addr().to_string(), green.addr().to_string());
    // Both checks pass first: two health entries, unchecked to healthy.
    let healthy = wait_for(Duration::from_secs(10), || {
        (of(&history(&admin, 0).entries, "health", "health").len() == 2).then_some(())
    });
    assert!(healthy.is_some(), "{:?}", history(&admin, 0));

    // An API change: green up with a label, from this process.
    let body = format!(r#"{{"peers": {{"{green_server}": {{"state": "up", "label": "green"}}}}}}"#);
    assert_eq!(admin.patch("app", &body).status, 200);
    // A peer added and removed at run time.
    let extra = Backend::start("extra");
    let extra_server = extra.addr().to_string();
    assert_eq!(admin.add_peer("app", &extra_server, "").status, 201);
    assert_eq!(admin.remove_peer("app", &extra_server).status, 200);
    // A reload that changes blue's line.
    nginx.reload(Some(
        &config(&blue, &green, port, CHECKED).replace("weight=1", "weight=3"),
    ));
    // Blue fails real requests: ejected.
    blue.set_status(500);
    let mut client = HttpClient::new(port);
    let ejected = wait_for(Duration::from_secs(10), || {
        let _ = client.get("/");
        (!of(&history(&admin, 0).entries, "eject", "ejected").is_empty()).then_some(())
    });
    assert!(ejected.is_some(), "{:?}", history(&admin, 0));

    let entries = history(&admin, 0).entries;
    let uid = nix::unistd::getuid().as_raw();
    let pid = std::process::id();
    let api = |field: &str| of(&entries, "api", field);
    assert_eq!(api("state").len(), 1, "{entries:#?}");
    let state = api("state")[0];
    assert_eq!(
        (state.peer.as_str(), state.old.as_str(), state.new.as_str()),
        (green_server.as_str(), "down", "up")
    );
    assert_eq!(
        (state.uid, state.pid),
        (Some(uid), Some(pid)),
        "the test process made it"
    );
    assert_eq!(api("label")[0].new, "green");
    let members = api("member");
    assert_eq!(members.len(), 2, "{entries:#?}");
    assert_eq!(
        (members[0].old.as_str(), members[0].new.as_str()),
        ("", "weight 1 up")
    );
    assert_eq!(
        (members[1].old.as_str(), members[1].new.as_str()),
        ("weight 1 up", "")
    );
    let reload = of(&entries, "reload", "weight");
    assert_eq!(reload.len(), 1, "{entries:#?}");
    assert_eq!(
        (
            reload[0].peer.as_str(),
            reload[0].old.as_str(),
            reload[0].new.as_str()
        ),
        (blue_server.as_str(), "1", "3")
    );
    assert_eq!((reload[0].uid, reload[0].pid), (None, None));
    let eject = of(&entries, "eject", "ejected");
    assert_eq!(eject.len(), 1, "{entries:#?}");
    assert_eq!(eject[0].peer, blue_server);
    // In generation order, and `since` pages.
    assert!(entries
        .windows(2)
        .all(|pair| pair[0].generation <= pair[1].generation));
    let after = state.generation;
    let later = history(&admin, after).entries;
    assert!(!later.is_empty() && later.iter().all(|entry| entry.generation > after));

    // shiftctl prints it, and as JSON.
    let output = run_ok(shiftctl_command(&[nginx.path("api.sock")], None).args(["history", "app"]));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.starts_with("upstream app (the last 256 changes kept)"),
        "{text}"
    );
    assert!(text.contains(&format!("api uid {uid} pid {pid}")), "{text}");
    assert!(text.contains("reload"), "{text}");
    let output = shiftctl_command(&[nginx.path("api.sock")], None)
        .args(["--json", "history", "app", "--since", &after.to_string()])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(
        json[0]["history"]["entries"].as_array().map(Vec::len),
        Some(later.len())
    );
}

#[test]
fn the_ring_keeps_its_bound_and_outlives_reloads_also_one_that_resizes_it() {
    let (blue, green) = (Backend::start("blue"), Backend::start("green"));
    let port = harness::free_port();
    let small = config(&blue, &green, port, "shift_history 4;");
    let mut nginx = Nginx::start(NginxOptions::new(small.clone()));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    let blue_server = blue.addr().to_string();
    for weight in 2..=7 {
        let body = format!(r#"{{"peers": {{"{blue_server}": {{"weight": {weight}}}}}}}"#);
        assert_eq!(admin.patch("app", &body).status, 200);
    }
    let weights = |admin: &Admin| -> Vec<String> {
        of(&history(admin, 0).entries, "api", "weight")
            .iter()
            .map(|entry| entry.new.clone())
            .collect()
    };
    let kept = history(&admin, 0);
    assert_eq!(kept.capacity, 4);
    assert_eq!(kept.entries.len(), 4, "{kept:?}");
    assert_eq!(weights(&admin), ["4", "5", "6", "7"]);

    nginx.reload(None);
    assert_eq!(
        history(&admin, 0).entries,
        kept.entries,
        "a reload keeps them"
    );

    nginx.reload(Some(&config(&blue, &green, port, "shift_history 8;")));
    let grown = history(&admin, 0);
    assert_eq!(grown.capacity, 8);
    assert_eq!(grown.entries, kept.entries, "a larger ring keeps them all");
    nginx.reload(Some(&config(&blue, &green, port, "shift_history 2;")));
    let shrunk = history(&admin, 0);
    assert_eq!(shrunk.capacity, 2);
    assert_eq!(
        shrunk.entries,
        kept.entries[2..],
        "a smaller one the latest"
    );
    // A reload that makes Nginx replace the zone (another size) brings the history along.
    let replaced = format!(
        "shift_zone 8m;\n{}",
        config(&blue, &green, port, "shift_history 2;")
    );
    let size_before = admin.metric("nginx_shift_zone_size_bytes");
    nginx.reload(Some(&replaced));
    assert_eq!(
        admin.metric("nginx_shift_zone_size_bytes"),
        Some(8.0 * 1024.0 * 1024.0)
    );
    assert_ne!(size_before, Some(8.0 * 1024.0 * 1024.0), "another zone");
    assert_eq!(
        history(&admin, 0).entries,
        shrunk.entries,
        "the new zone has it"
    );
    nginx.reload(Some(&config(&blue, &green, port, "shift_history 0;")));
    let none = history(&admin, 0);
    assert_eq!((none.capacity, none.entries.len()), (0, 0));

    let check = harness::check_config(&NginxOptions::new(config(
        &blue,
        &green,
        port,
        "shift_history 20000;",
    )));
    assert!(!check.ok, "too large a history fails nginx -t");
    assert!(check.output.contains("shift_history"), "{}", check.output);
}

#[test]
fn a_restart_keeps_the_history_its_state_file_saved() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // The workers (not root) write the state file.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let state = dir.path().join("app.json");
    let shift_args = format!("state={}", state.display());
    let mut setup = harness::ShiftSetup::start(&[("blue", ""), ("green", "")], &shift_args, "");
    let blue = setup.addr(0);
    let body = format!(r#"{{"peers": {{"{blue}": {{"weight": 9}}}}}}"#);
    assert_eq!(setup.admin.patch("app", &body).status, 200);
    let before = history(&setup.admin, 0).entries;
    assert_eq!(of(&before, "api", "weight").len(), 1, "{before:?}");

    setup.nginx.restart();
    let after = history(&setup.admin, 0).entries;
    assert_eq!(after, before, "the state file brought them back");
    assert_eq!(setup.admin.peer("app", &blue).unwrap().weight, 9);
}
