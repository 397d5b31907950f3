//! A canary step's verdict, from what the target and the stable peers did over the same
//! window: the target fails only when it is worse than the stable version beyond chance and by
//! more than an allowed margin (errors), or slower by more than an allowed share (latency); it
//! passes only when the step's interval is over and it served enough requests to tell.
//!
//! Errors are compared with a one-sided two-proportion test (Agresti–Caffo: one error and one
//! success added to each side, which keeps small samples honest). A verdict is taken on every
//! poll, so the test's confidence is per look; the default (99.9%) and margin (1 point) keep a
//! canary of four steps polled four times a second under 1 false rollback in 100 when both
//! versions fail alike (see `benches/canary_gates.rs`).

use std::time::Duration;

use shift_wire::{Histogram, Peer};

/// What one side did over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    /// The larger of its 5xx answers and its failed attempts (an attempt retried on a 5xx
    /// shows in both).
    pub errors: u64,
    pub latency: Histogram,
}

impl Window {
    /// What the peers (each `(before, now)`, two reads of one address) did between the reads.
    /// When the address is another instance now (it left and came back, its counters from
    /// zero), all the new instance did is in the window.
    pub fn between<'a>(peers: impl IntoIterator<Item = (&'a Peer, &'a Peer)>) -> Window {
        let (mut requests, mut server_errors, mut failures) = (0, 0, 0);
        let mut latency = Histogram::default();
        let nothing = Histogram::default();
        for (before, now) in peers {
            let same = before.joined_ms == now.joined_ms;
            let earlier = |count: u64| if same { count } else { 0 };
            requests += now.requests.saturating_sub(earlier(before.requests));
            server_errors += now
                .responses
                .server_error
                .saturating_sub(earlier(before.responses.server_error));
            failures += now.failures.saturating_sub(earlier(before.failures));
            let earlier_latency = if same {
                &before.response_time
            } else {
                &nothing
            };
            latency = latency.plus(&now.response_time.since(earlier_latency));
        }
        Window {
            requests,
            errors: server_errors.max(failures),
            latency,
        }
    }

    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

/// The gates a step's target must pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Gates {
    /// One-sided confidence that the target is worse before it fails on errors (0.999).
    pub confidence: f64,
    /// How many more errors (a fraction of requests) than stable the target may have (0.01).
    pub error_margin: f64,
    /// The error-rate ceiling when the stable side served too few requests to compare with.
    pub max_error_rate: f64,
    /// The latency quantile compared (0.99), and how much higher than stable's it may be
    /// (0.5 for 50%).
    pub latency_quantile: f64,
    pub max_latency_increase: f64,
    /// Requests the target must serve in a step before it can pass (100).
    pub min_requests: u64,
}

impl Default for Gates {
    fn default() -> Gates {
        Gates {
            confidence: 0.999,
            error_margin: 0.01,
            max_error_rate: 0.05,
            latency_quantile: 0.99,
            max_latency_increase: 0.5,
            min_requests: 100,
        }
    }
}

/// Reads an allowed increase such as `50%` or `0.5` (the command line and deploy plans).
pub fn parse_increase(text: &str) -> Result<f64, String> {
    let (number, scale) = match text.trim().strip_suffix('%') {
        Some(percent) => (percent, 100.0),
        None => (text.trim(), 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .map(|value| value / scale)
        .filter(|value| value.is_finite() && *value > 0.0)
        .ok_or_else(|| format!("increase \"{text}\" must be above 0, e.g. 50% or 0.5"))
}

/// Checks a one-sided confidence: above 0.5 and below 1, e.g. 0.999.
pub fn parse_confidence(confidence: f64) -> Result<f64, String> {
    if confidence > 0.5 && confidence < 1.0 {
        Ok(confidence)
    } else {
        Err(format!(
            "confidence {confidence} must be above 0.5 and below 1, e.g. 0.999"
        ))
    }
}

/// Checks a latency quantile: from 0.5 to below 1, e.g. 0.99 or 0.9.
pub fn parse_quantile(quantile: f64) -> Result<f64, String> {
    if (0.5..1.0).contains(&quantile) {
        Ok(quantile)
    } else {
        Err(format!(
            "latency quantile {quantile} must be from 0.5 to below 1, e.g. 0.99"
        ))
    }
}

/// A latency difference under this is never a failure: Nginx measures whole milliseconds.
pub const LATENCY_FLOOR_MS: f64 = 5.0;

/// Requests a side needs before its errors are judged at all.
pub const MIN_ERROR_EVIDENCE: u64 = 10;

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not yet: why (too early, too few requests).
    Wait(String),
    Pass,
    Fail(String),
}

/// The verdict on a step so far: `target` and `stable` over the same window since the step
/// began; `interval_over` once the step's interval has elapsed.
pub fn judge(target: &Window, stable: &Window, gates: &Gates, interval_over: bool) -> Verdict {
    if let Some(why) = error_failure(target, stable, gates) {
        return Verdict::Fail(why);
    }
    if let Some(why) = latency_failure(target, stable, gates) {
        return Verdict::Fail(why);
    }
    if !interval_over {
        return Verdict::Wait("the step's interval is not over".into());
    }
    if target.requests < gates.min_requests {
        return Verdict::Wait(format!(
            "the target served {} of the {} requests a step needs",
            target.requests, gates.min_requests
        ));
    }
    Verdict::Pass
}

/// Whether a step is quiet: it has run for `quiet_timeout` and its target still served fewer
/// than `min_requests`, so no verdict may come (a service with little traffic). What then is
/// the operator's choice (`--on-quiet`), not a verdict.
pub fn is_quiet(
    target: &Window,
    gates: &Gates,
    step_age: Duration,
    quiet_timeout: Duration,
) -> bool {
    step_age >= quiet_timeout && target.requests < gates.min_requests
}

fn error_failure(target: &Window, stable: &Window, gates: &Gates) -> Option<String> {
    if target.requests < MIN_ERROR_EVIDENCE {
        return None;
    }
    let z_needed = z_for(gates.confidence);
    let (p_target, var_target) = adjusted(target);
    let percent = |rate: f64| rate * 100.0;
    if stable.requests < gates.min_requests {
        // Nothing to compare with: the absolute ceiling, with the same confidence.
        let z = (p_target - gates.max_error_rate) / var_target.sqrt();
        return (z > z_needed).then(|| {
            format!(
                "the target's error rate is {:.1}% over {} requests, above the {:.1}% allowed \
                 (no stable traffic to compare with)",
                percent(target.errors as f64 / target.requests as f64),
                target.requests,
                percent(gates.max_error_rate)
            )
        });
    }
    let (p_stable, var_stable) = adjusted(stable);
    let z = (p_target - p_stable - gates.error_margin) / (var_target + var_stable).sqrt();
    (z > z_needed).then(|| {
        format!(
            "the target's error rate is {:.1}% over {} requests against the stable peers' {:.1}% \
             over {}: worse by more than {:.1} points at {:.1}% confidence",
            percent(target.errors as f64 / target.requests as f64),
            target.requests,
            percent(stable.errors as f64 / stable.requests as f64),
            stable.requests,
            percent(gates.error_margin),
            gates.confidence * 100.0
        )
    })
}

/// A side's error rate with one error and one success added, and that estimate's variance.
fn adjusted(window: &Window) -> (f64, f64) {
    let n = window.requests as f64 + 2.0;
    let p = (window.errors as f64 + 1.0) / n;
    (p, p * (1.0 - p) / n)
}

/// Times a side needs before its latency quantile is judged: enough that the quantile is not
/// the slowest one or two (`2 / (1 - q)`, 200 for p99), and at least `min_requests`.
pub fn latency_evidence(gates: &Gates) -> u64 {
    let tail = (2.0 / (1.0 - gates.latency_quantile).max(1e-6)).ceil() as u64;
    tail.max(gates.min_requests)
}

fn latency_failure(target: &Window, stable: &Window, gates: &Gates) -> Option<String> {
    let needed = latency_evidence(gates);
    if target.latency.count() < needed || stable.latency.count() < needed {
        return None;
    }
    let q = gates.latency_quantile;
    let target_ms = target.latency.quantile_ms(q)?;
    let stable_ms = stable.latency.quantile_ms(q)?;
    let slower = target_ms > stable_ms * (1.0 + gates.max_latency_increase)
        && target_ms - stable_ms >= LATENCY_FLOOR_MS;
    slower.then(|| {
        format!(
            "the target's p{} is {target_ms:.0} ms against the stable peers' {stable_ms:.0} ms, \
             more than {:.0}% slower",
            quantile_name(q),
            gates.max_latency_increase * 100.0
        )
    })
}

/// `99` for 0.99, `99.9` for 0.999.
pub fn quantile_name(q: f64) -> String {
    let percent = q * 100.0;
    if (percent - percent.round()).abs() < 1e-9 {
        format!("{percent:.0}")
    } else {
        format!("{percent}")
    }
}

/// The standard normal quantile for a one-sided `confidence` (Acklam's rational
/// approximation, within 1.2e-9 relative).
pub fn z_for(confidence: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let p = confidence.clamp(1e-12, 1.0 - 1e-12);
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shift_wire::{bucket_of, LATENCY_BUCKETS};

    fn window(requests: u64, errors: u64) -> Window {
        Window {
            requests,
            errors,
            latency: Histogram::default(),
        }
    }

    fn timed(requests: u64, ms: u64) -> Window {
        let mut latency = Histogram {
            counts: vec![0; LATENCY_BUCKETS],
            sum_ms: ms * requests,
        };
        latency.counts[bucket_of(ms)] = requests;
        Window {
            requests,
            errors: 0,
            latency,
        }
    }

    #[test]
    fn a_step_is_quiet_only_when_its_time_is_up_and_its_target_lacks_requests() {
        let gates = Gates::default();
        let (age, timeout) = (Duration::from_secs(10), Duration::from_secs(10));
        assert!(is_quiet(&window(99, 0), &gates, age, timeout));
        assert!(!is_quiet(&window(100, 0), &gates, age, timeout));
        assert!(!is_quiet(
            &window(0, 0),
            &gates,
            age - Duration::from_millis(1),
            timeout
        ));
    }

    /// One read of peer 10.0.0.1:80, of the instance that joined at `joined_ms`.
    fn read(requests: u64, errors: u64, joined_ms: u64) -> Peer {
        serde_json::from_value(serde_json::json!({
            "server": "10.0.0.1:80", "weight": 1, "state": "up", "health": "unchecked",
            "backup": false, "config_weight": 1, "requests": requests, "failures": 0,
            "active": 0, "joined_ms": joined_ms,
            "responses": {"1xx": 0, "2xx": requests - errors, "3xx": 0, "4xx": 0, "5xx": errors}
        }))
        .unwrap()
    }

    #[test]
    fn a_window_counts_a_new_instance_of_an_address_from_zero() {
        let (before, now) = (read(500, 10, 1), read(530, 13, 1));
        assert_eq!(Window::between([(&before, &now)]), window(30, 3));
        // The address left and came back: its counters started again, below the old ones.
        let again = read(40, 20, 2);
        assert_eq!(Window::between([(&before, &again)]), window(40, 20));
    }

    #[test]
    fn gate_settings_are_read_or_refused_with_why() {
        assert_eq!(parse_increase("50%"), Ok(0.5));
        assert_eq!(parse_increase("0.25"), Ok(0.25));
        assert!(parse_increase("0%").unwrap_err().contains("above 0"));
        assert!(parse_increase("fast").is_err());
        assert_eq!(parse_confidence(0.999), Ok(0.999));
        assert!(parse_confidence(1.0).is_err() && parse_confidence(0.3).is_err());
        assert_eq!(parse_quantile(0.9), Ok(0.9));
        assert!(parse_quantile(1.0).is_err() && parse_quantile(f64::NAN).is_err());
    }

    #[test]
    fn normal_quantiles() {
        for (confidence, z) in [(0.5, 0.0), (0.95, 1.644_853_6), (0.999, 3.090_232_3)] {
            assert!((z_for(confidence) - z).abs() < 1e-6, "{confidence}");
        }
        assert!((z_for(0.01) + 2.326_347_9).abs() < 1e-6);
    }

    #[test]
    fn a_target_that_fails_everything_fails_within_a_few_dozen_requests() {
        let gates = Gates::default();
        let stable = window(400, 8);
        let failed_at = (1..=50)
            .find(|&n| {
                matches!(
                    judge(&window(n, n), &stable, &gates, false),
                    Verdict::Fail(_)
                )
            })
            .expect("fails within 50 requests");
        assert!(failed_at <= 20, "failed at {failed_at}");
        // With no stable traffic, against the ceiling.
        let failed_at = (1..=50)
            .find(|&n| {
                matches!(
                    judge(&window(n, n), &window(0, 0), &gates, false),
                    Verdict::Fail(_)
                )
            })
            .expect("fails within 50 requests");
        assert!(failed_at <= 20, "failed at {failed_at}");
    }

    #[test]
    fn a_stable_version_that_already_fails_six_percent_can_be_deployed() {
        let gates = Gates::default();
        assert_eq!(
            judge(&window(1000, 62), &window(19000, 1140), &gates, true),
            Verdict::Pass
        );
        // Worse beyond chance and the margin: 12% against 6%.
        assert!(matches!(
            judge(&window(1000, 120), &window(19000, 1140), &gates, true),
            Verdict::Fail(_)
        ));
    }

    #[test]
    fn a_step_passes_only_once_over_and_with_enough_requests() {
        let gates = Gates::default();
        let stable = window(2000, 0);
        assert!(matches!(
            judge(&window(500, 0), &stable, &gates, false),
            Verdict::Wait(_)
        ));
        let Verdict::Wait(why) = judge(&window(40, 0), &stable, &gates, true) else {
            panic!("a quiet step waits");
        };
        assert!(why.contains("40 of the 100"), "{why}");
        assert_eq!(judge(&window(100, 0), &stable, &gates, true), Verdict::Pass);
    }

    #[test]
    fn three_times_slower_fails_ten_percent_slower_does_not() {
        let gates = Gates::default();
        let stable = timed(4000, 10);
        let Verdict::Fail(why) = judge(&timed(400, 30), &stable, &gates, true) else {
            panic!("3x slower must fail");
        };
        assert!(why.contains("p99"), "{why}");
        assert_eq!(judge(&timed(400, 11), &stable, &gates, true), Verdict::Pass);
        // Too few times to judge a p99: no latency verdict yet.
        assert!(matches!(
            judge(&timed(150, 30), &stable, &gates, false),
            Verdict::Wait(_)
        ));
        // Within the floor: 1 ms against 3 ms is Nginx's resolution, not a regression.
        assert_eq!(
            judge(&timed(400, 3), &timed(4000, 1), &gates, true),
            Verdict::Pass
        );
    }

    proptest! {
        /// A target no worse than stable never fails on errors, whatever the counts.
        #[test]
        fn no_worse_never_fails(stable_n in 100u64..100_000, rate in 0.0f64..0.5, target_n in 0u64..5_000) {
            let stable_errors = (stable_n as f64 * rate) as u64;
            let target_errors = (target_n as f64 * rate).floor() as u64;
            let verdict = judge(
                &window(target_n, target_errors),
                &window(stable_n, stable_errors),
                &Gates::default(),
                false,
            );
            prop_assert!(!matches!(verdict, Verdict::Fail(_)), "{:?}", verdict);
        }

        /// More errors on the target never turns a failure into a pass.
        #[test]
        fn more_errors_never_help(target_n in 10u64..2_000, errors in 0u64..2_000, stable_n in 0u64..50_000, stable_rate in 0.0f64..0.3) {
            let errors = errors.min(target_n);
            let stable = window(stable_n, (stable_n as f64 * stable_rate) as u64);
            let gates = Gates::default();
            let failed = |e| matches!(judge(&window(target_n, e), &stable, &gates, true), Verdict::Fail(_));
            if failed(errors) && errors < target_n {
                prop_assert!(failed(errors + 1));
            }
        }
    }
}
