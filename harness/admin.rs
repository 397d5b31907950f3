//! A typed client of the admin API for tests, using the module's own wire types.

use std::path::{Path, PathBuf};

use shift_wire::{Peer, Upstream, UpstreamList};

use crate::client::{api_request, Response};

/// The admin API at a Unix socket, under a location prefix such as `/api/`.
pub struct Admin {
    socket: PathBuf,
    prefix: String,
}

impl Admin {
    pub fn new(socket: impl AsRef<Path>, prefix: &str) -> Admin {
        Admin {
            socket: socket.as_ref().to_path_buf(),
            prefix: prefix.to_string(),
        }
    }

    /// A raw request; `path` is relative to the prefix.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let full = format!("{}{path}", self.prefix);
        api_request(&self.socket, method, &full, body)
            .unwrap_or_else(|err| panic!("{method} {full} on {}: {err}", self.socket.display()))
    }

    pub fn upstreams(&self) -> UpstreamList {
        decode(self.request("GET", "upstreams", None))
    }

    pub fn upstream(&self, name: &str) -> Upstream {
        decode(self.request("GET", &format!("upstreams/{name}"), None))
    }

    /// The peers of upstream `name` that take new requests now.
    pub fn eligible(&self, name: &str) -> std::collections::BTreeSet<String> {
        self.upstream(name)
            .peers
            .into_iter()
            .filter(|peer| peer.eligible)
            .map(|peer| peer.server)
            .collect()
    }

    /// Peer `server` of upstream `name`, if it has it (a removed peer is no longer listed).
    pub fn peer(&self, name: &str, server: &str) -> Option<Peer> {
        self.upstream(name)
            .peers
            .into_iter()
            .find(|peer| peer.server == server)
    }

    /// The value of an unlabelled Prometheus metric of `GET metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let response = self.request("GET", "metrics", None);
        assert_eq!(response.status, 200, "metrics: {}", response.body);
        response.body.lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
    }

    /// Adds peer `server` to upstream `name` (`extra` JSON fields such as `"weight": 5`);
    /// returns the raw answer.
    pub fn add_peer(&self, name: &str, server: &str, extra: &str) -> Response {
        let body = if extra.is_empty() {
            format!(r#"{{"server": "{server}"}}"#)
        } else {
            format!(r#"{{"server": "{server}", {extra}}}"#)
        };
        self.request("POST", &format!("upstreams/{name}/peers"), Some(&body))
    }

    /// Removes peer `server` from upstream `name`; returns the raw answer.
    pub fn remove_peer(&self, name: &str, server: &str) -> Response {
        self.request("DELETE", &format!("upstreams/{name}/peers/{server}"), None)
    }

    /// PATCHes `body` and returns the raw answer.
    pub fn patch(&self, name: &str, body: &str) -> Response {
        self.request("PATCH", &format!("upstreams/{name}"), Some(body))
    }

    /// Sets weights (`server`, weight) and requires success: the whole upstream after it.
    pub fn set_weights(&self, name: &str, weights: &[(&str, u32)]) -> Upstream {
        let peers: serde_json::Map<String, serde_json::Value> = weights
            .iter()
            .map(|(server, weight)| (server.to_string(), serde_json::json!({ "weight": weight })))
            .collect();
        let body = serde_json::json!({ "peers": peers }).to_string();
        let path = format!("upstreams/{name}?full=1");
        decode(self.request("PATCH", &path, Some(&body)))
    }
}

fn decode<T: serde::de::DeserializeOwned>(response: Response) -> T {
    assert_eq!(
        response.status, 200,
        "admin API answered: {}",
        response.body
    );
    serde_json::from_str(&response.body)
        .unwrap_or_else(|err| panic!("admin API body does not parse ({err}): {}", response.body))
}
