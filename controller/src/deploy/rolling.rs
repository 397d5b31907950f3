//! `strategy = "rolling"`: the replicas of a scaled service replaced one at a time. For each
//! replica taking traffic: start a new one (hook), add it as standby unless it already
//! appeared, wait for its checks, let it take traffic and watch its health and error rate for
//! `interval`, then drain the old one, remove it and stop it (hook). A failed check, error
//! rate, hook or interruption stops the roll: that step's new replica is taken out and
//! stopped, the old one keeps serving, and replicas replaced before stay replaced.
//!
//! A replica is not its address: Docker gives a new container the address of one it just
//! removed. A peer is known by its address and when it joined (`joined_ms`), and a resolved
//! replica that was stopped must have left the name's answers before the next one starts, so
//! that a new container at its address comes back as a new peer the roll can see.

use std::collections::BTreeSet;
use std::time::Instant;

use shift_wire::{Health, NewPeer, Peer, PeerOrigin, PeerPatch, PeerState, UpstreamPatch};

use super::hook;
use super::plan_file::{DeployPlan, Rolling};
use crate::commands::{self, Ctx, OnQuiet, Unhealthy, POLL};
use crate::exit::Failure;
use crate::interrupts::Interrupts;
use crate::plan;
use shiftctl::deploy::verdict::{is_quiet, judge, Verdict, Window};

pub async fn rolling(ctx: &Ctx, plan: &DeployPlan, rolling: &Rolling) -> Result<(), Failure> {
    let upstream = plan.upstream.as_str();
    let before = ctx.fleet.read(upstream).await?;
    let old: Vec<Peer> = before[0]
        .peers
        .iter()
        .filter(|peer| peer.eligible && !peer.backup)
        .cloned()
        .collect();
    if old.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!(
            "upstream \"{upstream}\" has no replica taking traffic to replace"
        )));
    }
    let mut known: BTreeSet<Instance> = before[0].peers.iter().map(instance).collect();
    for (number, replica) in old.iter().enumerate() {
        let step = format!("replica {}/{} ({})", number + 1, old.len(), replica.server);
        ctx.progress
            .event(&format!("{step}: starting a new replica"));
        let new = start_replica(ctx, plan, rolling, replica, &known)
            .await
            .map_err(|why| stopped(&step, number, &why))?;
        known.insert(new.clone());
        let (new, _) = new;
        if let Err(why) = bring_in(ctx, plan, replica, &new).await {
            take_out(ctx, plan, rolling, &new).await;
            return Err(stopped(&step, number, &format!("{new} {why}")));
        }
        ctx.progress.event(&format!(
            "{step}: {new} takes traffic; draining {}",
            replica.server
        ));
        retire(ctx, plan, rolling, replica)
            .await
            .map_err(|why| stopped(&step, number + 1, &why))?;
    }
    ctx.progress.event(&format!(
        "rolling deploy done: {} replica(s) of \"{upstream}\" replaced",
        old.len()
    ));
    ctx.print_upstreams(&ctx.fleet.read(upstream).await?);
    Ok(())
}

fn stopped(step: &str, replaced: usize, why: &str) -> Failure {
    Failure::aborted(anyhow::anyhow!(
        "rolling deploy stopped at {step}: {why}; {replaced} replica(s) were replaced before, \
         the others keep serving"
    ))
}

/// A peer instance as the first Nginx lists it: its address and when it joined.
type Instance = (String, u64);

fn instance(peer: &Peer) -> Instance {
    (peer.server.clone(), peer.joined_ms)
}

/// Runs the start hook and finds the new replica: the address it wrote, added as standby, or
/// a peer that appeared meanwhile (a new instance: at a new address, or at a known one again).
async fn start_replica(
    ctx: &Ctx,
    plan: &DeployPlan,
    rolling: &Rolling,
    replacing: &Peer,
    known: &BTreeSet<Instance>,
) -> Result<Instance, String> {
    let file = tempfile::NamedTempFile::new_in(&ctx.state_dir)
        .or_else(|_| tempfile::NamedTempFile::new())
        .map_err(|err| format!("cannot create the address file: {err}"))?;
    let path = file.path().display().to_string();
    let env = [
        ("SHIFT_UPSTREAM", plan.upstream.as_str()),
        ("SHIFT_REPLACING", replacing.server.as_str()),
        ("SHIFT_ADDRESS_FILE", path.as_str()),
    ];
    run_hook(ctx, plan, "start", &rolling.start, &env).await?;
    let written = std::fs::read_to_string(file.path()).unwrap_or_default();
    let written = written.trim();
    if written.is_empty() {
        return appeared(ctx, plan, known).await;
    }
    let server =
        commands::parse_server(written).map_err(|failure| format!("{:#}", failure.error))?;
    let mut states = read(ctx, &plan.upstream).await?;
    let present = states
        .iter()
        .all(|state| plan::find_peer(state, &server).is_ok());
    if !present {
        let peer = NewPeer {
            server: server.clone(),
            weight: Some(replacing.weight),
            state: Some(PeerState::Down),
            // The new replica runs the version of the one it replaces.
            label: replacing.label.clone(),
            slow_start: None,
            expect_generation: None,
        };
        states = ctx
            .fleet
            .add_peer(&plan.upstream, &peer)
            .await
            .map_err(|err| err.to_string())?;
        ctx.progress.event(&format!("added {server} as standby"));
    }
    let joined = plan::find_peer(&states[0], &server).map_or(0, |peer| peer.joined_ms);
    Ok((server, joined))
}

/// Waits for a peer instance that was not there before to appear in every Nginx.
async fn appeared(
    ctx: &Ctx,
    plan: &DeployPlan,
    known: &BTreeSet<Instance>,
) -> Result<Instance, String> {
    let deadline = Instant::now() + plan.health_timeout;
    loop {
        let states = read(ctx, &plan.upstream).await?;
        let new = states[0]
            .peers
            .iter()
            .map(instance)
            .find(|new| !known.contains(new))
            .filter(|(server, _)| {
                states
                    .iter()
                    .all(|state| plan::find_peer(state, server).is_ok())
            });
        if let Some(new) = new {
            return Ok(new);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no new peer appeared within {:?}; the start hook wrote no address to \
                 $SHIFT_ADDRESS_FILE",
                plan.health_timeout
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits for the new replica's checks, lets it take traffic with the old one's weight, and
/// watches it for `interval`: its health, and its errors and latency against the other peers'
/// over the same window, by the plan's canary gates (`shiftctl::deploy::verdict`).
async fn bring_in(ctx: &Ctx, plan: &DeployPlan, replacing: &Peer, new: &str) -> Result<(), String> {
    let upstream = plan.upstream.as_str();
    commands::wait_ready(
        ctx,
        upstream,
        new,
        None,
        plan.health_timeout,
        Unhealthy::AwaitRecovery,
    )
    .await
    .map_err(|failure| format!("{:#}", failure.error))?;
    // The window starts before the replica takes traffic: every request it gets is in it.
    let baseline = read(ctx, upstream).await?;
    set_peer(ctx, upstream, new, Some(replacing.weight), PeerState::Up).await?;
    let gates = plan.gates();
    let mut interrupts = Interrupts::new().map_err(|failure| failure.error.to_string())?;
    let start = Instant::now();
    loop {
        let states = read(ctx, upstream).await?;
        let (mut target, mut stable) = (Vec::new(), Vec::new());
        for (before, now) in baseline.iter().zip(&states) {
            for peer in &now.peers {
                let Some(earlier) = before.peers.iter().find(|p| p.server == peer.server) else {
                    continue;
                };
                if peer.server != new {
                    stable.push((earlier, peer));
                } else if peer.health == Health::Unhealthy {
                    return Err("became unhealthy".to_string());
                } else {
                    target.push((earlier, peer));
                }
            }
        }
        let (target, stable) = (Window::between(target), Window::between(stable));
        let interval_over = start.elapsed() >= plan.interval;
        match judge(&target, &stable, &gates, interval_over) {
            Verdict::Pass => return Ok(()),
            Verdict::Fail(why) => return Err(why.replacen("the target's", "its", 1)),
            Verdict::Wait(_) => {}
        }
        if interval_over && is_quiet(&target, &gates, start.elapsed(), plan.quiet_timeout()) {
            let why = format!(
                "is quiet: it served {} of the {} requests a verdict needs in {}s",
                target.requests,
                gates.min_requests,
                start.elapsed().as_secs()
            );
            if plan.on_quiet == OnQuiet::Promote {
                ctx.progress
                    .event(&format!("{new} {why}; promoted, as on_quiet says"));
                return Ok(());
            }
            return Err(why);
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = interrupts.recv() => return Err("was being watched when shiftctl was interrupted".into()),
        }
    }
}

/// Takes a failed new replica out (drained, removed) and stops it.
async fn take_out(ctx: &Ctx, plan: &DeployPlan, rolling: &Rolling, new: &str) {
    let _ = set_peer(ctx, &plan.upstream, new, None, PeerState::Drain).await;
    let _ = ctx.fleet.remove_peer(&plan.upstream, new).await;
    if let Some(stop) = &rolling.stop {
        let env = [
            ("SHIFT_UPSTREAM", plan.upstream.as_str()),
            ("SHIFT_SERVER", new),
        ];
        let _ = run_hook(ctx, plan, "stop", stop, &env).await;
    }
    ctx.progress
        .event(&format!("rolled back: {new} was taken out and stopped"));
}

/// Drains an old replica, waits for its requests, removes it (a `server` line stays, drained)
/// and stops it. A resolved replica then waits to leave its name's answers in every Nginx.
async fn retire(ctx: &Ctx, plan: &DeployPlan, rolling: &Rolling, old: &Peer) -> Result<(), String> {
    let upstream = plan.upstream.as_str();
    // With `close_after`, the wait lasts at least until the drain closed what it carries.
    let close = plan.close();
    let wait = close.map_or(plan.health_timeout, |close| {
        close.ends_after() + plan.health_timeout
    });
    commands::set_state(
        ctx,
        upstream,
        &old.server,
        (PeerState::Drain, close),
        Some(wait),
    )
    .await
    .map_err(|failure| format!("{:#}", failure.error))?;
    if old.origin == PeerOrigin::Api {
        ctx.fleet
            .remove_peer(upstream, &old.server)
            .await
            .map_err(|err| err.to_string())?;
    }
    if let Some(stop) = &rolling.stop {
        // Each Nginx's own instance of the replica (they joined at different times).
        let stopping: Vec<Option<u64>> = read(ctx, upstream)
            .await?
            .iter()
            .map(|state| joined(state, &old.server))
            .collect();
        let env = [
            ("SHIFT_UPSTREAM", upstream),
            ("SHIFT_SERVER", old.server.as_str()),
        ];
        run_hook(ctx, plan, "stop", stop, &env).await?;
        if old.origin == PeerOrigin::Resolved {
            left_the_name(ctx, plan, &old.server, &stopping).await?;
        }
    }
    Ok(())
}

fn joined(state: &shift_wire::Upstream, server: &str) -> Option<u64> {
    plan::find_peer(state, server)
        .ok()
        .map(|peer| peer.joined_ms)
}

/// Waits until no Nginx lists the instance of `server` it had before the stop hook: the next
/// replica may get the same address, and only a peer that left and came back is a new one.
async fn left_the_name(
    ctx: &Ctx,
    plan: &DeployPlan,
    server: &str,
    stopping: &[Option<u64>],
) -> Result<(), String> {
    let deadline = Instant::now() + plan.health_timeout;
    loop {
        let states = read(ctx, &plan.upstream).await?;
        let gone = states
            .iter()
            .zip(stopping)
            .all(|(state, before)| before.is_none() || joined(state, server) != *before);
        if gone {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{server} was still in its name's answers {:?} after the stop hook; the stop \
                 hook must stop the replica at $SHIFT_SERVER (Docker then drops it from its DNS)",
                plan.health_timeout
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Every Nginx's view of `upstream`, or why not, as a step's failure says it.
async fn read(ctx: &Ctx, upstream: &str) -> Result<Vec<shift_wire::Upstream>, String> {
    ctx.fleet
        .read(upstream)
        .await
        .map_err(|err| err.to_string())
}

async fn set_peer(
    ctx: &Ctx,
    upstream: &str,
    server: &str,
    weight: Option<u32>,
    state: PeerState,
) -> Result<(), String> {
    ctx.fleet
        .apply(upstream, |_, _| {
            let mut patch = UpstreamPatch::default();
            patch.peers.insert(
                server.to_string(),
                PeerPatch {
                    weight,
                    state: Some(state),
                    ..Default::default()
                },
            );
            Ok(patch)
        })
        .await
        .map(drop)
        .map_err(|err| err.to_string())
}

async fn run_hook(
    ctx: &Ctx,
    plan: &DeployPlan,
    which: &str,
    command: &str,
    env: &[(&str, &str)],
) -> Result<(), String> {
    ctx.progress.event(&format!("{which} hook: {command}"));
    let mut interrupts = Interrupts::new().map_err(|failure| failure.error.to_string())?;
    hook::run(command, env, plan.hook_timeout, &mut interrupts)
        .await
        .map_err(|error| format!("{which} hook ({command}) {error}"))
}
