//! Wire types of the nginx-shift admin API, defined once and used by both the Nginx module (which
//! serves them) and `shiftctl` (which sends and reads them).
//!
//! Routes, relative to the `shift_api` location:
//! - `GET upstreams` → [`UpstreamList`]
//! - `GET upstreams/{name}` → [`Upstream`]
//! - `PATCH upstreams/{name}` with an [`UpstreamPatch`] → [`Upstream`] (its new state)
//! - `POST upstreams/{name}/peers` with a [`NewPeer`] → 201 [`Upstream`]
//! - `DELETE upstreams/{name}/peers/{server}[?expect_generation=N]` → [`PeerRemoval`]
//!
//! Every error answers an [`ApiError`] body.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod fleet;
mod latency;
pub use latency::{bucket_of, Histogram, LATENCY_BOUNDS_MS, LATENCY_BUCKETS};

/// Highest weight a peer can be given at run time (0 means no new requests).
pub const MAX_WEIGHT: u32 = 1000;

/// Longest peer label, in bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// Whether `text` may be a peer's label (the empty text being no label): up to
/// [`MAX_LABEL_LEN`] letters, digits and `._+-`, nothing that could be read as an address
/// (`:`), a path (`/`) or need quoting. The module and `shiftctl` both check it.
pub fn is_valid_label(text: &str) -> bool {
    text.len() <= MAX_LABEL_LEN
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._+-".contains(&byte))
}

/// Largest PATCH body the API reads, in bytes; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 8 * 1024;

/// Whether a peer takes new requests (besides its weight and health).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Takes new requests according to its weight: where a peer added without a state starts.
    #[default]
    Up,
    /// Finishes the requests it has and takes no new ones.
    Drain,
    /// Standby: takes no requests (`server ... down` in the config starts here).
    Down,
}

impl PeerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Up => "up",
            PeerState::Drain => "drain",
            PeerState::Down => "down",
        }
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a peer comes from: a `server` line of nginx.conf, or the API (`POST …/peers`). The
/// config owns its lines (a reload applies them, and DELETE refuses them); a peer added at run
/// time stays, across reloads and restarts, until it is removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerOrigin {
    #[default]
    Config,
    Api,
    /// An address a name resolved to (`server NAME resolve` or `shift_resolve`): it comes and
    /// goes with the name's DNS answers.
    Resolved,
}

impl PeerOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            PeerOrigin::Config => "config",
            PeerOrigin::Api => "api",
            PeerOrigin::Resolved => "resolved",
        }
    }
}

/// What the active health checks last concluded about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No check configured, or none finished yet.
    Unchecked,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unchecked => "unchecked",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }
}

/// Responses a peer sent, by status class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseCounts {
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirection: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

/// A peer that `shift_slow_start` is ramping up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ramp {
    /// The weight it routes with now, from its floor up to `weight`.
    pub effective_weight: u32,
    /// When it routes with its whole weight (Unix ms).
    pub ramp_ends_ms: u64,
}

/// What `shift_eject` did to a peer: all zero and absent without it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ejection {
    /// How many times it was ejected for failing real requests.
    #[serde(default)]
    pub ejections: u32,
    /// While it is ejected: when it takes requests again (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ejected_until_ms: Option<u64>,
}

/// A deadline a drain or removal gave the requests a peer still carries (`close_after`): all
/// zero and absent without one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainClose {
    /// When the workers start closing its requests (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_at_ms: Option<u64>,
    /// Over how long after `close_at_ms` they close them, evenly (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_spread_ms: Option<u64>,
    /// Requests closed at such a deadline, since this instance of the peer joined.
    #[serde(default)]
    pub closed_by_drain: u64,
}

/// One peer of an upstream, as live in shared memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The peer's address as Nginx names it, e.g. `127.0.0.1:8001`; the key for PATCH.
    pub server: String,
    /// The weight selection uses now.
    pub weight: u32,
    pub state: PeerState,
    pub health: Health,
    /// Its label (`shift_label`, or set through the API), e.g. the version it runs; absent
    /// without one. `shift_pin` and `shiftctl --to` can name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Whether it takes new requests now: weight above 0, state `up`, not unhealthy, not
    /// ejected, and healthy when checks are `mandatory`. The module decides it, the one place that does.
    #[serde(default)]
    pub eligible: bool,
    /// A `backup` server: used only when no primary peer can take a request.
    pub backup: bool,
    /// A `server` line, or added through the API.
    #[serde(default)]
    pub origin: PeerOrigin,
    /// When this instance of the peer joined the upstream, in milliseconds since the Unix
    /// epoch. A replica is not its address: an address removed and back (a container
    /// recreated with the same IP, a peer deleted and added again, a name that dropped it and
    /// resolves to it again) is a new instance, with a later `joined_ms`, its health unchecked
    /// and its counters from zero. 0 from a module older than this field.
    #[serde(default)]
    pub joined_ms: u64,
    /// For a resolved peer: when the last answer for its name that gives this address arrived
    /// (Unix ms). An address the name no longer gives goes at the next answer; a deploy waits
    /// for an answer after its start hook before it trusts a side's addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_ms: Option<u64>,
    /// While `shift_slow_start` ramps it up: the weight it routes with now, and when the ramp
    /// ends (absent otherwise).
    #[serde(flatten)]
    pub ramp: Option<Ramp>,
    /// Its ejections by `shift_eject`; `eligible` is false while it is ejected.
    #[serde(flatten)]
    pub ejection: Ejection,
    /// The deadline of its drain or removal, and what it closed.
    #[serde(flatten)]
    pub drain_close: DrainClose,
    /// The weight the config gives it; `weight` differs once changed at run time.
    pub config_weight: u32,
    /// Requests sent to this peer (every attempt, retries included).
    pub requests: u64,
    /// Attempts that failed (connect error, timeout, or a `proxy_next_upstream` status).
    pub failures: u64,
    /// Requests in progress on this peer right now.
    pub active: u64,
    pub responses: ResponseCounts,
    /// How long its attempts took, from the request to its upstream's last byte (or to the
    /// failure), and to its response header, in `LATENCY_BOUNDS_MS` buckets.
    #[serde(default)]
    pub response_time: Histogram,
    #[serde(default)]
    pub header_time: Histogram,
    /// The active health check's view of the peer; absent without `shift_check`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckStatus>,
}

/// What the last health checks of a peer found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// When the last check finished, in milliseconds since the Unix epoch; absent before one.
    pub last_check_ms: Option<u64>,
    /// Why the last check failed (e.g. `connect refused`, `status 503`, `timeout`); absent
    /// when it passed.
    pub last_error: Option<String>,
    pub consecutive_fails: u32,
    pub consecutive_passes: u32,
}

/// One `shift` upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub name: String,
    /// Grows by one on every change of weights, states or labels.
    pub generation: u64,
    pub peers: Vec<Peer>,
    /// What `shift_pin` did with the requests that carried a value.
    #[serde(default)]
    pub pins: PinCounts,
    /// `shift_slow_start`'s window (ms), when the upstream has one: a peer that starts taking
    /// requests ramps up over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start_ms: Option<u64>,
}

/// Requests with a `shift_pin` value, since the zone was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinCounts {
    /// Sent to the peer (or a peer of the label) they named.
    pub pinned: u64,
    /// Their value named no peer, or only unhealthy ones: they took the normal pick.
    pub fallbacks: u64,
}

/// The answer to a PATCH, or to a POST of a peer: the generation it made and the peers it
/// changed or added, as they are now. `?full=1` asks for the whole [`Upstream`] instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatchApplied {
    pub name: String,
    pub generation: u64,
    /// The peers the PATCH named, in the upstream's order.
    pub peers: Vec<Peer>,
}

/// `GET upstreams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamList {
    pub upstreams: Vec<Upstream>,
}

/// The change to one peer in a PATCH; absent fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PeerState>,
    /// A new label; `""` takes the label away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The window of the slow start this change begins if it lets the peer take requests
    /// (`"30s"`; `"0s"`: none), in place of the upstream's `shift_slow_start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<String>,
    /// With `state` `drain` or `down`: close the requests it still carries after this long
    /// (`"30s"`; `"0s"`: at once), upgraded connections included. `state` `up` cancels it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_after: Option<String>,
    /// Spread those closes evenly over this long after the deadline (`"10s"`; none: all at
    /// once), so that clients reconnect gradually.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_spread: Option<String>,
}

/// `PATCH upstreams/{name}`: applied all or nothing, as one new generation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamPatch {
    /// Changes keyed by the peer's `server` address; a peer named twice is refused (a JSON
    /// object with a duplicate key would otherwise apply its last value silently).
    #[serde(deserialize_with = "unique_keys")]
    pub peers: BTreeMap<String, PeerPatch>,
    /// When set, the PATCH applies only if the upstream is still at this generation (else 409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_generation: Option<u64>,
}

/// `POST upstreams/{name}/peers`: a peer added at run time, as one new generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPeer {
    /// Its address, `IP:PORT` (`[IPv6]:PORT` for IPv6), as the status lists it.
    pub server: String,
    /// 1 when absent, as on a `server` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// `up` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<PeerState>,
    /// None when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// The window of its slow start (`"30s"`; `"0s"`: none), in place of the upstream's
    /// `shift_slow_start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<String>,
    /// When set, the peer is added only if the upstream is still at this generation (else 409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_generation: Option<u64>,
}

/// One change in an upstream's history (`GET upstreams/{name}/history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The upstream's generation the change made (a health verdict or an ejection, which make
    /// none, carries the one it happened at).
    pub generation: u64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// Who: `api`, `reload`, `resolver`, `health` or `eject`.
    pub actor: String,
    /// For `api`: the caller's uid and pid, from the Unix socket's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The peer's address.
    pub peer: String,
    /// What changed: `weight`, `state`, `label`, `health`, `ejected` or `member`.
    pub field: String,
    /// Before and after (`""`: none, e.g. no label, or not a member).
    pub old: String,
    pub new: String,
}

/// `GET upstreams/{name}/history[?since=GEN]`: the changes kept, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamHistory {
    pub name: String,
    /// How many changes the upstream keeps (`shift_history`).
    pub capacity: u64,
    pub entries: Vec<HistoryEntry>,
}

/// The answer to `DELETE upstreams/{name}/peers/{server}`: the peer takes no new requests at
/// once; it is `gone` when none were in flight, else it is removed once its `active` ones end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRemoval {
    pub server: String,
    pub gone: bool,
    /// Its requests still in flight when it was removed.
    pub active: u64,
    /// The upstream's generation after the removal.
    pub generation: u64,
    /// The upstream without it, with `?full=1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<Upstream>,
}

/// Parses a duration in Nginx's notation: `500ms`, `30s`, `2m`, `1h` (a bare number is
/// seconds). Zero is refused: no duration of the module or of shiftctl (a check interval, a
/// canary step's watch, a timeout) means anything at zero, and a zero-length canary step would
/// promote a target that fails every request. The directives, the command line and deploy
/// plans all read durations here.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("\"{text}\" is not a duration such as 30s or 500ms"))?;
    let factor = match unit {
        "ms" => 1,
        "" | "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("\"{text}\" has an unknown unit; use ms, s, m or h")),
    };
    match number.checked_mul(factor) {
        Some(0) => Err(format!(
            "\"{text}\" is zero; give a duration above 0, e.g. 30s"
        )),
        Some(millis) => Ok(Duration::from_millis(millis)),
        None => Err(format!("\"{text}\" is too long")),
    }
}

/// A slow start's window, as the API's `slow_start` and shiftctl's `--slow-start` take it: a
/// duration up to 24 h (`parse_duration`), or zero (`0`, `0s`, `0ms`…) for no ramp.
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let zero = text.starts_with('0')
        && matches!(text.trim_start_matches('0'), "" | "ms" | "s" | "m" | "h");
    let window = if zero {
        Duration::ZERO
    } else {
        parse_duration(text)?
    };
    if window > Duration::from_secs(24 * 3600) {
        return Err(format!(
            "\"{text}\" is longer than 24h, the longest slow start"
        ));
    }
    Ok(window)
}

/// A JSON object as a map, refusing a key that comes twice.
fn unique_keys<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct UniqueKeys<V>(std::marker::PhantomData<V>);

    impl<'de, V: Deserialize<'de>> serde::de::Visitor<'de> for UniqueKeys<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of peers")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut peers = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, V>()? {
                if peers.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "peer \"{key}\" is named twice; name each peer once"
                    )));
                }
                peers.insert(key, value);
            }
            Ok(peers)
        }
    }

    deserializer.deserialize_map(UniqueKeys(std::marker::PhantomData))
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A short machine-readable code, e.g. `bad_request`, `not_found`, `conflict`.
    pub error: String,
    /// What was wrong and what to do about it.
    pub detail: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_nginx_notation() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
        for zero in ["0s", "0", "0ms", "0m"] {
            assert!(parse_duration(zero).unwrap_err().contains("zero"), "{zero}");
        }
        assert!(parse_duration("99999999999999999h")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn patch_reads_the_documented_shape() {
        let patch: UpstreamPatch = serde_json::from_str(
            r#"{"peers": {"127.0.0.1:8001": {"weight": 30},
                          "127.0.0.1:8000": {"weight": 70, "state": "up"}},
                "expect_generation": 7}"#,
        )
        .unwrap();
        assert_eq!(patch.expect_generation, Some(7));
        assert_eq!(
            patch.peers["127.0.0.1:8001"],
            PeerPatch {
                weight: Some(30),
                ..Default::default()
            }
        );
        assert_eq!(
            patch.peers["127.0.0.1:8000"],
            PeerPatch {
                weight: Some(70),
                state: Some(PeerState::Up),
                ..Default::default()
            }
        );
    }

    #[test]
    fn patch_rejects_unknown_fields_and_states() {
        assert!(serde_json::from_str::<UpstreamPatch>(r#"{"peers": {}, "gen": 1}"#).is_err());
        let twice = serde_json::from_str::<UpstreamPatch>(
            r#"{"peers": {"a:1": {"weight": 5}, "a:1": {"weight": 7}}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(twice.contains("\"a:1\" is named twice"), "{twice}");
        assert!(
            serde_json::from_str::<UpstreamPatch>(r#"{"peers": {"a:1": {"weigth": 1}}}"#).is_err()
        );
        assert!(serde_json::from_str::<UpstreamPatch>(
            r#"{"peers": {"a:1": {"state": "paused"}}}"#
        )
        .is_err());
    }

    #[test]
    fn responses_use_status_class_names() {
        let json = serde_json::to_value(ResponseCounts {
            success: 3,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(json["2xx"], 3);
        assert_eq!(json["5xx"], 0);
    }
}
