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
/// `shift_api [writers=USER|UID,...] [readers=any|USER|UID,...];`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShiftApiArgs {
    /// `None` means the default: root and the user the master process runs as.
    pub writers: Option<Vec<Principal>>,
    pub readers: Readers,
}

impl Default for ShiftApiArgs {
    fn default() -> Self {
        ShiftApiArgs { writers: None, readers: Readers::Writers }
    }
}

/// A directive argument Nginx should reject; `Display` is the message `nginx -t` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectiveError {
    InvalidParameter { directive: &'static str, param: String, expected: &'static str },
    DuplicateParameter { directive: &'static str, param: String },
    EmptyValue { directive: &'static str, param: String },
}

impl fmt::Display for DirectiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectiveError::InvalidParameter { directive, param, expected } => write!(
                f,
                "invalid parameter \"{param}\" in \"{directive}\" directive, expected {expected}"
            ),
            DirectiveError::DuplicateParameter { directive, param } => {
                write!(f, "duplicate parameter \"{param}\" in \"{directive}\" directive")
            }
            DirectiveError::EmptyValue { directive, param } => {
                write!(f, "empty value in \"{param}\" of \"{directive}\" directive")
            }
        }
    }
}

impl std::error::Error for DirectiveError {}

const SHIFT: &str = "shift";
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
                    return Err(DirectiveError::EmptyValue { directive: SHIFT, param: arg.into() });
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
    let mut readers_seen = false;
    for &arg in args {
        match arg.split_once('=') {
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
                    expected: "\"writers=USER,...\" or \"readers=any|USER,...\"",
                })
            }
        }
    }
    Ok(parsed)
}

fn parse_principals(arg: &str, list: &str) -> Result<Vec<Principal>, DirectiveError> {
    list.split(',')
        .map(|item| {
            if item.is_empty() {
                return Err(DirectiveError::EmptyValue { directive: SHIFT_API, param: arg.into() });
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
    DirectiveError::DuplicateParameter { directive, param: name.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_without_arguments_is_plain() {
        assert_eq!(parse_shift(&[]).unwrap(), ShiftArgs::default());
    }

    #[test]
    fn shift_takes_a_state_file() {
        let parsed = parse_shift(&["state=/var/lib/nginx-shift/app.json"]).unwrap();
        assert_eq!(parsed.state_path.as_deref(), Some("/var/lib/nginx-shift/app.json"));
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
        assert!(matches!(parse_shift(&["state="]), Err(DirectiveError::EmptyValue { .. })));
        let err = parse_shift(&["state=/a", "state=/b"]).unwrap_err();
        assert_eq!(err.to_string(), "duplicate parameter \"state\" in \"shift\" directive");
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
        assert!(err.to_string().starts_with("invalid parameter \"allow=0\" in \"shift_api\""));
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
