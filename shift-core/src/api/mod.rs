//! The admin API's logic: routing and access here, the all-or-nothing PATCH in `patch.rs`,
//! peers added and removed at run time in `peers.rs`, the state file saved after a change in
//! `save.rs`, every upstream read a page at a time in `listing.rs`, and what the zone is read
//! through in `upstreams.rs`. The FFI handler reads the request, calls [`handle`] under the
//! zone's lock (or, for a whole listing, steps a [`Listing`] a page per lock), saves what it
//! says to save once the lock is released ([`save::finish`]), and sends the [`Reply`]; nothing
//! here touches Nginx.

mod access;
mod history;
pub mod http1;
mod listing;
mod page;
mod patch;
mod peers;
mod query;
pub mod save;
#[cfg(test)]
pub(crate) mod test_support;
mod upstreams;

use std::path::Path;

use shift_wire::{ApiError, MAX_BODY_BYTES};

use crate::history::{Actor, Ring};
use crate::metrics::ZoneUsage;
use crate::table::Table;

pub use access::{Access, Caller};
pub use listing::{ListKind, Listing, PAGE_PEERS};
pub use page::{status_page, STATUS_PAGE};
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
    /// When the request came (Unix ms): where a peer's slow start stands.
    pub now_ms: u64,
    /// Where its changes are recorded (`shift_history`), when it keeps any.
    pub history: Option<Ring<'a>>,
}

impl Endpoint<'_> {
    /// Its history as a state file keeps it; call under the table's write lock. Nothing
    /// without a state file to keep it in.
    fn history_to_save(&self) -> Vec<crate::history::Change> {
        match (self.state_path, self.history) {
            (Some(_), Some(ring)) => ring.since(0),
            _ => Vec::new(),
        }
    }

    /// The upstream as the API shows it now.
    pub fn wire(&self) -> shift_wire::Upstream {
        self.table.to_wire(self.active, self.now_ms)
    }
}

/// The answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// For 405: the methods the resource allows.
    pub allow: Option<&'static str>,
    /// More response headers (the status page's security policy).
    pub headers: &'static [(&'static str, &'static str)],
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
    /// When it came (Unix ms): the `joined_ms` of a peer it adds.
    pub received_ms: u64,
    /// The caller's pid, from the Unix socket's credentials (none over TCP).
    pub pid: Option<u32>,
}

impl ApiRequest<'_> {
    /// Who the history names for a change this request makes.
    fn actor(&self) -> Actor {
        Actor::Api {
            uid: self.caller.uid,
            pid: self.pid,
        }
    }
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
            headers: &[],
        }
    }
}

/// What a path under `upstreams/` names.
enum Resource<'a> {
    List,
    Upstream(&'a str),
    History(&'a str),
    Peers(&'a str),
    Peer(&'a str, &'a str),
}

impl Resource<'_> {
    fn allow(&self) -> &'static str {
        match self {
            Resource::List => "GET, HEAD",
            Resource::Upstream(_) => "GET, HEAD, PATCH",
            Resource::History(_) => "GET, HEAD",
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
    if rest == "history" {
        return Some(Resource::History(name));
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
        "metrics" => Some(Listing::new(ListKind::Metrics, request.received_ms)),
        route => matches!(resource(route), Some(Resource::List))
            .then(|| Listing::new(ListKind::Upstreams, request.received_ms)),
    }
}

fn respond(request: &ApiRequest, context: &mut ApiContext) -> Respond {
    let method = request.method;
    let route = request.path.trim_start_matches('/');
    let upstreams = context.upstreams;
    if let Some(reply) = status_page(request) {
        return Ok((reply, None));
    }
    if route == "metrics" {
        if method != "GET" && method != "HEAD" {
            return Err(Failure::method_not_allowed(method, "GET, HEAD"));
        }
        check_access(request.caller, false)?;
        let listing = Listing::new(ListKind::Metrics, request.received_ms);
        return Ok((listing.run(upstreams, context.zone), None));
    }
    let resource = resource(route).ok_or_else(|| {
        Failure::new(
            404,
            "not_found",
            format!(
                "no API resource \"{route}\"; try \"upstreams\", \"upstreams/NAME\", \
                 \"upstreams/NAME/peers\", \"upstreams/NAME/history\", \"metrics\" or the \
                 status page (the prefix itself)"
            ),
        )
    })?;
    let writing = match (method, &resource) {
        ("GET" | "HEAD", Resource::List | Resource::Upstream(_) | Resource::History(_)) => false,
        ("PATCH", Resource::Upstream(_))
        | ("POST", Resource::Peers(_))
        | ("DELETE", Resource::Peer(..)) => true,
        _ => return Err(Failure::method_not_allowed(method, resource.allow())),
    };
    check_access(request.caller, writing)?;

    let name = match resource {
        Resource::List => {
            let listing = Listing::new(ListKind::Upstreams, request.received_ms);
            return Ok((listing.run(upstreams, context.zone), None));
        }
        Resource::Upstream(name)
        | Resource::History(name)
        | Resource::Peers(name)
        | Resource::Peer(name, _) => name,
    };
    let data = upstreams
        .find(name)
        .ok_or_else(|| unknown_upstream(upstreams, name))?;
    let endpoint = &data.endpoint(request.received_ms);
    match (method, resource) {
        (_, Resource::History(_)) => history::history(endpoint, request.args, context.writer),
        ("PATCH", _) => patch::patch(endpoint, request, context.writer),
        ("POST", _) => peers::add(endpoint, request, context.writer, context.membership),
        ("DELETE", Resource::Peer(_, server)) => peers::remove(
            endpoint,
            (request, server),
            context.writer,
            context.membership,
        ),
        _ => Ok((ok(&endpoint.wire()), None)),
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

/// The 403 for a caller who may not even read, `None` for one who may: a server that knows
/// the caller before the request (the API's threads) refuses it unread.
pub fn refusal_before_reading(caller: Caller) -> Option<Reply> {
    check_access(caller, false).err().map(Failure::into_reply)
}

/// The answer when the zone cannot be read: no `shift` upstream in the configuration, or none
/// committed in the zone.
pub fn no_zone_reply() -> Reply {
    Failure::new(
        500,
        "no_zone",
        "this Nginx has no shift upstream in its shared zone: add \"shift;\" to an upstream",
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
        headers: &[],
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    let mut json = serde_json::to_string(value).unwrap_or_else(|_| "{}".into());
    json.push('\n');
    json
}

#[cfg(test)]
mod tests;
