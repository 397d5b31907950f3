//! `shift_api …;` in a location: who may read and write the admin API, how many connections
//! it may hold, and whether threads of its own serve it.

use super::{duplicate, DirectiveError};

const SHIFT_API: &str = "shift_api";

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
/// `shift_api [writers=USER|UID,...] [readers=any|USER|UID,...] [connections=N] [threads=N];`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftApiArgs {
    /// `None` means the default: root and the user the master process runs as.
    pub writers: Option<Vec<Principal>>,
    pub readers: Readers,
    /// The most connections each worker keeps open on the API server's listeners; more are
    /// closed at once, so that clients of the API cannot take the workers' connections from
    /// the traffic.
    pub connections: u32,
    /// Threads of each worker that serve the API server's Unix-socket listeners off the event
    /// loop, each one connection at a time; 0: the event loop serves them, as any listener.
    pub threads: u32,
}

/// The most `shift_api threads=`.
pub const MAX_API_THREADS: u32 = 16;

/// Default of `shift_api connections=`: far more than operators and controllers open, far
/// fewer than `worker_connections`.
pub const DEFAULT_API_CONNECTIONS: u32 = 32;

impl Default for ShiftApiArgs {
    fn default() -> Self {
        ShiftApiArgs {
            writers: None,
            readers: Readers::Writers,
            connections: DEFAULT_API_CONNECTIONS,
            threads: 0,
        }
    }
}

/// Parses the arguments that follow `shift_api`.
pub fn parse_shift_api(args: &[&str]) -> Result<ShiftApiArgs, DirectiveError> {
    let mut parsed = ShiftApiArgs::default();
    let (mut readers_seen, mut connections_seen, mut threads_seen) = (false, false, false);
    for &arg in args {
        match arg.split_once('=') {
            Some(("connections", value)) => {
                parsed.connections = count_once(
                    arg,
                    value,
                    1..=65535,
                    &mut connections_seen,
                    "a number of connections from 1 to 65535",
                )?;
            }
            Some(("threads", value)) => {
                parsed.threads = count_once(
                    arg,
                    value,
                    0..=MAX_API_THREADS,
                    &mut threads_seen,
                    "a number of threads from 0 to 16",
                )?;
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
                    expected: "\"writers=USER,...\", \"readers=any|USER,...\", \"connections=N\" or \"threads=N\"",
                })
            }
        }
    }
    if connections_seen && parsed.threads > 0 {
        // Each thread serves one connection at a time: the threads are the cap.
        return Err(DirectiveError::Conflict {
            directive: SHIFT_API,
            detail: "\"connections=\" caps the event loop's API connections; with \"threads=N\" each worker serves N at a time, leave \"connections=\" out".into(),
        });
    }
    Ok(parsed)
}

/// The count `value` of the parameter `arg`, within `range`, given once (`seen` says whether it
/// came before, and is set).
fn count_once(
    arg: &str,
    value: &str,
    range: std::ops::RangeInclusive<u32>,
    seen: &mut bool,
    expected: &'static str,
) -> Result<u32, DirectiveError> {
    if std::mem::replace(seen, true) {
        return Err(duplicate(SHIFT_API, arg));
    }
    value
        .parse()
        .ok()
        .filter(|count| range.contains(count))
        .ok_or_else(|| DirectiveError::InvalidParameter {
            directive: SHIFT_API,
            param: arg.into(),
            expected,
        })
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
    fn api_threads_are_a_small_count_and_replace_the_connection_cap() {
        assert_eq!(parse_shift_api(&[]).unwrap().threads, 0);
        assert_eq!(parse_shift_api(&["threads=2"]).unwrap().threads, 2);
        for bad in ["threads=17", "threads=x", "threads=-1"] {
            assert!(parse_shift_api(&[bad]).is_err(), "{bad}");
        }
        assert!(parse_shift_api(&["threads=1", "threads=2"]).is_err());
        let err = parse_shift_api(&["threads=2", "connections=4"]).unwrap_err();
        assert!(
            err.to_string().contains("leave \"connections=\" out"),
            "{err}"
        );
        assert!(parse_shift_api(&["threads=0", "connections=4"]).is_ok());
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
