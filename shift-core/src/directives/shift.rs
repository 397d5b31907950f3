//! `shift [state=PATH];` in an upstream, and the one-address-one-line rule of its servers.

use super::{duplicate, DirectiveError};

const SHIFT: &str = "shift";

/// Arguments of `shift` (upstream context): `shift [state=PATH];`
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShiftArgs {
    /// File the runtime weights are saved to on every change and restored from on start.
    pub state_path: Option<String>,
}

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
