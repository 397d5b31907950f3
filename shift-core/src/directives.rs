//! Parsing of the module's directive arguments, kept free of Nginx types so it can be tested
//! without Nginx. The FFI glue hands in the arguments as strings and logs the error it gets back
//! with `ngx_conf_log_error`, which appends the file and line the way `nginx -t` shows them.

use std::fmt;

/// Arguments of `shift` (upstream context): `shift [state=PATH];`
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShiftArgs {
    /// File the runtime weights are saved to on every change and restored from on start.
    pub state_path: Option<String>,
}

/// Someone allowed to use the admin API: a numeric uid or a user name resolved at config time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Uid(u32),
    User(String),
}

/// Who may read the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readers {
    /// The same callers as may write (the default).
    Writers,
    /// Any local user who can connect to the socket.
    Any,
    /// These callers, in addition to the writers.
    List(Vec<Principal>),
}

/// Arguments of `shift_api` (location context):
/// `shift_api [writers=USER|UID,...] [readers=any|USER|UID,...] [connections=N];`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftApiArgs {
    /// `None` means the default: root and the user the master process runs as.
    pub writers: Option<Vec<Principal>>,
    pub readers: Readers,
    /// The most connections each worker keeps open on the API server's listeners; more are
    /// closed at once, so that clients of the API cannot take the workers' connections from
    /// the traffic.
    pub connections: u32,
}

/// Default of `shift_api connections=`: far more than operators and controllers open, far
/// fewer than `worker_connections`.
pub const DEFAULT_API_CONNECTIONS: u32 = 32;

impl Default for ShiftApiArgs {
    fn default() -> Self {
        ShiftApiArgs {
            writers: None,
            readers: Readers::Writers,
            connections: DEFAULT_API_CONNECTIONS,
        }
    }
}

/// A directive argument Nginx should reject; `Display` is the message `nginx -t` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectiveError {
    InvalidParameter {
        directive: &'static str,
        param: String,
        expected: &'static str,
    },
    DuplicateParameter {
        directive: &'static str,
        param: String,
    },
    EmptyValue {
        directive: &'static str,
        param: String,
    },
    Conflict {
        directive: &'static str,
        detail: String,
    },
}

impl fmt::Display for DirectiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectiveError::InvalidParameter {
                directive,
                param,
                expected,
            } => write!(
                f,
                "invalid parameter \"{}\" in \"{directive}\" directive, expected {expected}",
                printable(param)
            ),
            DirectiveError::DuplicateParameter { directive, param } => {
                write!(
                    f,
                    "duplicate parameter \"{param}\" in \"{directive}\" directive"
                )
            }
            DirectiveError::EmptyValue { directive, param } => {
                write!(f, "empty value in \"{param}\" of \"{directive}\" directive")
            }
            DirectiveError::Conflict { directive, detail } => {
                write!(f, "invalid \"{directive}\" directive: {detail}")
            }
        }
    }
}

impl std::error::Error for DirectiveError {}

/// Arguments of `shift_check` (upstream context), with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckArgs {
    pub kind: CheckKind,
    pub uri: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive failures that make a peer unhealthy.
    pub fails: u32,
    /// Consecutive passes that make a peer healthy.
    pub passes: u32,
    /// Accepted status codes, as inclusive ranges.
    pub status: Vec<(u16, u16)>,
    /// Probe this port instead of the peer's own.
    pub port: Option<u16>,
    pub host: Option<String>,
    /// A substring the response body must contain.
    pub body: Option<String>,
    /// Peers get no traffic until they have passed a check.
    pub mandatory: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    Http,
    Tcp,
}

impl Default for CheckArgs {
    fn default() -> Self {
        CheckArgs {
            kind: CheckKind::Http,
            uri: "/".into(),
            interval_ms: 5000,
            timeout_ms: 1000,
            fails: 1,
            passes: 1,
            status: vec![(200, 399)],
            port: None,
            host: None,
            body: None,
            mandatory: false,
        }
    }
}

const SHIFT: &str = "shift";
const SHIFT_CHECK: &str = "shift_check";
const SHIFT_API: &str = "shift_api";

/// Parses the arguments that follow `shift`.
pub fn parse_shift(args: &[&str]) -> Result<ShiftArgs, DirectiveError> {
    let mut parsed = ShiftArgs::default();
    for &arg in args {
        match arg.split_once('=') {
            Some(("state", path)) => {
                if parsed.state_path.is_some() {
                    return Err(duplicate(SHIFT, arg));
                }
                if path.is_empty() {
                    return Err(DirectiveError::EmptyValue {
                        directive: SHIFT,
                        param: arg.into(),
                    });
                }
                parsed.state_path = Some(path.to_string());
            }
            _ => {
                return Err(DirectiveError::InvalidParameter {
                    directive: SHIFT,
                    param: arg.into(),
                    expected: "\"state=PATH\"",
                })
            }
        }
    }
    Ok(parsed)
}

/// Parses the arguments that follow `shift_api`.
pub fn parse_shift_api(args: &[&str]) -> Result<ShiftApiArgs, DirectiveError> {
    let mut parsed = ShiftApiArgs::default();
    let (mut readers_seen, mut connections_seen) = (false, false);
    for &arg in args {
        match arg.split_once('=') {
            Some(("connections", value)) => {
                if connections_seen {
                    return Err(duplicate(SHIFT_API, arg));
                }
                connections_seen = true;
                parsed.connections = value
                    .parse()
                    .ok()
                    .filter(|count| (1..=65535).contains(count))
                    .ok_or_else(|| DirectiveError::InvalidParameter {
                        directive: SHIFT_API,
                        param: arg.into(),
                        expected: "a number of connections from 1 to 65535",
                    })?;
            }
            Some(("writers", list)) => {
                if parsed.writers.is_some() {
                    return Err(duplicate(SHIFT_API, arg));
                }
                parsed.writers = Some(parse_principals(arg, list)?);
            }
            Some(("readers", list)) => {
                if readers_seen {
                    return Err(duplicate(SHIFT_API, arg));
                }
                readers_seen = true;
                parsed.readers = match list {
                    "any" => Readers::Any,
                    _ => Readers::List(parse_principals(arg, list)?),
                };
            }
            _ => {
                return Err(DirectiveError::InvalidParameter {
                    directive: SHIFT_API,
                    param: arg.into(),
                    expected: "\"writers=USER,...\", \"readers=any|USER,...\" or \"connections=N\"",
                })
            }
        }
    }
    Ok(parsed)
}

/// Parses the arguments that follow `shift_check`.
pub fn parse_shift_check(args: &[&str]) -> Result<CheckArgs, DirectiveError> {
    let mut parsed = CheckArgs::default();
    let mut seen: Vec<&str> = Vec::new();
    for &arg in args {
        let (name, value) = arg.split_once('=').unwrap_or((arg, ""));
        if seen.contains(&name) {
            return Err(duplicate(SHIFT_CHECK, arg));
        }
        seen.push(name);
        let invalid = |expected: &'static str| DirectiveError::InvalidParameter {
            directive: SHIFT_CHECK,
            param: arg.into(),
            expected,
        };
        match (name, arg.contains('=')) {
            ("mandatory", false) => parsed.mandatory = true,
            ("type", true) => {
                parsed.kind = match value {
                    "http" => CheckKind::Http,
                    "tcp" => CheckKind::Tcp,
                    _ => return Err(invalid("\"type=http\" or \"type=tcp\"")),
                }
            }
            // Sent on the request line and in a header as they are: a space or a control
            // character would let the config write other headers or requests.
            ("uri", true) if value.starts_with('/') && is_header_safe(value, false) => {
                parsed.uri = value.into()
            }
            ("uri", true) => {
                return Err(invalid(
                    "a URI that starts with \"/\", without spaces or control characters",
                ))
            }
            ("host", true) if !value.is_empty() && !is_header_safe(value, true) => {
                return Err(invalid("a host name without control characters"))
            }
            ("interval", true) => {
                parsed.interval_ms =
                    parse_time(value).ok_or_else(|| invalid("a time such as \"5s\""))?
            }
            ("timeout", true) => {
                parsed.timeout_ms =
                    parse_time(value).ok_or_else(|| invalid("a time such as \"1s\""))?
            }
            ("fails", true) => {
                parsed.fails = parse_count(value).ok_or_else(|| invalid("a number from 1"))?
            }
            ("passes", true) => {
                parsed.passes = parse_count(value).ok_or_else(|| invalid("a number from 1"))?
            }
            ("status", true) => {
                parsed.status = parse_status_list(value).ok_or_else(|| {
                    invalid("codes or ranges from 100 to 599, such as \"200-399,404\"")
                })?
            }
            ("port", true) => {
                parsed.port = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|&port| port > 0)
                        .ok_or_else(|| invalid("a port from 1 to 65535"))?,
                )
            }
            ("host", true) if !value.is_empty() => parsed.host = Some(value.into()),
            ("body", true) if !value.is_empty() => parsed.body = Some(value.into()),
            ("host" | "body", true) => {
                return Err(DirectiveError::EmptyValue {
                    directive: SHIFT_CHECK,
                    param: arg.into(),
                })
            }
            _ => {
                return Err(invalid(
                    "one of type=, uri=, interval=, timeout=, fails=, passes=, status=, port=, \
                     host=, body=, mandatory",
                ))
            }
        }
    }
    if !seen.contains(&"timeout") {
        // The default timeout shrinks to fit a short interval.
        parsed.timeout_ms = parsed.timeout_ms.min(parsed.interval_ms);
    }
    if parsed.timeout_ms > parsed.interval_ms {
        return Err(DirectiveError::Conflict {
            directive: SHIFT_CHECK,
            detail: format!(
                "timeout ({}ms) must not be longer than interval ({}ms)",
                parsed.timeout_ms, parsed.interval_ms
            ),
        });
    }
    Ok(parsed)
}

/// Two `server` lines of one upstream that resolve to the same address: `(address, first line's
/// address text, second line's)`. A `shift` upstream keys its peers by address, so one address
/// must be one peer (a PATCH could otherwise change one of the two and leave the other).
/// `servers` holds each line's address text and the addresses it resolved to.
pub fn duplicate_address(servers: &[(String, Vec<String>)]) -> Option<(String, String, String)> {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for (line, addresses) in servers {
        for address in addresses {
            if let Some((_, first)) = seen.iter().find(|(known, _)| known == address) {
                return Some((address.clone(), first.to_string(), line.clone()));
            }
            seen.push((address, line));
        }
    }
    None
}

/// Whether `value` can go into a request line (no spaces) or a header value as it is.
fn is_header_safe(value: &str, spaces_allowed: bool) -> bool {
    value
        .chars()
        .all(|c| !c.is_control() && (spaces_allowed || c != ' '))
}

/// A parameter as an error message shows it: control characters escaped, so that the message
/// stays one line of the error log.
fn printable(param: &str) -> String {
    param.escape_default().to_string()
}

/// Smallest `shift_zone`: Nginx's slab allocator needs a few pages for itself.
pub const MIN_ZONE_BYTES: usize = 128 * 1024;

/// `shift_zone SIZE;` (http context): the shared zone's size, Nginx-style (`512k`, `64m`, or
/// bytes). Without it the size follows the configuration (`lifecycle::zone_size`).
pub fn parse_shift_zone(args: &[&str]) -> Result<usize, DirectiveError> {
    let invalid = |param: &str| DirectiveError::InvalidParameter {
        directive: "shift_zone",
        param: param.to_string(),
        expected: "a size of at least 128k, e.g. 64m",
    };
    let [value] = args else {
        return Err(DirectiveError::Conflict {
            directive: "shift_zone",
            detail: "it takes exactly one size, e.g. \"shift_zone 64m;\"".into(),
        });
    };
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let factor = match unit {
        "" => 1,
        "k" | "K" => 1024,
        "m" | "M" => 1024 * 1024,
        "g" | "G" => 1024 * 1024 * 1024,
        _ => return Err(invalid(value)),
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|number| number.checked_mul(factor))
        .filter(|&bytes| bytes >= MIN_ZONE_BYTES)
        .ok_or_else(|| invalid(value))
}

/// Nginx-style time in milliseconds (`shift_wire::parse_duration`); `None` when invalid or zero.
fn parse_time(value: &str) -> Option<u64> {
    shift_wire::parse_duration(value)
        .ok()
        .and_then(|time| u64::try_from(time.as_millis()).ok())
}

fn parse_count(value: &str) -> Option<u32> {
    value.parse().ok().filter(|&count| count >= 1)
}

fn parse_status_list(value: &str) -> Option<Vec<(u16, u16)>> {
    value
        .split(',')
        .map(|item| {
            let (low, high) = item.split_once('-').unwrap_or((item, item));
            let (low, high): (u16, u16) = (low.parse().ok()?, high.parse().ok()?);
            ((100..=599).contains(&low) && (low..=599).contains(&high)).then_some((low, high))
        })
        .collect()
}

fn parse_principals(arg: &str, list: &str) -> Result<Vec<Principal>, DirectiveError> {
    list.split(',')
        .map(|item| {
            if item.is_empty() {
                return Err(DirectiveError::EmptyValue {
                    directive: SHIFT_API,
                    param: arg.into(),
                });
            }
            Ok(match item.parse::<u32>() {
                Ok(uid) => Principal::Uid(uid),
                Err(_) => Principal::User(item.to_string()),
            })
        })
        .collect()
}

fn duplicate(directive: &'static str, arg: &str) -> DirectiveError {
    let name = arg.split_once('=').map_or(arg, |(name, _)| name);
    DirectiveError::DuplicateParameter {
        directive,
        param: name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_connection_cap_is_a_count() {
        assert_eq!(
            parse_shift_api(&[]).unwrap().connections,
            DEFAULT_API_CONNECTIONS
        );
        assert_eq!(parse_shift_api(&["connections=8"]).unwrap().connections, 8);
        for bad in ["connections=0", "connections=x", "connections=70000"] {
            assert!(parse_shift_api(&[bad]).is_err(), "{bad}");
        }
        assert!(parse_shift_api(&["connections=1", "connections=2"]).is_err());
    }

    #[test]
    fn one_address_from_two_lines_is_found() {
        let line = |text: &str, addresses: &[&str]| {
            (
                text.to_string(),
                addresses.iter().map(|a| a.to_string()).collect(),
            )
        };
        assert_eq!(
            duplicate_address(&[
                line("127.0.0.1:8000", &["127.0.0.1:8000"]),
                line("localhost:8000", &["[::1]:8000", "127.0.0.1:8000"]),
            ]),
            Some((
                "127.0.0.1:8000".into(),
                "127.0.0.1:8000".into(),
                "localhost:8000".into()
            ))
        );
        assert_eq!(
            duplicate_address(&[
                line("127.0.0.1:8000", &["127.0.0.1:8000"]),
                line("127.0.0.1:8001", &["127.0.0.1:8001"]),
            ]),
            None
        );
    }

    #[test]
    fn control_characters_and_spaces_cannot_reach_the_wire() {
        for bad in [
            "host=a\r\nX-Injected: 1",
            "host=a\nb",
            "uri=/health\r\nX-Injected: 1",
            "uri=/a b",
            "uri=/a\tb",
        ] {
            let err = parse_shift_check(&[bad]).unwrap_err().to_string();
            assert!(err.contains("control characters"), "{err}");
            assert!(
                !err.contains('\r') && !err.contains('\n'),
                "one log line: {err}"
            );
        }
        let good = parse_shift_check(&["host=api.example.com", "uri=/health?x=1"]).unwrap();
        assert_eq!(good.host.as_deref(), Some("api.example.com"));
    }

    #[test]
    fn zone_sizes_in_nginx_units() {
        assert_eq!(parse_shift_zone(&["64m"]), Ok(64 * 1024 * 1024));
        assert_eq!(parse_shift_zone(&["512k"]), Ok(512 * 1024));
        assert_eq!(parse_shift_zone(&["1G"]), Ok(1024 * 1024 * 1024));
        for bad in ["", "64x", "-1m", "100k", "99999999999999999999g"] {
            let err = parse_shift_zone(&[bad]).unwrap_err().to_string();
            assert!(
                err.contains("shift_zone") && err.contains("at least 128k"),
                "{err}"
            );
        }
        assert!(parse_shift_zone(&["1m", "2m"]).is_err());
        assert!(parse_shift_zone(&[]).is_err());
    }

    #[test]
    fn shift_without_arguments_is_plain() {
        assert_eq!(parse_shift(&[]).unwrap(), ShiftArgs::default());
    }

    #[test]
    fn shift_takes_a_state_file() {
        let parsed = parse_shift(&["state=/var/lib/nginx-shift/app.json"]).unwrap();
        assert_eq!(
            parsed.state_path.as_deref(),
            Some("/var/lib/nginx-shift/app.json")
        );
    }

    #[test]
    fn shift_rejects_a_misspelt_parameter_and_names_the_directive() {
        let err = parse_shift(&["stat=/tmp/x"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid parameter \"stat=/tmp/x\" in \"shift\" directive, expected \"state=PATH\""
        );
    }

    #[test]
    fn shift_rejects_an_empty_or_repeated_state() {
        assert!(matches!(
            parse_shift(&["state="]),
            Err(DirectiveError::EmptyValue { .. })
        ));
        let err = parse_shift(&["state=/a", "state=/b"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "duplicate parameter \"state\" in \"shift\" directive"
        );
    }

    #[test]
    fn shift_check_defaults() {
        assert_eq!(parse_shift_check(&[]).unwrap(), CheckArgs::default());
    }

    #[test]
    fn shift_check_parses_every_parameter() {
        let parsed = parse_shift_check(&[
            "type=http",
            "uri=/api/users/",
            "interval=2s",
            "timeout=500ms",
            "fails=3",
            "passes=2",
            "status=200-299,404",
            "port=9000",
            "host=app.internal",
            "body=ok",
            "mandatory",
        ])
        .unwrap();
        assert_eq!(
            parsed,
            CheckArgs {
                kind: CheckKind::Http,
                uri: "/api/users/".into(),
                interval_ms: 2000,
                timeout_ms: 500,
                fails: 3,
                passes: 2,
                status: vec![(200, 299), (404, 404)],
                port: Some(9000),
                host: Some("app.internal".into()),
                body: Some("ok".into()),
                mandatory: true,
            }
        );
        assert_eq!(
            parse_shift_check(&["type=tcp", "interval=1m"])
                .unwrap()
                .interval_ms,
            60_000
        );
        assert_eq!(
            parse_shift_check(&["interval=200ms"]).unwrap().timeout_ms,
            200
        );
    }

    #[test]
    fn shift_check_rejects_bad_values() {
        for bad in [
            "type=udp",
            "uri=health",
            "interval=5x",
            "interval=0",
            "timeout=-1",
            "fails=0",
            "passes=x",
            "status=600",
            "status=300-200",
            "port=0",
            "port=70000",
            "host=",
            "tries=3",
            "mandatory=yes",
        ] {
            let err = parse_shift_check(&[bad]).expect_err(bad);
            assert!(err.to_string().contains("\"shift_check\""), "{bad}: {err}");
        }
        let err = parse_shift_check(&["interval=1s", "timeout=2s"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid \"shift_check\" directive: timeout (2000ms) must not be longer than interval (1000ms)"
        );
        assert!(matches!(
            parse_shift_check(&["fails=2", "fails=3"]),
            Err(DirectiveError::DuplicateParameter { .. })
        ));
    }

    #[test]
    fn shift_api_defaults_to_writers_reading() {
        assert_eq!(parse_shift_api(&[]).unwrap(), ShiftApiArgs::default());
    }

    #[test]
    fn shift_api_parses_uids_names_and_any() {
        let parsed = parse_shift_api(&["writers=0,deploy", "readers=any"]).unwrap();
        assert_eq!(
            parsed.writers,
            Some(vec![Principal::Uid(0), Principal::User("deploy".into())])
        );
        assert_eq!(parsed.readers, Readers::Any);
        let parsed = parse_shift_api(&["readers=1000"]).unwrap();
        assert_eq!(parsed.readers, Readers::List(vec![Principal::Uid(1000)]));
    }

    #[test]
    fn shift_api_rejects_unknown_and_empty_items() {
        let err = parse_shift_api(&["allow=0"]).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("invalid parameter \"allow=0\" in \"shift_api\""));
        assert!(matches!(
            parse_shift_api(&["writers=0,,1"]),
            Err(DirectiveError::EmptyValue { .. })
        ));
        assert!(matches!(
            parse_shift_api(&["readers=any", "readers=0"]),
            Err(DirectiveError::DuplicateParameter { .. })
        ));
    }
}
