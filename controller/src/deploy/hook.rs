//! Deploy hooks: `sh -c COMMAND` in a process group of its own, so that when a hook outlives
//! its timeout, or shiftctl is interrupted while it runs, the hook and everything it started
//! end with it. A hook that finishes in time keeps what it started in the background (a
//! backend started with `&`, a `docker compose up -d`).

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::interrupts::Interrupts;

/// How long a hook's processes get to exit after SIGTERM before they get SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("could not run: {0}")]
    Spawn(std::io::Error),
    #[error("failed with {0}")]
    Failed(ExitStatus),
    #[error("did not finish within {0:?}; it and the processes it started were ended")]
    TimedOut(Duration),
    #[error("was ended, with the processes it started, because shiftctl was interrupted")]
    Interrupted,
}

/// Runs `command` with `env`, waiting at most `timeout`.
pub async fn run(
    command: &str,
    env: &[(&str, &str)],
    timeout: Duration,
    interrupts: &mut Interrupts,
) -> Result<(), HookError> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().copied())
        .process_group(0)
        .spawn()
        .map_err(HookError::Spawn)?;
    // The group's id is the shell's pid (`process_group(0)`).
    let group = child.id().map(|pid| Pid::from_raw(-(pid as i32)));
    tokio::select! {
        status = child.wait() => match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(HookError::Failed(status)),
            Err(err) => Err(HookError::Spawn(err)),
        },
        _ = tokio::time::sleep(timeout) => {
            end_group(group, &mut child).await;
            Err(HookError::TimedOut(timeout))
        }
        _ = interrupts.recv() => {
            end_group(group, &mut child).await;
            Err(HookError::Interrupted)
        }
    }
}

/// SIGTERM to the whole group, SIGKILL after the grace time, and SIGKILL again for members
/// that outlived the shell.
async fn end_group(group: Option<Pid>, child: &mut tokio::process::Child) {
    let Some(group) = group else { return };
    let _ = kill(group, Signal::SIGTERM);
    if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
        let _ = kill(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    let _ = kill(group, Signal::SIGKILL);
}
