//! `add` and `remove`: peers added to and removed from an upstream at run time, on every Nginx.

use std::net::SocketAddr;
use std::time::Duration;

use shift_wire::{NewPeer, PeerState, MAX_WEIGHT};

use super::Ctx;
use crate::exit::Failure;
use crate::plan::{self, CloseAfter};

/// A peer's address as the module lists it (`10.0.0.7:8000`, `[fd00::7]:8000`).
pub fn parse_server(server: &str) -> Result<String, Failure> {
    match server.parse::<SocketAddr>() {
        Ok(address) if address.port() != 0 => Ok(address.to_string()),
        _ => Err(Failure::usage(anyhow::anyhow!(
            "\"{server}\" is not an address IP:PORT, e.g. 10.0.0.7:8000 or [fd00::7]:8000"
        ))),
    }
}

/// Adds a peer with its weight, state and label; `slow_start` gives its ramp a window of its
/// own (0: none) in place of the upstream's `shift_slow_start`.
pub async fn add(
    ctx: &Ctx,
    upstream: &str,
    server: &str,
    (weight, state, label): (u32, PeerState, Option<String>),
    slow_start: Option<Duration>,
) -> Result<(), Failure> {
    ctx.refuse_slow_start_in_a_fleet(slow_start)?;
    let server = parse_server(server)?;
    if weight > MAX_WEIGHT {
        return Err(Failure::usage(anyhow::anyhow!(
            "weight {weight} must be from 0 to {MAX_WEIGHT}"
        )));
    }
    let peer = NewPeer {
        server: server.clone(),
        weight: Some(weight),
        state: Some(state),
        label,
        slow_start: slow_start.map(plan::window_text),
        expect_generation: None,
    };
    let states = ctx.fleet.add_peer(upstream, &peer).await?;
    ctx.progress
        .event(&format!("added {server} to upstream \"{upstream}\""));
    ctx.print_upstreams(&states);
    Ok(())
}

/// Removes a peer. With `drain_first`, it is drained and its requests are waited for (at most
/// that long) before it goes, so that whoever stops it next cuts no request. With `close`, the
/// requests it still carries are closed on that schedule (given with the drain that comes
/// first, which the removal keeps), in-flight and upgraded ones alike.
pub async fn remove(
    ctx: &Ctx,
    upstream: &str,
    server: &str,
    (drain_first, close): (Option<Duration>, Option<CloseAfter>),
) -> Result<(), Failure> {
    let server = parse_server(server)?;
    if drain_first.is_some() || close.is_some() {
        let state = (PeerState::Drain, close);
        super::set::set_state(ctx, upstream, &server, state, drain_first).await?;
    }
    let removals = ctx.fleet.remove_peer(upstream, &server).await?;
    let active: u64 = removals.iter().map(|removal| removal.active).sum();
    ctx.progress.event(&if active == 0 {
        format!("removed {server} from upstream \"{upstream}\"")
    } else {
        format!(
            "removed {server} from upstream \"{upstream}\"; it finishes {active} request(s) in \
             flight and takes no new ones"
        )
    });
    let states: Vec<_> = removals
        .into_iter()
        .filter_map(|removal| removal.upstream)
        .collect();
    ctx.print_upstreams(&states);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::EXIT_USAGE;

    #[test]
    fn servers_are_addresses_written_as_the_module_lists_them() {
        assert_eq!(parse_server("10.0.0.7:8000").unwrap(), "10.0.0.7:8000");
        assert_eq!(parse_server("[0:0::1]:80").unwrap(), "[::1]:80");
        for bad in ["backend:8000", "10.0.0.7", "10.0.0.7:0", ""] {
            assert_eq!(parse_server(bad).unwrap_err().code, EXIT_USAGE, "{bad}");
        }
    }
}
