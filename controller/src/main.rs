//! `shiftctl`: moves traffic between versions of a backend through nginx-shift's admin API.
//!
//! Exit codes: 0 done, 1 aborted or rolled back, 2 usage or config error, 3 cannot reach Nginx
//! (or etcd), 4 a canary held at a quiet step.

mod cli;
mod client;
mod commands;
mod deploy;
mod exit;
mod fleet;
mod interrupts;
mod manuals;
mod plan;
mod view;

use std::process::ExitCode;

use clap::Parser;
use shift_wire::PeerState;

use crate::cli::{Cli, Command};
use crate::client::AdminClient;
use crate::commands::{CanaryOptions, Ctx, Unhealthy};
use crate::exit::Failure;
use crate::fleet::agent;
use crate::fleet::etcd::EtcdFleet;
use crate::fleet::store::{EtcdOptions, Store};
use crate::fleet::Fleet;
use crate::view::progress::Progress;
fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(if err.use_stderr() {
                exit::EXIT_USAGE
            } else {
                0
            });
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("shiftctl: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let clients: Vec<AdminClient> = cli
        .sockets
        .iter()
        .map(|socket| AdminClient::new(socket, &cli.prefix))
        .collect();
    let etcd = (!cli.etcd.etcd.is_empty()).then(|| EtcdOptions {
        endpoints: cli.etcd.etcd.clone(),
        prefix: cli.etcd.etcd_prefix.clone(),
        ca: cli.etcd.etcd_ca.clone(),
        cert: cli.etcd.etcd_cert.clone(),
        key: cli.etcd.etcd_key.clone(),
    });
    if let Command::Agent {
        host,
        lease,
        every,
        report_every,
    } = cli.command
    {
        let cadence = agent::Cadence {
            lease,
            every,
            report_every,
        };
        return run_agent(clients, etcd, host, cadence).await;
    }
    let fleet = match &etcd {
        Some(options) => Fleet::Etcd(Box::new(EtcdFleet::new(Store::connect(options).await?))),
        None => Fleet::sockets(clients),
    };
    let ctx = Ctx {
        fleet,
        json: cli.json,
        state_dir: cli.state_dir,
        progress: Progress::new(),
        allow_partial: cli.command.allows_partial(),
        went_without: Default::default(),
    };
    match cli.command {
        Command::Status {
            upstream,
            watch,
            fleet: true,
            ..
        } => {
            if watch || upstream.is_some() {
                return Err(Failure::usage(anyhow::anyhow!(
                    "status --fleet shows every upstream once: leave out UPSTREAM and --watch"
                )));
            }
            commands::fleet_status(&ctx).await
        }
        Command::Status {
            upstream,
            watch,
            every,
            fleet: false,
        } => commands::status(&ctx, upstream, watch, every).await,
        Command::Metrics => commands::metrics(&ctx).await,
        Command::History { upstream, since } => commands::history(&ctx, &upstream, since).await,
        Command::Set {
            upstream,
            weights,
            retry,
        } => commands::set(&ctx, &upstream, &weights, retry).await,
        Command::Drain {
            upstream,
            server,
            wait,
            timeout,
            close,
        } => {
            commands::set_state(
                &ctx,
                &upstream,
                &server,
                (PeerState::Drain, close.order()),
                wait.then_some(timeout),
            )
            .await
        }
        Command::Undrain { upstream, server } => {
            commands::set_state(&ctx, &upstream, &server, (PeerState::Up, None), None).await
        }
        Command::Add {
            upstream,
            server,
            weight,
            state,
            label,
            slow_start,
        } => commands::add(&ctx, &upstream, &server, (weight, state, label), slow_start).await,
        Command::Label {
            upstream,
            server,
            label,
        } => commands::set_label(&ctx, &upstream, &server, &label).await,
        Command::Remove {
            upstream,
            server,
            wait,
            timeout,
            close,
        } => {
            commands::remove(
                &ctx,
                &upstream,
                &server,
                (wait.then_some(timeout), close.order()),
            )
            .await
        }
        Command::Switch {
            upstream,
            to,
            check_url,
            timeout,
            slow_start,
            ..
        } => {
            commands::switch(
                &ctx,
                &upstream,
                (&to, check_url.as_deref()),
                timeout,
                Unhealthy::Refuse,
                slow_start,
            )
            .await
        }
        Command::Canary {
            upstream,
            to,
            steps,
            interval,
            gates,
            pause,
            on_interrupt,
            check_url,
            timeout,
            sync_timeout,
            quiet_timeout,
            on_quiet,
            slow_start,
            ..
        } => {
            let options = CanaryOptions {
                target: to,
                steps: steps.0,
                interval,
                gates: gates.into(),
                pause,
                on_interrupt,
                check_url,
                ready_timeout: timeout,
                unhealthy: Unhealthy::Refuse,
                sync_timeout,
                quiet_timeout,
                on_quiet,
                slow_start,
            };
            commands::canary(&ctx, &upstream, &options).await
        }
        Command::Promote { upstream } => commands::promote(&ctx, &upstream),
        Command::Rollback {
            upstream,
            sync_timeout,
            ..
        } => commands::rollback(&ctx, &upstream, sync_timeout).await,
        Command::Deploy { plan, .. } => deploy::deploy(&ctx, &plan).await,
        Command::Agent { .. } => unreachable!("the agent runs before any fleet is made"),
        Command::Completions { shell } => manuals::print_completions(shell),
        Command::ManPages { dir } => manuals::write_man_pages(&dir),
    }
}

/// `shiftctl agent`: one local Nginx (exactly one --socket) and etcd.
async fn run_agent(
    clients: Vec<AdminClient>,
    etcd: Option<EtcdOptions>,
    host: Option<String>,
    cadence: agent::Cadence,
) -> Result<(), Failure> {
    let etcd = etcd.ok_or_else(|| {
        Failure::usage(anyhow::anyhow!(
            "the agent needs --etcd URL (or SHIFT_ETCD): where the fleet's desired state is"
        ))
    })?;
    let [admin] = <[AdminClient; 1]>::try_from(clients).map_err(|clients| {
        Failure::usage(anyhow::anyhow!(
            "the agent runs beside one Nginx: give one --socket, not {}",
            clients.len()
        ))
    })?;
    let host = match host {
        Some(host) => host,
        None => nix::unistd::gethostname()
            .map_err(|err| {
                Failure::usage(anyhow::anyhow!(
                    "cannot read the host name ({err}): give --host"
                ))
            })?
            .to_string_lossy()
            .into_owned(),
    };
    // It names a key: PREFIX/hosts/HOST.
    if host.is_empty() || host.contains('/') || host.chars().any(char::is_control) {
        return Err(Failure::usage(anyhow::anyhow!(
            "host name \"{host}\" cannot name this host in etcd: give --host without \"/\""
        )));
    }
    let store = Store::connect(&etcd).await?;
    let options = agent::AgentOptions { host, cadence };
    match agent::run(store, admin, options).await {}
}
