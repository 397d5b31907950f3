//! Switch latency: from a change to its acknowledgement, and stale answers after it.

use super::*;

/// Blue and green backends, and who answers the next request on a new connection.
pub(crate) struct Pair {
    pub(crate) blue: Backend,
    pub(crate) green: Backend,
}

impl Pair {
    pub(crate) fn new() -> Pair {
        Pair {
            blue: Backend::start("blue"),
            green: Backend::start("green"),
        }
    }

    pub(crate) fn name(index: usize) -> &'static str {
        if index.is_multiple_of(2) {
            "green"
        } else {
            "blue"
        }
    }
}

pub(crate) fn first_answer(port: u16) -> String {
    HttpClient::new(port)
        .get("/")
        .map_or_else(|err| format!("error: {err}"), |response| response.body)
}

pub(crate) struct SwitchFigures {
    how: String,
    samples: usize,
    p50_us: f64,
    p99_us: f64,
    stale: usize,
    note: String,
}

pub(crate) fn switch_latency(settings: &Settings) {
    let mut rows = shift_api_switches(settings, false);
    rows.extend(shiftctl_switches(settings));
    rows.push(haproxy_switches(settings, false));
    rows.extend(shift_api_switches(settings, true));
    rows.push(haproxy_switches(settings, true));
    rows.push(reload_switches(settings));
    println!("## Switch latency\n");
    println!("From issuing the change to its acknowledgement (for a reload: to the first answer from the new version), and stale answers (the old version) on the first request after it, each on a new connection.\n");
    println!("| how | switches | p50 | p99 | stale answers after the ack | note |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    for row in rows {
        println!(
            "| {} | {} | {:.0} µs | {:.0} µs | {} | {} |",
            row.how, row.samples, row.p50_us, row.p99_us, row.stale, row.note
        );
    }
    println!();
}

pub(crate) fn shift_nginx(pair: &Pair) -> (Nginx, u16) {
    let port = free_port();
    let nginx = Nginx::start(NginxOptions::new(format!(
        "upstream app {{ server {} weight=1; server {} weight=1; shift; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} \
         location = /ping {{ return 200; }} }}\n\
         server {{ listen unix:{{prefix}}/api-threads.sock; location /api/ {{ shift_api threads=2; }} }}",
        pair.blue.addr(),
        pair.green.addr()
    )));
    (nginx, port)
}

fn weights_for(pair: &Pair, index: usize) -> (String, String) {
    let (blue, green) = if Pair::name(index) == "green" {
        (0, 1)
    } else {
        (1, 0)
    };
    (
        format!("{}={blue}", pair.blue.addr()),
        format!("{}={green}", pair.green.addr()),
    )
}

fn figures(how: &str, mut micros: Vec<f64>, stale: usize, note: &str) -> SwitchFigures {
    micros.sort_by(|a, b| a.total_cmp(b));
    SwitchFigures {
        how: how.into(),
        samples: micros.len(),
        p50_us: percentile(&micros, 0.5),
        p99_us: percentile(&micros, 0.99),
        stale,
        note: note.into(),
    }
}

/// `wrk -c32` against `port` for as long as it lives, when `loaded`.
struct LoadWhile(Option<std::process::Child>);

impl LoadWhile {
    fn start(loaded: bool, port: u16) -> LoadWhile {
        LoadWhile(loaded.then(|| wrk(port, 600)))
    }

    fn label(&self, how: &str) -> String {
        match self.0 {
            Some(_) => format!("{how}, under `wrk -c32`"),
            None => how.to_string(),
        }
    }
}

impl Drop for LoadWhile {
    fn drop(&mut self) {
        if let Some(mut wrk) = self.0.take() {
            let _ = wrk.kill();
            let _ = wrk.wait();
        }
    }
}

/// PATCHes served by the event loop, each followed by a bare `return 200` on the same socket
/// (Nginx's own floor for a request there), and PATCHes served by the API's threads
/// (`shift_api threads=2`) on another socket of the same Nginx, in turn.
fn shift_api_switches(settings: &Settings, loaded: bool) -> Vec<SwitchFigures> {
    let pair = Pair::new();
    let (nginx, port) = shift_nginx(&pair);
    let load = LoadWhile::start(loaded, port);
    let sockets = [nginx.path("api.sock"), nginx.path("api-threads.sock")];
    let (mut micros, mut stale) = ([Vec::new(), Vec::new()], [0, 0]);
    let mut bare = Vec::new();
    for index in 0..settings.switches {
        for (served_by, socket) in sockets.iter().enumerate() {
            // Each PATCH switches: the threads' moves the traffic back.
            let switch = index * 2 + served_by;
            let (blue, green) = weights_for(&pair, switch);
            let body = format!(
                r#"{{"peers": {{"{}": {{"weight": {}}}, "{}": {{"weight": {}}}}}}}"#,
                pair.blue.addr(),
                blue.rsplit('=').next().unwrap(),
                pair.green.addr(),
                green.rsplit('=').next().unwrap()
            );
            let start = Instant::now();
            let response =
                api_request(socket, "PATCH", "/api/upstreams/app", Some(&body)).expect("PATCH");
            micros[served_by].push(start.elapsed().as_secs_f64() * 1e6);
            assert_eq!(response.status, 200, "{}", response.body);
            stale[served_by] += usize::from(first_answer(port) != Pair::name(switch));
        }
        // The bare request follows a proxied one too, as each PATCH does.
        let _ = first_answer(port);
        let start = Instant::now();
        let response = api_request(&sockets[0], "GET", "/ping", None).expect("GET /ping");
        bare.push(start.elapsed().as_secs_f64() * 1e6);
        assert_eq!(response.status, 200);
    }
    let [event_loop, threads] = micros;
    vec![
        figures(
            &load.label("shift API (PATCH over the Unix socket)"),
            event_loop,
            stale[0],
            "one request on a new connection per PATCH; served by the event loop",
        ),
        figures(
            &load.label("shift API with `threads=2`"),
            threads,
            stale[1],
            "the same PATCHes, served by the API's threads, off the event loop",
        ),
        figures(
            &load.label("bare `return 200` on the same socket"),
            bare,
            0,
            "Nginx's own floor there; no change",
        ),
    ]
}

/// `shiftctl set`, each followed by the process start alone (`shiftctl --version`) and the
/// machine's floor for any process (`/bin/true`).
fn shiftctl_switches(settings: &Settings) -> Vec<SwitchFigures> {
    let pair = Pair::new();
    let (nginx, port) = shift_nginx(&pair);
    let (mut micros, mut stale) = (Vec::new(), 0);
    let (mut starts, mut floor) = (Vec::new(), Vec::new());
    let timed = |command: &mut Command| {
        let start = Instant::now();
        let status = command.stdout(Stdio::null()).status().expect("run it");
        assert!(status.success());
        start.elapsed().as_secs_f64() * 1e6
    };
    for index in 0..settings.shiftctl_switches {
        let (blue, green) = weights_for(&pair, index);
        let start = Instant::now();
        let status = shiftctl_command(&[nginx.path("api.sock")], None)
            .args(["set", "app", &blue, &green])
            .stdout(Stdio::null())
            .status()
            .expect("run shiftctl");
        micros.push(start.elapsed().as_secs_f64() * 1e6);
        assert!(status.success());
        stale += usize::from(first_answer(port) != Pair::name(index));
        starts.push(timed(
            shiftctl_command(&[] as &[&Path], None).arg("--version"),
        ));
        floor.push(timed(&mut Command::new("/bin/true")));
    }
    vec![
        figures(
            "`shiftctl set`",
            micros,
            stale,
            "a process start and one PATCH (one Nginx: no GET first)",
        ),
        figures(
            "`shiftctl --version`",
            starts,
            0,
            "shiftctl's process start alone; no change",
        ),
        figures("`/bin/true`", floor, 0, "any process start here; no change"),
    ]
}

fn haproxy_switches(settings: &Settings, loaded: bool) -> SwitchFigures {
    let pair = Pair::new();
    let dir = tempfile::tempdir().expect("haproxy dir");
    let port = free_port();
    let socket = dir.path().join("haproxy.sock");
    let config = format!(
        "global\n  stats socket {} level admin\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
         backend be\n  balance roundrobin\n  server blue {} weight 1\n  server green {} weight 0\n",
        socket.display(),
        pair.blue.addr(),
        pair.green.addr()
    );
    fs::write(dir.path().join("haproxy.cfg"), config).unwrap();
    let mut haproxy = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(dir.path().join("haproxy.cfg"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    assert!(
        wait_until(Duration::from_secs(10), || socket.exists()
            && HttpClient::new(port).get("/").is_ok())
        .is_some(),
        "haproxy did not start"
    );
    let load = LoadWhile::start(loaded, port);
    let (mut micros, mut stale) = (Vec::new(), 0);
    for index in 0..settings.switches {
        let (blue, green) = if Pair::name(index) == "green" {
            (0, 1)
        } else {
            (1, 0)
        };
        let command =
            format!("set server be/blue weight {blue};set server be/green weight {green}\n");
        let start = Instant::now();
        haproxy_command(&socket, &command);
        micros.push(start.elapsed().as_secs_f64() * 1e6);
        stale += usize::from(first_answer(port) != Pair::name(index));
    }
    let how = load.label("HAProxy runtime API (`set server ... weight` over its socket)");
    drop(load);
    let _ = haproxy.kill();
    let _ = haproxy.wait();
    figures(
        &how,
        micros,
        stale,
        "one request on a new connection per change",
    )
}

fn haproxy_command(socket: &Path, command: &str) -> String {
    let mut stream = UnixStream::connect(socket).expect("haproxy socket");
    stream
        .write_all(command.as_bytes())
        .expect("send to haproxy");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("haproxy answers");
    answer
}

/// A stock upstream with one server, `target` (an address).
pub(crate) fn plain_upstream(target: &str, port: u16) -> String {
    format!(
        "upstream app {{ server {target}; }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/api.sock; location /api/ {{ shift_api; }} }}"
    )
}

fn reload_switches(settings: &Settings) -> SwitchFigures {
    let pair = Pair::new();
    let port = free_port();
    let mut nginx = Nginx::start(NginxOptions::new(plain_upstream(
        &pair.blue.addr().to_string(),
        port,
    )));
    let (mut micros, mut stale) = (Vec::new(), 0);
    for index in 0..settings.reloads {
        let target = if Pair::name(index) == "green" {
            &pair.green
        } else {
            &pair.blue
        };
        let start = Instant::now();
        let old = nginx.begin_reload(Some(&plain_upstream(&target.addr().to_string(), port)));
        // Until the new workers answer, new connections still reach the old ones.
        loop {
            let answer = first_answer(port);
            if answer == Pair::name(index) {
                break;
            }
            stale += 1;
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the reload never took effect: {answer}"
            );
        }
        micros.push(start.elapsed().as_secs_f64() * 1e6);
        nginx.finish_reload(&old);
    }
    figures(
        "stock `nginx -s reload` with an edited upstream",
        micros,
        stale,
        "time until the new version answers; stale = old answers after the signal",
    )
}
