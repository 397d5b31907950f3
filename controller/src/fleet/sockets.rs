//! Nginx instances reached through their admin sockets (`--socket`, once or more): a change
//! is applied to all of them or — on any failure — to none (what was applied is put back).

use shift_wire::{NewPeer, PeerRemoval, Upstream, UpstreamPatch};

use super::error::FleetError;
use crate::client::{AdminClient, ClientError};
use crate::plan;

/// Nginx instances reached through their admin sockets.
pub struct Sockets {
    pub(super) clients: Vec<AdminClient>,
}

impl Sockets {
    /// The upstream as every Nginx has it, or the first failure.
    pub(super) async fn read(&self, upstream: &str) -> Result<Vec<Upstream>, ClientError> {
        let mut states = Vec::with_capacity(self.clients.len());
        for client in &self.clients {
            states.push(client.upstream(upstream).await?);
        }
        Ok(states)
    }

    /// Applies the patch `make` returns for each Nginx's current state. Every Nginx is read
    /// first, so an unreachable one stops the change before anything is written; each PATCH
    /// carries the generation that was read, so a concurrent change is not overwritten.
    pub(super) async fn apply<F>(
        &self,
        upstream: &str,
        make: F,
    ) -> Result<Vec<Upstream>, FleetError>
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
    pub(super) async fn add_peer(
        &self,
        upstream: &str,
        peer: &NewPeer,
    ) -> Result<Vec<Upstream>, FleetError> {
        self.each_or_undo(
            async |client, _| client.add_peer(upstream, peer).await,
            async |client, _| client.remove_peer(upstream, &peer.server).await.map(drop),
        )
        .await
    }

    /// Removes peer `server` from the upstream on every Nginx; on a failure it is added back,
    /// with the weight and state it had, where it was removed.
    pub(super) async fn remove_peer(
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
                slow_start: None,
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
