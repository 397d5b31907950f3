//! A deploy plan (`shiftctl deploy PLAN.toml`): its TOML, read into typed values and checked
//! once, when the plan loads, so that a bad plan is refused before anything starts.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use shiftctl::deploy::verdict::{self, Gates};

use crate::commands::OnQuiet;
use crate::exit::Failure;
use crate::plan::{self, CloseAfter};

/// A deploy plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployPlan {
    /// The `shift` upstream the sides are peers of.
    pub upstream: String,
    /// `switch` (all at once) or `canary` (in steps).
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    /// Canary steps, e.g. "5,25,50,100".
    #[serde(default = "default_steps", deserialize_with = "steps")]
    pub steps: Vec<u32>,
    /// Time each canary step is watched.
    #[serde(default = "default_interval", deserialize_with = "duration")]
    pub interval: Duration,
    /// A canary step's gates, as `canary`'s options (see `shiftctl::deploy::verdict::Gates`): the
    /// target's error rate may exceed the stable peers' by `error_margin` at `confidence`, and
    /// `max_error_rate` when there is no stable traffic;
    /// its `latency_quantile` may be `max_latency_increase` above theirs; a step needs
    /// `min_requests`.
    #[serde(default = "default_max_error_rate", deserialize_with = "error_rate")]
    pub max_error_rate: f64,
    #[serde(default = "default_error_margin", deserialize_with = "error_rate")]
    pub error_margin: f64,
    #[serde(default = "default_confidence", deserialize_with = "confidence")]
    pub confidence: f64,
    #[serde(default = "default_latency_increase", deserialize_with = "increase")]
    pub max_latency_increase: f64,
    #[serde(default = "default_latency_quantile", deserialize_with = "quantile")]
    pub latency_quantile: f64,
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// How long a canary step (or a rolling deploy's new replica) may wait for `min_requests`
    /// before it is quiet (default: 10 × `interval`), and what it then does (`hold`, `promote`,
    /// `rollback`; a rolling deploy takes its replica out for `hold` as for `rollback`).
    #[serde(default, deserialize_with = "optional_duration")]
    pub quiet_timeout: Option<Duration>,
    #[serde(default = "default_on_quiet")]
    pub on_quiet: OnQuiet,
    /// The window of the new side's ramp when traffic first reaches it (`"30s"`; `"0s"`: none),
    /// in place of the upstream's `shift_slow_start`, as `--slow-start` (strategies `switch`
    /// and `canary`).
    #[serde(default, deserialize_with = "optional_window")]
    pub slow_start: Option<Duration>,
    /// What the old side's drain does with the requests it still carries (WebSockets, event
    /// streams): close them this long after the deploy drained it (`"30s"`; `"0s"`: at once),
    /// evenly over `close_spread`, before the old side is stopped, as `--close-after` and
    /// `--close-spread` (every strategy; a rolling deploy, for each replica it retires).
    #[serde(default, deserialize_with = "optional_window")]
    pub close_after: Option<Duration>,
    #[serde(default, deserialize_with = "optional_window")]
    pub close_spread: Option<Duration>,
    /// How long the new side may take to become healthy.
    #[serde(default = "default_health_timeout", deserialize_with = "duration")]
    pub health_timeout: Duration,
    /// How long a start or stop hook may run before it is ended with what it started.
    #[serde(default = "default_hook_timeout", deserialize_with = "duration")]
    pub hook_timeout: Duration,
    /// Exactly two sides, e.g. `[sides.blue]` and `[sides.green]` (switch and canary).
    #[serde(default)]
    pub sides: BTreeMap<String, Side>,
    /// The hooks of a rolling deploy of a scaled service (strategy `rolling`).
    pub rolling: Option<Rolling>,
}

/// How a rolling deploy starts a new replica and stops an old one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    /// Starts one new replica. It may write the replica's IP:PORT to `$SHIFT_ADDRESS_FILE`, and
    /// shiftctl adds it to the upstream; else shiftctl waits for a new peer to appear (added by
    /// the hook itself, e.g. with `shiftctl add`). `$SHIFT_REPLACING` is the old replica.
    pub start: String,
    /// Stops the replica at `$SHIFT_SERVER` (an old one once replaced, or a new one that failed).
    pub stop: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Switch,
    Canary,
    /// Replace the replicas of a scaled service one at a time.
    Rolling,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Side {
    /// The side's peers: one address as the upstream lists it ("127.0.0.1:8001"), or a label
    /// (`shift_label`) that names all of them, such as the addresses of a Compose service
    /// (`server backend_green:8000 resolve`), which change when its container is recreated.
    pub server: String,
    /// Shell command that starts this side (e.g. "docker compose up -d backend_green").
    pub start: Option<String>,
    /// Shell command that stops it.
    pub stop: Option<String>,
    /// A URL that must answer 2xx/3xx before traffic moves (besides the module's checks).
    pub check_url: Option<String>,
}

fn default_strategy() -> Strategy {
    Strategy::Switch
}
fn default_steps() -> Vec<u32> {
    vec![5, 25, 50, 100]
}
fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_max_error_rate() -> f64 {
    Gates::default().max_error_rate
}
fn default_error_margin() -> f64 {
    Gates::default().error_margin
}
fn default_confidence() -> f64 {
    Gates::default().confidence
}
fn default_latency_increase() -> f64 {
    Gates::default().max_latency_increase
}
fn default_latency_quantile() -> f64 {
    Gates::default().latency_quantile
}
fn default_min_requests() -> u64 {
    Gates::default().min_requests
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_hook_timeout() -> Duration {
    Duration::from_secs(300)
}

/// Reads steps such as "5,25,50,100" with the same rules as `canary --steps`.
fn steps<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<u32>, D::Error> {
    let text = String::deserialize(deserializer)?;
    plan::parse_steps(&text).map_err(serde::de::Error::custom)
}

/// Reads durations such as "30s" with the same rules as the command line.
fn default_on_quiet() -> OnQuiet {
    OnQuiet::Hold
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    duration(deserializer).map(Some)
}

fn optional_window<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    plan::parse_window(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn duration<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    plan::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Reads the error rate with the same rules as `canary --max-error-rate`.
fn error_rate<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    plan::parse_error_rate(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
}

fn confidence<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    verdict::parse_confidence(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
}

fn quantile<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    verdict::parse_quantile(f64::deserialize(deserializer)?).map_err(serde::de::Error::custom)
}

/// Reads `"50%"` (or `0.5`) as `canary --max-latency-increase` does.
fn increase<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Increase {
        Text(String),
        Number(f64),
    }
    let text = match Increase::deserialize(deserializer)? {
        Increase::Text(text) => text,
        Increase::Number(number) => number.to_string(),
    };
    verdict::parse_increase(&text).map_err(serde::de::Error::custom)
}

impl DeployPlan {
    /// How long a step may wait for the requests a verdict needs.
    pub fn quiet_timeout(&self) -> Duration {
        self.quiet_timeout.unwrap_or(self.interval * 10)
    }

    /// The deadline the old side's drain carries, if the plan gives one.
    pub fn close(&self) -> Option<CloseAfter> {
        self.close_after.map(|after| CloseAfter {
            after,
            spread: self.close_spread.unwrap_or_default(),
        })
    }

    /// The gates of the plan's canary steps.
    pub fn gates(&self) -> Gates {
        Gates {
            confidence: self.confidence,
            error_margin: self.error_margin,
            max_error_rate: self.max_error_rate,
            latency_quantile: self.latency_quantile,
            max_latency_increase: self.max_latency_increase,
            min_requests: self.min_requests,
        }
    }
}

impl DeployPlan {
    pub fn load(path: &Path) -> Result<DeployPlan, Failure> {
        let text = fs::read_to_string(path).map_err(|err| {
            Failure::usage(anyhow::anyhow!("cannot read {}: {err}", path.display()))
        })?;
        let plan: DeployPlan = toml::from_str(&text).map_err(|err| {
            Failure::usage(anyhow::anyhow!(
                "{} is not a valid plan: {err}",
                path.display()
            ))
        })?;
        if let Err(why) = CloseAfter::of(plan.close_after, plan.close_spread) {
            return Err(Failure::usage(anyhow::anyhow!("{}: {why}", path.display())));
        }
        match (plan.strategy, &plan.rolling) {
            (Strategy::Rolling, None) => {
                return Err(Failure::usage(anyhow::anyhow!(
                    "{}: strategy \"rolling\" needs a [rolling] table with a start hook",
                    path.display()
                )))
            }
            (Strategy::Rolling, Some(_)) if !plan.sides.is_empty() => {
                return Err(Failure::usage(anyhow::anyhow!(
                    "{}: a rolling deploy replaces the upstream's replicas; it has no [sides]",
                    path.display()
                )))
            }
            (Strategy::Rolling, Some(_)) if plan.slow_start.is_some() => {
                return Err(Failure::usage(anyhow::anyhow!(
                    "{}: slow_start is for strategies \"switch\" and \"canary\"; a rolling \
                     deploy's new replicas ramp up with the upstream's shift_slow_start",
                    path.display()
                )))
            }
            (Strategy::Rolling, Some(_)) => {}
            (_, Some(_)) => {
                return Err(Failure::usage(anyhow::anyhow!(
                    "{}: [rolling] is for strategy = \"rolling\"",
                    path.display()
                )))
            }
            (_, None) if plan.sides.len() != 2 => {
                return Err(Failure::usage(anyhow::anyhow!(
                    "{} must have exactly two [sides.NAME] tables, it has {}",
                    path.display(),
                    plan.sides.len()
                )))
            }
            (_, None) => {}
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_reads_with_defaults() {
        let plan: DeployPlan = toml::from_str(
            r#"
            upstream = "app"
            [sides.blue]
            server = "127.0.0.1:8000"
            start = "docker compose up -d backend_blue"
            stop = "docker compose stop backend_blue"
            [sides.green]
            server = "127.0.0.1:8001"
            check_url = "http://127.0.0.1:8001/api/users/"
            "#,
        )
        .unwrap();
        assert_eq!(plan.strategy, Strategy::Switch);
        assert_eq!(plan.steps, [5, 25, 50, 100]);
        assert_eq!(plan.health_timeout, Duration::from_secs(60));
        assert_eq!(
            plan.sides["green"].check_url.as_deref(),
            Some("http://127.0.0.1:8001/api/users/")
        );
        assert_eq!(plan.gates(), Gates::default());
        let plan: DeployPlan = toml::from_str(
            "upstream = \"app\"\nmax_latency_increase = \"20%\"\nlatency_quantile = 0.9\n\
             min_requests = 500\nconfidence = 0.99\nerror_margin = 0.02\n[sides]\n",
        )
        .unwrap();
        let gates = plan.gates();
        assert_eq!(
            (
                gates.max_latency_increase,
                gates.latency_quantile,
                gates.min_requests
            ),
            (0.2, 0.9, 500)
        );
        assert_eq!((gates.confidence, gates.error_margin), (0.99, 0.02));
    }

    #[test]
    fn bad_steps_and_durations_are_refused_when_read() {
        let base = "upstream = \"app\"\n[sides]\n";
        let err = toml::from_str::<DeployPlan>(&format!("steps = \"50,25\"\n{base}")).unwrap_err();
        assert!(
            err.to_string()
                .contains("must rise from above 0 and end at 100"),
            "{err}"
        );
        let err =
            toml::from_str::<DeployPlan>(&format!("interval = \"soon\"\n{base}")).unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
        for (line, expected) in [
            ("interval = \"0s\"", "zero"),
            ("health_timeout = \"0s\"", "zero"),
            ("max_error_rate = 7.0", "fraction from 0 to 1"),
            ("max_error_rate = -1.0", "fraction from 0 to 1"),
            ("max_error_rate = nan", "fraction from 0 to 1"),
            ("confidence = 1.0", "above 0.5 and below 1"),
            ("latency_quantile = 2.0", "from 0.5 to below 1"),
            ("max_latency_increase = \"0%\"", "must be above 0"),
        ] {
            let err = toml::from_str::<DeployPlan>(&format!("{line}\n{base}")).unwrap_err();
            assert!(err.to_string().contains(expected), "{line}: {err}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<DeployPlan>(
            "upstream = \"app\"\nstrategy = \"switch\"\nstratgy = 1\n[sides]\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("stratgy"), "{err}");
    }

    #[test]
    fn a_quiet_step_waits_ten_intervals_unless_the_plan_says() {
        let base = "upstream = \"app\"\ninterval = \"20s\"\n";
        let plan: DeployPlan = toml::from_str(base).unwrap();
        assert_eq!(
            (plan.quiet_timeout(), plan.on_quiet),
            (Duration::from_secs(200), OnQuiet::Hold)
        );
        let plan: DeployPlan = toml::from_str(&format!(
            "{base}quiet_timeout = \"5m\"\non_quiet = \"promote\"\n"
        ))
        .unwrap();
        assert_eq!(
            (plan.quiet_timeout(), plan.on_quiet),
            (Duration::from_secs(300), OnQuiet::Promote)
        );
        let err =
            toml::from_str::<DeployPlan>(&format!("{base}on_quiet = \"wait\"\n")).unwrap_err();
        assert!(err.to_string().contains("on_quiet"), "{err}");
    }

    #[test]
    fn a_plan_may_give_the_old_sides_drain_a_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.toml");
        let sides =
            "[sides.blue]\nserver = \"127.0.0.1:1\"\n[sides.green]\nserver = \"127.0.0.1:2\"\n";
        let load = |lines: &str| {
            fs::write(&path, format!("upstream = \"app\"\n{lines}\n{sides}")).unwrap();
            DeployPlan::load(&path)
        };
        let plan = load("close_after = \"30s\"\nclose_spread = \"10s\"").unwrap();
        assert_eq!(
            plan.close(),
            Some(CloseAfter {
                after: Duration::from_secs(30),
                spread: Duration::from_secs(10)
            })
        );
        assert_eq!(load("").unwrap().close(), None);
        for bad in [
            "close_spread = \"10s\"",
            "close_after = \"soon\"",
            "close_after = \"2d\"",
        ] {
            let failure = load(bad).unwrap_err();
            assert!(
                failure.error.to_string().contains("close"),
                "{bad}: {:#}",
                failure.error
            );
        }
    }

    #[test]
    fn a_plan_may_give_the_new_side_a_slow_start_of_its_own_or_none() {
        let base = "upstream = \"app\"\n";
        let slow = |line: &str| {
            toml::from_str::<DeployPlan>(&format!("{base}{line}\n")).map(|plan| plan.slow_start)
        };
        assert_eq!(slow("").unwrap(), None);
        assert_eq!(
            slow("slow_start = \"30s\"").unwrap(),
            Some(Duration::from_secs(30))
        );
        assert_eq!(slow("slow_start = \"0s\"").unwrap(), Some(Duration::ZERO));
        let err = slow("slow_start = \"2d\"").unwrap_err();
        assert!(err.to_string().contains("slow_start"), "{err}");
        let err = slow("slow_start = \"25h\"").unwrap_err();
        assert!(err.to_string().contains("24h"), "{err}");
    }
}
