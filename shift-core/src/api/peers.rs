//! `POST upstreams/NAME/peers` and `DELETE upstreams/NAME/peers/SERVER`: peers added and
//! removed at run time. The zone's side (a slot, and a position in every live configuration
//! load) is the [`Membership`] the FFI module passes in; everything is checked before anything
//! changes, and a failure leaves the upstream as it was. The state file is saved after the
//! change, outside the zone's lock (`save.rs`).

use std::net::SocketAddr;

use shift_wire::{
    NewPeer, PatchApplied, PeerOrigin, PeerRemoval, PeerState, MAX_BODY_BYTES, MAX_WEIGHT,
};

use super::query::Query;
use super::{
    expect_generation, ok, too_large, unknown_peer, ApiRequest, Endpoint, Failure, PendingSave,
    Respond, Writer,
};
use crate::history::{Change, Snapshot};
use crate::table::{Addition, Label, PeerSlot, Table, TableHeader};

/// Why the zone cannot take a new peer: it is full (the message names `shift_zone`). Nothing
/// else stops one: a load grows by more positions when its room for run-time peers is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("{0}")]
    ZoneFull(String),
}

/// The zone's side of changing an upstream's set of peers, under the zone's lock.
pub trait Membership {
    /// A slot for `server` in `table`, with a position in every live configuration load that
    /// routes to the table (a load without a free one grows); not current yet (nobody routes to
    /// it). A slot the table still holds for the address (a peer removed, its requests not all
    /// ended) is reused, for a new instance of the peer (`WriteGuard::add_peer`).
    fn place(&mut self, table: &TableHeader, server: &str)
        -> Result<&'static PeerSlot, PlaceError>;
    /// A new membership epoch, for a change about to be made.
    fn next_epoch(&mut self) -> u64;
}

pub(super) fn add(
    endpoint: &Endpoint,
    request: &ApiRequest,
    writer: &Writer,
    membership: &mut dyn Membership,
) -> Respond {
    let (body, args) = (request.body, request.args);
    if body.len() > MAX_BODY_BYTES {
        return Err(too_large());
    }
    let request_actor = request.actor();
    let full = Query::parse(args, "POST", false)?.full;
    let received_ms = request.received_ms;
    let request: NewPeer = serde_json::from_slice(body)
        .map_err(|err| Failure::new(400, "bad_request", format!("invalid peer: {err}")))?;
    let server = canonical_address(&request.server)?;
    let weight = request.weight.unwrap_or(1);
    if weight > MAX_WEIGHT {
        return Err(Failure::new(
            400,
            "bad_request",
            format!("weight {weight} of peer \"{server}\" is out of range 0..={MAX_WEIGHT}"),
        ));
    }
    let state = request.state.unwrap_or(PeerState::Up);
    let label = Label::parse(request.label.as_deref().unwrap_or(""))
        .map_err(|err| Failure::new(400, "bad_request", format!("peer \"{server}\": {err}")))?;
    let slow_start_ms = super::patch::slow_start_of(&server, request.slow_start.as_deref())?;
    let table = endpoint.table;
    if table.peer_index(&server).is_some() {
        return Err(Failure::new(
            409,
            "conflict",
            format!(
                "\"{server}\" is already a peer of upstream \"{}\"; change it with PATCH",
                table.name()
            ),
        ));
    }
    let guard = table
        .lock(writer.pid, writer.is_alive)
        .map_err(|err| Failure::new(503, "busy", err.to_string()))?;
    expect_generation(table, request.expect_generation)?;
    let slot = membership
        .place(table.header(), &server)
        .map_err(|err| Failure::new(507, "insufficient_storage", err.to_string()))?;
    let order = table
        .peers()
        .iter()
        .map(|peer| peer.order() + 1)
        .max()
        .unwrap_or(0);
    let epoch = membership.next_epoch();
    let addition = Addition {
        slow_start_ms,
        ..Addition::api(weight, state, label, received_ms)
    };
    let generation = guard.add_peer(slot, &addition, order, epoch);
    if let Some(ring) = endpoint.history {
        ring.append(&Change {
            generation,
            at_ms: received_ms,
            actor: request_actor,
            peer: server.clone(),
            field: "member".to_string(),
            old: String::new(),
            new: Snapshot::of(slot).describe(),
        });
    }
    let history = endpoint.history_to_save();
    drop(guard);
    let mut now: Vec<&PeerSlot> = table.peers().to_vec();
    now.push(slot);
    let now = Table::new(table.header(), &now);
    let mut reply = if full {
        ok(&now.to_wire(endpoint.active, endpoint.now_ms))
    } else {
        let added =
            Table::new(table.header(), std::slice::from_ref(&slot)).to_wire(&[], endpoint.now_ms);
        ok(&PatchApplied {
            name: added.name,
            generation: added.generation,
            peers: added.peers,
        })
    };
    reply.status = 201;
    Ok((reply, PendingSave::of(endpoint, now, history)))
}

pub(super) fn remove(
    endpoint: &Endpoint,
    (request, server): (&ApiRequest, &str),
    writer: &Writer,
    membership: &mut dyn Membership,
) -> Respond {
    let query = Query::parse(request.args, "DELETE", true)?;
    let table = endpoint.table;
    let index = table
        .peer_index(server)
        .ok_or_else(|| unknown_peer(table, server))?;
    let close = super::patch::close_order_of(
        server,
        query.close_after.as_deref(),
        query.close_spread.as_deref(),
    )?;
    let slot = table.peers()[index];
    if slot.origin() == PeerOrigin::Resolved {
        return Err(Failure::new(
            409,
            "conflict",
            format!(
                "\"{server}\" is an address a name of upstream \"{}\" resolved to: it goes when \
                 the name stops resolving to it (drain it with PATCH meanwhile)",
                table.name()
            ),
        ));
    }
    if slot.origin() == PeerOrigin::Config {
        return Err(Failure::new(
            409,
            "conflict",
            format!(
                "\"{server}\" is a server line of upstream \"{}\" in the configuration: remove \
                 the line and reload, or drain it with PATCH",
                table.name()
            ),
        ));
    }
    let guard = table
        .lock(writer.pid, writer.is_alive)
        .map_err(|err| Failure::new(503, "busy", err.to_string()))?;
    expect_generation(table, query.expect_generation)?;
    let epoch = membership.next_epoch();
    let before = Snapshot::of(slot);
    let generation = guard.remove_peer_closing(slot, epoch, close, endpoint.now_ms);
    if let Some(ring) = endpoint.history {
        ring.append(&Change {
            generation,
            at_ms: endpoint.now_ms,
            actor: request.actor(),
            peer: server.to_string(),
            field: "member".to_string(),
            old: before.describe(),
            new: String::new(),
        });
    }
    let history = endpoint.history_to_save();
    drop(guard);
    let active = endpoint.active.get(index).copied().unwrap_or(0);
    let mut rest: Vec<&PeerSlot> = table.peers().to_vec();
    rest.remove(index);
    let mut rest_active = endpoint.active.to_vec();
    if index < rest_active.len() {
        rest_active.remove(index);
    }
    let rest = Table::new(table.header(), &rest);
    let removal = PeerRemoval {
        server: server.to_string(),
        gone: active == 0,
        active,
        generation: rest.generation(),
        upstream: query
            .full
            .then(|| rest.to_wire(&rest_active, endpoint.now_ms)),
    };
    Ok((ok(&removal), PendingSave::of(endpoint, rest, history)))
}

/// A peer's address as the status lists it (`127.0.0.1:8000`, `[::1]:8000`); names are not
/// looked up here.
fn canonical_address(server: &str) -> Result<String, Failure> {
    match server.parse::<SocketAddr>() {
        Ok(address) if address.port() != 0 => Ok(address.to_string()),
        _ => Err(Failure::new(
            400,
            "bad_request",
            format!(
                "\"{}\" is not an address IP:PORT (e.g. 10.0.0.7:8000 or [fd00::7]:8000)",
                server.escape_default()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use shift_wire::{ApiError, PatchApplied, PeerOrigin, PeerRemoval, PeerState};

    use super::super::test_support::HeapMembership;
    use super::super::tests::{call_with, WRITER};
    use super::super::{Caller, Reply};
    use crate::table::test_support::{OwnedTable, NOW_MS};
    use crate::table::{Addition, Label};

    fn app() -> OwnedTable {
        OwnedTable::new(
            "app",
            &[("127.0.0.1:8000", 1, false), ("127.0.0.1:8001", 1, false)],
        )
    }

    fn post(owned: &OwnedTable, body: &str, membership: &mut HeapMembership) -> Reply {
        call_with(
            owned,
            "POST",
            "upstreams/app/peers",
            body,
            WRITER,
            None,
            membership,
        )
    }

    fn error_code(reply: &Reply) -> String {
        serde_json::from_str::<ApiError>(&reply.body).unwrap().error
    }

    #[test]
    fn a_posted_peer_is_added_as_one_generation() {
        let owned = app();
        let mut membership = HeapMembership::default();
        let reply = post(
            &owned,
            r#"{"server": "10.0.0.7:8000", "weight": 5, "state": "down"}"#,
            &mut membership,
        );
        assert_eq!(reply.status, 201, "{}", reply.body);
        let applied: PatchApplied = serde_json::from_str(&reply.body).unwrap();
        assert_eq!((applied.generation, applied.peers.len()), (2, 1));
        let added = &applied.peers[0];
        assert_eq!(added.server, "10.0.0.7:8000");
        assert_eq!((added.weight, added.state), (5, PeerState::Down));
        assert_eq!(added.origin, PeerOrigin::Api);
        assert!(membership.placed[0].is_current());
        assert_eq!(membership.placed[0].order(), 2);
        assert_eq!(owned.view().header().members(), membership.epoch);
    }

    #[test]
    fn a_posted_peer_ramps_up_with_the_slow_start_it_was_given() {
        let owned = app();
        let mut membership = HeapMembership::default();
        let reply = post(
            &owned,
            r#"{"server": "10.0.0.7:8000", "weight": 10, "slow_start": "20s"}"#,
            &mut membership,
        );
        assert_eq!(reply.status, 201, "{}", reply.body);
        let applied: PatchApplied = serde_json::from_str(&reply.body).unwrap();
        let ramp = applied.peers[0].ramp.expect("it ramps");
        assert_eq!(
            (ramp.ramp_ends_ms, ramp.effective_weight),
            (crate::table::test_support::NOW_MS + 20_000, 1)
        );
    }

    #[test]
    fn addresses_are_written_as_the_status_lists_them() {
        let owned = app();
        let mut membership = HeapMembership::default();
        let reply = post(&owned, r#"{"server": "[0:0::1]:9000"}"#, &mut membership);
        assert_eq!(reply.status, 201, "{}", reply.body);
        assert_eq!(membership.placed[0].server(), "[::1]:9000");
        assert_eq!(membership.placed[0].config().weight, 1);
    }

    #[test]
    fn bad_posts_change_nothing() {
        let owned = app();
        for (body, status, code) in [
            (r#"{"server": "backend:8000"}"#, 400, "bad_request"),
            (r#"{"server": "10.0.0.7"}"#, 400, "bad_request"),
            (r#"{"server": "10.0.0.7:0"}"#, 400, "bad_request"),
            (
                r#"{"server": "10.0.0.7:80", "weight": 1001}"#,
                400,
                "bad_request",
            ),
            (
                r#"{"server": "10.0.0.7:80", "color": "red"}"#,
                400,
                "bad_request",
            ),
            (r#"{"server": "127.0.0.1:8000"}"#, 409, "conflict"),
            (
                r#"{"server": "10.0.0.7:80", "expect_generation": 7}"#,
                409,
                "conflict",
            ),
            (
                r#"{"server": "10.0.0.7:80", "slow_start": "-1s"}"#,
                400,
                "bad_request",
            ),
        ] {
            let mut membership = HeapMembership::default();
            let reply = post(&owned, body, &mut membership);
            assert_eq!(
                (reply.status, error_code(&reply).as_str()),
                (status, code),
                "{body}"
            );
            assert!(
                membership.placed.iter().all(|slot| !slot.is_current()),
                "{body}"
            );
            assert_eq!(owned.view().generation(), 1, "{body}");
        }
    }

    #[test]
    fn a_full_zone_is_507_and_changes_nothing() {
        let owned = app();
        let mut membership = HeapMembership {
            room: 0,
            ..HeapMembership::default()
        };
        let reply = post(&owned, r#"{"server": "10.0.0.7:8000"}"#, &mut membership);
        assert_eq!(reply.status, 507);
        assert!(reply.body.contains("shift_zone"), "{}", reply.body);
        assert_eq!(owned.view().generation(), 1);
    }

    #[test]
    fn a_peer_that_cannot_be_saved_is_in_effect_and_said_so() {
        let owned = app();
        let dir = tempfile::tempdir().unwrap();
        let mut membership = HeapMembership::default();
        let missing = dir.path().join("missing/app.json");
        let body = r#"{"server": "10.0.0.7:8000"}"#;
        let path = "upstreams/app/peers";
        let reply = call_with(
            &owned,
            "POST",
            path,
            body,
            WRITER,
            Some(&missing),
            &mut membership,
        );
        assert_eq!(reply.status, 500);
        assert!(reply.body.contains("in effect"), "{}", reply.body);
        assert!(membership.placed[0].is_current());
        assert_eq!(owned.view().generation(), 2);

        let file = dir.path().join("app.json");
        let reply = call_with(
            &owned,
            "POST",
            path,
            r#"{"server": "10.0.0.8:8000"}"#,
            WRITER,
            Some(&file),
            &mut membership,
        );
        assert_eq!(reply.status, 201);
        let saved = crate::state_file::load(&file, "app").unwrap().unwrap();
        assert_eq!(saved.generation, 3);
        let added = saved.peers.last().unwrap();
        assert_eq!(
            (added.server.as_str(), added.origin),
            ("10.0.0.8:8000", PeerOrigin::Api)
        );
    }

    /// `app` with 127.0.0.1:8001 added at run time.
    fn app_with_runtime_peer() -> OwnedTable {
        let owned = app();
        let table = owned.view();
        table.lock(1, |_| true).unwrap().add_peer(
            owned.peers[1],
            &Addition::api(1, PeerState::Up, Label::NONE, NOW_MS),
            1,
            1,
        );
        owned
    }

    #[test]
    fn a_deleted_peer_leaves_at_once() {
        let owned = app_with_runtime_peer();
        let generation = owned.view().generation();
        let mut membership = HeapMembership::default();
        let reply = call_with(
            &owned,
            "DELETE",
            "upstreams/app/peers/127.0.0.1:8001",
            "",
            WRITER,
            None,
            &mut membership,
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        let removal: PeerRemoval = serde_json::from_str(&reply.body).unwrap();
        assert!(removal.gone);
        assert_eq!(removal.generation, generation + 1);
        assert_eq!(
            removal.upstream, None,
            "the whole upstream only with ?full=1"
        );
        assert!(!owned.peers[1].is_current());
        assert_eq!(owned.peers[1].removed_epoch(), membership.epoch);
    }

    #[test]
    fn a_deleted_peer_keeps_the_deadline_its_delete_gave() {
        let owned = app_with_runtime_peer();
        let path = "upstreams/app/peers/127.0.0.1:8001?close_after=30s&close_spread=10s";
        let mut membership = HeapMembership::default();
        let reply = call_with(&owned, "DELETE", path, "", WRITER, None, &mut membership);
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(!owned.peers[1].is_current());
        assert_eq!(
            owned.peers[1].close_deadline(),
            Some((NOW_MS + 30_000, 10_000))
        );
    }

    #[test]
    fn config_peers_unknown_peers_and_stale_generations_are_not_deleted() {
        let owned = app_with_runtime_peer();
        let generation = owned.view().generation();
        for (path, status) in [
            ("upstreams/app/peers/127.0.0.1:8000", 409),
            ("upstreams/app/peers/127.0.0.1:9999", 404),
            (
                "upstreams/app/peers/127.0.0.1:8001?expect_generation=1",
                409,
            ),
            ("upstreams/app/peers/127.0.0.1:8001?generation=1", 400),
            ("upstreams/app/peers/127.0.0.1:8001?close_after=soon", 400),
            ("upstreams/app/peers/127.0.0.1:8001?close_spread=10s", 400),
            (
                "upstreams/app/peers/127.0.0.1:8001?close_after=1s&close_spread=25h",
                400,
            ),
        ] {
            let mut membership = HeapMembership::default();
            let reply = call_with(&owned, "DELETE", path, "", WRITER, None, &mut membership);
            assert_eq!(reply.status, status, "{path}: {}", reply.body);
            assert!(owned.peers[1].is_current(), "{path}");
            assert_eq!(owned.peers[1].close_deadline(), None, "{path}");
            assert_eq!(owned.view().generation(), generation, "{path}");
        }
        let config_line = call_with(
            &owned,
            "DELETE",
            "upstreams/app/peers/127.0.0.1:8000",
            "",
            WRITER,
            None,
            &mut HeapMembership::default(),
        );
        assert!(config_line.body.contains("remove the line and reload"));
    }

    #[test]
    fn peers_resources_take_only_their_methods() {
        let owned = app();
        let mut membership = HeapMembership::default();
        for (method, path, allow) in [
            ("GET", "upstreams/app/peers", "POST"),
            ("PATCH", "upstreams/app/peers/127.0.0.1:8000", "DELETE"),
            ("DELETE", "upstreams/app", "GET, HEAD, PATCH"),
        ] {
            let reply = call_with(&owned, method, path, "", WRITER, None, &mut membership);
            assert_eq!(
                (reply.status, reply.allow),
                (405, Some(allow)),
                "{method} {path}"
            );
        }
        let reader = Caller {
            uid: Some(1000),
            may_read: true,
            may_write: false,
        };
        let body = r#"{"server": "10.0.0.7:8000"}"#;
        let path = "upstreams/app/peers";
        let reply = call_with(&owned, "POST", path, body, reader, None, &mut membership);
        assert_eq!(reply.status, 403);
        let reply = call_with(
            &owned,
            "POST",
            "upstreams/app/peers/x/y",
            body,
            WRITER,
            None,
            &mut membership,
        );
        assert_eq!(reply.status, 404);
    }
}
