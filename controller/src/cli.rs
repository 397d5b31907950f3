//! What `shiftctl` accepts on its command line: the clap definitions, their value parsers and
//! defaults. `main.rs` dispatches them; `manuals.rs` turns them into man pages and completions.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shift_wire::PeerState;
use shiftctl::deploy::verdict;

use crate::commands::{OnInterrupt, OnQuiet};
use crate::plan;

#[derive(Parser)]
#[command(
    version,
    about = "Shift traffic between backend versions behind Nginx, with no reload"
)]
pub struct Cli {
    /// Unix socket of an Nginx serving shift_api; repeat it to change several Nginx together
    /// (all of them, or none)
    #[arg(
        long = "socket",
        env = "SHIFT_SOCKET",
        value_delimiter = ',',
        default_value = "/run/nginx-shift/shift.sock",
        global = true
    )]
    pub sockets: Vec<PathBuf>,
    /// Location prefix of shift_api in that server
    #[arg(long, env = "SHIFT_API_PREFIX", default_value = "/api/", global = true)]
    pub prefix: String,
    /// Where shiftctl keeps the stable set for rollback and the live side of deploys
    #[arg(
        long,
        env = "SHIFT_STATE_DIR",
        default_value = "/var/lib/nginx-shift",
        global = true
    )]
    pub state_dir: PathBuf,
    /// Print results as JSON
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// A fleet of Nginx hosts behind etcd: commands write the desired state there, and the agent
/// beside each Nginx applies it.
#[derive(clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoints (URL[,URL...]): change the fleet's desired state there instead of local
    /// sockets
    #[arg(
        long = "etcd",
        env = "SHIFT_ETCD",
        value_delimiter = ',',
        global = true
    )]
    pub etcd: Vec<String>,
    /// Key prefix of the fleet's state in etcd
    #[arg(
        long = "etcd-prefix",
        env = "SHIFT_ETCD_PREFIX",
        default_value = "/nginx-shift/",
        global = true
    )]
    pub etcd_prefix: String,
    /// CA certificate (PEM) that signed etcd's server certificate
    #[arg(long = "etcd-ca", env = "SHIFT_ETCD_CA", global = true)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's mutual TLS, with --etcd-key
    #[arg(long = "etcd-cert", env = "SHIFT_ETCD_CERT", global = true)]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd's mutual TLS, with --etcd-cert
    #[arg(long = "etcd-key", env = "SHIFT_ETCD_KEY", global = true)]
    pub etcd_key: Option<PathBuf>,
}

/// Each command's own arguments are defined only when it is the one run, or when its help, the
/// manuals or the completions are made: a `set` or a `status` then does not build every other
/// command's arguments, which was most of the time the arguments' parsing took.
#[derive(Subcommand)]
#[command(defer = true)]
pub enum Command {
    /// Show weights, shares, states, health and counters
    Status {
        /// One upstream (default: all shift upstreams)
        upstream: Option<String>,
        /// Refresh until interrupted
        #[arg(long)]
        watch: bool,
        /// Refresh period with --watch
        #[arg(long, default_value = "1s", value_parser = duration)]
        every: Duration,
        /// With --etcd: each host SYNCED, STALE or GONE, and each upstream's split over the fleet
        #[arg(long)]
        fleet: bool,
    },
    /// Print the Prometheus metrics of every Nginx
    Metrics,
    /// Who changed what in an upstream: its latest changes (shift_history), oldest first
    History {
        /// The shift upstream
        upstream: String,
        /// Only the changes after this generation
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Set weights in one atomic change: shiftctl set app 127.0.0.1:8001=30 127.0.0.1:8000=70
    Set {
        /// The shift upstream to change
        upstream: String,
        /// SERVER=WEIGHT (0 to 1000)
        #[arg(required = true)]
        weights: Vec<String>,
        /// Retry this many times when the upstream changed meanwhile (with several Nginx,
        /// between reading each and writing it; one Nginx takes the change in one request)
        #[arg(long, default_value_t = 0)]
        retry: u32,
    },
    /// Stop sending new requests to a peer; it finishes what it has
    Drain {
        /// The shift upstream of the peer
        upstream: String,
        /// The peer's address, as status lists it
        server: String,
        /// Wait until the peer has no requests in progress
        #[arg(long)]
        wait: bool,
        /// Longest wait with --wait
        #[arg(long, default_value = "60s", value_parser = duration)]
        timeout: Duration,
        #[command(flatten)]
        close: CloseArgs,
    },
    /// Send new requests to a drained or standby peer again
    Undrain {
        /// The shift upstream of the peer
        upstream: String,
        /// The peer's address, as status lists it
        server: String,
    },
    /// Add a peer at run time (kept across reloads and restarts until removed)
    Add {
        /// The shift upstream to add it to
        upstream: String,
        /// IP:PORT, e.g. 10.0.0.7:8000 or [fd00::7]:8000
        server: String,
        /// Its weight (0 to 1000)
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Its state: up, drain or down (standby)
        #[arg(long, default_value = "up", value_parser = peer_state)]
        state: PeerState,
        /// Its label, e.g. the version it runs (what shift_pin and --to can name)
        #[arg(long)]
        label: Option<String>,
        /// Ramp it up over this long once it takes requests (0s: no ramp), in place of the
        /// upstream's shift_slow_start
        #[arg(long, value_parser = window)]
        slow_start: Option<Duration>,
    },
    /// Give a peer a label (e.g. the version it runs), or take it away with ""
    Label {
        /// The shift upstream of the peer
        upstream: String,
        /// The peer's address, as status lists it
        server: String,
        /// Letters, digits, ".", "_", "+" or "-"; "" takes the label away
        label: String,
    },
    /// Remove a peer added at run time; it finishes its requests in flight and takes no new ones
    Remove {
        /// The shift upstream to remove it from
        upstream: String,
        /// The peer's address, as status lists it
        server: String,
        /// Drain it first and wait for its requests to end (at most --timeout)
        #[arg(long)]
        wait: bool,
        /// Longest wait with --wait
        #[arg(long, default_value = "5m", value_parser = duration)]
        timeout: Duration,
        #[command(flatten)]
        close: CloseArgs,
    },
    /// Blue-green: wait until the target is healthy, move all traffic to it, drain the others
    Switch {
        /// The shift upstream to switch
        upstream: String,
        /// The target: a peer's address, or a label (all its peers move together)
        #[arg(long)]
        to: String,
        /// Also require this URL to answer 2xx/3xx first
        #[arg(long)]
        check_url: Option<String>,
        /// Longest wait for the target to become ready
        #[arg(long, default_value = "60s", value_parser = duration)]
        timeout: Duration,
        /// Ramp the target up over this long beside the others before they drain (0s: no
        /// ramp), in place of the upstream's shift_slow_start
        #[arg(long, value_parser = window)]
        slow_start: Option<Duration>,
        /// With --etcd: go on with the hosts that report when some are GONE or STALE (the
        /// outcome names them) instead of stopping with exit 1
        #[arg(long)]
        allow_partial: bool,
    },
    /// Shift traffic to a target in steps, watching its health and error rate; roll back on failure
    Canary {
        /// The shift upstream to shift
        upstream: String,
        /// The target: a peer's address, or a label (all its peers share the target's weight)
        #[arg(long)]
        to: String,
        /// Percentages of traffic for the target, ending at 100
        #[arg(long, default_value = "5,25,50,100", value_parser = steps)]
        steps: Steps,
        /// How long each step is watched
        #[arg(long, default_value = "30s", value_parser = duration)]
        interval: Duration,
        #[command(flatten)]
        gates: GateArgs,
        /// Wait for "shiftctl promote" (or Enter) between steps
        #[arg(long)]
        pause: bool,
        /// On Ctrl-C or SIGTERM: roll back, or hold the current step
        #[arg(long, value_enum, default_value_t = OnInterrupt::Rollback)]
        on_interrupt: OnInterrupt,
        /// Also require this URL to answer 2xx/3xx before the first step
        #[arg(long)]
        check_url: Option<String>,
        /// Longest wait for the target to become ready
        #[arg(long, default_value = "60s", value_parser = duration)]
        timeout: Duration,
        /// With --etcd: how long every live host may take to apply a step before the step fails
        /// (and the canary rolls back)
        #[arg(long, default_value = "10s", value_parser = duration)]
        sync_timeout: Duration,
        /// How long a step may wait for the requests a verdict needs (--min-requests on the
        /// target) before it is quiet [default: 10 × --interval]
        #[arg(long, value_parser = duration)]
        quiet_timeout: Option<Duration>,
        /// What a quiet step does: hold it (exit 4), promote it, or roll back
        #[arg(long, value_enum, default_value_t = OnQuiet::Hold)]
        on_quiet: OnQuiet,
        /// Ramp the target up over this long when its first step lets it take requests (0s: no
        /// ramp), in place of the upstream's shift_slow_start; a step is watched once its ramp
        /// ended
        #[arg(long, value_parser = window)]
        slow_start: Option<Duration>,
        /// With --etcd: go on with the hosts that report when some are GONE or STALE (the
        /// outcome names them) instead of stopping with exit 1
        #[arg(long)]
        allow_partial: bool,
    },
    /// Let a canary paused with --pause take its next step
    Promote {
        /// The upstream whose canary waits
        upstream: String,
    },
    /// Put all traffic back on the stable set recorded by the last switch or canary, at once
    Rollback {
        /// The upstream to put back
        upstream: String,
        /// With --etcd: how long every live host may take to apply it
        #[arg(long, default_value = "10s", value_parser = duration)]
        sync_timeout: Duration,
        /// With --etcd: go on with the hosts that report when some are GONE or STALE (the
        /// outcome names them) instead of stopping with exit 1
        #[arg(long)]
        allow_partial: bool,
    },
    /// Run a deploy plan: start the idle side, wait for health, shift, stop the old side
    Deploy {
        /// The plan, a TOML file (see docs/shiftctl.md)
        plan: PathBuf,
        /// With --etcd: go on with the hosts that report when some are GONE or STALE (the
        /// outcome names them) instead of stopping with exit 1
        #[arg(long)]
        allow_partial: bool,
    },
    /// Keep the Nginx at --socket at the fleet's desired state in --etcd, and report to the fleet
    Agent {
        /// This host's name in the fleet (default: the machine's host name)
        #[arg(long)]
        host: Option<String>,
        /// How long this host's report outlives the agent (then the host is GONE)
        #[arg(long, default_value = "5s", value_parser = duration)]
        lease: Duration,
        /// How often the module is checked for drift (a report is written when it changed)
        #[arg(long, default_value = "1s", value_parser = duration)]
        every: Duration,
        /// How often a report whose counters alone moved is written (sooner while a command
        /// reads the fleet: canary, drain)
        #[arg(long, default_value = "30s", value_parser = duration)]
        report_every: Duration,
    },
    /// Print the completion script for a shell, e.g. shiftctl completions bash > ~/.local/share/bash-completion/completions/shiftctl
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (shiftctl.1 and one per command) into a directory; packages run it
    #[command(hide = true)]
    ManPages {
        /// The directory to write them into (created if missing)
        dir: PathBuf,
    },
}

fn duration(text: &str) -> Result<Duration, String> {
    plan::parse_duration(text)
}

// `--close-after` and `--close-spread` of `drain` and `remove`. (Not a doc comment: clap would
// make it the about of the commands that flatten it, once their arguments are deferred.)
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct CloseArgs {
    /// Close the requests the peer still carries this long after the drain (WebSockets and
    /// other long-lived connections included; 0s: at once), so that it ends in bounded time
    #[arg(long, value_parser = window)]
    pub close_after: Option<Duration>,
    /// Spread those closes evenly over this long after --close-after, so that clients
    /// reconnect gradually
    #[arg(long, value_parser = window, requires = "close_after")]
    pub close_spread: Option<Duration>,
}

impl CloseArgs {
    pub fn order(self) -> Option<plan::CloseAfter> {
        self.close_after.map(|after| plan::CloseAfter {
            after,
            spread: self.close_spread.unwrap_or_default(),
        })
    }
}

fn window(text: &str) -> Result<Duration, String> {
    plan::parse_window(text)
}

fn peer_state(text: &str) -> Result<PeerState, String> {
    match text {
        "up" => Ok(PeerState::Up),
        "drain" => Ok(PeerState::Drain),
        "down" => Ok(PeerState::Down),
        _ => Err(format!("\"{text}\" is not up, drain or down")),
    }
}

fn error_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("\"{text}\" is not a number such as 0.01"))?;
    plan::parse_error_rate(rate)
}

// What a canary step's target must pass (`shiftctl::deploy::verdict::Gates`): it is compared with
// the stable peers over the same window. (Not a doc comment, as for `CloseArgs`.)
#[derive(clap::Args)]
pub struct GateArgs {
    /// How many more errors (5xx and failed attempts, as a fraction of requests) than the
    /// stable peers the target may show, e.g. 0.01 for 1 point
    #[arg(long, default_value_t = 0.01, value_parser = error_rate)]
    pub error_margin: f64,
    /// How sure a step must be that the target is worse before it rolls back (one-sided, per
    /// look)
    #[arg(long, default_value_t = 0.999, value_parser = confidence)]
    pub confidence: f64,
    /// Highest error rate of the target when there is no stable traffic to compare with
    #[arg(long, default_value_t = 0.05, value_parser = error_rate)]
    pub max_error_rate: f64,
    /// How much slower than the stable peers the target may be at --latency-quantile, e.g. 50%
    #[arg(long, default_value = "50%", value_parser = verdict::parse_increase)]
    pub max_latency_increase: f64,
    /// The latency quantile compared, e.g. 0.99 (p99) or 0.9
    #[arg(long, default_value_t = 0.99, value_parser = quantile)]
    pub latency_quantile: f64,
    /// Requests the target must serve in a step before the step can pass (0: none)
    #[arg(long, default_value_t = 100)]
    pub min_requests: u64,
}

impl From<GateArgs> for verdict::Gates {
    fn from(args: GateArgs) -> verdict::Gates {
        verdict::Gates {
            confidence: args.confidence,
            error_margin: args.error_margin,
            max_error_rate: args.max_error_rate,
            latency_quantile: args.latency_quantile,
            max_latency_increase: args.max_latency_increase,
            min_requests: args.min_requests,
        }
    }
}

fn confidence(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("\"{text}\" is not a number such as 0.999"))?;
    verdict::parse_confidence(value)
}

fn quantile(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .parse()
        .map_err(|_| format!("\"{text}\" is not a number such as 0.99"))?;
    verdict::parse_quantile(value)
}

/// Canary steps as one argument (`5,25,50,100`), not one value per step.
#[derive(Clone)]
pub struct Steps(pub Vec<u32>);

fn steps(text: &str) -> Result<Steps, String> {
    plan::parse_steps(text).map(Steps)
}

impl Command {
    /// Whether the command was given `--allow-partial`.
    pub fn allows_partial(&self) -> bool {
        match self {
            Command::Switch { allow_partial, .. }
            | Command::Canary { allow_partial, .. }
            | Command::Rollback { allow_partial, .. }
            | Command::Deploy { allow_partial, .. } => *allow_partial,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// `shiftctl COMMAND --help` explains every argument and option it lists.
    #[test]
    fn every_argument_has_help() {
        let mut cli = Cli::command();
        // Each command's own arguments are deferred until the command is built.
        cli.build();
        let mut missing = Vec::new();
        for command in std::iter::once(&cli).chain(cli.get_subcommands()) {
            assert!(
                command.get_about().is_some() || command.get_name() == "shiftctl",
                "{} has no description",
                command.get_name()
            );
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if arg.get_help().is_none() && !builtin {
                    missing.push(format!("{} {}", command.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "no help text: {missing:?}");
    }

    /// A command that flattens a group of options keeps its own description: clap would take
    /// the group's doc comment instead, once the command's arguments are deferred.
    #[test]
    fn commands_with_option_groups_keep_their_own_description() {
        let mut cli = Cli::command();
        cli.build();
        for (name, starts) in [
            ("drain", "Stop sending new requests"),
            ("remove", "Remove a peer"),
            ("canary", "Shift traffic to a target in steps"),
        ] {
            let command = cli.find_subcommand(name).expect(name);
            let about = command.get_about().map(ToString::to_string);
            assert!(
                about
                    .as_deref()
                    .is_some_and(|about| about.starts_with(starts)),
                "{name}: {about:?}"
            );
            let arguments = command.get_arguments().count();
            assert!(arguments > 9, "{name} has only the global options");
        }
    }
}
