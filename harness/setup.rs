//! A ready-made setup: backends, an Nginx with a `shift` upstream over them, and its API.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{
    free_port, shift_upstream_config, shiftctl_command, Admin, Backend, HttpClient, Nginx,
    NginxOptions,
};

/// Backends, an Nginx (two workers) with upstream `app` over them, and its admin API.
pub struct ShiftSetup {
    pub nginx: Nginx,
    pub admin: Admin,
    /// The traffic port.
    pub port: u16,
    pub backends: Vec<Backend>,
}

impl ShiftSetup {
    /// Backends named `names` (with extra `server` parameters), an upstream `app` over them
    /// with `shift SHIFT_ARGS`, and the API (`shift_api API_ARGS`), as `shift_upstream_config`.
    pub fn start(names: &[(&str, &str)], shift_args: &str, api_args: &str) -> ShiftSetup {
        ShiftSetup::start_with(names, shift_args, api_args, |options| options)
    }

    /// As `start`, with Nginx's options adjusted by `adjust` (e.g. `NginxOptions::daemon`).
    pub fn start_with(
        names: &[(&str, &str)],
        shift_args: &str,
        api_args: &str,
        adjust: impl FnOnce(NginxOptions) -> NginxOptions,
    ) -> ShiftSetup {
        let backends: Vec<Backend> = names.iter().map(|(name, _)| Backend::start(name)).collect();
        let servers: Vec<(String, &str)> = backends
            .iter()
            .zip(names)
            .map(|(backend, (_, params))| (backend.addr().to_string(), *params))
            .collect();
        let port = free_port();
        let nginx = Nginx::start(adjust(NginxOptions::new(shift_upstream_config(
            &servers, shift_args, api_args, port,
        ))));
        let admin = Admin::new(nginx.path("api.sock"), "/api/");
        ShiftSetup {
            nginx,
            admin,
            port,
            backends,
        }
    }

    /// The address of backend `index`.
    pub fn addr(&self, index: usize) -> String {
        self.backends[index].addr().to_string()
    }

    /// `count` requests, each on a new connection so that both workers take some; returns who
    /// answered how often, and which workers served them.
    pub fn spread(&self, count: usize) -> (BTreeMap<String, usize>, BTreeSet<String>) {
        let mut served = BTreeMap::new();
        let mut workers = BTreeSet::new();
        for _ in 0..count {
            let response = HttpClient::new(self.port)
                .get("/")
                .expect("request through nginx");
            assert_eq!(response.status, 200, "answer: {}", response.body);
            workers.extend(response.header("X-Worker").map(str::to_string));
            *served.entry(response.body).or_default() += 1;
        }
        (served, workers)
    }
}

/// Two versions behind upstream `app`: blue (up) and green (a standby `down` line), with
/// `shift` and `upstream_extra` directives; a traffic port that keeps upstream connections
/// alive and names the answering worker in `X-Worker`; the admin API on `{prefix}/api.sock`
/// under `/api/`. Nginx runs two workers.
pub struct BlueGreen {
    pub nginx: Nginx,
    pub admin: Admin,
    /// The traffic port.
    pub port: u16,
    pub blue: Backend,
    pub green: Backend,
}

impl BlueGreen {
    pub fn start(upstream_extra: &str) -> BlueGreen {
        BlueGreen::start_with(|_, _| upstream_extra.to_string())
    }

    /// As `start`, with upstream directives that name the backends (e.g. their labels).
    pub fn start_with(upstream_extra: impl FnOnce(&Backend, &Backend) -> String) -> BlueGreen {
        let (blue, green) = (Backend::start("blue"), Backend::start("green"));
        let port = free_port();
        let extra = upstream_extra(&blue, &green);
        let config = BlueGreen::config(&blue, &green, &extra, port);
        let nginx = Nginx::start(NginxOptions::new(config));
        let admin = Admin::new(nginx.path("api.sock"), "/api/");
        BlueGreen {
            nginx,
            admin,
            port,
            blue,
            green,
        }
    }

    /// Where `shiftctl` keeps this site's stable set and deploy state: in the Nginx prefix.
    pub fn state_dir(&self) -> PathBuf {
        self.nginx.path("shiftctl")
    }

    /// `shiftctl ARGS` against this site's API and state directory, with stdin closed.
    pub fn shiftctl(&self, args: &[&str]) -> Command {
        let mut command = shiftctl_command(&[self.nginx.path("api.sock")], Some(&self.state_dir()));
        command.args(args).stdin(Stdio::null());
        command
    }

    /// The `http {}` body `start` uses, for a reload with other directives.
    pub fn config(blue: &Backend, green: &Backend, upstream_extra: &str, port: u16) -> String {
        format!(
            "upstream app {{\n    server {};\n    server {} down;\n    shift;\n    \
             {upstream_extra}\n}}\n\
             server {{\n    listen 127.0.0.1:{port};\n    location / {{\n        \
             proxy_pass http://app;\n        proxy_http_version 1.1;\n        \
             proxy_set_header Connection \"\";\n        add_header X-Worker $pid always;\n    \
             }}\n}}\n\
             server {{\n    listen unix:{{prefix}}/api.sock;\n    location /api/ {{ shift_api; }}\n}}\n",
            blue.addr(),
            green.addr()
        )
    }
}
