//! The Nginx instances a command acts on. Either local sockets (`--socket`), where one change
//! is applied to all of them or — on any failure — to none (what was applied is put back); or a
//! fleet behind etcd (`--etcd`, `etcd_fleet.rs`), where a change is one write of the desired
//! state that every host's agent applies.

use shift_wire::{NewPeer, PeerRemoval, Upstream, UpstreamPatch};
use std::time::Duration;

use shiftctl::desired::DesiredError;

use crate::client::{AdminClient, ClientError};
use crate::etcd_fleet::EtcdFleet;
use crate::etcd_store::StoreError;
use crate::plan;

/// The Nginx instances a command acts on.
pub enum Fleet {
    Sockets(Sockets),
    Etcd(Box<EtcdFleet>),
}

/// Nginx instances reached through their admin sockets.
pub struct Sockets {
    clients: Vec<AdminClient>,
}

/// A fleet change that did not happen everywhere.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Plan(String),
    #[error("{cause}; put back the {restored} Nginx(es) already changed, so nothing changed")]
    RolledBack { cause: ClientError, restored: usize },
    #[error(
        "{cause}; and putting back {socket} failed too ({restore_error}): the fleet is split, \
         check it with \"shiftctl status\""
    )]
    Split {
        cause: ClientError,
        socket: String,
        restore_error: Box<ClientError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Desired(#[from] DesiredError),
    #[error("{0}")]
    Partial(Laggards),
}

/// The hosts of an etcd fleet that do not have a change (`settle`): GONE ones (they joined
/// once; their agent no longer reports) and STALE ones (reporting, but behind or with a
/// problem of this upstream).
#[derive(Debug, Clone, Default)]
pub struct Laggards {
    pub upstream: String,
    /// The desired state's revision they lack.
    pub revision: i64,
    /// Whether this command wrote it (else the hosts were awaited before any write).
    pub written: bool,
    /// How many hosts report at all.
    pub reporting: usize,
    pub gone: Vec<String>,
    /// Each with why: its problem, or the revision it applied.
    pub stale: Vec<String>,
}

impl Laggards {
    pub fn is_empty(&self) -> bool {
        self.gone.is_empty() && self.stale.is_empty() && self.reporting > 0
    }

    /// What a command that went on without them adds to its outcome: "" when none lack it.
    pub fn outcome_note(&self) -> String {
        if self.is_empty() {
            String::new()
        } else {
            format!(
                " on the hosts that report; not yet on {} (--allow-partial)",
                self.hosts()
            )
        }
    }

    /// "GONE: a, b; STALE: c (why)".
    pub fn hosts(&self) -> String {
        let mut parts = Vec::new();
        if self.reporting == 0 {
            parts.push("no host reports at all".to_string());
        }
        if !self.gone.is_empty() {
            parts.push(format!("GONE: {}", self.gone.join(", ")));
        }
        if !self.stale.is_empty() {
            parts.push(format!("STALE: {}", self.stale.join(", ")));
        }
        parts.join("; ")
    }
}

impl std::fmt::Display for Laggards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let upstream = &self.upstream;
        let hosts = self.hosts();
        if self.written {
            write!(
                f,
                "revision {} of upstream \"{upstream}\" is written in etcd but not on every host \
                 ({hosts}): each takes it when its agent reports again or its problem is fixed; \
                 \"shiftctl status --fleet\" shows them (--allow-partial accepts a change that \
                 reached only the hosts that report)",
                self.revision
            )
        } else {
            write!(
                f,
                "not every host of the fleet has upstream \"{upstream}\" in sync ({hosts}): \
                 nothing was changed; bring them back, forget a host that left for good \
                 (\"etcdctl del PREFIX/members/HOST\"), or pass --allow-partial to go on with the \
                 hosts that report"
            )
        }
    }
}

impl FleetError {
    /// The client error behind this failure, if there is one.
    pub fn client_error(&self) -> Option<&ClientError> {
        match self {
            FleetError::Client(error) => Some(error),
            FleetError::RolledBack { cause, .. } | FleetError::Split { cause, .. } => Some(cause),
            FleetError::Plan(_)
            | FleetError::Store(_)
            | FleetError::Desired(_)
            | FleetError::Partial(_) => None,
        }
    }

    /// Someone else changed the upstream since it was read: running again may succeed.
    pub fn is_conflict(&self) -> bool {
        matches!(self, FleetError::Store(StoreError::Conflict { .. }))
            || self.client_error().and_then(ClientError::api_code) == Some("conflict")
    }
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

impl Sockets {
    /// The upstream as every Nginx has it, or the first failure.
    async fn read(&self, upstream: &str) -> Result<Vec<Upstream>, ClientError> {
        let mut states = Vec::with_capacity(self.clients.len());
        for client in &self.clients {
            states.push(client.upstream(upstream).await?);
        }
        Ok(states)
    }

    /// Applies the patch `make` returns for each Nginx's current state. Every Nginx is read
    /// first, so an unreachable one stops the change before anything is written; each PATCH
    /// carries the generation that was read, so a concurrent change is not overwritten.
    async fn apply<F>(&self, upstream: &str, make: F) -> Result<Vec<Upstream>, FleetError>
    where
        F: Fn(usize, &Upstream) -> Result<UpstreamPatch, String>,
    {
        let current = self.read(upstream).await?;
        let mut patches = Vec::with_capacity(current.len());
        for (index, state) in current.iter().enumerate() {
            let mut patch = make(index, state).map_err(FleetError::Plan)?;
            patch.expect_generation = Some(state.generation);
            patches.push(patch);
        }
        let mut applied = Vec::with_capacity(current.len());
        for (index, (client, patch)) in self.clients.iter().zip(&patches).enumerate() {
            match client.patch(upstream, patch).await {
                Ok(state) => applied.push(state),
                Err(cause) => return Err(self.put_back(upstream, &current[..index], cause).await),
            }
        }
        Ok(applied)
    }

    /// Adds `peer` to the upstream on every Nginx; on a failure it is removed again from those
    /// that took it.
    async fn add_peer(&self, upstream: &str, peer: &NewPeer) -> Result<Vec<Upstream>, FleetError> {
        self.each_or_undo(
            async |client, _| client.add_peer(upstream, peer).await,
            async |client, _| client.remove_peer(upstream, &peer.server).await.map(drop),
        )
        .await
    }

    /// Removes peer `server` from the upstream on every Nginx; on a failure it is added back,
    /// with the weight and state it had, where it was removed.
    async fn remove_peer(
        &self,
        upstream: &str,
        server: &str,
    ) -> Result<Vec<PeerRemoval>, FleetError> {
        let before = self.read(upstream).await?;
        let mut peers = Vec::with_capacity(before.len());
        for state in &before {
            let peer =
                plan::find_peer(state, server).map_err(|err| FleetError::Plan(err.to_string()))?;
            peers.push(NewPeer {
                server: server.to_string(),
                weight: Some(peer.weight),
                state: Some(peer.state),
                label: peer.label.clone(),
                expect_generation: None,
            });
        }
        self.each_or_undo(
            async |client, _| client.remove_peer(upstream, server).await,
            async |client, index| client.add_peer(upstream, &peers[index]).await.map(drop),
        )
        .await
    }

    /// Makes `change` on each Nginx in turn. When one fails, `undo` puts back those already
    /// changed, and the error says whether that worked.
    async fn each_or_undo<T>(
        &self,
        change: impl AsyncFn(&AdminClient, usize) -> Result<T, ClientError>,
        undo: impl AsyncFn(&AdminClient, usize) -> Result<(), ClientError>,
    ) -> Result<Vec<T>, FleetError> {
        let mut done = Vec::with_capacity(self.clients.len());
        for (index, client) in self.clients.iter().enumerate() {
            let cause = match change(client, index).await {
                Ok(value) => {
                    done.push(value);
                    continue;
                }
                Err(cause) => cause,
            };
            for (earlier, client) in self.clients[..index].iter().enumerate() {
                if let Err(restore_error) = undo(client, earlier).await {
                    let socket = client.socket().display().to_string();
                    return Err(FleetError::Split {
                        cause,
                        socket,
                        restore_error: Box::new(restore_error),
                    });
                }
            }
            return Err(if index == 0 {
                FleetError::Client(cause)
            } else {
                FleetError::RolledBack {
                    cause,
                    restored: index,
                }
            });
        }
        Ok(done)
    }

    /// Restores the Nginx instances that were changed before `cause` stopped the change.
    async fn put_back(
        &self,
        upstream: &str,
        before: &[Upstream],
        cause: ClientError,
    ) -> FleetError {
        for (client, state) in self.clients.iter().zip(before) {
            if let Err(restore_error) = client.patch(upstream, &plan::snapshot(state)).await {
                let socket = client.socket().display().to_string();
                return FleetError::Split {
                    cause,
                    socket,
                    restore_error: Box::new(restore_error),
                };
            }
        }
        if before.is_empty() {
            FleetError::Client(cause)
        } else {
            FleetError::RolledBack {
                cause,
                restored: before.len(),
            }
        }
    }
}
