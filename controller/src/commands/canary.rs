//! `canary`: traffic moved to a target step by step, watched, rolled back on failure; and
//! `promote`, which a paused canary waits for.

use std::fs;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use shift_wire::{Health, Upstream, UpstreamPatch};
use shiftctl::deploy::verdict::{is_quiet, judge, quantile_name, Gates, Verdict, Window};
use tokio::io::AsyncBufReadExt;

use super::ramp::{ramp_end, wait_for_ramp};
use super::switch::{wait_ready, Unhealthy};
use super::{Ctx, POLL};
use crate::commands::state_dir::write_file;
use crate::exit::{Failure, EXIT_QUIET};
use crate::interrupts::Interrupts;
use crate::plan;

pub fn promote(ctx: &Ctx, upstream: &str) -> Result<(), Failure> {
    write_file(&ctx.promote_flag(upstream), b"promote\n")?;
    ctx.progress.event(&format!(
        "asked the paused canary of \"{upstream}\" to take its next step"
    ));
    Ok(())
}

/// What a step does when it is quiet: its target did not serve `--min-requests` by
/// `--quiet-timeout`, so no verdict can come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnQuiet {
    /// Keep the current step and stop with exit 4, saying how to go on or back.
    Hold,
    /// Take the next step as if it had passed.
    Promote,
    /// Put all traffic back on the stable peers.
    Rollback,
}

impl OnQuiet {
    fn as_str(self) -> &'static str {
        match self {
            OnQuiet::Hold => "hold",
            OnQuiet::Promote => "promote",
            OnQuiet::Rollback => "rollback",
        }
    }
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
    /// What a step's target must pass (`shiftctl::deploy::verdict`).
    pub gates: Gates,
    pub pause: bool,
    pub on_interrupt: OnInterrupt,
    pub check_url: Option<String>,
    pub ready_timeout: Duration,
    pub unhealthy: Unhealthy,
    /// With --etcd: how long every live host may take to apply a step before it fails.
    pub sync_timeout: Duration,
    /// How long a step may wait for the requests a verdict needs (`None`: 10 × interval).
    pub quiet_timeout: Option<Duration>,
    pub on_quiet: OnQuiet,
    /// The window of the target's ramp when its first step lets it take requests (0: none), in
    /// place of the upstream's `shift_slow_start`.
    pub slow_start: Option<Duration>,
}

impl CanaryOptions {
    fn quiet_timeout(&self) -> Duration {
        self.quiet_timeout.unwrap_or(self.interval * 10)
    }
}

enum Watch {
    Passed,
    Failed(String),
    Interrupted,
    /// The step ran `quiet_timeout` without the requests a verdict needs: why, in words.
    Quiet(String),
}

pub async fn canary(ctx: &Ctx, upstream: &str, options: &CanaryOptions) -> Result<(), Failure> {
    let target = options.target.as_str();
    let check_url = options.check_url.as_deref();
    ctx.refuse_slow_start_in_a_fleet(options.slow_start)?;
    wait_ready(
        ctx,
        upstream,
        target,
        check_url,
        options.ready_timeout,
        options.unhealthy,
    )
    .await?;
    // With --etcd: the stable set is what every host has, not one host's lagging view.
    ctx.settle_everywhere(upstream, options.sync_timeout)
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
    ctx.save_stable(&before).await?;
    let stable: Vec<UpstreamPatch> = before.iter().map(plan::snapshot).collect();
    let mut interrupts = Interrupts::new()?;
    let mut reference = Window::default();
    let mut report = Vec::new();
    let q = options.gates.latency_quantile;

    for (number, &percent) in options.steps.iter().enumerate() {
        let step = format!(
            "step {}/{} ({percent}% to {target})",
            number + 1,
            options.steps.len()
        );
        // The step's window starts before its weights: every request the new weights send is
        // in it.
        let baseline = ctx.fleet.read(upstream).await?;
        let applied = ctx
            .fleet
            .apply(upstream, |index, _| {
                let step = plan::canary_step(&stable[index], &targets[index], percent);
                Ok(plan::with_slow_start(
                    step,
                    &targets[index],
                    options.slow_start,
                ))
            })
            .await;
        // With --etcd the watch starts once every live host applied the step: a host that
        // cannot (down, unreachable) fails it.
        let settled = match applied {
            Ok(_) => ctx.settle_everywhere(upstream, options.sync_timeout).await,
            Err(error) => Err(error),
        };
        let laggards = match settled {
            Ok(laggards) => laggards,
            Err(error) => {
                return Err(roll_back(
                    ctx,
                    upstream,
                    &format!("{step} could not be applied: {error}"),
                )
                .await)
            }
        };
        ctx.progress
            .event(&format!("{step} applied{}", laggards.outcome_note()));
        // With `shift_slow_start` the step's weight is where its target's ramp ends: the
        // step's watch starts there, on the share it was given.
        let baseline = match ramp_end(&ctx.fleet.read(upstream).await?, &targets) {
            Some(ends_ms) => {
                let then = "its watch starts then";
                if !wait_for_ramp(ctx, &step, then, ends_ms, &mut interrupts).await {
                    if options.on_interrupt == OnInterrupt::Hold {
                        return Err(Failure::aborted(anyhow::anyhow!(
                            "interrupted; holding at {step}"
                        )));
                    }
                    return Err(roll_back(ctx, upstream, &format!("interrupted at {step}")).await);
                }
                ctx.fleet.read(upstream).await?
            }
            None => baseline,
        };
        let watched = Watched { servers: &targets };
        let (watch, target_side, stable_side) = watch_step(
            ctx,
            upstream,
            (&watched, &baseline),
            options,
            &step,
            &reference,
            &mut interrupts,
        )
        .await?;
        let verdict = match &watch {
            Watch::Passed => "passed".to_string(),
            Watch::Failed(why) => format!("failed: {why}"),
            Watch::Interrupted => "interrupted".to_string(),
            Watch::Quiet(_) => format!("quiet: {}", options.on_quiet.as_str()),
        };
        let number_of = format!("{}/{}", number + 1, options.steps.len());
        let sides = (&target_side, &stable_side);
        report.push(StepReport::new(number_of, percent, sides, q, &verdict));
        if stable_side.requests >= options.gates.min_requests {
            // Its errors stand in for a step without stable traffic; its latency does not:
            // latency is compared only within one window, under one load.
            reference = Window {
                latency: Default::default(),
                ..stable_side
            };
        }
        let goes_on = matches!(watch, Watch::Passed)
            || matches!(watch, Watch::Quiet(_)) && options.on_quiet == OnQuiet::Promote;
        if !goes_on {
            print_report(ctx, &report, q);
        }
        match watch {
            Watch::Passed => {}
            Watch::Quiet(why) => match options.on_quiet {
                OnQuiet::Promote => ctx.progress.event(&format!(
                    "{step} is quiet ({why}); promoted, as --on-quiet says"
                )),
                OnQuiet::Rollback => {
                    return Err(
                        roll_back(ctx, upstream, &format!("{step} is quiet ({why})")).await,
                    );
                }
                OnQuiet::Hold => {
                    return Err(Failure {
                        code: EXIT_QUIET,
                        error: anyhow::anyhow!(
                            "{step} is quiet: {why}; holding at it. \"shiftctl switch {upstream} \
                             --to {target}\" moves the rest of the traffic, \"shiftctl rollback \
                             {upstream}\" puts the stable set back, or run the canary again \
                             with a longer --quiet-timeout or a lower --min-requests"
                        ),
                    });
                }
            },
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
    print_report(ctx, &report, q);
    if !ctx.json {
        ctx.print_upstreams(&ctx.fleet.read(upstream).await?);
    }
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

/// The target a step watches: its peers' addresses in each Nginx.
struct Watched<'a> {
    servers: &'a [Vec<String>],
}

impl Watched<'_> {
    /// What the target's peers and the other (stable) peers did between two reads of every
    /// Nginx, summed over them.
    fn windows(&self, before: &[Upstream], now: &[Upstream]) -> (Window, Window) {
        let mut pairs = (Vec::new(), Vec::new());
        for (index, (before, now)) in before.iter().zip(now).enumerate() {
            for peer in &now.peers {
                let Some(earlier) = before.peers.iter().find(|p| p.server == peer.server) else {
                    continue;
                };
                if self.servers[index].contains(&peer.server) {
                    pairs.0.push((earlier, peer));
                } else {
                    pairs.1.push((earlier, peer));
                }
            }
        }
        (Window::between(pairs.0), Window::between(pairs.1))
    }

    /// A target peer the checks call unhealthy, or that `shift_eject` took out since the step
    /// began (`baseline`), with why: either fails the step at once.
    fn sick(&self, baseline: &[Upstream], states: &[Upstream]) -> Option<String> {
        states.iter().enumerate().find_map(|(index, state)| {
            let ejections_before = |server: &str| {
                baseline
                    .get(index)
                    .and_then(|before| before.peers.iter().find(|peer| peer.server == server))
                    .map_or(0, |peer| peer.ejection.ejections)
            };
            state
                .peers
                .iter()
                .filter(|peer| self.servers[index].contains(&peer.server))
                .find_map(|peer| {
                    if peer.health == Health::Unhealthy {
                        let reason = peer
                            .check
                            .as_ref()
                            .and_then(|check| check.last_error.clone())
                            .unwrap_or_default();
                        return Some(format!("{} became unhealthy ({reason})", peer.server));
                    }
                    (peer.ejection.ejections > ejections_before(&peer.server)).then(|| {
                        format!(
                            "{} was ejected: its real requests failed in a row (shift_eject)",
                            peer.server
                        )
                    })
                })
        })
    }
}

/// Watches one step until its verdict: the target's peers' health, and the target against
/// the stable peers over the same window since the step began (`baseline`, read just before
/// its weights), in every Nginx. Without enough stable traffic in the step (at 100%, the
/// stable peers are drained), the target's errors are compared with `reference`, the stable
/// side of the step before.
async fn watch_step(
    ctx: &Ctx,
    upstream: &str,
    (watched, baseline): (&Watched<'_>, &[Upstream]),
    options: &CanaryOptions,
    step: &str,
    reference: &Window,
    interrupts: &mut Interrupts,
) -> Result<(Watch, Window, Window), Failure> {
    let gates = &options.gates;
    let start = Instant::now();
    let quiet_timeout = options.quiet_timeout();
    loop {
        let states = ctx.fleet.read(upstream).await?;
        let (target, stable) = watched.windows(baseline, &states);
        if let Some(why) = watched.sick(baseline, &states) {
            return Ok((Watch::Failed(why), target, stable));
        }
        let compared = if stable.requests >= gates.min_requests {
            &stable
        } else {
            reference
        };
        let left = options.interval.saturating_sub(start.elapsed());
        let why_waiting = match judge(&target, compared, gates, left.is_zero()) {
            Verdict::Fail(why) => return Ok((Watch::Failed(why), target, stable)),
            Verdict::Pass => {
                ctx.progress.finish();
                return Ok((Watch::Passed, target, stable));
            }
            Verdict::Wait(why) => why,
        };
        if left.is_zero() && is_quiet(&target, gates, start.elapsed(), quiet_timeout) {
            let why = format!(
                "the target served {} of the {} requests a step needs in {}s",
                target.requests,
                gates.min_requests,
                start.elapsed().as_secs()
            );
            ctx.progress.finish();
            return Ok((Watch::Quiet(why), target, stable));
        }
        let next = if left.is_zero() {
            let quiet_in = quiet_timeout.saturating_sub(start.elapsed()).as_secs() + 1;
            format!(
                "waiting: {why_waiting}; quiet in {quiet_in}s (then {})",
                options.on_quiet.as_str()
            )
        } else {
            format!("next step in {}s", left.as_secs() + 1)
        };
        ctx.progress.status(&format!(
            "{step}: target {} | stable {}; {next}",
            side(&target, gates),
            side(&stable, gates)
        ));
        tokio::select! {
            _ = tokio::time::sleep(POLL.min(left.max(POLL))) => {}
            _ = interrupts.recv() => return Ok((Watch::Interrupted, target, stable)),
        }
    }
}

/// One side of a step in a few words: `812 req, 1.2% errors, p99 45 ms`.
fn side(window: &Window, gates: &Gates) -> String {
    let errors = window
        .error_rate()
        .map_or("-".into(), |rate| format!("{:.1}%", rate * 100.0));
    let latency = window
        .latency
        .quantile_ms(gates.latency_quantile)
        .map_or("-".into(), |ms| format!("{ms:.0} ms"));
    format!(
        "{} req, {errors} errors, p{} {latency}",
        window.requests,
        quantile_name(gates.latency_quantile)
    )
}

/// What a step saw and decided, for the table at the end of a canary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    pub step: String,
    pub percent: u32,
    pub target_requests: u64,
    pub target_errors: u64,
    pub target_latency_ms: Option<f64>,
    pub stable_requests: u64,
    pub stable_errors: u64,
    pub stable_latency_ms: Option<f64>,
    pub verdict: String,
}

impl StepReport {
    fn new(step: String, percent: u32, sides: (&Window, &Window), q: f64, verdict: &str) -> Self {
        let (target, stable) = sides;
        StepReport {
            step,
            percent,
            target_requests: target.requests,
            target_errors: target.errors,
            target_latency_ms: target.latency.quantile_ms(q),
            stable_requests: stable.requests,
            stable_errors: stable.errors,
            stable_latency_ms: stable.latency.quantile_ms(q),
            verdict: verdict.to_string(),
        }
    }
}

/// The steps' table (or JSON with `--json`), on stdout.
fn print_report(ctx: &Ctx, steps: &[StepReport], q: f64) {
    if ctx.json {
        let json = serde_json::to_string_pretty(steps).expect("JSON of a report");
        println!("{json}");
        return;
    }
    let p = format!("P{}", quantile_name(q));
    println!(
        "{:<6} {:>4} {:>9} {:>7} {:>8} {:>9} {:>7} {:>8}  VERDICT",
        "STEP",
        "%",
        "T.REQS",
        "T.ERR",
        format!("T.{p}"),
        "S.REQS",
        "S.ERR",
        format!("S.{p}")
    );
    let rate = |errors: u64, requests: u64| {
        if requests == 0 {
            "-".to_string()
        } else {
            format!("{:.1}%", errors as f64 * 100.0 / requests as f64)
        }
    };
    let ms = |value: Option<f64>| value.map_or("-".to_string(), |ms| format!("{ms:.0}ms"));
    for step in steps {
        println!(
            "{:<6} {:>4} {:>9} {:>7} {:>8} {:>9} {:>7} {:>8}  {}",
            step.step,
            step.percent,
            step.target_requests,
            rate(step.target_errors, step.target_requests),
            ms(step.target_latency_ms),
            step.stable_requests,
            rate(step.stable_errors, step.stable_requests),
            ms(step.stable_latency_ms),
            step.verdict
        );
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
