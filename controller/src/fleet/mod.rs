//! The Nginx instances a command acts on, and how it reaches them: local sockets (`--socket`,
//! `sockets.rs`), where one change is applied to all of them or — on any failure — to none; or
//! a fleet behind etcd (`--etcd`, `etcd.rs` over `store.rs`), where a change is one write of the
//! desired state that every host's agent (`agent.rs`) applies.
//!
//! What the fleet decides without etcd or Nginx — the desired state (`desired.rs`), when an
//! agent reports (`report_policy.rs`) and the fleet's status (`status.rs`) — is the library's
//! (`shiftctl::fleet`), tested on its own.

pub mod agent;
pub mod error;
pub mod etcd;
mod not_etcd;
pub mod sockets;
pub mod store;

use shift_wire::{NewPeer, PeerRemoval, Upstream, UpstreamPatch};
use std::time::Duration;

use crate::client::AdminClient;
pub use error::{FleetError, Laggards};
use etcd::EtcdFleet;
use sockets::Sockets;

/// The Nginx instances a command acts on.
pub enum Fleet {
    Sockets(Sockets),
    Etcd(Box<EtcdFleet>),
}

impl Fleet {
    pub fn sockets(clients: Vec<AdminClient>) -> Fleet {
        assert!(!clients.is_empty(), "a fleet has at least one Nginx");
        Fleet::Sockets(Sockets { clients })
    }

    /// The local Nginx instances, for the commands that only read sockets (`metrics`).
    pub fn clients(&self) -> Result<&[AdminClient], FleetError> {
        match self {
            Fleet::Sockets(sockets) => Ok(&sockets.clients),
            Fleet::Etcd(_) => Err(FleetError::Plan(
                "this command reads Nginx's admin sockets: give --socket, not --etcd".into(),
            )),
        }
    }

    /// What each of the upstreams the last read returned comes from: a socket, or a host.
    pub fn sources(&self, count: usize) -> Vec<String> {
        match self {
            Fleet::Sockets(sockets) => sockets
                .clients
                .iter()
                .map(|client| client.socket().display().to_string())
                .collect(),
            Fleet::Etcd(etcd) => etcd.sources(count),
        }
    }

    /// How many states a stable set records: one per socket, or the one desired state.
    pub fn width(&self) -> usize {
        match self {
            Fleet::Sockets(sockets) => sockets.clients.len(),
            Fleet::Etcd(_) => 1,
        }
    }

    /// Returns once every Nginx has the last change: at once for sockets (a PATCH is applied
    /// when it is answered); with --etcd, once every live host's agent applied it, or after
    /// `timeout`, with the hosts that have not.
    pub async fn settle(&self, upstream: &str, timeout: Duration) -> Result<Laggards, FleetError> {
        match self {
            Fleet::Sockets(sockets) => Ok(Laggards {
                upstream: upstream.to_string(),
                reporting: sockets.clients.len(),
                ..Default::default()
            }),
            Fleet::Etcd(etcd) => etcd.settle(upstream, timeout).await,
        }
    }

    /// The upstream as every Nginx has it (with --etcd: every live host reports it).
    pub async fn read(&self, upstream: &str) -> Result<Vec<Upstream>, FleetError> {
        match self {
            Fleet::Sockets(sockets) => Ok(sockets.read(upstream).await?),
            Fleet::Etcd(etcd) => etcd.read(upstream).await,
        }
    }

    /// Applies the patch `make` returns for each Nginx's current state (with --etcd: for the
    /// desired state, once).
    pub async fn apply<F>(&self, upstream: &str, make: F) -> Result<Vec<Upstream>, FleetError>
    where
        F: Fn(usize, &Upstream) -> Result<UpstreamPatch, String>,
    {
        match self {
            Fleet::Sockets(sockets) => sockets.apply(upstream, make).await,
            Fleet::Etcd(etcd) => etcd.apply(upstream, make).await,
        }
    }

    /// Applies `patch`, which does not depend on the current state (`set`'s weights). One Nginx
    /// takes it in one request: a PATCH is all or nothing, and reading the upstream first would
    /// only add a round trip. Several are read first, as `apply` does, so that an unreachable one
    /// stops the change before anything is written.
    pub async fn apply_patch(
        &self,
        upstream: &str,
        patch: &UpstreamPatch,
    ) -> Result<Vec<Upstream>, FleetError> {
        match self {
            Fleet::Sockets(sockets) if sockets.clients.len() == 1 => {
                Ok(vec![sockets.clients[0].patch(upstream, patch).await?])
            }
            _ => self.apply(upstream, |_, _| Ok(patch.clone())).await,
        }
    }

    pub async fn add_peer(
        &self,
        upstream: &str,
        peer: &NewPeer,
    ) -> Result<Vec<Upstream>, FleetError> {
        match self {
            Fleet::Sockets(sockets) => sockets.add_peer(upstream, peer).await,
            Fleet::Etcd(etcd) => etcd.add_peer(upstream, peer).await,
        }
    }

    /// Removes a run-time peer. With --etcd the hosts' agents remove it (its requests in flight
    /// end normally there), so there is no removal per Nginx to report.
    pub async fn remove_peer(
        &self,
        upstream: &str,
        server: &str,
    ) -> Result<Vec<PeerRemoval>, FleetError> {
        match self {
            Fleet::Sockets(sockets) => sockets.remove_peer(upstream, server).await,
            Fleet::Etcd(etcd) => etcd.remove_peer(upstream, server).await.map(|_| Vec::new()),
        }
    }
}
