//! `shift_check …;` in an upstream: the active health check's parameters.

use super::{duplicate, is_header_safe, parse_count, parse_time, DirectiveError};

const SHIFT_CHECK: &str = "shift_check";

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
