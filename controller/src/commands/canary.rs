//! `canary`: traffic moved to a target step by step, watched, rolled back on failure; and
//! `promote`, which a paused canary waits for.

use std::fs;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use shift_wire::{Health, Peer, UpstreamPatch};
use tokio::io::AsyncBufReadExt;

use super::switch::{wait_ready, Unhealthy};
use super::{Ctx, POLL};
use crate::exit::Failure;
use crate::interrupts::Interrupts;
use crate::plan;
use crate::state_dir::write_file;

pub fn promote(ctx: &Ctx, upstream: &str) -> Result<(), Failure> {
    write_file(&ctx.promote_flag(upstream), b"promote\n")?;
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
    // The target's peers in each Nginx: one address, or every peer of a label.
    let targets: Vec<Vec<String>> = before
        .iter()
        .map(|state| plan::target_servers(state, target))
        .collect::<Result<_, _>>()?;
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
                Ok(plan::canary_step(&stable[index], &targets[index], percent))
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
        let watched = Watched {
            target,
            servers: &targets,
        };
        match watch_step(ctx, upstream, &watched, options, &step, &mut interrupts).await? {
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

/// The target a step watches: as the operator named it, and its peers' addresses in each
/// Nginx.
struct Watched<'a> {
    target: &'a str,
    servers: &'a [Vec<String>],
}

/// Watches the target for one step's interval: the health of its peers and their error rate
/// since the step began, in every Nginx.
async fn watch_step(
    ctx: &Ctx,
    upstream: &str,
    watched: &Watched<'_>,
    options: &CanaryOptions,
    step: &str,
    interrupts: &mut Interrupts,
) -> Result<Watch, Failure> {
    let target = watched.target;
    let peers_of = |state: &shift_wire::Upstream, index: usize| -> Result<Vec<Peer>, Failure> {
        watched.servers[index]
            .iter()
            .map(|server| Ok(plan::find_peer(state, server)?.clone()))
            .collect()
    };
    let baseline: Vec<Vec<Peer>> = ctx
        .fleet
        .read(upstream)
        .await?
        .iter()
        .enumerate()
        .map(|(index, state)| peers_of(state, index))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    loop {
        let states = ctx.fleet.read(upstream).await?;
        let mut worst: Option<f64> = None;
        for (index, (state, before)) in states.iter().zip(&baseline).enumerate() {
            let now = peers_of(state, index)?;
            if let Some(sick) = now.iter().find(|peer| peer.health == Health::Unhealthy) {
                let reason = sick
                    .check
                    .as_ref()
                    .and_then(|c| c.last_error.clone())
                    .unwrap_or_default();
                return Ok(Watch::Failed(format!(
                    "{} became unhealthy ({reason})",
                    sick.server
                )));
            }
            if let Some(rate) = plan::error_rate(before.iter().zip(&now)) {
                worst = Some(worst.map_or(rate, |w: f64| w.max(rate)));
                if rate > options.max_error_rate {
                    let requests: u64 = before
                        .iter()
                        .zip(&now)
                        .map(|(before, now)| now.requests - before.requests)
                        .sum();
                    return Ok(Watch::Failed(format!(
                        "{target}'s error rate is {:.1}% over {requests} requests, above the \
                         {:.1}% allowed",
                        rate * 100.0,
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
    let flag = ctx.promote_flag(upstream);
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
