//! A ready-made setup: backends, an Nginx with a `shift` upstream over them, and its API.

use std::collections::{BTreeMap, BTreeSet};

use crate::{free_port, shift_upstream_config, Admin, Backend, HttpClient, Nginx, NginxOptions};

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
