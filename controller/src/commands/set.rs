//! `set` (weights), and `drain`/`undrain` (a peer's state).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shift_wire::{PeerPatch, PeerState, Upstream, UpstreamPatch, MAX_WEIGHT};

use super::{Ctx, POLL};
use crate::exit::Failure;
use crate::fleet::Laggards;
use crate::plan::{self, CloseAfter};

/// Parses `SERVER=WEIGHT` arguments.
pub fn parse_assignments(assignments: &[String]) -> Result<BTreeMap<String, PeerPatch>, Failure> {
    let mut peers = BTreeMap::new();
    for assignment in assignments {
        let (server, patch) = parse_assignment(assignment)?;
        if peers.insert(server.clone(), patch).is_some() {
            return Err(Failure::usage(anyhow::anyhow!(
                "{server} is given twice; give each peer one weight"
            )));
        }
    }
    Ok(peers)
}

fn parse_assignment(assignment: &str) -> Result<(String, PeerPatch), Failure> {
    let (server, weight) = assignment.rsplit_once('=').ok_or_else(|| {
        Failure::usage(anyhow::anyhow!(
            "\"{assignment}\" is not SERVER=WEIGHT, e.g. 127.0.0.1:8001=30"
        ))
    })?;
    let weight: u32 = weight
        .parse()
        .ok()
        .filter(|&w| w <= MAX_WEIGHT)
        .ok_or_else(|| {
            Failure::usage(anyhow::anyhow!(
                "weight \"{weight}\" of {server} must be a number from 0 to {MAX_WEIGHT}"
            ))
        })?;
    let patch = PeerPatch {
        weight: Some(weight),
        ..Default::default()
    };
    Ok((server.to_string(), patch))
}

pub async fn set(
    ctx: &Ctx,
    upstream: &str,
    assignments: &[String],
    retries: u32,
) -> Result<(), Failure> {
    let patch = UpstreamPatch {
        peers: parse_assignments(assignments)?,
        expect_generation: None,
    };
    let mut attempt = 0;
    loop {
        let result = ctx.fleet.apply_patch(upstream, &patch).await;
        match result {
            Ok(states) => {
                ctx.print_upstreams(&states);
                return Ok(());
            }
            Err(error) if attempt < retries && error.is_conflict() => {
                attempt += 1;
                ctx.progress.event(&format!(
                    "upstream changed meanwhile; retrying ({attempt}/{retries})"
                ));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Applies `patch` to the peer `server` (which every Nginx must have) as one change.
async fn patch_peer(
    ctx: &Ctx,
    upstream: &str,
    server: &str,
    patch: PeerPatch,
) -> Result<Vec<Upstream>, Failure> {
    let states = ctx.fleet.apply(upstream, |_, current| {
        plan::find_peer(current, server).map_err(|err| err.to_string())?;
        Ok(UpstreamPatch {
            peers: BTreeMap::from([(server.to_string(), patch.clone())]),
            expect_generation: None,
        })
    });
    Ok(states.await?)
}

/// Gives `server` the label `label` ("" takes it away) on every Nginx.
pub async fn set_label(
    ctx: &Ctx,
    upstream: &str,
    server: &str,
    label: &str,
) -> Result<(), Failure> {
    let patch = PeerPatch {
        label: Some(label.to_string()),
        ..Default::default()
    };
    let states = patch_peer(ctx, upstream, server, patch).await?;
    ctx.print_upstreams(&states);
    Ok(())
}

/// Sets `server`'s state on every Nginx; with `wait`, waits (at most that long) for its
/// requests in flight to end. `close` (a drain's or standby's) closes what it still carries
/// after a deadline, so that the wait ends even with long-lived connections.
pub async fn set_state(
    ctx: &Ctx,
    upstream: &str,
    server: &str,
    (state, close): (PeerState, Option<CloseAfter>),
    wait: Option<Duration>,
) -> Result<(), Failure> {
    ctx.refuse_close_after_in_a_fleet(close)?;
    if let (Some(close), Some(timeout)) = (close, wait) {
        if close.ends_after() >= timeout {
            return Err(Failure::usage(anyhow::anyhow!(
                "--timeout {timeout:?} ends before the drain closes the last request (close \
                 after {:?}, spread over {:?}): give a --timeout longer than both together",
                close.after,
                close.spread
            )));
        }
    }
    let mut patch = PeerPatch {
        state: Some(state),
        ..Default::default()
    };
    if let Some(close) = close {
        close.apply(&mut patch);
    }
    let states = patch_peer(ctx, upstream, server, patch).await?;
    if let Some(timeout) = wait {
        let deadline = Instant::now() + timeout;
        // With --etcd, the requests counted must be those of hosts that already drained it.
        // A GONE host sends no report to count; one still behind fails the wait.
        let laggards = ctx.fleet.settle(upstream, timeout).await?;
        if !laggards.stale.is_empty() || laggards.reporting == 0 {
            let laggards = Laggards {
                gone: Vec::new(),
                ..laggards
            };
            return Err(Failure::aborted(anyhow::anyhow!(
                "not every host drained {server} of upstream \"{upstream}\" within {timeout:?} \
                 ({}): \"shiftctl status --fleet\" shows why",
                laggards.hosts()
            )));
        }
        loop {
            let active: u64 = ctx
                .fleet
                .read(upstream)
                .await?
                .iter()
                .map(|state| plan::find_peer(state, server).map_or(0, |peer| peer.active))
                .sum();
            if active == 0 {
                ctx.progress.finish();
                break;
            }
            if Instant::now() >= deadline {
                ctx.progress.finish();
                return Err(Failure::aborted(anyhow::anyhow!(
                    "{server} still has {active} active request(s) after {timeout:?}; it stays drained"
                )));
            }
            ctx.progress.status(&format!(
                "waiting for {server} to finish {active} active request(s)"
            ));
            tokio::time::sleep(POLL).await;
        }
    }
    ctx.print_upstreams(&states);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::EXIT_USAGE;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|arg| arg.to_string()).collect()
    }

    #[test]
    fn assignments_become_weight_patches() {
        let peers = parse_assignments(&args(&["127.0.0.1:8001=30", "[::1]:8002=0"])).unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers["127.0.0.1:8001"].weight, Some(30));
        assert_eq!(peers["[::1]:8002"].weight, Some(0));
        assert_eq!(peers["[::1]:8002"].state, None);
    }

    #[test]
    fn bad_assignments_are_usage_errors_that_say_why() {
        for (bad, says) in [
            (vec!["127.0.0.1:8001"], "is not SERVER=WEIGHT"),
            (vec!["127.0.0.1:8001=x"], "must be a number from 0 to"),
            (vec!["127.0.0.1:8001=-1"], "must be a number from 0 to"),
            (vec!["127.0.0.1:8001=1001"], "must be a number from 0 to"),
            (vec!["a:1=1", "a:1=2"], "is given twice"),
        ] {
            let failure = parse_assignments(&args(&bad)).unwrap_err();
            assert_eq!(failure.code, EXIT_USAGE, "{bad:?}");
            assert!(
                failure.error.to_string().contains(says),
                "{bad:?}: {:#}",
                failure.error
            );
        }
    }
}
