//! `shift_api threads=N` against a real Nginx: the API's Unix socket served by threads of each
//! worker, off the event loop. Its answers are the event loop's (changes in every worker, the
//! status page, refusals), it answers while the worker's event loop is stalled, a client that
//! sends half a request holds one thread only, reloads lose no acknowledged change, a failed
//! reload keeps the threads, and a worker killed while its thread holds the zone's lock leaves
//! the zone to the others.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use harness::{api_request, check_config, wait_for, wait_until, Backend, HttpClient, NginxOptions};
use harness::{shift_upstream_config, ShiftSetup as Setup};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A request sent on a thread of its own; `done` is set once its answer (or error) is in.
struct Pending<T> {
    done: Arc<AtomicBool>,
    handle: thread::JoinHandle<T>,
}

impl<T: Send + 'static> Pending<T> {
    fn start(send: impl FnOnce() -> T + Send + 'static) -> Pending<T> {
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let handle = thread::spawn(move || {
            let answer = send();
            flag.store(true, Ordering::SeqCst);
            answer
        });
        Pending { done, handle }
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    fn join(self) -> T {
        self.handle.join().expect("the request's thread")
    }
}

fn status(socket: &Path, method: &str, path: &str, body: Option<&str>) -> u16 {
    api_request(socket, method, path, body)
        .map(|response| response.status)
        .unwrap_or(0)
}

#[test]
fn a_patch_served_by_threads_moves_every_worker_and_they_refuse_what_nginx_would() {
    let setup = Setup::start(&[("blue", ""), ("green", "")], "", "threads=2");
    let (blue, green) = (setup.addr(0), setup.addr(1));
    for (to, weights) in [
        ("green", [(blue.as_str(), 0), (green.as_str(), 1)]),
        ("blue", [(blue.as_str(), 1), (green.as_str(), 0)]),
    ] {
        setup.admin.set_weights("app", &weights);
        let (served, workers) = setup.spread(30);
        assert_eq!(served.get(to), Some(&30), "{served:?}");
        assert_eq!(workers.len(), 2, "both workers served: {workers:?}");
    }
    // Peers added and removed at run time, through the threads.
    let extra = Backend::start("extra");
    let server = extra.addr().to_string();
    assert_eq!(setup.admin.add_peer("app", &server, "").status, 201);
    assert!(setup.admin.peer("app", &server).is_some());
    assert_eq!(setup.admin.remove_peer("app", &server).status, 200);

    let socket = setup.nginx.path("api.sock");
    let page = api_request(&socket, "GET", "/api/", None).expect("the status page");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<html"), "{}", page.body);
    let elsewhere = api_request(&socket, "GET", "/elsewhere", None).expect("an answer");
    assert_eq!(elsewhere.status, 404);
    assert!(
        elsewhere.body.contains("serves the shift API under"),
        "{}",
        elsewhere.body
    );
    assert_eq!(
        status(&socket, "PUT", "/api/upstreams/app", Some("{}")),
        405
    );
    assert_eq!(
        status(&socket, "PATCH", "/api/upstreams/app", Some("{nope")),
        400
    );
    let metrics = api_request(&socket, "GET", "/api/metrics", None).expect("metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains("nginx_shift_peer_weight"),
        "{}",
        metrics.body
    );

    // A chunked body is refused, and a body over the limit before it is read.
    let mut raw = UnixStream::connect(&socket).expect("connect");
    raw.write_all(
        b"PATCH /api/upstreams/app HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 411 "), "{answer}");
    let log = setup.nginx.error_log();
    assert!(!log.contains("[alert]") && !log.contains("[crit]"), "{log}");
}

#[test]
fn threads_answer_while_the_workers_event_loop_is_stalled() {
    // One worker, which stops for 3 s after each peer list it builds (a debug build's test
    // hook); a second API socket of the same worker is served by its event loop.
    let setup = Setup::start_with(&[("blue", "")], "", "threads=2", |mut options| {
        options.main = "env SHIFT_TEST_PAUSE_AFTER_LIST_MS=3000;".into();
        options.http.push_str(
            "server {\n    listen unix:{prefix}/api-loop.sock;\n    \
             location /api/ { shift_api; }\n}\n",
        );
        options.workers(1)
    });
    let hooked = wait_until(Duration::from_secs(5), || {
        setup.nginx.error_log().contains("pauses 3000 ms")
    });
    assert!(hooked.is_some(), "the test hook is active (a debug build)");
    let (threads, event_loop) = (
        setup.nginx.path("api.sock"),
        setup.nginx.path("api-loop.sock"),
    );
    // A new peer: the worker's next request builds its list with it, and stalls.
    let green = Backend::start("green");
    let added = setup.admin.add_peer("app", &green.addr().to_string(), "");
    assert_eq!(added.status, 201);
    let port = setup.port;
    let proxied = Pending::start(move || HttpClient::new(port).get("/"));
    thread::sleep(Duration::from_millis(300));
    assert!(
        !proxied.is_done(),
        "the proxied request was not held up by the stall"
    );
    // Sent first, to the event loop's socket: it waits for the stall.
    let loop_socket = event_loop.clone();
    let by_event_loop =
        Pending::start(move || status(&loop_socket, "GET", "/api/upstreams/app", None));
    thread::sleep(Duration::from_millis(100));
    // Sent second, to the threads: answered during the stall, change included.
    assert_eq!(status(&threads, "GET", "/api/upstreams/app", None), 200);
    let body = r#"{"peers": {"BLUE": {"weight": 7}}}"#.replace("BLUE", &setup.addr(0));
    assert_eq!(
        status(&threads, "PATCH", "/api/upstreams/app", Some(&body)),
        200
    );
    assert!(
        !by_event_loop.is_done() && !proxied.is_done(),
        "the threads' answers came after the stall ended"
    );
    assert_eq!(by_event_loop.join(), 200);
    let proxied = proxied.join().expect("the proxied request");
    assert_eq!(proxied.status, 200);
    assert_eq!(
        setup
            .admin
            .peer("app", &setup.addr(0))
            .map(|peer| peer.weight),
        Some(7)
    );
}

#[test]
fn a_half_sent_request_holds_one_api_thread_until_its_header_timeout() {
    let setup = Setup::start_with(&[("blue", "")], "", "threads=1", |mut options| {
        options.http.insert_str(0, "client_header_timeout 1s;\n");
        options.workers(1)
    });
    let socket = setup.nginx.path("api.sock");
    let mut half = UnixStream::connect(&socket).expect("connect");
    half.write_all(b"GET /api/upstreams HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    thread::sleep(Duration::from_millis(100));
    // The only thread is held: the next request waits for the header timeout.
    let waiting_socket = socket.clone();
    let waiting =
        Pending::start(move || status(&waiting_socket, "GET", "/api/upstreams/app", None));
    // Meanwhile the traffic is served.
    let proxied = HttpClient::new(setup.port)
        .get("/")
        .expect("a proxied request");
    assert_eq!(proxied.status, 200);
    assert!(
        !waiting.is_done(),
        "the request was answered while the thread was held"
    );
    // The half-sent request is closed unanswered, and the waiting one then answered.
    half.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut unanswered = Vec::new();
    let _ = half.read_to_end(&mut unanswered);
    assert!(
        unanswered.is_empty(),
        "{}",
        String::from_utf8_lossy(&unanswered)
    );
    assert_eq!(waiting.join(), 200);
}

#[test]
fn a_caller_who_may_not_read_is_refused_before_it_sends_anything() {
    // Root (the tests' uid) is neither a writer nor a reader here.
    let setup = Setup::start_with(&[("blue", "")], "", "threads=1 writers=12345", |options| {
        options.workers(1)
    });
    let mut silent = UnixStream::connect(setup.nginx.path("api.sock")).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    silent.read_to_string(&mut answer).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(answer.contains("may not read upstreams"), "{answer}");
}

#[test]
fn reloads_with_api_threads_finish_and_keep_every_acknowledged_change() {
    let mut setup = Setup::start(&[("blue", ""), ("green", "")], "", "threads=2");
    let blue = setup.addr(0);
    let socket = setup.nginx.path("api.sock");
    for round in 1..=12u32 {
        let old = setup.nginx.begin_reload(None);
        // PATCHes while the old workers stop and the new ones start: each acknowledged one is
        // what the next read sees, whichever generation answers.
        for step in 0..5u32 {
            let weight = round * 10 + step;
            let body = format!(r#"{{"peers": {{"{blue}": {{"weight": {weight}}}}}}}"#);
            let response =
                api_request(&socket, "PATCH", "/api/upstreams/app", Some(&body)).expect("PATCH");
            assert_eq!(response.status, 200, "round {round}: {}", response.body);
            assert_eq!(
                setup.admin.peer("app", &blue).map(|peer| peer.weight),
                Some(weight),
                "round {round} step {step}"
            );
        }
        // The old workers exit: their threads let them.
        setup.nginx.finish_reload(&old);
    }
    let log = setup.nginx.error_log();
    assert!(!log.contains("open socket"), "{log}");
    assert!(!log.contains("[alert]"), "{log}");
}

#[test]
fn a_request_in_service_when_its_worker_is_told_to_stop_is_still_answered() {
    let mut setup = Setup::start_with(&[("blue", "")], "", "threads=1", |options| {
        options.workers(1)
    });
    let blue = setup.addr(0);
    let body = format!(r#"{{"peers": {{"{blue}": {{"weight": 42}}}}}}"#);
    let (first, rest) = body.split_at(10);
    let mut patch = UnixStream::connect(setup.nginx.path("api.sock")).expect("connect");
    write!(
        patch,
        "PATCH /api/upstreams/app HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{first}",
        body.len()
    )
    .unwrap();
    thread::sleep(Duration::from_millis(200));
    // The worker reading it is told to stop; the rest of the body comes after.
    let old = setup.nginx.begin_reload(None);
    thread::sleep(Duration::from_millis(300));
    patch.write_all(rest.as_bytes()).unwrap();
    patch
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    patch.read_to_string(&mut answer).expect("the answer");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    setup.nginx.finish_reload(&old);
    assert_eq!(
        setup.admin.peer("app", &blue).map(|peer| peer.weight),
        Some(42)
    );
}

/// The number of API threads (named `shift-api`) process `pid` runs.
fn api_threads_of(pid: u32) -> usize {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "shift-api")
        .count()
}

fn weight_patch(server: &str, weight: u32) -> String {
    format!(r#"{{"peers": {{"{server}": {{"weight": {weight}}}}}}}"#)
}

/// Gives `server` of upstream `app` each weight in turn through the API's socket, and reads
/// each back.
fn set_and_read_back(setup: &Setup, server: &str, weights: &[u32]) {
    let socket = setup.nginx.path("api.sock");
    for &weight in weights {
        let body = weight_patch(server, weight);
        assert_eq!(
            status(&socket, "PATCH", "/api/upstreams/app", Some(&body)),
            200
        );
        assert_eq!(
            setup.admin.peer("app", server).map(|peer| peer.weight),
            Some(weight)
        );
    }
}

#[test]
fn a_worker_killed_while_its_api_thread_holds_the_zone_lock_leaves_the_zone_to_the_others() {
    // While the flag file exists, a change through the API waits with the zone locked (a debug
    // build's test hook) and names its worker in hold.holder; the workers' user writes it.
    let hook_dir = tempfile::tempdir().unwrap();
    fs::set_permissions(hook_dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let flag = hook_dir.path().join("hold");
    let setup = Setup::start_with(&[("blue", "")], "", "threads=1", |mut options| {
        options.main = format!("env SHIFT_TEST_HOLD_ZONE_WHILE={};", flag.display());
        options.workers(2)
    });
    let blue = setup.addr(0);
    fs::write(&flag, "").unwrap();
    let held_socket = setup.nginx.path("api.sock");
    let held_body = weight_patch(&blue, 5);
    let held = Pending::start(move || {
        status(
            &held_socket,
            "PATCH",
            "/api/upstreams/app",
            Some(&held_body),
        )
    });
    let holder_file = hook_dir.path().join("hold.holder");
    let holder: u32 = wait_for(Duration::from_secs(10), || {
        fs::read_to_string(&holder_file).ok()?.trim().parse().ok()
    })
    .expect("an API thread holds the zone's lock (a debug build's test hook)");
    assert!(setup.nginx.worker_pids().contains(&holder), "{holder}");
    // The other worker's thread takes the next request, and waits for the zone's lock.
    let waiting_socket = setup.nginx.path("api.sock");
    let waiting =
        Pending::start(move || status(&waiting_socket, "GET", "/api/upstreams/app", None));
    thread::sleep(Duration::from_millis(300));
    assert!(
        !waiting.is_done(),
        "a request was answered while the zone was locked"
    );
    kill(Pid::from_raw(holder as i32), Signal::SIGKILL).unwrap();
    fs::remove_file(&flag).unwrap();
    assert_ne!(
        held.join(),
        200,
        "a killed worker's change was acknowledged"
    );
    assert_eq!(waiting.join(), 200, "the request that waited for the lock");

    // The master unlocks the zone when it reaps the worker, and starts another in its place.
    let respawned = wait_until(Duration::from_secs(10), || {
        let workers = setup.nginx.worker_pids();
        workers.len() == 2 && !workers.contains(&holder)
    });
    assert!(respawned.is_some(), "{:?}", setup.nginx.worker_pids());
    // Changes go on, through whichever worker's thread takes them, and traffic is served.
    set_and_read_back(&setup, &blue, &[6, 7, 8]);
    let proxied = HttpClient::new(setup.port)
        .get("/")
        .expect("a proxied request");
    assert_eq!(proxied.status, 200);
    let log = setup.nginx.error_log();
    assert!(
        log.contains(&format!("worker process {holder} exited on signal 9")),
        "{log}"
    );
}

#[test]
fn a_failed_reload_keeps_the_api_threads_and_a_respawned_worker_starts_its_own() {
    let mut setup = Setup::start(&[("blue", "")], "", "threads=2");
    let blue = setup.addr(0);
    let workers = setup.nginx.worker_pids();
    let started = wait_until(Duration::from_secs(5), || api_threads_of(workers[0]) == 2);
    assert!(
        started.is_some(),
        "{} API threads in a worker",
        api_threads_of(workers[0])
    );

    // A reload Nginx refuses after our configuration is read and the zone set up: a port someone
    // else holds. It would have given the API one thread.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let failing = format!(
        "{}server {{ listen {}; location / {{ return 204; }} }}\n",
        shift_upstream_config(&[(blue.clone(), "")], "", "threads=1", setup.port),
        taken.local_addr().unwrap()
    );
    let why = setup.nginx.failed_reload(&failing);
    assert!(why.contains("bind()"), "{why}");
    set_and_read_back(&setup, &blue, &[9]);

    // A worker of the configuration that runs, started again by the master, takes up the
    // threads of that configuration (2, not the failed one's 1).
    kill(Pid::from_raw(workers[0] as i32), Signal::SIGKILL).unwrap();
    let respawned = wait_for(Duration::from_secs(10), || {
        let now = setup.nginx.worker_pids();
        (now.len() == workers.len() && !now.contains(&workers[0]))
            .then(|| now.into_iter().find(|pid| !workers.contains(pid)))
            .flatten()
    })
    .expect("the master starts a worker in place of the killed one");
    let threads_started = wait_until(Duration::from_secs(5), || api_threads_of(respawned) == 2);
    assert!(
        threads_started.is_some(),
        "{} API threads in the new worker",
        api_threads_of(respawned)
    );
    set_and_read_back(&setup, &blue, &[10, 11, 12, 13]);
    let log = setup.nginx.error_log();
    assert!(!log.contains("open socket"), "{log}");
}

#[test]
fn nginx_t_refuses_bad_thread_counts_and_a_connection_cap_beside_them() {
    let blue = Backend::start("blue");
    let servers = [(blue.addr().to_string(), "")];
    for (api_args, expected) in [
        ("threads=17", "a number of threads from 0 to 16"),
        ("threads=2 connections=4", "leave \"connections=\" out"),
    ] {
        let config = shift_upstream_config(&servers, "", api_args, 1);
        let check = check_config(&NginxOptions::new(config));
        assert!(!check.ok, "{api_args} passed nginx -t");
        assert!(
            check.output.contains(expected),
            "{api_args}: {}",
            check.output
        );
    }
    // The threads serve the whole socket: another location of the server, an exact location
    // of the same name, or one inside the API's would go unserved.
    let base = shift_upstream_config(&servers, "", "threads=2", 1);
    let before_api = |extra: &str| {
        base.replace(
            "location /api/ {",
            &format!("{extra}\n    location /api/ {{"),
        )
    };
    for (what, config) in [
        (
            "another location",
            before_api("location = /ping { return 200; }"),
        ),
        (
            "an exact location of the same name",
            before_api("location = /api/ { return 403; }"),
        ),
        (
            "a location inside",
            base.replace(
                "shift_api threads=2;",
                "shift_api threads=2; location /api/x { return 403; }",
            ),
        ),
    ] {
        assert_ne!(config, base, "{what}: the config was not changed");
        let check = check_config(&NginxOptions::new(config));
        assert!(!check.ok, "{what} passed nginx -t");
        assert!(
            check.output.contains("serves its server's socket alone"),
            "{what}: {}",
            check.output
        );
    }
    let config = shift_upstream_config(&servers, "", "threads=3", 1);
    let check = check_config(&NginxOptions::new(config));
    assert!(check.ok, "{}", check.output);
}
