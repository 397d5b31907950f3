//! A fleet behind etcd (`--etcd`): commands read what the hosts' agents report and change the
//! upstream's desired state, in one compare-and-swap on the revision they read; every host's
//! agent then applies it (`agent.rs`).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shift_wire::fleet::{DesiredUpstream, HostReport};
use shift_wire::{NewPeer, Upstream, UpstreamPatch};
use shiftctl::fleet::desired;

use super::error::{FleetError, Laggards};
use super::store::{Lease, Store, StoreError, Versioned};

pub struct EtcdFleet {
    store: Store,
    /// The hosts the last read returned upstreams of, in order (what the output names them).
    last_sources: Mutex<Vec<String>>,
    /// The revision of this command's last write: what `settle` waits for.
    last_write: Mutex<i64>,
    /// Held from this command's first read of the hosts: the agents then report their
    /// counters as they move (`report_policy`), for the canary's verdicts and drains.
    fresh_reports: Mutex<Option<Lease>>,
}

/// How long the agents keep reporting fresh counters after a command stopped asking.
const FRESH_REPORTS_TTL: Duration = Duration::from_secs(5);

/// How long a read waits for an etcd that went away (restarted, a leader election).
const ETCD_OUTAGE: Duration = Duration::from_secs(15);

/// Now, in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or_default()
}

impl EtcdFleet {
    pub fn new(store: Store) -> EtcdFleet {
        EtcdFleet {
            store,
            last_sources: Mutex::new(Vec::new()),
            last_write: Mutex::new(0),
            fresh_reports: Mutex::new(None),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn sources(&self, count: usize) -> Vec<String> {
        let sources = self.last_sources.lock().expect("sources lock").clone();
        if sources.len() == count {
            sources
        } else {
            vec!["desired state in etcd".to_string(); count]
        }
    }

    fn remember(&self, sources: Vec<String>) {
        *self.last_sources.lock().expect("sources lock") = sources;
    }

    /// From the first read on, asks the agents for fresh counters (a failure only leaves
    /// counters up to `--report-every` old).
    pub async fn ask_for_fresh_reports(&self) {
        // Again when its lease was lost (etcd restarted, a leader changed): the key went with it.
        let held = self
            .fresh_reports
            .lock()
            .expect("fresh reports lock")
            .as_ref()
            .is_some_and(|lease| !lease.is_lost());
        if held {
            return;
        }
        if let Ok(lease) = self.store.want_fresh_reports(FRESH_REPORTS_TTL).await {
            *self.fresh_reports.lock().expect("fresh reports lock") = Some(lease);
        }
    }

    /// The live hosts' reports. An etcd that answered this command before and is now
    /// unreachable (restarted, electing a leader) is waited for, up to `ETCD_OUTAGE`; one that
    /// never answered fails at once, as every command's first contact does.
    async fn reports(&self) -> Result<Vec<HostReport>, StoreError> {
        let deadline = Instant::now() + ETCD_OUTAGE;
        loop {
            match self.store.reports().await {
                Err(StoreError::Unreachable { .. })
                    if self.store.has_answered() && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                result => return result,
            }
        }
    }

    /// Waits until every live host applied this command's last write (or, before any, the
    /// upstream's current desired state) with no problem of this upstream, or `timeout`
    /// passed. Returns the hosts without it: those still behind, and those that joined once
    /// and no longer report (GONE), which it does not wait for.
    pub async fn settle(&self, upstream: &str, timeout: Duration) -> Result<Laggards, FleetError> {
        let target = self.settle_target(upstream).await?;
        let deadline = Instant::now() + timeout;
        loop {
            let reports = self.reports().await?;
            let stale: Vec<String> = reports
                .iter()
                .filter_map(|report| {
                    let problems = report.problems_of(upstream);
                    if let Some(problem) = problems.first() {
                        return Some(format!("{} ({problem})", report.host));
                    }
                    (report.applied_revision < target).then(|| {
                        format!(
                            "{} (applied revision {}, not yet {target})",
                            report.host, report.applied_revision
                        )
                    })
                })
                .collect();
            let done = stale.is_empty() && !reports.is_empty();
            if done || Instant::now() >= deadline {
                let members = self.store.members().await?;
                let gone = members
                    .into_iter()
                    .map(|member| member.host)
                    .filter(|host| !reports.iter().any(|report| &report.host == host))
                    .collect();
                return Ok(Laggards {
                    upstream: upstream.to_string(),
                    revision: target,
                    written: *self.last_write.lock().expect("last write lock") != 0,
                    reporting: reports.len(),
                    gone,
                    stale,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The revision `settle` waits for: this command's last write, or before any the
    /// upstream's current desired state.
    async fn settle_target(&self, upstream: &str) -> Result<i64, FleetError> {
        let written = *self.last_write.lock().expect("last write lock");
        if written != 0 {
            return Ok(written);
        }
        let desired = self.store.desired(upstream).await?;
        Ok(desired.map_or(0, |desired| desired.mod_revision))
    }

    /// The upstream as each live host reports it, by host name.
    pub async fn read(&self, upstream: &str) -> Result<Vec<Upstream>, FleetError> {
        self.ask_for_fresh_reports().await;
        let reports = self.reports().await?;
        let (hosts, states) = hosts_with(&reports, upstream);
        if states.is_empty() {
            return Err(FleetError::Plan(format!(
                "no live host reports upstream \"{upstream}\": is a \"shiftctl agent\" running \
                 beside each Nginx, with the same --etcd-prefix? (\"shiftctl status --fleet\")"
            )));
        }
        self.remember(hosts);
        Ok(states)
    }

    /// The desired state and the revision it was read at; without one yet, the state the
    /// first live host has (read at revision 0: the write then requires that none appeared).
    async fn current(
        &self,
        upstream: &str,
    ) -> Result<(Versioned<DesiredUpstream>, Upstream), FleetError> {
        let hosts = self.read(upstream).await?;
        let host_view = hosts[0].clone();
        let desired = match self.store.desired(upstream).await? {
            Some(desired) => desired,
            None => Versioned {
                value: desired::from_upstream(&host_view, now_ms()),
                mod_revision: 0,
            },
        };
        Ok((desired, host_view))
    }

    async fn write(
        &self,
        upstream: &str,
        next: &DesiredUpstream,
        read_revision: i64,
        host_view: &Upstream,
    ) -> Result<Vec<Upstream>, FleetError> {
        let revision = self
            .store
            .write_desired(upstream, next, read_revision)
            .await?;
        *self.last_write.lock().expect("last write lock") = revision;
        self.remember(vec!["desired state in etcd".to_string()]);
        Ok(vec![desired::overlay(next, host_view)])
    }

    pub async fn apply<F>(&self, upstream: &str, make: F) -> Result<Vec<Upstream>, FleetError>
    where
        F: Fn(usize, &Upstream) -> Result<UpstreamPatch, String>,
    {
        let (current, host_view) = self.current(upstream).await?;
        let view = desired::overlay(&current.value, &host_view);
        let patch = make(0, &view).map_err(FleetError::Plan)?;
        let next = desired::patched(&current.value, &patch, now_ms())?;
        self.write(upstream, &next, current.mod_revision, &host_view)
            .await
    }

    pub async fn add_peer(
        &self,
        upstream: &str,
        peer: &NewPeer,
    ) -> Result<Vec<Upstream>, FleetError> {
        let (current, host_view) = self.current(upstream).await?;
        let next = desired::with_peer(&current.value, peer, now_ms())?;
        self.write(upstream, &next, current.mod_revision, &host_view)
            .await
    }

    pub async fn remove_peer(
        &self,
        upstream: &str,
        server: &str,
    ) -> Result<Vec<Upstream>, FleetError> {
        let (current, host_view) = self.current(upstream).await?;
        let next = desired::without_peer(&current.value, server, now_ms())?;
        self.write(upstream, &next, current.mod_revision, &host_view)
            .await
    }
}

/// The hosts whose reports have `upstream`, and its state on each, sorted by host.
fn hosts_with(reports: &[HostReport], upstream: &str) -> (Vec<String>, Vec<Upstream>) {
    let mut found: Vec<(String, Upstream)> = reports
        .iter()
        .filter_map(|report| {
            let state = report.upstreams.iter().find(|u| u.name == upstream)?;
            Some((report.host.clone(), state.clone()))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.into_iter().unzip()
}
