//! `switch` (all traffic to one peer once it is ready) and `rollback` (back to the stable set).

use std::time::{Duration, Instant};

use shift_wire::Health;
use shiftctl::deploy::started::StartBaseline;

use super::ramp::{ramp_end, wait_for_ramp};
use super::{Ctx, POLL};
use crate::exit::Failure;
use crate::interrupts::Interrupts;
use crate::plan;

/// How `wait_ready` treats a target its checks call unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unhealthy {
    /// Refuse at once: the operator asked to move traffic to a failing peer.
    Refuse,
    /// Wait for it to pass: a deploy just started it, and it was down until now.
    AwaitRecovery,
    /// A deploy's start hook just started it: wait for its peers to appear, and for each to
    /// show a lookup and a passed check later than when the wait began, by its own Nginx
    /// (`shiftctl::deploy::started`).
    AwaitStart,
}

/// Waits until the peers `target` names (an address or a label) are healthy in every Nginx
/// (when checks run there) and `check_url`, if given, answers 2xx or 3xx.
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
    let mut baseline: Option<StartBaseline> = None;
    loop {
        let states = ctx.fleet.read(upstream).await?;
        if unhealthy == Unhealthy::AwaitStart && !baseline.as_ref().is_some_and(|b| b.fits(&states))
        {
            baseline = Some(StartBaseline::of(&states));
        }
        let mut waiting_for = Vec::new();
        for (index, state) in states.iter().enumerate() {
            if first && unhealthy == Unhealthy::Refuse {
                plan::require_not_unhealthy(state, target)?;
            }
            let peers = match (plan::target_peers(state, target), unhealthy) {
                (Ok(peers), _) => peers,
                (Err(_), Unhealthy::AwaitStart) => {
                    waiting_for.push(format!("{target} to appear in upstream \"{upstream}\""));
                    continue;
                }
                (Err(err), _) => return Err(err.into()),
            };
            for peer in peers {
                if let Some(baseline) = &baseline {
                    let missing = baseline.missing(index, peer).map_err(|never| {
                        ctx.progress.finish();
                        Failure::aborted(anyhow::anyhow!("{never}; traffic was not moved"))
                    })?;
                    waiting_for.extend(missing);
                    continue;
                }
                if peer.check.is_some() && peer.health != Health::Healthy {
                    let last = peer
                        .check
                        .as_ref()
                        .and_then(|check| check.last_error.as_deref());
                    let server = &peer.server;
                    waiting_for.push(match last {
                        Some(error) => format!("a passed health check of {server} (last: {error})"),
                        None => format!("a passed health check of {server}"),
                    });
                }
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

/// Moves all traffic to `target` once it is ready; `slow_start` gives its ramp a window of its
/// own (0: none) in place of the upstream's `shift_slow_start`.
pub async fn switch(
    ctx: &Ctx,
    upstream: &str,
    (target, check_url): (&str, Option<&str>),
    timeout: Duration,
    unhealthy: Unhealthy,
    slow_start: Option<Duration>,
) -> Result<(), Failure> {
    ctx.refuse_slow_start_in_a_fleet(slow_start)?;
    wait_ready(ctx, upstream, target, check_url, timeout, unhealthy).await?;
    // With --etcd: the stable set is what every host has, not one host's lagging view.
    ctx.settle_everywhere(upstream, timeout).await?;
    let before = ctx.fleet.read(upstream).await?;
    ctx.save_stable(&before).await?;
    let ramps = match slow_start {
        Some(window) => !window.is_zero(),
        None => before.iter().any(|state| state.slow_start_ms.is_some()),
    };
    if ramps {
        ramp_up_beside_the_others(ctx, upstream, target, timeout, slow_start).await?;
    }
    let states = ctx
        .fleet
        .apply(upstream, |_, current| {
            let targets = plan::target_servers(current, target).map_err(|err| err.to_string())?;
            let patch = plan::switch(current, target).map_err(|err| err.to_string())?;
            Ok(plan::with_slow_start(patch, &targets, slow_start))
        })
        .await?;
    let laggards = ctx.settle_everywhere(upstream, timeout).await?;
    ctx.progress.event(&format!(
        "switched upstream \"{upstream}\" to {target}{}; the others drain",
        laggards.outcome_note()
    ));
    ctx.print_upstreams(&states);
    Ok(())
}

/// Under a slow start (`shift_slow_start`, or `--slow-start`): brings the target up beside the
/// others and waits for its ramp,
/// so that it takes its share gradually; the switch then drains the others. Alone, a target
/// would take all traffic at once whatever its ramp.
async fn ramp_up_beside_the_others(
    ctx: &Ctx,
    upstream: &str,
    target: &str,
    timeout: Duration,
    slow_start: Option<Duration>,
) -> Result<(), Failure> {
    ctx.fleet
        .apply(upstream, |_, current| {
            let targets = plan::target_servers(current, target).map_err(|err| err.to_string())?;
            let patch = plan::bring_up(current, target).map_err(|err| err.to_string())?;
            Ok(plan::with_slow_start(patch, &targets, slow_start))
        })
        .await?;
    ctx.settle_everywhere(upstream, timeout).await?;
    let states = ctx.fleet.read(upstream).await?;
    let targets: Vec<Vec<String>> = states
        .iter()
        .map(|state| plan::target_servers(state, target))
        .collect::<Result<_, _>>()?;
    let Some(ends_ms) = ramp_end(&states, &targets) else {
        return Ok(());
    };
    let mut interrupts = Interrupts::new()?;
    let waiting = format!("switch of upstream \"{upstream}\" to {target}");
    if wait_for_ramp(
        ctx,
        &waiting,
        "then the others drain",
        ends_ms,
        &mut interrupts,
    )
    .await
    {
        return Ok(());
    }
    Err(Failure::aborted(anyhow::anyhow!(
        "interrupted while {target} ramped up: it and the others take traffic; \
         \"shiftctl switch {upstream} --to {target}\" finishes the switch, \"shiftctl rollback \
         {upstream}\" puts the stable set back"
    )))
}

pub async fn rollback(ctx: &Ctx, upstream: &str, timeout: Duration) -> Result<(), Failure> {
    let states = ctx.restore_stable(upstream).await?;
    let laggards = ctx.settle_everywhere(upstream, timeout).await?;
    ctx.progress.event(&format!(
        "upstream \"{upstream}\" is back on its stable set{}",
        laggards.outcome_note()
    ));
    ctx.print_upstreams(&states);
    Ok(())
}
