//! The admin API's logic: routing and access here, the all-or-nothing PATCH in `patch.rs`,
//! peers added and removed at run time in `peers.rs`, the state file saved after a change in
//! `save.rs`, every upstream read a page at a time in `listing.rs`, and what the zone is read
//! through in `upstreams.rs`. The FFI handler reads the request, calls [`handle`] under the
//! zone's lock (or, for a whole listing, steps a [`Listing`] a page per lock), saves what it
//! says to save once the lock is released ([`save::finish`]), and sends the [`Reply`]; nothing
//! here touches Nginx.

mod access;
mod listing;
mod patch;
mod peers;
mod query;
pub mod save;
#[cfg(test)]
pub(crate) mod test_support;
mod upstreams;

use std::path::Path;

use shift_wire::{ApiError, MAX_BODY_BYTES};

use crate::metrics::ZoneUsage;
use crate::table::Table;

pub use access::{Access, Caller};
pub use listing::{ListKind, Listing, PAGE_PEERS};
pub use peers::{Membership, PlaceError};
pub use save::{Answered, PendingSave};
pub use upstreams::{TableList, UpstreamData, Upstreams};

use access::check_access;

/// A `shift` upstream the API serves.
#[derive(Clone, Copy)]
pub struct Endpoint<'a> {
    pub table: Table<'a>,
    pub state_path: Option<&'a Path>,
    /// Requests in flight on each of the table's peers, summed over running workers.
    pub active: &'a [u64],
}

/// The answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// For 405: the methods the resource allows.
    pub allow: Option<&'static str>,
}

/// The writer's identity for the table lock: its process token (`process::own_token`), and how
/// to tell whether a token's process still runs.
pub struct Writer<'a> {
    pub pid: u64,
    pub is_alive: &'a dyn Fn(u64) -> bool,
}

/// One API request: `path` is relative to the `shift_api` location, `args` its query string.
pub struct ApiRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub args: &'a str,
    pub body: &'a [u8],
    pub caller: Caller,
}

/// What the API works on: the current upstreams, the writer's identity, the zone's usage for
/// the metrics, and the zone's side of adding and removing peers.
pub struct ApiContext<'a, 'm> {
    pub upstreams: &'a dyn Upstreams,
    pub writer: &'a Writer<'a>,
    pub zone: Option<ZoneUsage>,
    pub membership: &'m mut dyn Membership,
}

/// Answers one API request, under the zone's lock; a change is applied, and the snapshot its
/// state file needs comes with the answer (`save::finish` writes it after the lock).
pub fn handle(request: &ApiRequest, context: &mut ApiContext) -> Answered {
    match respond(request, context) {
        Ok((reply, save)) => Answered { reply, save },
        Err(failure) => Answered {
            reply: failure.into_reply(),
            save: None,
        },
    }
}

/// A reply, and the snapshot to save before sending it.
type Respond = Result<(Reply, Option<PendingSave>), Failure>;

#[derive(Debug)]
pub(crate) struct Failure {
    status: u16,
    error: &'static str,
    detail: String,
    allow: Option<&'static str>,
}

impl Failure {
    fn new(status: u16, error: &'static str, detail: impl Into<String>) -> Failure {
        Failure {
            status,
            error,
            detail: detail.into(),
            allow: None,
        }
    }

    /// 405, with the `Allow` header the resource's methods give.
    fn method_not_allowed(method: &str, allow: &'static str) -> Failure {
        let detail = format!("{method} is not allowed here; allowed: {allow}");
        let mut failure = Failure::new(405, "method_not_allowed", detail);
        failure.allow = Some(allow);
        failure
    }

    fn into_reply(self) -> Reply {
        let body = ApiError {
            error: self.error.to_string(),
            detail: self.detail,
        };
        Reply {
            status: self.status,
            content_type: JSON,
            body: to_json(&body),
            allow: self.allow,
        }
    }
}

/// What a path under `upstreams/` names.
enum Resource<'a> {
    List,
    Upstream(&'a str),
    Peers(&'a str),
    Peer(&'a str, &'a str),
}

impl Resource<'_> {
    fn allow(&self) -> &'static str {
        match self {
            Resource::List => "GET, HEAD",
            Resource::Upstream(_) => "GET, HEAD, PATCH",
            Resource::Peers(_) => "POST",
            Resource::Peer(..) => "DELETE",
        }
    }
}

fn resource(route: &str) -> Option<Resource<'_>> {
    let rest = route.strip_prefix("upstreams")?;
    if rest.is_empty() || rest == "/" {
        return Some(Resource::List);
    }
    let rest = rest.strip_prefix('/')?;
    let (name, rest) = rest.split_once('/').unwrap_or((rest, ""));
    if name.is_empty() {
        return None;
    }
    if rest.is_empty() {
        return Some(Resource::Upstream(name));
    }
    let rest = rest.strip_prefix("peers")?;
    match rest.strip_prefix('/') {
        None if rest.is_empty() => Some(Resource::Peers(name)),
        Some("") => Some(Resource::Peers(name)),
        Some(server) if !server.contains('/') => Some(Resource::Peer(name, server)),
        _ => None,
    }
}

/// The listing `request` asks for, when it is a read of every upstream (`GET upstreams`, `GET
/// metrics`) that the caller may make; `None` for every other request, which [`handle`]
/// answers. The FFI handler steps a listing a page at a time.
pub fn listing(request: &ApiRequest) -> Option<Listing> {
    if request.method != "GET" && request.method != "HEAD" {
        return None;
    }
    check_access(request.caller, false).ok()?;
    match request.path.trim_start_matches('/') {
        "metrics" => Some(Listing::new(ListKind::Metrics)),
        route => matches!(resource(route), Some(Resource::List))
            .then(|| Listing::new(ListKind::Upstreams)),
    }
}

fn respond(request: &ApiRequest, context: &mut ApiContext) -> Respond {
    let method = request.method;
    let route = request.path.trim_start_matches('/');
    let upstreams = context.upstreams;
    if route == "metrics" {
        if method != "GET" && method != "HEAD" {
            return Err(Failure::method_not_allowed(method, "GET, HEAD"));
        }
        check_access(request.caller, false)?;
        let listing = Listing::new(ListKind::Metrics);
        return Ok((listing.run(upstreams, context.zone), None));
    }
    let resource = resource(route).ok_or_else(|| {
        Failure::new(
            404,
            "not_found",
            format!(
                "no API resource \"{route}\"; try \"upstreams\", \"upstreams/NAME\", \
                 \"upstreams/NAME/peers\" or \"metrics\""
            ),
        )
    })?;
    let writing = match (method, &resource) {
        ("GET" | "HEAD", Resource::List | Resource::Upstream(_)) => false,
        ("PATCH", Resource::Upstream(_))
        | ("POST", Resource::Peers(_))
        | ("DELETE", Resource::Peer(..)) => true,
        _ => return Err(Failure::method_not_allowed(method, resource.allow())),
    };
    check_access(request.caller, writing)?;

    let name = match resource {
        Resource::List => {
            let listing = Listing::new(ListKind::Upstreams);
            return Ok((listing.run(upstreams, context.zone), None));
        }
        Resource::Upstream(name) | Resource::Peers(name) | Resource::Peer(name, _) => name,
    };
    let data = upstreams
        .find(name)
        .ok_or_else(|| unknown_upstream(upstreams, name))?;
    let endpoint = &data.endpoint();
    match (method, resource) {
        ("PATCH", _) => patch::patch(endpoint, request.body, request.args, context.writer),
        ("POST", _) => peers::add(
            endpoint,
            request.body,
            request.args,
            context.writer,
            context.membership,
        ),
        ("DELETE", Resource::Peer(_, server)) => peers::remove(
            endpoint,
            server,
            request.args,
            context.writer,
            context.membership,
        ),
        _ => Ok((ok(&endpoint.table.to_wire(endpoint.active)), None)),
    }
}

/// How many names a 404 for an unknown upstream lists.
const NAMES_LISTED: usize = 20;

/// 404 for an upstream name the zone does not have, listing the first names it has.
fn unknown_upstream(upstreams: &dyn Upstreams, name: &str) -> Failure {
    let count = upstreams.count();
    let mut known: Vec<&str> = (0..count.min(NAMES_LISTED))
        .filter_map(|index| upstreams.name_at(index))
        .collect();
    let more = count.saturating_sub(NAMES_LISTED);
    let more = if more > 0 {
        format!(" and {more} more (GET upstreams lists them all)")
    } else {
        String::new()
    };
    if known.is_empty() {
        known.push("none");
    }
    Failure::new(
        404,
        "not_found",
        format!(
            "no shift upstream \"{name}\"; shift upstreams: {}{more}",
            known.join(", ")
        ),
    )
}

/// 404 for a peer the upstream does not have, listing the ones it has.
fn unknown_peer(table: Table, server: &str) -> Failure {
    let known: Vec<_> = table.peers().iter().map(|peer| peer.server()).collect();
    Failure::new(
        404,
        "not_found",
        format!(
            "upstream \"{}\" has no peer \"{server}\"; its peers: {}",
            table.name(),
            known.join(", ")
        ),
    )
}

/// 409 when the caller expected another generation than the table's.
fn expect_generation(table: Table, expected: Option<u64>) -> Result<(), Failure> {
    match expected {
        Some(expected) if table.generation() != expected => Err(Failure::new(
            409,
            "conflict",
            format!(
                "upstream \"{}\" is at generation {}, not {expected}: read it again and retry",
                table.name(),
                table.generation()
            ),
        )),
        _ => Ok(()),
    }
}

/// The answer of a worker whose state is no longer the truth: a newer Nginx binary took over
/// (binary upgrade), or a resized zone replaced this worker's. The newer workers answer the same
/// request; clients retry.
pub fn superseded_reply(why: &str) -> Reply {
    Failure::new(
        503,
        "superseded",
        format!("{why}; this worker is finishing its requests and no longer serves the API: retry, and the new workers will answer"),
    )
    .into_reply()
}

/// The 413 answer, also used by the FFI handler for bodies it refuses to read.
pub fn too_large_reply() -> Reply {
    too_large().into_reply()
}

pub(crate) fn too_large() -> Failure {
    Failure::new(
        413,
        "payload_too_large",
        format!("the request body is over {MAX_BODY_BYTES} bytes; send fewer peers per PATCH"),
    )
}

const JSON: &str = "application/json";

fn ok<T: serde::Serialize>(value: &T) -> Reply {
    ok_json(to_json(value))
}

/// 200 with a JSON body already encoded.
fn ok_json(body: String) -> Reply {
    Reply {
        status: 200,
        content_type: JSON,
        body,
        allow: None,
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    let mut json = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
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
        let upstreams = TableList::new(vec![(owned.view(), state_path)]);
        let (path, args) = path.split_once('?').unwrap_or((path, ""));
        let answered = handle(
            &ApiRequest {
                method,
                path,
                args,
                body: body.as_bytes(),
                caller,
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
        let body =
            r#"{"peers": {"127.0.0.1:8002": {"weight": 4}, "127.0.0.1:8000": {"weight": 3}}}"#;
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
    fn bad_patches_get_their_status_and_change_nothing() {
        let owned = app();
        let before = owned.view().to_wire(&[]);
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
        assert_eq!(owned.view().to_wire(&[]), before);
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
        assert_eq!(owned.view().to_wire(&[]).generation, 1);
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
        assert_eq!(owned.view().to_wire(&[]).peers[0].weight, 5);

        let path = dir.path().join("app.json");
        let second = r#"{"peers": {"127.0.0.1:8001": {"weight": 7}}}"#;
        assert_eq!(patch_saving_to(second, &path).status, 200);
        let saved = crate::state_file::load(&path, "app").unwrap().unwrap();
        assert_eq!(saved.generation, 3);
        assert_eq!((saved.peers[0].weight, saved.peers[1].weight), (5, 7));
    }
}
