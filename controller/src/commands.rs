//! The commands, over a fleet of one or more Nginx instances.

use std::collections::BTreeMap;
use std::fs;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shift_wire::{Health, Peer, PeerPatch, PeerState, Upstream, UpstreamPatch, MAX_WEIGHT};
use tokio::io::AsyncBufReadExt;
use tokio::signal::unix::{signal, SignalKind};

use crate::client::ClientError;
use crate::fleet::{Fleet, FleetError};
use crate::plan::{self, PlanError};
use crate::progress::Progress;

/// How often long commands look at the upstream.
const POLL: Duration = Duration::from_millis(250);

/// A command's failure: what to say, and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

pub const EXIT_ABORTED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

impl Failure {
    pub fn aborted(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: EXIT_ABORTED,
            error: error.into(),
        }
    }

    pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            error: error.into(),
        }
    }
}

fn client_exit_code(error: &ClientError) -> u8 {
    match error {
        // Something other than nginx-shift answering is as good as nothing answering.
        ClientError::Unreachable { .. } | ClientError::Unexpected { .. } => EXIT_UNREACHABLE,
        ClientError::BadName { .. } => EXIT_USAGE,
        ClientError::Api {
            status: 400 | 404 | 405 | 413,
            ..
        } => EXIT_USAGE,
        _ => EXIT_ABORTED,
    }
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Failure {
        Failure {
            code: client_exit_code(&error),
            error: error.into(),
        }
    }
}

impl From<FleetError> for Failure {
    fn from(error: FleetError) -> Failure {
        let code = match &error {
            FleetError::Plan(_) => EXIT_USAGE,
            FleetError::Client(cause) => client_exit_code(cause),
            FleetError::RolledBack { cause, .. } if cause.is_unreachable() => EXIT_UNREACHABLE,
            FleetError::RolledBack { .. } | FleetError::Split { .. } => EXIT_ABORTED,
        };
        Failure {
            code,
            error: error.into(),
        }
    }
}

impl From<PlanError> for Failure {
    fn from(error: PlanError) -> Failure {
        let code = match error {
            PlanError::UnknownPeer { .. } => EXIT_USAGE,
            _ => EXIT_ABORTED,
        };
        Failure {
            code,
            error: error.into(),
        }
    }
}

/// What every command gets.
pub struct Ctx {
    pub fleet: Fleet,
    pub json: bool,
    pub state_dir: PathBuf,
    pub progress: Progress,
}

impl Ctx {
    /// Prints one value per Nginx as a JSON array of `{"socket": ..., key: value}`.
    fn print_json_per_socket<T: serde::Serialize>(&self, key: &str, values: &[T]) {
        let entries: Vec<_> = self
            .fleet
            .clients()
            .iter()
            .zip(values)
            .map(|(client, value)| {
                serde_json::json!({ "socket": client.socket().display().to_string(), key: value })
            })
            .collect();
        let json = serde_json::to_string_pretty(&entries).expect("JSON of wire types");
        println!("{json}");
    }

    fn print_upstreams(&self, upstreams: &[Upstream]) {
        if self.json {
            self.print_json_per_socket("upstream", upstreams);
            return;
        }
        for (client, upstream) in self.fleet.clients().iter().zip(upstreams) {
            if self.fleet.clients().len() > 1 {
                println!("# {}", client.socket().display());
            }
            print!("{}", render_table(upstream));
        }
    }

    fn stable_path(&self, upstream: &str) -> PathBuf {
        self.state_dir.join(format!("{upstream}.stable.json"))
    }

    /// Records the stable set (per Nginx) that `rollback` returns to.
    fn save_stable(&self, upstreams: &[Upstream]) -> Result<(), Failure> {
        let snapshots: Vec<UpstreamPatch> = upstreams.iter().map(plan::snapshot).collect();
        let path = self.stable_path(&upstreams[0].name);
        write_file(
            &path,
            &serde_json::to_vec_pretty(&snapshots).expect("JSON of wire types"),
        )
    }

    fn load_stable(&self, upstream: &str) -> Result<Vec<UpstreamPatch>, Failure> {
        let path = self.stable_path(upstream);
        let bytes = fs::read(&path).map_err(|err| {
            Failure::usage(anyhow::anyhow!(
                "no stable set recorded for upstream \"{upstream}\" ({}: {err}); a switch or \
                 canary records one before it moves traffic",
                path.display()
            ))
        })?;
        let snapshots: Vec<UpstreamPatch> = serde_json::from_slice(&bytes).map_err(|err| {
            Failure::usage(anyhow::anyhow!(
                "{} is not a stable set: {err}",
                path.display()
            ))
        })?;
        if snapshots.len() != self.fleet.clients().len() {
            return Err(Failure::usage(anyhow::anyhow!(
                "{} was recorded for {} Nginx instance(s), but {} --socket given",
                path.display(),
                snapshots.len(),
                self.fleet.clients().len()
            )));
        }
        Ok(snapshots)
    }

    /// Puts every Nginx back to the recorded stable set.
    async fn restore_stable(&self, upstream: &str) -> Result<Vec<Upstream>, Failure> {
        let snapshots = self.load_stable(upstream)?;
        Ok(self
            .fleet
            .apply(upstream, |index, _| Ok(snapshots[index].clone()))
            .await?)
    }
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    // Written beside the file, synced, then renamed over it: a reader (or a crash) sees the
    // old file or the new one, never half of one.
    let write = || -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        // Readable by the other operators, as before (a temporary file starts at 0600).
        fs::set_permissions(
            file.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )?;
        file.write_all(bytes)?;
        file.as_file().sync_all()?;
        file.persist(path).map(drop).map_err(|err| err.error)
    };
    write().map_err(|err| {
        Failure::usage(anyhow::anyhow!(
            "cannot write {}: {err} (choose another --state-dir or SHIFT_STATE_DIR)",
            path.display()
        ))
    })
}

/// The status table of one upstream.
pub fn render_table(upstream: &Upstream) -> String {
    let total: u64 = upstream
        .peers
        .iter()
        .filter(|peer| takes_traffic(peer))
        .map(|peer| peer.weight as u64)
        .sum();
    let mut out = format!(
        "upstream {} (generation {})\n",
        upstream.name, upstream.generation
    );
    out += &format!(
        "{:<24} {:>6} {:>7} {:<6} {:<10} {:>10} {:>9} {:>7}\n",
        "PEER", "WEIGHT", "SHARE", "STATE", "HEALTH", "REQUESTS", "FAILURES", "ACTIVE"
    );
    for peer in &upstream.peers {
        let share = if takes_traffic(peer) && total > 0 {
            format!("{:.1}%", peer.weight as f64 * 100.0 / total as f64)
        } else {
            "-".into()
        };
        let server = if peer.backup {
            format!("{} (backup)", peer.server)
        } else {
            peer.server.clone()
        };
        out += &format!(
            "{:<24} {:>6} {:>7} {:<6} {:<10} {:>10} {:>9} {:>7}\n",
            server,
            peer.weight,
            share,
            peer.state.as_str(),
            peer.health.as_str(),
            peer.requests,
            peer.failures,
            peer.active
        );
    }
    out
}

/// A primary peer the module says takes new requests (a backup one takes them only when no
/// primary can).
fn takes_traffic(peer: &Peer) -> bool {
    peer.eligible && !peer.backup
}

pub async fn status(
    ctx: &Ctx,
    upstream: Option<String>,
    watch: bool,
    every: Duration,
) -> Result<(), Failure> {
    loop {
        let mut all = Vec::new();
        for client in ctx.fleet.clients() {
            match &upstream {
                Some(name) => all.push(vec![client.upstream(name).await?]),
                None => all.push(client.upstreams().await?.upstreams),
            }
        }
        if watch && std::io::stdout().is_terminal() {
            print!("\x1b[2J\x1b[H");
        }
        if ctx.json && !watch {
            ctx.print_json_per_socket("upstreams", &all);
            return Ok(());
        }
        for (client, upstreams) in ctx.fleet.clients().iter().zip(&all) {
            if ctx.fleet.clients().len() > 1 {
                println!("# {}", client.socket().display());
            }
            for upstream in upstreams {
                if ctx.json {
                    println!(
                        "{}",
                        serde_json::to_string(upstream).expect("JSON of wire types")
                    );
                } else {
                    print!("{}", render_table(upstream));
                }
            }
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(every).await;
    }
}

pub async fn metrics(ctx: &Ctx) -> Result<(), Failure> {
    for client in ctx.fleet.clients() {
        let text = client.metrics().await?;
        if ctx.fleet.clients().len() > 1 {
            println!("# socket {}", client.socket().display());
        }
        print!("{text}");
    }
    Ok(())
}

/// Parses `SERVER=WEIGHT` arguments.
pub fn parse_assignments(assignments: &[String]) -> Result<BTreeMap<String, PeerPatch>, Failure> {
    let mut peers = BTreeMap::new();
    for assignment in assignments {
        let (server, patch) = parse_assignment(assignment)?;
        if peers.insert(server.clone(), patch).is_some() {
            return Err(Failure::usage(anyhow::anyhow!(
                "{server} is given twice; give each peer one weight"
            )));
        }
    }
    Ok(peers)
}

fn parse_assignment(assignment: &str) -> Result<(String, PeerPatch), Failure> {
    let (server, weight) = assignment.rsplit_once('=').ok_or_else(|| {
        Failure::usage(anyhow::anyhow!(
            "\"{assignment}\" is not SERVER=WEIGHT, e.g. 127.0.0.1:8001=30"
        ))
    })?;
    let weight: u32 = weight
        .parse()
        .ok()
        .filter(|&w| w <= MAX_WEIGHT)
        .ok_or_else(|| {
            Failure::usage(anyhow::anyhow!(
                "weight \"{weight}\" of {server} must be a number from 0 to {MAX_WEIGHT}"
            ))
        })?;
    let patch = PeerPatch {
        weight: Some(weight),
        state: None,
    };
    Ok((server.to_string(), patch))
}

pub async fn set(
    ctx: &Ctx,
    upstream: &str,
    assignments: &[String],
    retries: u32,
) -> Result<(), Failure> {
    let peers = parse_assignments(assignments)?;
    let mut attempt = 0;
    loop {
        let result = ctx
            .fleet
            .apply(upstream, |_, _| {
                Ok(UpstreamPatch {
                    peers: peers.clone(),
                    expect_generation: None,
                })
            })
            .await;
        match result {
            Ok(states) => {
                ctx.print_upstreams(&states);
                return Ok(());
            }
            Err(error)
                if attempt < retries
                    && error.client_error().and_then(ClientError::api_code) == Some("conflict") =>
            {
                attempt += 1;
                ctx.progress.event(&format!(
                    "upstream changed meanwhile; retrying ({attempt}/{retries})"
                ));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

pub async fn set_state(
    ctx: &Ctx,
    upstream: &str,
    server: &str,
    state: PeerState,
    wait: Option<Duration>,
) -> Result<(), Failure> {
    let states = ctx
        .fleet
        .apply(upstream, |_, current| {
            plan::find_peer(current, server).map_err(|err| err.to_string())?;
            let mut peers = BTreeMap::new();
            peers.insert(
                server.to_string(),
                PeerPatch {
                    weight: None,
                    state: Some(state),
                },
            );
            Ok(UpstreamPatch {
                peers,
                expect_generation: None,
            })
        })
        .await?;
    if let Some(timeout) = wait {
        let deadline = Instant::now() + timeout;
        loop {
            let active: u64 = ctx
                .fleet
                .read(upstream)
                .await?
                .iter()
                .map(|state| plan::find_peer(state, server).map_or(0, |peer| peer.active))
                .sum();
            if active == 0 {
                ctx.progress.finish();
                break;
            }
            if Instant::now() >= deadline {
                ctx.progress.finish();
                return Err(Failure::aborted(anyhow::anyhow!(
                    "{server} still has {active} active request(s) after {timeout:?}; it stays drained"
                )));
            }
            ctx.progress.status(&format!(
                "waiting for {server} to finish {active} active request(s)"
            ));
            tokio::time::sleep(POLL).await;
        }
    }
    ctx.print_upstreams(&states);
    Ok(())
}

/// How `wait_ready` treats a target its checks call unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unhealthy {
    /// Refuse at once: the operator asked to move traffic to a failing peer.
    Refuse,
    /// Wait for it to pass: a deploy just started it, and it was down until now.
    AwaitRecovery,
}

/// Waits until `target` is healthy in every Nginx (when checks run there) and `check_url`, if
/// given, answers 2xx or 3xx.
pub async fn wait_ready(
    ctx: &Ctx,
    upstream: &str,
    target: &str,
    check_url: Option<&str>,
    timeout: Duration,
    unhealthy: Unhealthy,
) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let direct = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut first = true;
    loop {
        let states = ctx.fleet.read(upstream).await?;
        let mut waiting_for = Vec::new();
        for state in &states {
            let peer = plan::find_peer(state, target)?;
            if first && unhealthy == Unhealthy::Refuse {
                plan::require_not_unhealthy(state, target)?;
            }
            if peer.check.is_some() && peer.health != Health::Healthy {
                let last = peer
                    .check
                    .as_ref()
                    .and_then(|check| check.last_error.as_deref());
                waiting_for.push(match last {
                    Some(error) => format!("a passed health check (last: {error})"),
                    None => "a passed health check".to_string(),
                });
            }
        }
        first = false;
        if let Some(url) = check_url {
            match direct.get(url).send().await {
                Ok(response)
                    if response.status().is_success() || response.status().is_redirection() => {}
                Ok(response) => waiting_for.push(format!("{url} answered {}", response.status())),
                Err(err) => waiting_for.push(format!("{url}: {err}")),
            }
        }
        if waiting_for.is_empty() {
            ctx.progress.finish();
            return Ok(());
        }
        if Instant::now() >= deadline {
            ctx.progress.finish();
            return Err(Failure::aborted(anyhow::anyhow!(
                "{target} is not ready after {timeout:?} ({}); traffic was not moved",
                waiting_for.join("; ")
            )));
        }
        ctx.progress
            .status(&format!("waiting for {target}: {}", waiting_for.join("; ")));
        tokio::time::sleep(POLL).await;
    }
}

pub async fn switch(
    ctx: &Ctx,
    upstream: &str,
    target: &str,
    check_url: Option<&str>,
    timeout: Duration,
    unhealthy: Unhealthy,
) -> Result<(), Failure> {
    wait_ready(ctx, upstream, target, check_url, timeout, unhealthy).await?;
    ctx.save_stable(&ctx.fleet.read(upstream).await?)?;
    let states = ctx
        .fleet
        .apply(upstream, |_, current| {
            plan::switch(current, target).map_err(|err| err.to_string())
        })
        .await?;
    ctx.progress.event(&format!(
        "switched upstream \"{upstream}\" to {target}; the others drain"
    ));
    ctx.print_upstreams(&states);
    Ok(())
}

pub async fn rollback(ctx: &Ctx, upstream: &str) -> Result<(), Failure> {
    let states = ctx.restore_stable(upstream).await?;
    ctx.progress.event(&format!(
        "upstream \"{upstream}\" is back on its stable set"
    ));
    ctx.print_upstreams(&states);
    Ok(())
}

pub fn promote(ctx: &Ctx, upstream: &str) -> Result<(), Failure> {
    write_file(
        &ctx.state_dir.join(format!("{upstream}.promote")),
        b"promote\n",
    )?;
    ctx.progress.event(&format!(
        "asked the paused canary of \"{upstream}\" to take its next step"
    ));
    Ok(())
}

/// What to do when a canary is interrupted (Ctrl-C or SIGTERM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnInterrupt {
    /// Put all traffic back on the stable peers.
    Rollback,
    /// Keep the current step.
    Hold,
}

pub struct CanaryOptions {
    pub target: String,
    pub steps: Vec<u32>,
    pub interval: Duration,
    pub max_error_rate: f64,
    pub pause: bool,
    pub on_interrupt: OnInterrupt,
    pub check_url: Option<String>,
    pub ready_timeout: Duration,
    pub unhealthy: Unhealthy,
}

enum Watch {
    Passed,
    Failed(String),
    Interrupted,
}

pub async fn canary(ctx: &Ctx, upstream: &str, options: &CanaryOptions) -> Result<(), Failure> {
    let target = options.target.as_str();
    let check_url = options.check_url.as_deref();
    wait_ready(
        ctx,
        upstream,
        target,
        check_url,
        options.ready_timeout,
        options.unhealthy,
    )
    .await?;
    let before = ctx.fleet.read(upstream).await?;
    for state in &before {
        plan::check_canary(state, target)?;
    }
    ctx.save_stable(&before)?;
    let stable: Vec<UpstreamPatch> = before.iter().map(plan::snapshot).collect();
    let mut interrupts = Interrupts::new()?;

    for (number, &percent) in options.steps.iter().enumerate() {
        let step = format!(
            "step {}/{} ({percent}% to {target})",
            number + 1,
            options.steps.len()
        );
        let applied = ctx
            .fleet
            .apply(upstream, |index, _| {
                Ok(plan::canary_step(&stable[index], target, percent))
            })
            .await;
        if let Err(error) = applied {
            return Err(roll_back(
                ctx,
                upstream,
                &format!("{step} could not be applied: {error}"),
            )
            .await);
        }
        ctx.progress.event(&format!("{step} applied"));
        match watch_step(ctx, upstream, target, options, &step, &mut interrupts).await? {
            Watch::Passed => {}
            Watch::Failed(why) => {
                return Err(roll_back(ctx, upstream, &format!("{step} failed: {why}")).await);
            }
            Watch::Interrupted if options.on_interrupt == OnInterrupt::Hold => {
                return Err(Failure::aborted(anyhow::anyhow!(
                    "interrupted; holding at {step} (\"shiftctl rollback {upstream}\" puts the stable set back)"
                )));
            }
            Watch::Interrupted => {
                return Err(roll_back(ctx, upstream, &format!("interrupted at {step}")).await);
            }
        }
        if options.pause && number + 1 < options.steps.len() {
            match wait_for_promote(ctx, upstream, &mut interrupts).await {
                Ok(()) => {}
                Err(()) if options.on_interrupt == OnInterrupt::Hold => {
                    return Err(Failure::aborted(anyhow::anyhow!(
                        "interrupted; holding at {step}"
                    )));
                }
                Err(()) => {
                    return Err(roll_back(ctx, upstream, &format!("interrupted at {step}")).await)
                }
            }
        }
    }
    ctx.progress
        .event(&format!("canary of {target} done: it takes all traffic"));
    ctx.print_upstreams(&ctx.fleet.read(upstream).await?);
    Ok(())
}

/// Automatic rollback: all traffic back on the stable set; the failure says why.
async fn roll_back(ctx: &Ctx, upstream: &str, why: &str) -> Failure {
    ctx.progress.finish();
    match ctx.restore_stable(upstream).await {
        Ok(_) => {
            ctx.progress.event(&format!(
                "rolled back: all traffic is on the stable peers again ({why})"
            ));
            Failure::aborted(anyhow::anyhow!("rolled back because {why}"))
        }
        Err(failure) => Failure::aborted(anyhow::anyhow!(
            "{why}, and the rollback failed: {:#}; run \"shiftctl rollback {upstream}\"",
            failure.error
        )),
    }
}

/// Watches the target for one step's interval: its health and its error rate since the step
/// began, in every Nginx.
async fn watch_step(
    ctx: &Ctx,
    upstream: &str,
    target: &str,
    options: &CanaryOptions,
    step: &str,
    interrupts: &mut Interrupts,
) -> Result<Watch, Failure> {
    let baseline: Vec<Peer> = ctx
        .fleet
        .read(upstream)
        .await?
        .iter()
        .map(|state| plan::find_peer(state, target).cloned())
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    loop {
        let states = ctx.fleet.read(upstream).await?;
        let mut worst: Option<f64> = None;
        for (state, before) in states.iter().zip(&baseline) {
            let now = plan::find_peer(state, target)?;
            if now.health == Health::Unhealthy {
                let reason = now
                    .check
                    .as_ref()
                    .and_then(|c| c.last_error.clone())
                    .unwrap_or_default();
                return Ok(Watch::Failed(format!(
                    "{target} became unhealthy ({reason})"
                )));
            }
            if let Some(rate) = plan::error_rate(before, now) {
                worst = Some(worst.map_or(rate, |w: f64| w.max(rate)));
                if rate > options.max_error_rate {
                    return Ok(Watch::Failed(format!(
                        "{target}'s error rate is {:.1}% over {} requests, above the {:.1}% allowed",
                        rate * 100.0,
                        now.requests - before.requests,
                        options.max_error_rate * 100.0
                    )));
                }
            }
        }
        let left = options.interval.saturating_sub(start.elapsed());
        if left.is_zero() {
            ctx.progress.finish();
            return Ok(Watch::Passed);
        }
        let rate = worst.map_or("no requests yet".to_string(), |rate| {
            format!("error rate {:.1}%", rate * 100.0)
        });
        ctx.progress.status(&format!(
            "{step}: {rate}; next step in {}s",
            left.as_secs() + 1
        ));
        tokio::select! {
            _ = tokio::time::sleep(POLL.min(left)) => {}
            _ = interrupts.recv() => return Ok(Watch::Interrupted),
        }
    }
}

/// Waits for `shiftctl promote` (or Enter on a terminal); `Err` when interrupted.
async fn wait_for_promote(
    ctx: &Ctx,
    upstream: &str,
    interrupts: &mut Interrupts,
) -> Result<(), ()> {
    let flag = ctx.state_dir.join(format!("{upstream}.promote"));
    let _ = fs::remove_file(&flag);
    ctx.progress.event(&format!(
        "paused: run \"shiftctl promote {upstream}\" (or press Enter) for the next step"
    ));
    let mut stdin = std::io::stdin()
        .is_terminal()
        .then(|| tokio::io::BufReader::new(tokio::io::stdin()).lines());
    loop {
        if flag.exists() {
            let _ = fs::remove_file(&flag);
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = interrupts.recv() => return Err(()),
            line = async { match stdin.as_mut() { Some(lines) => lines.next_line().await, None => std::future::pending().await } } => {
                if line.is_ok() {
                    return Ok(());
                }
            }
        }
    }
}

/// Ctrl-C and SIGTERM, as one stream.
pub struct Interrupts {
    terminate: tokio::signal::unix::Signal,
}

impl Interrupts {
    pub fn new() -> Result<Interrupts, Failure> {
        let terminate = signal(SignalKind::terminate())
            .map_err(|err| Failure::aborted(anyhow::anyhow!("cannot watch for SIGTERM: {err}")))?;
        Ok(Interrupts { terminate })
    }

    pub async fn recv(&mut self) {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
