//! The demo behind `scripts/demo.sh`: Nginx with the shift module in front of two demo backends,
//! blue (live) and green (standby, `down` in the config), until Ctrl-C.
//!
//! `--port N` picks the port Nginx listens on (default 8080); `--once` shows the traffic and
//! exits instead of waiting for Ctrl-C.

use std::collections::BTreeMap;
use std::process::ExitCode;

use harness::{Backend, HttpClient, Nginx, NginxOptions};

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
             server 127.0.0.1:{green} down;  # green: standby, brought up by a deploy\n\
             shift;\n\
         }}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
         server {{ listen unix:{{prefix}}/shift.sock; location /api/ {{ shift_api; }} }}\n",
        blue = blue.port(),
        green = green.port(),
    )));
    let socket = nginx.path("shift.sock");

    println!("Nginx (master pid {}) with the shift module:", nginx.master_pid());
    println!("  traffic:   http://127.0.0.1:{port}/");
    println!("  admin API: unix:{} (location /api/)", socket.display());
    println!("  backends:  blue on 127.0.0.1:{}, green on 127.0.0.1:{} (standby)", blue.port(), green.port());

    let mut client = HttpClient::new(port);
    let mut served = BTreeMap::<String, u32>::new();
    for _ in 0..20 {
        match client.get("/") {
            Ok(response) => *served.entry(response.body).or_default() += 1,
            Err(err) => {
                eprintln!("demo: request through Nginx failed: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("20 requests through Nginx were served by: {served:?}");

    if once {
        return ExitCode::SUCCESS;
    }
    println!("Try: curl http://127.0.0.1:{port}/");
    println!("Press Ctrl-C to stop Nginx and the backends.");
    wait_for_interrupt();
    println!("\nstopping Nginx and the backends");
    drop(nginx);
    ExitCode::SUCCESS
}

fn wait_for_interrupt() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("signal runtime");
    runtime.block_on(async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("listen for SIGTERM");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    });
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("demo: {problem}\nusage: demo [--port N] [--once]");
    ExitCode::from(2)
}
