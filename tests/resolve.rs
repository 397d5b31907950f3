//! Names resolved at run time (`shift_resolve NAME:PORT`, and `server NAME:PORT resolve` on
//! Nginx 1.27.3+) against a real Nginx and a real DNS server (dnsmasq): replicas on 127.0.0.2–4
//! share a port, as Compose replicas on their own IPs; the peer set follows the answers.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::thread;
use std::time::Duration;

use harness::{
    check_config, free_port, nginx_version, wait_until, Admin, Backend, Dnsmasq, HttpClient, Nginx,
    NginxOptions, Traffic,
};
use shift_wire::{PeerOrigin, PeerState};

fn replica(n: u8, port: u16) -> Backend {
    Backend::start_at(
        &format!("r{n}"),
        format!("127.0.0.{n}:{port}").parse().unwrap(),
    )
}

fn config(dns: u16, upstream: &str, port: u16) -> String {
    format!(
        "resolver 127.0.0.1:{dns} valid=1s ipv6=off;\nresolver_timeout 1s;\n\
         upstream app {{ {upstream} }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}\n"
    )
}

/// Nginx with upstream `app` as `upstream`, resolving through `dns`; its admin API, and its
/// traffic port.
fn start_nginx(dns: &Dnsmasq, upstream: &str) -> (Nginx, Admin, u16) {
    let http = free_port();
    let nginx = Nginx::start(NginxOptions::new(config(dns.port(), upstream, http)));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    (nginx, admin, http)
}

/// Waits until the resolved peers taking traffic are 127.0.0.N:`port` for `ns`.
fn await_resolved(admin: &Admin, port: u16, ns: &[u8]) {
    let found = wait_until(Duration::from_secs(10), || {
        resolved(admin) == addresses(port, ns)
    });
    assert!(
        found.is_some(),
        "resolved to {ns:?}: {:?}",
        admin.upstream("app")
    );
}

/// The resolved peers of `app` that take traffic.
fn resolved(admin: &Admin) -> BTreeSet<String> {
    admin
        .upstream("app")
        .peers
        .iter()
        .filter(|peer| peer.origin == PeerOrigin::Resolved && peer.eligible)
        .map(|peer| peer.server.clone())
        .collect()
}

fn addresses(port: u16, ns: &[u8]) -> BTreeSet<String> {
    ns.iter().map(|n| format!("127.0.0.{n}:{port}")).collect()
}

#[test]
fn a_name_gains_and_loses_addresses_under_load_without_a_failed_request() {
    let port = free_port();
    let replicas: Vec<Backend> = (2..=4).map(|n| replica(n, port)).collect();
    let dns = Dnsmasq::start(&[("127.0.0.2", "backend")]);
    let (_nginx, admin, http) = start_nginx(&dns, &format!("shift_resolve backend:{port}; shift;"));
    await_resolved(&admin, port, &[2]);

    // wrk's keep-alive connections and new connections from two threads (which also tell who
    // answered), for as long as the answers change.
    let load = harness::wrk(http, 10);
    let traffic = Traffic::start(http, 2);
    for set in [&[2, 3, 4][..], &[3, 4], &[4], &[2, 3]] {
        let records: Vec<(String, &str)> = set
            .iter()
            .map(|n| (format!("127.0.0.{n}"), "backend"))
            .collect();
        let records: Vec<(&str, &str)> = records.iter().map(|(a, n)| (a.as_str(), *n)).collect();
        dns.set(&records);
        let followed = wait_until(Duration::from_secs(10), || {
            resolved(&admin) == addresses(port, set)
        });
        assert!(
            followed.is_some(),
            "peers follow {set:?}: {:?}",
            resolved(&admin)
        );
        thread::sleep(Duration::from_millis(300));
    }
    let report = traffic.stop();
    assert!(
        report.failed.is_empty(),
        "failed requests: {:?}",
        report.failed
    );
    let wrk = harness::wrk_result(load);
    assert!(wrk.requests > 0, "wrk ran: {wrk:?}");
    assert_eq!(wrk.failed(), 0, "wrk saw failures: {wrk:?}");
    let answers = report.answers;
    for name in ["r2", "r3", "r4"] {
        assert!(
            answers.contains_key(name),
            "{name} never answered: {answers:?}"
        );
    }
    // The history says the resolver made each of those changes: .2 joined (at the first
    // answer), left and joined again; .3 joined, left and joined again; .4 joined and left.
    let reply = admin.request("GET", "upstreams/app/history", None);
    let history: shift_wire::UpstreamHistory = serde_json::from_str(&reply.body).unwrap();
    let members = |address: &str, joined: bool| {
        history
            .entries
            .iter()
            .filter(|entry| entry.actor == "resolver" && entry.field == "member")
            .filter(|entry| entry.peer == format!("{address}:{port}"))
            .filter(|entry| entry.new.is_empty() != joined)
            .count()
    };
    for (address, joined, left) in [
        ("127.0.0.2", 2, 1),
        ("127.0.0.3", 2, 1),
        ("127.0.0.4", 1, 1),
    ] {
        assert_eq!(
            [members(address, true), members(address, false)],
            [joined, left],
            "{address}: {:#?}",
            history.entries
        );
    }
    drop(replicas);
}

#[test]
fn a_name_that_does_not_resolve_yet_does_not_stop_nginx() {
    let port = free_port();
    let _replica = replica(2, port);
    let dns = Dnsmasq::start(&[]);
    let http = free_port();
    // Without `resolver_timeout`: Nginx's default (30 s) applies.
    let nginx = Nginx::start(NginxOptions::new(
        config(
            dns.port(),
            &format!("shift_resolve backend:{port}; shift;"),
            http,
        )
        .replace("resolver_timeout 1s;\n", ""),
    ));
    let admin = Admin::new(nginx.path("api.sock"), "/api/");
    assert!(
        admin.upstream("app").peers.is_empty(),
        "no peer before the name resolves"
    );
    assert_eq!(HttpClient::new(http).get("/").unwrap().status, 502);
    dns.set(&[("127.0.0.2", "backend")]);
    let serving = wait_until(Duration::from_secs(10), || {
        HttpClient::new(http)
            .get("/")
            .is_ok_and(|response| response.status == 200)
    });
    assert!(serving.is_some(), "traffic once the name resolves");
}

#[test]
fn a_resolver_that_stops_answering_keeps_the_last_good_set() {
    let port = free_port();
    let _replicas: Vec<Backend> = (2..=3).map(|n| replica(n, port)).collect();
    let mut dns = Dnsmasq::start(&[("127.0.0.2", "backend"), ("127.0.0.3", "backend")]);
    let (nginx, admin, http) = start_nginx(
        &dns,
        &format!("shift_resolve backend:{port} weight=2; shift;"),
    );
    await_resolved(&admin, port, &[2, 3]);
    dns.stop();
    let logged = wait_until(Duration::from_secs(15), || {
        nginx.error_log().contains("could not be resolved")
    });
    assert!(logged.is_some(), "the failed lookup is logged");
    assert_eq!(
        resolved(&admin),
        addresses(port, &[2, 3]),
        "the last good set stays"
    );
    for _ in 0..10 {
        assert_eq!(HttpClient::new(http).get("/").unwrap().status, 200);
    }
    let weights: BTreeSet<u32> = admin
        .upstream("app")
        .peers
        .iter()
        .map(|peer| peer.weight)
        .collect();
    assert_eq!(weights, BTreeSet::from([2]), "the name's weight");
}

#[test]
fn server_lines_with_resolve_work_where_nginx_has_them() {
    if nginx_version() < (1, 27, 3) {
        eprintln!("skipped: `server ... resolve` needs Nginx 1.27.3 (shift_resolve is tested)");
        return;
    }
    let port = free_port();
    let _replica = replica(3, port);
    let dns = Dnsmasq::start(&[("127.0.0.3", "backend")]);
    let (_nginx, admin, http) = start_nginx(
        &dns,
        &format!("server backend:{port} resolve weight=4; shift;"),
    );
    await_resolved(&admin, port, &[3]);
    assert_eq!(admin.upstream("app").peers[0].weight, 4);
    assert_eq!(HttpClient::new(http).get("/").unwrap().body, "r3");
}

#[test]
fn names_without_a_resolver_fail_nginx_t() {
    let check = check_config(&NginxOptions::new(
        "upstream app { shift_resolve backend:80; shift; }\n\
         server { listen 127.0.0.1:1; location / { proxy_pass http://app; } }\n",
    ));
    assert!(!check.ok, "{}", check.output);
    assert!(
        check
            .output
            .contains("no resolver defined to resolve \"backend:80\""),
        "{}",
        check.output
    );
    let check = check_config(&NginxOptions::new(
        "upstream app { shift_resolve 10.0.0.7:80; shift; }\n",
    ));
    assert!(!check.ok);
    assert!(
        check
            .output
            .contains("invalid parameter \"10.0.0.7:80\" in \"shift_resolve\""),
        "{}",
        check.output
    );
}

#[test]
fn a_replica_replaced_in_dns_finishes_its_requests_in_flight() {
    let port = free_port();
    let _replicas: Vec<Backend> = (2..=3).map(|n| replica(n, port)).collect();
    let dns = Dnsmasq::start(&[("127.0.0.2", "backend")]);
    let (_nginx, admin, http) = start_nginx(&dns, &format!("shift_resolve backend:{port}; shift;"));
    await_resolved(&admin, port, &[2]);
    let slow = thread::spawn(move || HttpClient::new(http).get("/slow/2000"));
    let in_flight = wait_until(Duration::from_secs(5), || {
        admin
            .upstream("app")
            .peers
            .iter()
            .any(|peer| peer.active == 1)
    });
    assert!(in_flight.is_some(), "the slow request reached r2");
    // The container is recreated with a new IP: the name now answers 127.0.0.3 only.
    dns.set(&[("127.0.0.3", "backend")]);
    await_resolved(&admin, port, &[3]);
    for _ in 0..10 {
        assert_eq!(
            HttpClient::new(http).get("/").unwrap().body,
            "r3",
            "new requests go to r3"
        );
    }
    let answer = slow.join().unwrap().expect("the slow request");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "r2"),
        "it finished where it started"
    );
}

/// Docker gives a new container the address of one it just removed: the name drops an
/// address and gives it again, while a request the first instance took is still running (so
/// its slot is kept, not freed). The address back is a new instance, with none of the first
/// one's counters, and the old request still finishes.
#[test]
fn an_address_a_name_drops_and_gives_again_is_a_new_instance() {
    let port = free_port();
    let _replicas: Vec<Backend> = (2..=3).map(|n| replica(n, port)).collect();
    let dns = Dnsmasq::start(&[("127.0.0.2", "backend")]);
    let (_nginx, admin, http) = start_nginx(&dns, &format!("shift_resolve backend:{port}; shift;"));
    await_resolved(&admin, port, &[2]);
    let server = format!("127.0.0.2:{port}");
    for _ in 0..5 {
        assert_eq!(HttpClient::new(http).get("/").unwrap().body, "r2");
    }
    // Long enough to outlast two lookups (2 s apart) under a loaded machine: it must still be
    // in flight when the address comes back.
    let slow = thread::spawn(move || HttpClient::new(http).get("/slow/8000"));
    let in_flight = wait_until(Duration::from_secs(5), || {
        admin
            .peer("app", &server)
            .is_some_and(|peer| peer.active == 1)
    });
    assert!(in_flight.is_some(), "the slow request reached r2");
    let first = admin.peer("app", &server).unwrap();
    assert_eq!(first.requests, 6);
    assert!(first.joined_ms > 0, "{first:?}");

    dns.set(&[("127.0.0.3", "backend")]);
    await_resolved(&admin, port, &[3]);
    assert!(admin.peer("app", &server).is_none(), "r2 left the upstream");
    dns.set(&[("127.0.0.2", "backend"), ("127.0.0.3", "backend")]);
    await_resolved(&admin, port, &[2, 3]);
    let second = admin.peer("app", &server).unwrap();
    assert!(
        second.joined_ms > first.joined_ms,
        "a new instance: {first:?} then {second:?}"
    );
    assert_eq!((second.requests, second.failures), (0, 0), "{second:?}");
    assert_eq!(second.responses.success, 0, "{second:?}");
    assert_eq!(second.response_time.sum_ms, 0, "{second:?}");

    let answer = slow.join().unwrap().expect("the slow request");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "r2"),
        "the first instance's request finished"
    );
}

#[test]
fn the_peers_of_a_labelled_name_carry_its_label_and_a_pin_reaches_them() {
    let port = free_port();
    let _replicas = [replica(2, port), replica(3, port), replica(4, port)];
    let dns = Dnsmasq::start(&[
        ("127.0.0.2", "blue"),
        ("127.0.0.3", "green"),
        ("127.0.0.4", "green"),
    ]);
    let (_nginx, admin, http) = start_nginx(
        &dns,
        &format!(
            "shift_resolve blue:{port}; shift_resolve green:{port} down; shift; \
             shift_label green:{port} green; shift_pin $http_x_shift_to;"
        ),
    );
    let both = wait_until(Duration::from_secs(10), || {
        admin.upstream("app").peers.len() == 3
    });
    assert!(both.is_some(), "{:?}", admin.upstream("app"));
    let labels: BTreeSet<(String, Option<String>)> = admin
        .upstream("app")
        .peers
        .into_iter()
        .map(|peer| (peer.server, peer.label))
        .collect();
    assert_eq!(
        labels,
        BTreeSet::from([
            (format!("127.0.0.2:{port}"), None),
            (format!("127.0.0.3:{port}"), Some("green".to_string())),
            (format!("127.0.0.4:{port}"), Some("green".to_string())),
        ])
    );
    let served = |headers: &[(&str, &str)]| -> BTreeSet<String> {
        (0..30)
            .map(|_| HttpClient::new(http).get_with("/", headers).unwrap().body)
            .collect()
    };
    assert_eq!(served(&[]), BTreeSet::from(["r2".to_string()]));
    assert_eq!(
        served(&[("X-Shift-To", "green")]),
        BTreeSet::from(["r3".to_string(), "r4".to_string()])
    );
}

/// Who answers 20 requests on `http`.
fn served(http: u16) -> BTreeSet<String> {
    (0..20)
        .map(|_| HttpClient::new(http).get("/").unwrap().body)
        .collect()
}

/// A PATCH of `app` that sets each peer's weight and state.
fn set(admin: &Admin, peers: &[(&str, u32, &str)]) {
    let peers: Vec<String> = peers
        .iter()
        .map(|(server, weight, state)| {
            format!(r#""{server}": {{"weight": {weight}, "state": "{state}"}}"#)
        })
        .collect();
    let body = format!(r#"{{"peers": {{{}}}}}"#, peers.join(", "));
    let answer = admin.patch("app", &body);
    assert_eq!(answer.status, 200, "{}", answer.body);
}

/// The weight, state and config weight of `app`'s peer `server`, once it is there.
fn settings_of(admin: &Admin, server: &str) -> (u32, PeerState, u32) {
    let there = wait_until(Duration::from_secs(10), || {
        admin.peer("app", server).is_some()
    });
    assert!(
        there.is_some(),
        "{server} appears: {:?}",
        admin.upstream("app")
    );
    let peer = admin.peer("app", server).unwrap();
    (peer.weight, peer.state, peer.config_weight)
}

/// Blue-green over two names, as Compose services on a network (the seed's Option 2): after a
/// switch, each side's container is recreated with a new address. The new container takes its
/// side's place: the standby side stays standby though its line is up, the live side stays
/// live though its line is `down`. A side's line decides only for a name with no peers.
#[test]
fn a_recreated_container_takes_its_sides_place_not_its_line() {
    let port = free_port();
    let _replicas: Vec<Backend> = (2..=5).map(|n| replica(n, port)).collect();
    let dns = Dnsmasq::start(&[("127.0.0.2", "blue"), ("127.0.0.3", "green")]);
    let (nginx, admin, http) = start_nginx(
        &dns,
        &format!("shift_resolve blue:{port}; shift_resolve green:{port} down; shift;"),
    );
    let [blue, green, new_blue, new_green] = [2, 3, 4, 5].map(|n| format!("127.0.0.{n}:{port}"));
    assert_eq!(settings_of(&admin, &blue), (1, PeerState::Up, 1));
    assert_eq!(settings_of(&admin, &green), (1, PeerState::Down, 1));

    // The switch: green live, blue standby.
    set(&admin, &[(&blue, 0, "drain"), (&green, 5, "up")]);
    assert_eq!(served(http), BTreeSet::from(["r3".to_string()]));

    // Both recreated, each with a new address.
    dns.set(&[("127.0.0.4", "blue"), ("127.0.0.5", "green")]);
    await_resolved(&admin, port, &[5]);
    assert_eq!(settings_of(&admin, &new_blue), (0, PeerState::Drain, 1));
    assert_eq!(settings_of(&admin, &new_green), (5, PeerState::Up, 1));
    for gone in [&blue, &green] {
        assert!(admin.peer("app", gone).is_none(), "{gone} left");
    }
    assert_eq!(
        served(http),
        BTreeSet::from(["r5".to_string()]),
        "traffic stays on green, none on the standby blue"
    );
    assert!(
        nginx.error_log().contains(&format!(
            "added {new_blue} (weight=0 state=drain, as the name's peers)"
        )),
        "{}",
        nginx.error_log()
    );
}

/// Names `blue` and `green` (its line `down`), on 127.0.0.2 and .3, with the upstream's `shift`
/// as `shift`; green made live and blue standby by a PATCH, as a switch leaves them.
struct SwitchedSides {
    nginx: Nginx,
    admin: Admin,
    http: u16,
    dns: Dnsmasq,
    upstream: String,
    blue: String,
    green: String,
    _replicas: Vec<Backend>,
}

impl SwitchedSides {
    fn start(shift: &str) -> SwitchedSides {
        let port = free_port();
        let replicas: Vec<Backend> = (2..=3).map(|n| replica(n, port)).collect();
        let dns = Dnsmasq::start(&[("127.0.0.2", "blue"), ("127.0.0.3", "green")]);
        let upstream =
            format!("shift_resolve blue:{port}; shift_resolve green:{port} down; {shift}");
        let (nginx, admin, http) = start_nginx(&dns, &upstream);
        let [blue, green] = [2, 3].map(|n| format!("127.0.0.{n}:{port}"));
        settings_of(&admin, &green);
        set(&admin, &[(&blue, 0, "drain"), (&green, 5, "up")]);
        SwitchedSides {
            nginx,
            admin,
            http,
            dns,
            upstream,
            blue,
            green,
            _replicas: replicas,
        }
    }

    /// Green live (answering as `green_answers`) and blue standby, as the switch left them.
    fn assert_still_switched(&self, green_answers: &str) {
        assert_eq!(settings_of(&self.admin, &self.green), (5, PeerState::Up, 1));
        assert_eq!(
            settings_of(&self.admin, &self.blue),
            (0, PeerState::Drain, 1)
        );
        assert_eq!(
            served(self.http),
            BTreeSet::from([green_answers.to_string()])
        );
    }
}

/// After a restart the state file gives each name the place its peers had, by name: a live
/// side whose line is `down` is live again, and the standby one standby, at whatever address
/// its container has now. The resolver saves the file when an answer changes the peers.
#[test]
fn a_restart_finds_a_resolved_side_as_the_state_file_saved_it() {
    // The workers write the state file; when the tests run as root they run as nobody.
    let state_dir = tempfile::tempdir().unwrap();
    fs::set_permissions(state_dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let state_file = state_dir.path().join("app.json");
    let mut sides = SwitchedSides::start(&format!("shift state={};", state_file.display()));
    let port: u16 = sides.green.rsplit(':').next().unwrap().parse().unwrap();
    let _more: Vec<Backend> = (4..=5).map(|n| replica(n, port)).collect();

    // The live green recreated at .4: the resolver saves it, with its place.
    sides
        .dns
        .set(&[("127.0.0.2", "blue"), ("127.0.0.4", "green")]);
    let moved = format!("127.0.0.4:{port}");
    assert_eq!(settings_of(&sides.admin, &moved), (5, PeerState::Up, 1));
    let saved = wait_until(Duration::from_secs(10), || {
        fs::read_to_string(&state_file).is_ok_and(|text| text.contains(&moved))
    });
    assert!(
        saved.is_some(),
        "{}",
        fs::read_to_string(&state_file).unwrap_or_default()
    );

    // A restart, and green at yet another address (a host rebooted).
    sides
        .dns
        .set(&[("127.0.0.2", "blue"), ("127.0.0.5", "green")]);
    sides.nginx.restart();
    sides.green = format!("127.0.0.5:{port}");
    sides.assert_still_switched("r5");
}

/// A reload that outgrows the zone moves every upstream to a new, larger one, where names are
/// looked up afresh: their addresses take the settings they had in the zone it replaced.
#[test]
fn a_grown_zone_keeps_a_resolved_sides_place() {
    let mut sides = SwitchedSides::start("shift;");
    let size_before = sides.admin.metric("nginx_shift_zone_size_bytes").unwrap();
    let crowd: String = (0..700)
        .map(|i| format!("server 127.0.0.1:{} down;", 20000 + i))
        .collect();
    let grown = format!(
        "{}upstream crowd {{ {crowd} shift; }}\n",
        config(sides.dns.port(), &sides.upstream, sides.http)
    );
    sides.nginx.reload(Some(&grown));
    assert!(sides.admin.metric("nginx_shift_zone_size_bytes").unwrap() > size_before);
    sides.assert_still_switched("r3");
}

/// Every answer vouches for the addresses it gives, changed or not: a peer's `resolved_ms` is
/// set by the answer that adds it, and moves on with each lookup (`valid=1s`). A deploy waits
/// for one after its start hook before it trusts a side's addresses.
#[test]
fn each_answer_stamps_the_addresses_it_gives() {
    let port = free_port();
    let _replica = replica(2, port);
    let dns = Dnsmasq::start(&[("127.0.0.2", "backend")]);
    let (_nginx, admin, _) = start_nginx(&dns, &format!("shift_resolve backend:{port}; shift;"));
    await_resolved(&admin, port, &[2]);
    let server = format!("127.0.0.2:{port}");
    let joined = admin.peer("app", &server).unwrap();
    let first = joined.resolved_ms.expect("a resolved peer's stamp");
    assert!(first >= joined.joined_ms, "{joined:?}");
    let later = wait_until(Duration::from_secs(10), || {
        admin
            .peer("app", &server)
            .and_then(|peer| peer.resolved_ms)
            .is_some_and(|at| at > first)
    });
    assert!(later.is_some(), "{:?}", admin.peer("app", &server));
}
