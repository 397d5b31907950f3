//! The demo behind `scripts/demo.sh`: Nginx with the shift module in front of two backends,
//! blue (live) and green (standby). First a tester reaches green through the real Nginx with a
//! pinned request (`X-Shift-To: green`) while every user stays on blue; then a small load
//! generator runs and `shiftctl canary --to green` moves the traffic from blue to green while
//! the split is shown live. Then the same canary again, with green made to fail on purpose, to
//! show the automatic rollback.
//!
//! `--port N` picks the port Nginx listens on (default 8080); `--once` exits at the end instead
//! of leaving everything running until Ctrl-C.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use harness::{
    shiftctl_binary, shiftctl_command, wait_for_interrupt, wait_until, Admin, Backend, HttpClient,
    Nginx, NginxOptions,
};

/// Answers seen by the load generator since the last report, by who served them.
type Tally = Arc<Mutex<BTreeMap<String, u64>>>;

fn main() -> ExitCode {
    let mut port = 8080;
    let mut once = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--once" => once = true,
            "--port" => match args.next().and_then(|p| p.parse().ok()) {
                Some(p) => port = p,
                None => return usage("--port needs a port number"),
            },
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }

    let blue = Backend::start("blue");
    let green = Backend::start("green");
    let nginx = Nginx::start(NginxOptions::new(format!(
        "upstream app {{\n\
             server 127.0.0.1:{blue};\n\
             server 127.0.0.1:{green} down;  # green: standby until the canary brings it up\n\
             shift;\n\
             shift_check interval=500ms;\n\
             shift_label 127.0.0.1:{blue} blue;\n\
             shift_label 127.0.0.1:{green} green;\n\
             shift_pin $http_x_shift_to;        # testers reach a version by its label\n\
             shift_sticky $cookie_session;      # a user with a session stays on one version\n\
         }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/shift.sock; location /api/ {{ shift_api; }} }}\n",
        blue = blue.port(),
        green = green.port(),
    )));
    let socket = nginx.path("shift.sock");
    let admin = Admin::new(&socket, "/api/");
    let state_dir = nginx.path("shiftctl");

    println!(
        "Nginx (master pid {}) with the shift module:",
        nginx.master_pid()
    );
    println!("  traffic:   http://127.0.0.1:{port}/");
    println!("  admin API: unix:{} (location /api/)", socket.display());
    println!(
        "  shiftctl:  {} --socket {} status",
        shiftctl_binary().display(),
        socket.display()
    );
    println!(
        "  blue on {}, green on {} (standby)\n",
        blue.addr(),
        green.addr()
    );

    let green_ready = wait_until(Duration::from_secs(10), || {
        admin.upstream("app").peers[1].health == shift_wire::Health::Healthy
    });
    if green_ready.is_none() {
        eprintln!("demo: green never passed its health check");
        return ExitCode::FAILURE;
    }

    println!("== 0. before any user reaches green, a tester tries it through the real Nginx ==");
    for (command, headers) in [
        (
            format!("curl -H 'X-Shift-To: green' http://127.0.0.1:{port}/"),
            &[("X-Shift-To", "green")][..],
        ),
        (format!("curl http://127.0.0.1:{port}/"), &[][..]),
    ] {
        match HttpClient::new(port).get_with("/", headers) {
            Ok(response) => println!("$ {command}\n{}", response.body),
            Err(err) => {
                eprintln!("demo: {command}: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!();

    let tally: Tally = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(port, tally.clone(), stop.clone());
    let reporter = start_reporter(tally, stop.clone());

    let shiftctl = |args: &[&str]| {
        shiftctl_command(&[&socket], Some(&state_dir))
            .args(args)
            .stdin(Stdio::null())
            .status()
            .expect("run shiftctl")
    };
    let canary = [
        "canary",
        "app",
        "--to",
        "green",
        "--steps",
        "10,50,100",
        "--interval",
        "3s",
        "--max-error-rate",
        "0.05",
    ];

    println!("== 1. canary from blue to green: 10% → 50% → 100%, 3s per step ==");
    let first = shiftctl(&canary);
    println!("shiftctl canary exited with {first}\n");

    println!("== 2. back to blue, then the same canary with green failing at 50% ==");
    shiftctl(&["rollback", "app"]);
    let saboteur = {
        let green = Arc::new(green);
        let watcher = green.clone();
        let admin = Admin::new(&socket, "/api/");
        let handle = thread::spawn(move || {
            let at_half = wait_until(Duration::from_secs(30), || {
                admin.upstream("app").peers[1].weight == 500
            });
            if at_half.is_some() {
                say("demo: green now answers 500 on purpose");
                watcher.set_status(500);
            }
        });
        (green, handle)
    };
    let second = shiftctl(&canary);
    let _ = saboteur.1.join();
    println!("shiftctl canary exited with {second} (1 = rolled back); the traffic after it:");
    thread::sleep(Duration::from_millis(2100));

    stop.store(true, Ordering::SeqCst);
    for client in load {
        let _ = client.join();
    }
    let _ = reporter.join();
    let succeeded = first.success() && second.code() == Some(1);
    if !succeeded {
        eprintln!("demo: the canaries did not end as expected");
        return ExitCode::FAILURE;
    }
    if once {
        return ExitCode::SUCCESS;
    }
    println!(
        "Nginx keeps running: try curl http://127.0.0.1:{port}/ (add -H 'X-Shift-To: blue' or \
         -H 'Cookie: session=you') and shiftctl; Ctrl-C stops it all."
    );
    wait_for_interrupt();
    println!("\nstopping Nginx and the backends");
    drop(nginx);
    ExitCode::SUCCESS
}

/// Four keep-alive clients sending requests until `stop`.
fn start_load(port: u16, tally: Tally, stop: Arc<AtomicBool>) -> Vec<thread::JoinHandle<()>> {
    (0..4)
        .map(|_| {
            let (tally, stop) = (tally.clone(), stop.clone());
            thread::spawn(move || {
                let mut client = HttpClient::new(port);
                while !stop.load(Ordering::SeqCst) {
                    let who = match client.get("/") {
                        Ok(response) if response.status == 200 => response.body,
                        Ok(response) => format!("error {}", response.status),
                        Err(_) => "error".to_string(),
                    };
                    *tally.lock().expect("tally").entry(who).or_default() += 1;
                    thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect()
}

/// Prints the split of the last second, every second.
fn start_reporter(tally: Tally, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_secs(1));
            let window = std::mem::take(&mut *tally.lock().expect("tally"));
            let total: u64 = window.values().sum();
            if total == 0 {
                continue;
            }
            let split: Vec<String> = window
                .iter()
                .map(|(who, count)| format!("{who} {:>5.1}%", *count as f64 * 100.0 / total as f64))
                .collect();
            say(&format!(
                "  traffic, last second ({total:>4} requests): {}",
                split.join("  ")
            ));
        }
    })
}

/// Prints a line while shiftctl may be redrawing its status line on the same terminal: clear
/// that line first, so the line printed here stands above shiftctl's next redraw.
fn say(line: &str) {
    if std::io::stdout().is_terminal() {
        println!("\r\x1b[K{line}");
    } else {
        println!("{line}");
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("demo: {problem}\nusage: demo [--port N] [--once]");
    ExitCode::from(2)
}
