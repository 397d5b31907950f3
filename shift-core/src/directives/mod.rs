//! Parsing of the module's directive arguments, kept free of Nginx types so it can be tested
//! without Nginx. The FFI glue hands in the arguments as strings and logs the error it gets back
//! with `ngx_conf_log_error`, which appends the file and line the way `nginx -t` shows them.

mod api;
mod check;
mod eject;
mod history;
mod resolve;
mod shift;
mod slow_start;
mod steering;
mod zone;

use std::fmt;

pub use api::{parse_shift_api, Principal, Readers, ShiftApiArgs, DEFAULT_API_CONNECTIONS};
pub use check::{parse_shift_check, CheckArgs, CheckKind};
pub use eject::parse_shift_eject;
pub use history::{parse_shift_history, DEFAULT_HISTORY, MAX_HISTORY};
pub use resolve::{parse_shift_resolve, ResolvedName};
pub use shift::{duplicate_address, parse_shift, ShiftArgs};
pub use slow_start::parse_shift_slow_start;
pub use steering::{
    label_for, parse_shift_label, parse_shift_pin, parse_shift_sticky, unknown_label_server,
    LabelLine,
};
pub use zone::{parse_shift_zone, MIN_ZONE_BYTES};

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

/// Whether `value` can go into a request line (no spaces) or a header value as it is.
pub(crate) fn is_header_safe(value: &str, spaces_allowed: bool) -> bool {
    value
        .chars()
        .all(|c| !c.is_control() && (spaces_allowed || c != ' '))
}

/// A parameter as an error message shows it: control characters escaped, so that the message
/// stays one line of the error log.
fn printable(param: &str) -> String {
    param.escape_default().to_string()
}

/// Nginx-style time in milliseconds (`shift_wire::parse_duration`); `None` when invalid or zero.
pub(crate) fn parse_time(value: &str) -> Option<u64> {
    shift_wire::parse_duration(value)
        .ok()
        .and_then(|time| u64::try_from(time.as_millis()).ok())
}

pub(crate) fn parse_count(value: &str) -> Option<u32> {
    value.parse().ok().filter(|&count| count >= 1)
}

pub(crate) fn duplicate(directive: &'static str, arg: &str) -> DirectiveError {
    let name = arg.split_once('=').map_or(arg, |(name, _)| name);
    DirectiveError::DuplicateParameter {
        directive,
        param: name.to_string(),
    }
}
