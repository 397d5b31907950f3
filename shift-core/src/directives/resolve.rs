//! `shift_resolve NAME:PORT [weight=N] [down];` in an upstream: a name whose addresses become
//! the upstream's peers, resolved again at run time. On Nginx 1.27.3 and later the same comes
//! from `server NAME:PORT resolve;`; both end up as a [`ResolvedName`].

use super::{duplicate, DirectiveError};

const SHIFT_RESOLVE: &str = "shift_resolve";

/// A name whose addresses are the upstream's peers, each with the line's weight and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedName {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub down: bool,
}

impl ResolvedName {
    /// `NAME:PORT`, as the status and the log name it.
    pub fn name_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Parses the arguments that follow `shift_resolve`.
pub fn parse_shift_resolve(args: &[&str]) -> Result<ResolvedName, DirectiveError> {
    let invalid = |param: &str, expected: &'static str| DirectiveError::InvalidParameter {
        directive: SHIFT_RESOLVE,
        param: param.to_string(),
        expected,
    };
    let Some((&address, params)) = args.split_first() else {
        return Err(DirectiveError::Conflict {
            directive: SHIFT_RESOLVE,
            detail: "it needs a name and a port, e.g. \"shift_resolve backend:8000;\"".into(),
        });
    };
    let (host, port) = address
        .rsplit_once(':')
        .filter(|(host, _)| is_host_name(host))
        .ok_or_else(|| invalid(address, "NAME:PORT, e.g. backend:8000"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&port| port > 0)
        .ok_or_else(|| invalid(address, "a port from 1 to 65535"))?;
    let mut name = ResolvedName {
        host: host.to_ascii_lowercase(),
        port,
        weight: 1,
        down: false,
    };
    let (mut weight_seen, mut down_seen) = (false, false);
    for &param in params {
        match param.split_once('=') {
            Some(("weight", value)) => {
                if weight_seen {
                    return Err(duplicate(SHIFT_RESOLVE, param));
                }
                weight_seen = true;
                name.weight = value
                    .parse()
                    .ok()
                    .filter(|&weight| (1..=shift_wire::MAX_WEIGHT).contains(&weight))
                    .ok_or_else(|| invalid(param, "a weight from 1 to 1000"))?;
            }
            None if param == "down" => {
                if down_seen {
                    return Err(duplicate(SHIFT_RESOLVE, param));
                }
                down_seen = true;
                name.down = true;
            }
            _ => return Err(invalid(param, "\"weight=N\" or \"down\"")),
        }
    }
    Ok(name)
}

/// A DNS name (letters, digits, `-`, `_`, dots); an address is written as a `server` line.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && host.chars().any(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_its_weight_and_state() {
        assert_eq!(
            parse_shift_resolve(&["Backend.internal:8000", "weight=5", "down"]).unwrap(),
            ResolvedName {
                host: "backend.internal".into(),
                port: 8000,
                weight: 5,
                down: true,
            }
        );
        let plain = parse_shift_resolve(&["backend:80"]).unwrap();
        assert_eq!(
            (plain.weight, plain.down, plain.name_port()),
            (1, false, "backend:80".into())
        );
    }

    #[test]
    fn addresses_bad_ports_and_unknown_parameters_are_refused() {
        for (args, says) in [
            (vec![], "needs a name and a port"),
            (vec!["backend"], "NAME:PORT"),
            (vec!["10.0.0.7:80"], "NAME:PORT"),
            (vec!["backend:0"], "a port from 1 to 65535"),
            (vec!["backend:http"], "a port from 1 to 65535"),
            (vec!["backend:80", "weight=0"], "a weight from 1 to 1000"),
            (vec!["backend:80", "backup"], "\"weight=N\" or \"down\""),
            (vec!["backend:80", "down", "down"], "duplicate parameter"),
        ] {
            let err = parse_shift_resolve(&args).unwrap_err().to_string();
            assert!(err.contains(says), "{args:?}: {err}");
            if !args.is_empty() {
                assert!(err.contains("shift_resolve"), "{err}");
            }
        }
    }
}
