//! The tests of routing, access and PATCH through `handle`, and `call_with`, which the other
//! files' tests use to send a request through `handle` as the FFI handler does.

use super::*;
use crate::table::test_support::OwnedTable;
use shift_wire::{PatchApplied, PeerState, Upstream, UpstreamList};

pub(crate) const WRITER: Caller = Caller {
    uid: Some(0),
    may_read: true,
    may_write: true,
};

fn call(owned: &OwnedTable, method: &str, path: &str, body: &str, caller: Caller) -> Reply {
    let mut membership = test_support::HeapMembership::default();
    call_with(owned, method, path, body, caller, None, &mut membership)
}

/// A request with a state file and the zone's side of membership changes.
pub(crate) fn call_with(
    owned: &OwnedTable,
    method: &str,
    path: &str,
    body: &str,
    caller: Caller,
    state_path: Option<&Path>,
    membership: &mut test_support::HeapMembership,
) -> Reply {
    let upstreams =
        TableList::with_histories(vec![(owned.view(), state_path, Some(owned.history))]);
    let (path, args) = path.split_once('?').unwrap_or((path, ""));
    let answered = handle(
        &ApiRequest {
            method,
            path,
            args,
            body: body.as_bytes(),
            caller,
            received_ms: crate::table::test_support::NOW_MS,
            pid: Some(4242),
        },
        &mut ApiContext {
            upstreams: &upstreams,
            writer: &Writer {
                pid: 1,
                is_alive: &|_| true,
            },
            zone: None,
            membership,
        },
    );
    // As the FFI handler does once the zone is unlocked.
    save::finish(answered, || true)
}

fn app() -> OwnedTable {
    OwnedTable::new(
        "app",
        &[("127.0.0.1:8000", 1, false), ("127.0.0.1:8001", 1, true)],
    )
}

fn error_code(reply: &Reply) -> String {
    serde_json::from_str::<ApiError>(&reply.body).unwrap().error
}

#[test]
fn lists_and_reads_upstreams() {
    let owned = app();
    let reply = call(&owned, "GET", "upstreams", "", WRITER);
    assert_eq!(reply.status, 200);
    let list: UpstreamList = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(list.upstreams.len(), 1);
    let one: Upstream =
        serde_json::from_str(&call(&owned, "GET", "/upstreams/app", "", WRITER).body).unwrap();
    assert_eq!(one.peers[1].state, PeerState::Down);
}

#[test]
fn patch_applies_all_changes_as_one_generation() {
    let owned = app();
    let body = r#"{"peers": {"127.0.0.1:8000": {"weight": 70},
                             "127.0.0.1:8001": {"weight": 30, "state": "up"}},
                   "expect_generation": 1}"#;
    let reply = call(&owned, "PATCH", "upstreams/app", body, WRITER);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let applied: PatchApplied = serde_json::from_str(&reply.body).unwrap();
    assert_eq!((applied.name.as_str(), applied.generation), ("app", 2));
    assert_eq!((applied.peers[0].weight, applied.peers[1].weight), (70, 30));
    assert_eq!(applied.peers[1].state, PeerState::Up);
}

#[test]
fn a_patch_answers_with_the_peers_it_named_or_the_whole_upstream_when_asked() {
    let owned = OwnedTable::new(
        "app",
        &[
            ("127.0.0.1:8000", 1, false),
            ("127.0.0.1:8001", 1, false),
            ("127.0.0.1:8002", 1, false),
        ],
    );
    let body = r#"{"peers": {"127.0.0.1:8002": {"weight": 4}, "127.0.0.1:8000": {"weight": 3}}}"#;
    let reply = call(&owned, "PATCH", "upstreams/app", body, WRITER);
    let applied: PatchApplied = serde_json::from_str(&reply.body).unwrap();
    let named: Vec<_> = applied
        .peers
        .iter()
        .map(|peer| (peer.server.as_str(), peer.weight))
        .collect();
    assert_eq!(named, [("127.0.0.1:8000", 3), ("127.0.0.1:8002", 4)]);
    assert_eq!(applied.generation, 2);

    let body = r#"{"peers": {"127.0.0.1:8001": {"weight": 5}}}"#;
    let reply = call(&owned, "PATCH", "upstreams/app?full=1", body, WRITER);
    let upstream: Upstream = serde_json::from_str(&reply.body).unwrap();
    let weights: Vec<_> = upstream.peers.iter().map(|peer| peer.weight).collect();
    assert_eq!((weights, upstream.generation), (vec![3, 5, 4], 3));

    let reply = call(&owned, "PATCH", "upstreams/app?fulll=1", body, WRITER);
    assert_eq!(
        (reply.status, error_code(&reply).as_str()),
        (400, "bad_request")
    );
    assert!(reply.body.contains("full=1"), "{}", reply.body);
    assert_eq!(owned.view().generation(), 3);
}

#[test]
fn patch_sets_and_takes_away_labels_as_a_generation() {
    let owned = app();
    let body = r#"{"peers": {"127.0.0.1:8000": {"label": "blue"},
                             "127.0.0.1:8001": {"label": "green", "weight": 0}}}"#;
    let reply = call(&owned, "PATCH", "upstreams/app", body, WRITER);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let applied: PatchApplied = serde_json::from_str(&reply.body).unwrap();
    let labels: Vec<_> = applied.peers.iter().map(|p| p.label.as_deref()).collect();
    assert_eq!(labels, [Some("blue"), Some("green")]);
    assert_eq!(applied.generation, 2);
    let body = r#"{"peers": {"127.0.0.1:8000": {"label": ""}}}"#;
    let upstream: Upstream =
        serde_json::from_str(&call(&owned, "PATCH", "upstreams/app?full=1", body, WRITER).body)
            .unwrap();
    assert_eq!(upstream.peers[0].label, None);
    assert_eq!(upstream.peers[1].label.as_deref(), Some("green"));
}

#[test]
fn a_patch_gives_the_ramp_it_begins_its_own_slow_start() {
    let owned = app();
    let body = r#"{"peers": {"127.0.0.1:8001": {"state": "up", "slow_start": "30s"}}}"#;
    let reply = call(&owned, "PATCH", "upstreams/app", body, WRITER);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let applied: PatchApplied = serde_json::from_str(&reply.body).unwrap();
    let ramp = applied.peers[0].ramp.expect("it ramps");
    assert_eq!(
        ramp.ramp_ends_ms,
        crate::table::test_support::NOW_MS + 30_000
    );
}

#[test]
fn a_drain_with_close_after_sets_a_deadline_that_up_cancels() {
    let owned = app();
    let body = r#"{"peers": {"127.0.0.1:8000": {"state": "drain", "close_after": "30s", "close_spread": "10s"}}}"#;
    let reply = call(&owned, "PATCH", "upstreams/app", body, WRITER);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let applied: PatchApplied = serde_json::from_str(&reply.body).unwrap();
    let close = applied.peers[0].drain_close;
    let now = crate::table::test_support::NOW_MS;
    assert_eq!(close.close_at_ms, Some(now + 30_000));
    assert_eq!(close.close_spread_ms, Some(10_000));
    // Drained again without one: the deadline stays.
    let body = r#"{"peers": {"127.0.0.1:8000": {"state": "drain"}}}"#;
    assert_eq!(
        call(&owned, "PATCH", "upstreams/app", body, WRITER).status,
        200
    );
    assert_eq!(
        owned.peers[0].close_deadline(),
        Some((now + 30_000, 10_000))
    );
    let body = r#"{"peers": {"127.0.0.1:8000": {"state": "up"}}}"#;
    let reply = call(&owned, "PATCH", "upstreams/app", body, WRITER);
    let applied: PatchApplied = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(applied.peers[0].drain_close, Default::default());
}

#[test]
fn bad_patches_get_their_status_and_change_nothing() {
    let owned = app();
    let before = owned
        .view()
        .to_wire(&[], crate::table::test_support::NOW_MS);
    for (body, status, code) in [
        ("{not json", 400, "bad_request"),
        (
            r#"{"peers": {"127.0.0.1:8000": {"weigth": 1}}}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"peers": {"127.0.0.1:8000": {"state": "paused"}}}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"peers": {"127.0.0.1:8000": {"weight": 1001}}}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"peers": {"127.0.0.1:8000": {"weight": -1}}}"#,
            400,
            "bad_request",
        ),
        (r#"{"peers": {}}"#, 400, "bad_request"),
        (r#"{"peers": {"127.0.0.1:8000": {}}}"#, 400, "bad_request"),
        // One good change with one bad one: neither is applied.
        (
            r#"{"peers": {"127.0.0.1:8000": {"weight": 5}, "10.0.0.1:80": {"weight": 5}}}"#,
            404,
            "not_found",
        ),
        (
            r#"{"peers": {"127.0.0.1:8000": {"weight": 5}}, "expect_generation": 9}"#,
            409,
            "conflict",
        ),
        // A good weight with a label that could pass for an address: neither is applied.
        (
            r#"{"peers": {"127.0.0.1:8000": {"weight": 5}, "127.0.0.1:8001": {"label": "10.0.0.1:80"}}}"#,
            400,
            "bad_request",
        ),
        // A slow start that is no duration, or over a day.
        (
            r#"{"peers": {"127.0.0.1:8001": {"state": "up", "slow_start": "soon"}}}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"peers": {"127.0.0.1:8001": {"state": "up", "slow_start": "25h"}}}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"peers": {"127.0.0.1:8001": {"state": "up", "slow_start": "0x"}}}"#,
            400,
            "bad_request",
        ),
        // A deadline for a peer that keeps taking requests, a spread alone, a bad duration.
        (
            r#"{"peers": {"127.0.0.1:8000": {"state": "up", "close_after": "30s"}}}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"peers": {"127.0.0.1:8000": {"weight": 0, "close_after": "30s"}}}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"peers": {"127.0.0.1:8000": {"state": "drain", "close_spread": "10s"}}}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"peers": {"127.0.0.1:8000": {"state": "drain", "close_after": "later"}}}"#,
            400,
            "bad_request",
        ),
    ] {
        let reply = call(&owned, "PATCH", "upstreams/app", body, WRITER);
        assert_eq!(
            (reply.status, error_code(&reply).as_str()),
            (status, code),
            "{body}"
        );
    }
    let big = format!(
        r#"{{"peers": {{"{}": {{"weight": 1}}}}}}"#,
        "x".repeat(MAX_BODY_BYTES)
    );
    assert_eq!(
        call(&owned, "PATCH", "upstreams/app", &big, WRITER).status,
        413
    );
    assert_eq!(
        owned
            .view()
            .to_wire(&[], crate::table::test_support::NOW_MS),
        before
    );
}

#[test]
fn unknown_routes_and_methods() {
    let owned = app();
    assert_eq!(
        call(&owned, "GET", "upstreams/nope", "", WRITER).status,
        404
    );
    assert_eq!(call(&owned, "GET", "status", "", WRITER).status, 404);
    let reply = call(&owned, "DELETE", "upstreams/app", "", WRITER);
    assert_eq!((reply.status, reply.allow), (405, Some("GET, HEAD, PATCH")));
    assert_eq!(call(&owned, "PATCH", "upstreams", "{}", WRITER).status, 405);
}

#[test]
fn readers_cannot_write_and_strangers_cannot_read() {
    let owned = app();
    let reader = Caller {
        uid: Some(1000),
        may_read: true,
        may_write: false,
    };
    assert_eq!(call(&owned, "GET", "upstreams", "", reader).status, 200);
    let body = r#"{"peers": {"127.0.0.1:8000": {"weight": 5}}}"#;
    let reply = call(&owned, "PATCH", "upstreams/app", body, reader);
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("uid 1000"), "{}", reply.body);
    let stranger = Caller {
        uid: Some(1001),
        may_read: false,
        may_write: false,
    };
    assert_eq!(call(&owned, "GET", "upstreams", "", stranger).status, 403);
    assert_eq!(
        owned
            .view()
            .to_wire(&[], crate::table::test_support::NOW_MS)
            .generation,
        1
    );
}

#[test]
fn an_unwritable_state_file_is_said_and_the_next_save_carries_the_change() {
    let owned = app();
    let dir = tempfile::tempdir().unwrap();
    let missing_dir = dir.path().join("missing/app.json");
    let patch_saving_to = |body: &str, path: &Path| {
        let mut membership = test_support::HeapMembership::default();
        call_with(
            &owned,
            "PATCH",
            "upstreams/app",
            body,
            WRITER,
            Some(path),
            &mut membership,
        )
    };
    let first = r#"{"peers": {"127.0.0.1:8000": {"weight": 5}}}"#;
    let reply = patch_saving_to(first, &missing_dir);
    assert_eq!(reply.status, 500);
    assert_eq!(error_code(&reply), "state_not_saved");
    assert!(reply.body.contains("in effect"), "{}", reply.body);
    assert_eq!(
        owned
            .view()
            .to_wire(&[], crate::table::test_support::NOW_MS)
            .peers[0]
            .weight,
        5
    );

    let path = dir.path().join("app.json");
    let second = r#"{"peers": {"127.0.0.1:8001": {"weight": 7}}}"#;
    assert_eq!(patch_saving_to(second, &path).status, 200);
    let saved = crate::state_file::load(&path, "app").unwrap().unwrap();
    assert_eq!(saved.generation, 3);
    assert_eq!((saved.peers[0].weight, saved.peers[1].weight), (5, 7));
}

#[test]
fn changes_are_recorded_with_their_caller_and_read_back_by_generation() {
    let owned = app();
    let body = r#"{"peers": {"127.0.0.1:8000": {"weight": 5, "label": "blue"},
                  "127.0.0.1:8001": {"state": "up"}}}"#;
    assert_eq!(
        call(&owned, "PATCH", "upstreams/app", body, WRITER).status,
        200
    );
    let body = r#"{"peers": {"127.0.0.1:8000": {"weight": 5}}}"#;
    assert_eq!(
        call(&owned, "PATCH", "upstreams/app", body, WRITER).status,
        200,
        "no change"
    );
    let body = r#"{"peers": {"127.0.0.1:8000": {"state": "drain"}}}"#;
    assert_eq!(
        call(&owned, "PATCH", "upstreams/app", body, WRITER).status,
        200
    );

    let reply = call(&owned, "GET", "upstreams/app/history", "", WRITER);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let history: shift_wire::UpstreamHistory = serde_json::from_str(&reply.body).unwrap();
    assert_eq!((history.name.as_str(), history.capacity), ("app", 8));
    let seen: Vec<(u64, &str, &str, &str, &str)> = history
        .entries
        .iter()
        .map(|e| {
            (
                e.generation,
                e.peer.as_str(),
                e.field.as_str(),
                e.old.as_str(),
                e.new.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (2, "127.0.0.1:8000", "weight", "1", "5"),
            (2, "127.0.0.1:8000", "label", "", "blue"),
            (2, "127.0.0.1:8001", "state", "down", "up"),
            (4, "127.0.0.1:8000", "state", "up", "drain"),
        ]
    );
    let first = &history.entries[0];
    assert_eq!(
        (first.actor.as_str(), first.uid, first.pid),
        ("api", Some(0), Some(4242))
    );
    assert_eq!(first.at_ms, crate::table::test_support::NOW_MS);

    let later: shift_wire::UpstreamHistory = serde_json::from_str(
        &call(&owned, "GET", "upstreams/app/history?since=2", "", WRITER).body,
    )
    .unwrap();
    assert_eq!(later.entries.len(), 1);
    for (path, status) in [
        ("upstreams/app/history?since=x", 400),
        ("upstreams/app/history?from=1", 400),
        ("upstreams/nope/history", 404),
    ] {
        assert_eq!(
            call(&owned, "GET", path, "", WRITER).status,
            status,
            "{path}"
        );
    }
    assert_eq!(
        call(&owned, "PATCH", "upstreams/app/history", "{}", WRITER).status,
        405
    );
}
