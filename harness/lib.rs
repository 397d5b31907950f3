//! Test harness shared by the integration tests (`tests/`) and the benchmarks (`benches/`):
//! a real Nginx with the module loaded, running on a generated config in a temporary prefix, and
//! real HTTP backends that answer with their own name so a test can count who served what.

mod admin;
mod backend;
mod browser;
mod client;
pub mod debian;
mod dnsmasq;
pub mod docker;
mod etcd;
mod long_lived;
mod nginx;
mod processes;
mod setup;
mod traffic;
mod wrk;

pub use admin::Admin;
pub use backend::{Backend, COLD_CONCURRENCY};
pub use browser::Browser;
pub use client::{api_request, HttpClient, Response};
pub use dnsmasq::Dnsmasq;
pub use etcd::{Agent, Etcd};
pub use long_lived::{long_lived_site, LongLived};
pub use nginx::{check_config, ConfigCheck, Nginx, NginxOptions};
pub use processes::HookedBackends;
pub use setup::{BlueGreen, ShiftSetup};
pub use traffic::{Traffic, TrafficReport};
pub use wrk::{wrk, wrk_result, WrkResult};

use std::net::TcpListener;
use std::path::PathBuf;

/// The Nginx binary the tests run: `SHIFT_NGINX` if set, else `TEST_NGINX_BINARY` (the name
/// ngx-rust's and Nginx's own test suites use), else the vendored build.
pub fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("SHIFT_NGINX")
        .or_else(|| std::env::var_os("TEST_NGINX_BINARY"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("SHIFT_VENDORED_NGINX")));
    assert!(
        path.is_file(),
        "no Nginx binary at {}: build the vendored one with `cargo build`, or set SHIFT_NGINX",
        path.display()
    );
    path
}

/// The version of the Nginx the tests run, as (major, minor, patch), from `nginx -v`.
pub fn nginx_version() -> (u32, u32, u32) {
    let output = std::process::Command::new(nginx_binary())
        .arg("-v")
        .output()
        .expect("run nginx -v");
    let text = String::from_utf8_lossy(&output.stderr);
    let version = text
        .split('/')
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no version in {text:?}"));
    let mut numbers = version
        .split('.')
        .map(|n| n.parse::<u32>().expect("a version number"));
    let mut next = || numbers.next().unwrap_or(0);
    (next(), next(), next())
}

/// Whether the Nginx the tests run was built `--with-debug` (its debug log lines exist).
pub fn nginx_has_debug() -> bool {
    std::process::Command::new(nginx_binary())
        .arg("-V")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stderr).contains("--with-debug"))
}

/// The module the tests load: `SHIFT_MODULE` if set, else this profile's build of it.
pub fn module_path() -> PathBuf {
    let path = std::env::var_os("SHIFT_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("SHIFT_MODULE_PATH")));
    assert!(
        path.is_file(),
        "no module at {}: run `cargo build -p nginx-shift-module` first (with --release for \
         release tests), or set SHIFT_MODULE",
        path.display()
    );
    path
}

/// The `shiftctl` binary of this profile: `SHIFT_CTL` if set, else next to the module.
pub fn shiftctl_binary() -> PathBuf {
    let path = std::env::var_os("SHIFT_CTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("SHIFT_MODULE_PATH")).with_file_name("shiftctl"));
    assert!(
        path.is_file(),
        "no shiftctl at {}: run `cargo build -p shiftctl` first, or set SHIFT_CTL",
        path.display()
    );
    path
}

/// A `shiftctl` command for the Nginx instances at `sockets`, keeping its state in `state_dir`
/// (when given); the caller adds the subcommand. `SHIFT_SOCKET` from the environment is ignored.
pub fn shiftctl_command<P: AsRef<std::path::Path>>(
    sockets: &[P],
    state_dir: Option<&std::path::Path>,
) -> std::process::Command {
    let mut command = std::process::Command::new(shiftctl_binary());
    command
        .env_remove("SHIFT_SOCKET")
        .env_remove("SHIFT_STATE_DIR");
    for socket in sockets {
        command.arg("--socket").arg(socket.as_ref());
    }
    if let Some(dir) = state_dir {
        command.arg("--state-dir").arg(dir);
    }
    command
}

/// The standalone `backend` binary of this profile (see `harness/bin/backend.rs`).
pub fn backend_binary() -> PathBuf {
    let path = PathBuf::from(env!("SHIFT_MODULE_PATH")).with_file_name("backend");
    assert!(
        path.is_file(),
        "no backend binary at {}: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// An `http {}` body with an upstream `app` over `servers` (address plus extra server
/// parameters) using `shift SHIFT_ARGS`, a traffic port that names the answering worker in
/// `X-Worker`, and the admin API (`shift_api API_ARGS`) on `{prefix}/api.sock` under `/api/`.
pub fn shift_upstream_config(
    servers: &[(String, &str)],
    shift_args: &str,
    api_args: &str,
    port: u16,
) -> String {
    let servers: String = servers
        .iter()
        .map(|(address, params)| format!("    server {address} {params};\n"))
        .collect();
    format!(
        "upstream app {{\n{servers}    shift {shift_args};\n}}\n\
         server {{\n    listen 127.0.0.1:{port};\n    location / {{\n        \
         proxy_pass http://app;\n        add_header X-Worker $pid always;\n    }}\n}}\n\
         server {{\n    listen unix:{{prefix}}/api.sock;\n    \
         location /api/ {{ shift_api {api_args}; }}\n}}\n"
    )
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("bind an ephemeral port on 127.0.0.1")
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns how long it took,
/// or `None` if it never held.
pub fn wait_until(
    timeout: std::time::Duration,
    mut condition: impl FnMut() -> bool,
) -> Option<std::time::Duration> {
    let start = std::time::Instant::now();
    wait_for(timeout, || condition().then(|| start.elapsed()))
}

/// Polls `find` every 20 ms until it finds something or `timeout` passes.
pub fn wait_for<T>(timeout: std::time::Duration, mut find: impl FnMut() -> Option<T>) -> Option<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(found) = find() {
            return Some(found);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Blocks until the process gets Ctrl-C (SIGINT) or SIGTERM.
pub fn wait_for_interrupt() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("signal runtime");
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("listen for SIGTERM");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
    });
}

/// Runs `command` and returns its output; panics with what it printed when it cannot run or
/// fails (dpkg in the package tests, docker in the Compose tests, shiftctl in the tests).
pub fn run_ok(command: &mut std::process::Command) -> std::process::Output {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
