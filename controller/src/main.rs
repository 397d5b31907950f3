//! `shiftctl`: moves traffic between versions of a backend through nginx-shift's admin API.
//!
//! Exit codes: 0 done, 1 aborted or rolled back, 2 usage or config error, 3 cannot reach Nginx.

mod cli;
mod client;
mod commands;
mod deploy;
mod exit;
mod fleet;
mod hook;
mod interrupts;
mod manuals;
mod output;
mod plan;
mod progress;
mod rolling;
mod state_dir;
mod watch_view;

use std::process::ExitCode;

use clap::Parser;
use shift_wire::PeerState;

use crate::cli::{Cli, Command};
use crate::client::AdminClient;
use crate::commands::{CanaryOptions, Ctx, Unhealthy};
use crate::exit::Failure;
use crate::fleet::Fleet;
use crate::progress::Progress;
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
    let clients = cli
        .sockets
        .iter()
        .map(|socket| AdminClient::new(socket, &cli.prefix))
        .collect();
    let ctx = Ctx {
        fleet: Fleet::new(clients),
        json: cli.json,
        state_dir: cli.state_dir,
        progress: Progress::new(),
    };
    match cli.command {
        Command::Status {
            upstream,
            watch,
            every,
        } => commands::status(&ctx, upstream, watch, every).await,
        Command::Metrics => commands::metrics(&ctx).await,
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
        } => {
            commands::set_state(
                &ctx,
                &upstream,
                &server,
                PeerState::Drain,
                wait.then_some(timeout),
            )
            .await
        }
        Command::Undrain { upstream, server } => {
            commands::set_state(&ctx, &upstream, &server, PeerState::Up, None).await
        }
        Command::Add {
            upstream,
            server,
            weight,
            state,
            label,
        } => commands::add(&ctx, &upstream, &server, weight, state, label).await,
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
        } => commands::remove(&ctx, &upstream, &server, wait.then_some(timeout)).await,
        Command::Switch {
            upstream,
            to,
            check_url,
            timeout,
        } => {
            commands::switch(
                &ctx,
                &upstream,
                &to,
                check_url.as_deref(),
                timeout,
                Unhealthy::Refuse,
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
            };
            commands::canary(&ctx, &upstream, &options).await
        }
        Command::Promote { upstream } => commands::promote(&ctx, &upstream),
        Command::Rollback { upstream } => commands::rollback(&ctx, &upstream).await,
        Command::Deploy { plan } => deploy::deploy(&ctx, &plan).await,
        Command::Completions { shell } => manuals::print_completions(shell),
        Command::ManPages { dir } => manuals::write_man_pages(&dir),
    }
}
