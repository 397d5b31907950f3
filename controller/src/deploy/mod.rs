//! `shiftctl deploy PLAN.toml`: the seed note's whole deploy as one command. Start the idle
//! side, wait until it is healthy, shift traffic to it (switch or canary), stop the old side,
//! and remember which side is live so the next deploy goes the other way. A rolling deploy of a
//! scaled service is `rolling.rs`; the plan's file, `plan_file.rs`; its hooks, `hook.rs`.
//!
//! What a deploy decides without I/O — the canary's verdict (`verdict.rs`) and what a started
//! side must show (`started.rs`) — is the library's (`shiftctl::deploy`).

mod hook;
mod plan_file;
mod rolling;

use std::fs;
use std::path::Path;
use std::time::Duration;

use shift_wire::{PeerPatch, PeerState, Upstream, UpstreamPatch};

use crate::commands::state_dir::write_file;
use crate::commands::{self, CanaryOptions, Ctx, OnInterrupt, Unhealthy::AwaitStart};
use crate::exit::Failure;
use crate::interrupts::Interrupts;
use crate::plan::{self, CloseAfter};
use plan_file::{DeployPlan, Side, Strategy};

/// The side taking traffic now: the one side with a peer up with a weight (a side with no
/// peer, such as a Compose service never started, has none), else, while both or neither do
/// (a canary held half way), the one the last deploy recorded. What the upstream shows comes
/// first: after `shiftctl rollback` the record names the side the traffic left.
fn live_side(ctx: &Ctx, plan: &DeployPlan, upstream: &Upstream) -> Result<String, Failure> {
    let live: Vec<&String> = plan
        .sides
        .iter()
        .filter(|(_, side)| {
            plan::target_peers(upstream, &side.server)
                .unwrap_or_default()
                .iter()
                .any(|peer| peer.state == PeerState::Up && peer.weight > 0)
        })
        .map(|(name, _)| name)
        .collect();
    if let [one] = live.as_slice() {
        return Ok((*one).clone());
    }
    let record = ctx.state_dir.join(format!("{}.live", plan.upstream));
    if let Ok(text) = fs::read_to_string(&record) {
        let name = text.trim().to_string();
        if plan.sides.contains_key(&name) {
            return Ok(name);
        }
    }
    Err(Failure::usage(anyhow::anyhow!(
        "cannot tell which side of \"{}\" is live ({} of them take traffic); write its name \
         to {}",
        plan.upstream,
        live.len(),
        record.display()
    )))
}

async fn run_hook(
    ctx: &Ctx,
    plan: &DeployPlan,
    side_name: &str,
    side: &Side,
    which: &str,
) -> Result<(), String> {
    let command = match which {
        "start" => side.start.as_deref(),
        _ => side.stop.as_deref(),
    };
    let Some(command) = command else {
        return Ok(());
    };
    ctx.progress
        .event(&format!("{which} hook of {side_name}: {command}"));
    let env = [
        ("SHIFT_UPSTREAM", plan.upstream.as_str()),
        ("SHIFT_SIDE", side_name),
        ("SHIFT_SERVER", side.server.as_str()),
    ];
    let mut interrupts = Interrupts::new().map_err(|failure| failure.error.to_string())?;
    hook::run(command, &env, plan.hook_timeout, &mut interrupts)
        .await
        .map_err(|error| format!("{which} hook of {side_name} ({command}) {error}"))
}

pub async fn deploy(ctx: &Ctx, plan_path: &Path) -> Result<(), Failure> {
    let plan = DeployPlan::load(plan_path)?;
    // Before any hook runs.
    ctx.refuse_slow_start_in_a_fleet(plan.slow_start)?;
    ctx.refuse_close_after_in_a_fleet(plan.close())?;
    if let (Strategy::Rolling, Some(rolling)) = (plan.strategy, &plan.rolling) {
        return rolling::rolling(ctx, &plan, rolling).await;
    }
    let current = ctx.fleet.read(&plan.upstream).await?;
    let old_name = live_side(ctx, &plan, &current[0])?;
    let (new_name, new_side) = plan
        .sides
        .iter()
        .find(|(name, _)| **name != old_name)
        .map(|(name, side)| (name.clone(), side.clone()))
        .expect("two sides");
    let old_side = plan.sides[&old_name].clone();
    ctx.progress.event(&format!(
        "deploying {new_name} ({}); {old_name} is live",
        new_side.server
    ));

    run_hook(ctx, &plan, &new_name, &new_side, "start")
        .await
        .map_err(|why| Failure::aborted(anyhow::anyhow!("{why}; traffic stays on {old_name}")))?;
    // Its lookups and checks count from here: a container the hook replaced passed them at its
    // old address.
    let started = AwaitStart;
    let health_timeout = plan.health_timeout;
    let shifted = match plan.strategy {
        Strategy::Switch => {
            let check_url = new_side.check_url.as_deref();
            commands::switch(
                ctx,
                &plan.upstream,
                (&new_side.server, check_url),
                health_timeout,
                started,
                plan.slow_start,
            )
            .await
        }
        Strategy::Rolling => unreachable!("rolling deploys return above"),
        Strategy::Canary => {
            let options = CanaryOptions {
                target: new_side.server.clone(),
                steps: plan.steps.clone(),
                interval: plan.interval,
                gates: plan.gates(),
                pause: false,
                on_interrupt: OnInterrupt::Rollback,
                check_url: new_side.check_url.clone(),
                ready_timeout: health_timeout,
                // The side was stopped until the start hook ran: its checks need time to pass.
                unhealthy: started,
                sync_timeout: health_timeout,
                quiet_timeout: plan.quiet_timeout,
                on_quiet: plan.on_quiet,
                slow_start: plan.slow_start,
            };
            commands::canary(ctx, &plan.upstream, &options).await
        }
    };
    if let Err(failure) = shifted {
        // A failed release that takes no traffic is stopped, once what it had in flight ended:
        // it cannot take any by mistake later. One that still takes some (the rollback did not
        // finish) is left to the operator.
        let outcome = match takes_traffic(ctx, &plan.upstream, &new_side.server).await {
            Some(why) => format!(
                "{new_name} may still take traffic ({why}), so it was not stopped: see \
                 \"shiftctl status\" and \"shiftctl rollback\""
            ),
            None if new_side.stop.is_none() => format!("traffic stays on {old_name}"),
            None if ctx.hosts_gone_without().is_some() => format!(
                "traffic stays on {old_name}; {new_name} was not stopped: hosts without the last \
                 change ({}) may still send it traffic",
                ctx.hosts_gone_without().unwrap_or_default()
            ),
            None => {
                wait_drained(ctx, &plan.upstream, &new_side.server, DRAIN_WAIT).await;
                match run_hook(ctx, &plan, &new_name, &new_side, "stop").await {
                    Ok(()) => format!("traffic stays on {old_name}; {new_name} is stopped"),
                    Err(why) => {
                        format!("traffic stays on {old_name}; {why}: stop {new_name} by hand")
                    }
                }
            }
        };
        return Err(Failure {
            code: failure.code,
            error: failure
                .error
                .context(format!("deploy of {new_name} stopped; {outcome}")),
        });
    }

    write_file(
        &ctx.state_dir.join(format!("{}.live", plan.upstream)),
        format!("{new_name}\n").as_bytes(),
    )?;
    // Hosts that do not have the change yet (--allow-partial) still send the old side traffic.
    if let Some(hosts) = ctx.hosts_gone_without() {
        ctx.progress.event(&format!(
            "deploy done on the hosts that report: {new_name} is live there; {old_name} was not \
             stopped, as hosts without the change ({hosts}) may still send it traffic: stop it \
             once \"shiftctl status --fleet\" shows every host SYNCED"
        ));
        return Ok(());
    }
    // Let requests the old side still has finish before it is stopped; with `close_after`,
    // those that would not end by themselves are closed on the plan's schedule first.
    let mut longest = DRAIN_WAIT;
    if let Some(close) = plan.close() {
        close_side(ctx, &plan.upstream, &old_side.server, close)
            .await
            .map_err(|failure| Failure {
                code: failure.code,
                error: failure.error.context(format!(
                    "{new_name} is live, but the drain of {old_name} got no close_after: stop \
                     {old_name} by hand once it carries no request"
                )),
            })?;
        longest += close.ends_after();
    }
    wait_drained(ctx, &plan.upstream, &old_side.server, longest).await;
    run_hook(ctx, &plan, &old_name, &old_side, "stop")
        .await
        .map_err(|why| {
            Failure::aborted(anyhow::anyhow!(
                "{new_name} is live, but {why}; stop {old_name} by hand"
            ))
        })?;
    let old_is = if old_side.stop.is_some() {
        "stopped"
    } else {
        "idle, for a rollback"
    };
    ctx.progress.event(&format!(
        "deploy done: {new_name} is live, {old_name} is {old_is}"
    ));
    Ok(())
}

/// Why the peers `target` names may still take traffic in some Nginx (one is up with a
/// weight, or an Nginx cannot be read); `None` when none does.
async fn takes_traffic(ctx: &Ctx, upstream: &str, target: &str) -> Option<String> {
    let states = match ctx.fleet.read(upstream).await {
        Ok(states) => states,
        Err(err) => return Some(format!("an Nginx could not be read: {err}")),
    };
    states
        .iter()
        .flat_map(|state| plan::target_peers(state, target).unwrap_or_default())
        .find(|peer| peer.state == PeerState::Up && peer.weight > 0)
        .map(|peer| format!("{} still takes traffic", peer.server))
}

/// Gives the drain of the peers `target` names the deadline `close` on every Nginx.
async fn close_side(
    ctx: &Ctx,
    upstream: &str,
    target: &str,
    close: CloseAfter,
) -> Result<(), Failure> {
    let mut change = PeerPatch {
        state: Some(PeerState::Drain),
        ..Default::default()
    };
    close.apply(&mut change);
    ctx.fleet
        .apply(upstream, |_, current| {
            let peers = plan::target_peers(current, target).map_err(|err| err.to_string())?;
            Ok(UpstreamPatch {
                peers: peers
                    .iter()
                    .map(|peer| (peer.server.clone(), change.clone()))
                    .collect(),
                expect_generation: None,
            })
        })
        .await?;
    ctx.progress.event(&format!(
        "{target} closes what it still carries {:?} from now, over {:?}",
        close.after, close.spread
    ));
    Ok(())
}

/// How long a deploy waits for a side's requests to end by themselves before it stops it.
const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// Waits (up to `longest`) until the peers `target` names have no requests in progress
/// anywhere.
async fn wait_drained(ctx: &Ctx, upstream: &str, target: &str, longest: Duration) {
    let give_up = tokio::time::Instant::now() + longest;
    while tokio::time::Instant::now() < give_up {
        let Ok(states) = ctx.fleet.read(upstream).await else {
            return;
        };
        let active: u64 = states
            .iter()
            .flat_map(|state| plan::target_peers(state, target).unwrap_or_default())
            .map(|peer| peer.active)
            .sum();
        if active == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
