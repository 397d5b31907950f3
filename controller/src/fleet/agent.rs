//! `shiftctl agent`: runs beside one Nginx and keeps its module at the fleet's desired state in
//! etcd. It watches the desired states from the revision it last applied, applies each change
//! through the local admin API, re-applies when the module drifts (a direct PATCH, an Nginx
//! restart without `state=`), and publishes what it applied under a lease, so that a host that
//! stops reporting is seen as gone.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use shift_wire::fleet::{DesiredUpstream, HostReport, Member, FORMAT};
use shift_wire::{Upstream, UpstreamPatch};
use shiftctl::fleet::desired::{self, WRITTEN_BY};
use shiftctl::fleet::report_policy::{self, Published};

use crate::client::{AdminClient, ClientError};
use crate::fleet::etcd::now_ms;
use crate::fleet::store::{DesiredSnapshot, Lease, Store, StoreError, Versioned};

/// How the agent runs: `shiftctl agent --host NAME [--lease 5s] [--every 1s]
/// [--report-every 30s]`.
pub struct AgentOptions {
    pub host: String,
    pub cadence: Cadence,
}

/// The agent's times.
pub struct Cadence {
    /// How long the host's report outlives the agent.
    pub lease: Duration,
    /// How often it checks its module for drift (and its report for what changed).
    pub every: Duration,
    /// How often a report whose counters alone moved is written (`report_policy`).
    pub report_every: Duration,
}

/// What the agent holds between events.
struct Agent {
    store: Store,
    admin: AdminClient,
    options: AgentOptions,
    desired: DesiredSnapshot,
    /// The last revision reported as applied.
    applied: i64,
    problems: Vec<String>,
    lease: Option<Lease>,
    /// The last report written, and when.
    published: Option<Published>,
    published_at: Instant,
}

/// Runs until the process is stopped: every failure (etcd or Nginx away) is waited out.
pub async fn run(store: Store, admin: AdminClient, options: AgentOptions) -> Infallible {
    let mut agent = Agent {
        store,
        admin,
        options,
        desired: DesiredSnapshot::default(),
        applied: 0,
        problems: Vec::new(),
        lease: None,
        published: None,
        published_at: Instant::now(),
    };
    log(&format!(
        "{WRITTEN_BY}, reading desired states up to format {FORMAT}"
    ));
    let mut resume = agent.resume_revision().await;
    loop {
        // Each pass: a consistent snapshot, then its changes as they come, until the watch
        // breaks (etcd restarted or unreachable, or compacted past us).
        match agent.follow(resume).await {
            Ok(()) => {}
            Err(StoreError::Compacted { revision }) => {
                log(&format!(
                    "revision {revision} was compacted in etcd: re-listing the desired states"
                ));
            }
            Err(err) => {
                log(&format!("{err}; retrying every second"));
                agent.work_offline().await;
            }
        }
        resume = None;
    }
}

/// How long a reconnection attempt may take while etcd is away, between two repairs.
const RECONNECT_WAIT: Duration = Duration::from_secs(1);

fn log(message: &str) {
    eprintln!("shiftctl agent: {message}");
}

/// What keeps this host from the desired state: of the whole host (its Nginx unreachable), or
/// of one upstream (a key it cannot read, a peer its config lacks), which holds back only that
/// upstream's commands.
#[derive(Default)]
struct Problems {
    host: Vec<String>,
    upstreams: BTreeMap<String, Vec<String>>,
}

impl Problems {
    fn of_host(&mut self, problem: String) {
        self.host.push(problem);
    }

    fn of_upstream(&mut self, upstream: &str, problem: String) {
        self.upstreams
            .entry(upstream.to_string())
            .or_default()
            .push(problem);
    }

    /// Every problem (the report's `problems`), and those of each upstream.
    fn into_report(self) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
        let mut all = self.host;
        all.extend(self.upstreams.values().flatten().cloned());
        (all, self.upstreams)
    }
}

impl Agent {
    /// The revision this host applied before the agent (re)started, if it joined before.
    async fn resume_revision(&self) -> Option<i64> {
        match self.store.member(&self.options.host).await {
            Ok(Some(member)) if member.applied_revision > 0 => Some(member.applied_revision),
            _ => None,
        }
    }

    /// While etcd is away: keeps putting back the last desired state it knows (an Nginx that
    /// restarts meanwhile starts from its config), every `--every` (at most every second),
    /// and returns once etcd answers again.
    async fn work_offline(&mut self) {
        if !self.desired.upstreams.is_empty() {
            log(&format!(
                "working from the copy of the desired states at revision {} until etcd answers",
                self.desired.revision
            ));
        }
        loop {
            let mut problems = Problems::default();
            if let Ok(list) = self.admin.upstreams().await {
                self.apply_all(list.upstreams, &mut problems).await;
            }
            // A pause before each attempt, so that a watch that keeps failing while reads
            // answer is not retried in a tight loop.
            tokio::time::sleep(self.options.cadence.every.min(RECONNECT_WAIT)).await;
            let attempt =
                tokio::time::timeout(RECONNECT_WAIT, self.store.member(&self.options.host)).await;
            // Any answer (a member key it cannot read included) means etcd is back.
            let away = matches!(
                attempt,
                Err(_)
                    | Ok(Err(
                        StoreError::Unreachable { .. } | StoreError::NotEtcd { .. }
                    ))
            );
            if !away {
                log("etcd answers again");
                return;
            }
        }
    }

    /// Lists the desired states (as of `resume`, or now), applies them, then follows their
    /// changes. Returns on a broken watch.
    async fn follow(&mut self, resume: Option<i64>) -> Result<(), StoreError> {
        self.desired = self.store.desired_snapshot(resume).await?;
        match resume {
            Some(revision) => log(&format!("resuming from revision {revision}")),
            None => log(&format!(
                "listed {} desired state(s) at revision {}",
                self.desired.upstreams.len(),
                self.desired.revision
            )),
        }
        self.converge(self.desired.revision).await;
        let mut watch = self.store.watch_desired(self.desired.revision + 1).await?;
        let mut tick = tokio::time::interval(self.options.cadence.every);
        loop {
            tokio::select! {
                message = watch.message() => {
                    let response = match message {
                        Ok(Some(response)) => response,
                        Ok(None) => return Err(StoreError::Etcd("the watch ended".into())),
                        Err(err) => return Err(StoreError::Etcd(err.to_string())),
                    };
                    if response.compact_revision() > 0 {
                        let revision = self.desired.revision + 1;
                        return Err(StoreError::Compacted { revision });
                    }
                    if response.canceled() {
                        let reason = response.cancel_reason().to_string();
                        return Err(StoreError::Etcd(format!("the watch was canceled: {reason}")));
                    }
                    // The revision to report is that of the newest change taken, never a
                    // response header's: the first response (the watch "created") carries the
                    // store's newest revision before the changes up to it have arrived.
                    for event in response.events() {
                        self.take_event(event);
                        if let Some(kv) = event.kv() {
                            self.desired.revision = self.desired.revision.max(kv.mod_revision());
                        }
                    }
                    if !response.events().is_empty() {
                        self.converge(self.desired.revision).await;
                    }
                }
                _ = tick.tick() => {
                    self.converge(self.desired.revision).await;
                }
            }
        }
    }

    fn take_event(&mut self, event: &etcd_client::Event) {
        let Some(kv) = event.kv() else { return };
        let Some(upstream) = self.store.upstream_of(kv.key()).map(str::to_string) else {
            return;
        };
        self.desired.unreadable.remove(&upstream);
        if event.event_type() == etcd_client::EventType::Delete {
            self.desired.upstreams.remove(&upstream);
            return;
        }
        match serde_json::from_slice::<DesiredUpstream>(kv.value()) {
            Ok(value) => {
                let mod_revision = kv.mod_revision();
                let versioned = Versioned {
                    value,
                    mod_revision,
                };
                self.desired.upstreams.insert(upstream, versioned);
            }
            // As a restarted agent's listing does: the last one it could read stays, and the
            // key is a problem until it is fixed.
            Err(err) => {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let why = StoreError::BadValue {
                    key,
                    reason: err.to_string(),
                };
                self.desired.unreadable.insert(upstream, why.to_string());
            }
        }
    }

    /// Brings the module to every desired state, then reports. Called on every change and
    /// every tick: when nothing drifted, it only reads the module and refreshes the report.
    async fn converge(&mut self, revision: i64) {
        let mut problems = Problems::default();
        for (upstream, why) in &self.desired.unreadable {
            problems.of_upstream(upstream, why.clone());
        }
        let (reached, upstreams) = match self.admin.upstreams().await {
            Ok(list) => self.apply_all(list.upstreams, &mut problems).await,
            Err(err) => {
                problems.of_host(err.to_string());
                (false, Vec::new())
            }
        };
        if reached && revision != self.applied {
            self.applied = revision;
            let member = Member {
                host: self.options.host.clone(),
                applied_revision: revision,
                written_by: WRITTEN_BY.to_string(),
            };
            if let Err(err) = self.store.put_member(&member).await {
                log(&err.to_string());
            }
        }
        let (problems, upstream_problems) = problems.into_report();
        if problems != self.problems {
            for problem in &problems {
                log(problem);
            }
            self.problems = problems.clone();
        }
        let report = HostReport {
            host: self.options.host.clone(),
            written_by: WRITTEN_BY.to_string(),
            applied_revision: self.applied,
            upstreams,
            problems,
            upstream_problems,
            reported_ms: now_ms(),
        };
        if let Err(err) = self.publish(&report).await {
            log(&format!("cannot publish this host's report: {err}"));
        }
    }

    /// Applies every desired state to the module, whose upstreams are `local`. Returns whether
    /// the module answered throughout, and its upstreams as they are now (read again only when
    /// something changed).
    async fn apply_all(
        &self,
        local: Vec<Upstream>,
        problems: &mut Problems,
    ) -> (bool, Vec<Upstream>) {
        let mut reached = true;
        let mut changed = false;
        for (name, desired) in &self.desired.upstreams {
            let Some(upstream) = local.iter().find(|upstream| &upstream.name == name) else {
                problems.of_upstream(
                    name,
                    format!(
                        "this Nginx has no shift upstream {name}: its config differs from the \
                         other hosts'"
                    ),
                );
                continue;
            };
            if desired.value.is_newer_than_this_build() {
                // It applies the weights and states it knows, and says what it may miss.
                problems.of_upstream(name, newer_format(name, &desired.value));
            }
            let mut plan_problems = Vec::new();
            match apply(&self.admin, upstream, &desired.value, &mut plan_problems).await {
                Ok(did) => changed |= did,
                Err(err) if err.is_unreachable() => {
                    reached = false;
                    problems.of_host(err.to_string());
                }
                Err(err) => problems.of_upstream(name, err.to_string()),
            }
            for problem in plan_problems {
                problems.of_upstream(name, problem);
            }
        }
        if !changed {
            return (reached, local);
        }
        // Applied means read back from the module: only then is its revision reported.
        match self.admin.upstreams().await {
            Ok(list) => {
                let confirmed = self.desired.upstreams.iter().all(|(name, desired)| {
                    list.upstreams
                        .iter()
                        .find(|upstream| &upstream.name == name)
                        .is_none_or(|upstream| {
                            desired::converge(&desired.value, upstream).is_done()
                        })
                });
                if !confirmed {
                    problems.of_host(
                        "the module does not show every applied change yet (read back after \
                         applying); trying again"
                            .to_string(),
                    );
                }
                (reached && confirmed, list.upstreams)
            }
            Err(err) => {
                problems.of_host(err.to_string());
                (false, local)
            }
        }
    }

    /// Writes the report under the agent's lease when `report_policy` says it is worth a
    /// revision, taking a new lease when the old one is lost.
    async fn publish(&mut self, report: &HostReport) -> Result<(), StoreError> {
        if self.lease.as_ref().is_none_or(Lease::is_lost) {
            self.lease = Some(self.store.lease(self.options.cadence.lease).await?);
        }
        let lease = self.lease.as_ref().expect("lease just taken").id;
        let wanted = self.store.fresh_reports_wanted().await;
        let due = report_policy::decide(
            self.published.as_ref(),
            report,
            lease,
            self.published_at.elapsed(),
            self.options.cadence.report_every,
            wanted,
        );
        if due.is_none() {
            return Ok(());
        }
        let written = self.store.put_report(report, lease).await;
        match written {
            Ok(()) => {
                self.published = Some(Published {
                    report: report.clone(),
                    lease,
                });
                self.published_at = Instant::now();
            }
            // Most likely the lease expired while etcd was away: the next report takes a new one.
            Err(_) => self.lease = None,
        }
        written
    }
}

/// What an agent older than a desired state says about it.
fn newer_format(upstream: &str, desired: &DesiredUpstream) -> String {
    let writer = if desired.written_by.is_empty() {
        "a newer writer"
    } else {
        &desired.written_by
    };
    format!(
        "the desired state of upstream {upstream} is in format {}, written by {writer}; this \
         agent ({WRITTEN_BY}) reads format {FORMAT}: it applied the weights, states and labels it \
         knows and may miss the rest; upgrade shiftctl on this host",
        desired.format
    )
}

/// Applies one upstream's desired state to the local module, whose upstream is `local`:
/// run-time peers added first (so that the patch can name them), then one PATCH, then run-time
/// peers removed. What cannot be done (a server line this host's config lacks) goes to
/// `problems`. Returns whether it changed anything.
async fn apply(
    admin: &AdminClient,
    local: &Upstream,
    desired: &DesiredUpstream,
    problems: &mut Vec<String>,
) -> Result<bool, ClientError> {
    let plan = desired::converge(desired, local);
    problems.extend(plan.problems.iter().cloned());
    if plan.is_done() {
        return Ok(false);
    }
    let upstream = local.name.as_str();
    for peer in &plan.add {
        admin.add_peer(upstream, peer).await?;
    }
    if !plan.patch.is_empty() {
        let patch = UpstreamPatch {
            peers: plan.patch.clone(),
            expect_generation: None,
        };
        admin.patch_named(upstream, &patch).await?;
    }
    for server in &plan.remove {
        admin.remove_peer(upstream, server).await?;
    }
    log(&format!(
        "applied upstream {upstream}: {} added, {} changed, {} removed",
        plan.add.len(),
        plan.patch.len(),
        plan.remove.len()
    ));
    Ok(true)
}
