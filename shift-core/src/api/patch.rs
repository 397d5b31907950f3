//! `PATCH upstreams/NAME`: weights, states and labels of several peers (and the slow start of
//! the ramps it begins), validated first, applied as one generation, then saved. The answer
//! holds the new generation and the peers the PATCH named (`?full=1`: the whole upstream), so
//! that its size follows the question.

use shift_wire::{PatchApplied, PeerState, UpstreamPatch, MAX_BODY_BYTES, MAX_WEIGHT};

use super::query::Query;
use super::{
    expect_generation, ok, too_large, unknown_peer, ApiRequest, Endpoint, Failure, PendingSave,
    Respond, Writer,
};
use crate::drain_close::CloseOrder;
use crate::history::{Change, Snapshot};
use crate::table::{Label, PeerChange, PeerSlot, Table};

pub(super) fn patch(endpoint: &Endpoint, request: &ApiRequest, writer: &Writer) -> Respond {
    let (body, args) = (request.body, request.args);
    if body.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    let full = Query::parse(args, "PATCH", false)?.full;
    let patch: UpstreamPatch = serde_json::from_slice(body)
        .map_err(|err| Failure::new(400, "bad_request", format!("invalid PATCH body: {err}")))?;
    let table = endpoint.table;
    let changes = plan(table, &patch)?;

    let guard = table
        .lock(writer.pid, writer.is_alive)
        .map_err(|err| Failure::new(503, "busy", err.to_string()))?;
    expect_generation(table, patch.expect_generation)?;
    let peers = table.peers();
    let before: Vec<Snapshot> = changes
        .iter()
        .map(|change| Snapshot::of(peers[change.index]))
        .collect();
    let generation = guard.apply(&changes, endpoint.now_ms);
    if let Some(ring) = endpoint.history {
        for (change, before) in changes.iter().zip(&before) {
            let slot = peers[change.index];
            for (field, old, new) in before.changes_to(&Snapshot::of(slot)) {
                ring.append(&Change {
                    generation,
                    at_ms: endpoint.now_ms,
                    actor: request.actor(),
                    peer: slot.server().to_string(),
                    field: field.to_string(),
                    old,
                    new,
                });
            }
        }
    }
    let history = endpoint.history_to_save();
    drop(guard);
    let reply = if full {
        ok(&endpoint.wire())
    } else {
        ok(&changed_peers(endpoint, &changes))
    };
    Ok((reply, PendingSave::of(endpoint, table, history)))
}

/// The generation and the peers `changes` named, as they are now, in the upstream's order.
fn changed_peers(endpoint: &Endpoint, changes: &[PeerChange]) -> PatchApplied {
    let table = endpoint.table;
    let mut indexes: Vec<usize> = changes.iter().map(|change| change.index).collect();
    indexes.sort_unstable();
    let slots: Vec<&PeerSlot> = indexes.iter().map(|&index| table.peers()[index]).collect();
    let active: Vec<u64> = indexes
        .iter()
        .map(|&index| endpoint.active.get(index).copied().unwrap_or(0))
        .collect();
    let changed = Table::new(table.header(), &slots).to_wire(&active, endpoint.now_ms);
    PatchApplied {
        name: changed.name,
        generation: changed.generation,
        peers: changed.peers,
    }
}

/// Validates every change before any is applied.
fn plan(table: Table, request: &UpstreamPatch) -> Result<Vec<PeerChange>, Failure> {
    if request.peers.is_empty() {
        return Err(Failure::new(
            400,
            "bad_request",
            "\"peers\" is empty: name at least one peer",
        ));
    }
    request
        .peers
        .iter()
        .map(|(server, change)| {
            let index = table
                .peer_index(server)
                .ok_or_else(|| unknown_peer(table, server))?;
            if let Some(weight) = change.weight.filter(|&weight| weight > MAX_WEIGHT) {
                return Err(Failure::new(
                    400,
                    "bad_request",
                    format!(
                        "weight {weight} of peer \"{server}\" is out of range 0..={MAX_WEIGHT}"
                    ),
                ));
            }
            if change.weight.is_none() && change.state.is_none() && change.label.is_none() {
                return Err(Failure::new(
                    400,
                    "bad_request",
                    format!(
                        "peer \"{server}\" has no \"weight\", \"state\" or \"label\" to change"
                    ),
                ));
            }
            let slow_start_ms = slow_start_of(server, change.slow_start.as_deref())?;
            let close = close_order_of(
                server,
                change.close_after.as_deref(),
                change.close_spread.as_deref(),
            )?;
            if close.is_some() && !matches!(change.state, Some(PeerState::Drain | PeerState::Down))
            {
                return Err(Failure::new(
                    400,
                    "bad_request",
                    format!(
                        "peer \"{server}\": close_after goes with \"state\": \"drain\" or \
                         \"down\", which stop new requests; a peer that takes them keeps its \
                         connections"
                    ),
                ));
            }
            let label = change
                .label
                .as_deref()
                .map(Label::parse)
                .transpose()
                .map_err(|err| {
                    Failure::new(400, "bad_request", format!("peer \"{server}\": {err}"))
                })?;
            Ok(PeerChange {
                index,
                weight: change.weight,
                state: change.state,
                label,
                slow_start_ms,
                close,
            })
        })
        .collect()
}

/// A peer's `close_after` and `close_spread` in a PATCH or DELETE.
pub(super) fn close_order_of(
    server: &str,
    after: Option<&str>,
    spread: Option<&str>,
) -> Result<Option<CloseOrder>, Failure> {
    CloseOrder::parse(after, spread)
        .map_err(|err| Failure::new(400, "bad_request", format!("peer \"{server}\": {err}")))
}

/// A peer's `slow_start` in a PATCH or POST, in ms: `"0s"` for none; up to 24 h.
pub(super) fn slow_start_of(server: &str, text: Option<&str>) -> Result<Option<u32>, Failure> {
    let Some(text) = text else {
        return Ok(None);
    };
    match shift_wire::parse_window(text) {
        Ok(window) => Ok(Some(window.as_millis() as u32)),
        Err(_) => Err(Failure::new(
            400,
            "bad_request",
            format!(
                "slow_start \"{text}\" of peer \"{server}\" is not a duration from 0s to 24h, \
                 e.g. \"30s\" (\"0s\": no slow start)"
            ),
        )),
    }
}
