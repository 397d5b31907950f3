//! `shift_slow_start DURATION [min=PERCENT] [aggression=NUMBER];` in an upstream: see
//! `crate::slow_start`.

use super::{duplicate, parse_time, DirectiveError};
use crate::slow_start::{SlowStart, MAX_WINDOW_MS};

const SHIFT_SLOW_START: &str = "shift_slow_start";

/// Parses the arguments that follow `shift_slow_start`.
pub fn parse_shift_slow_start(args: &[&str]) -> Result<SlowStart, DirectiveError> {
    let invalid = |param: &str, expected: &'static str| DirectiveError::InvalidParameter {
        directive: SHIFT_SLOW_START,
        param: param.to_string(),
        expected,
    };
    let Some((&window, params)) = args.split_first() else {
        return Err(DirectiveError::Conflict {
            directive: SHIFT_SLOW_START,
            detail: "it needs a duration, e.g. \"shift_slow_start 30s;\"".into(),
        });
    };
    let window_ms = parse_time(window)
        .filter(|&ms| ms <= MAX_WINDOW_MS)
        .ok_or_else(|| invalid(window, "a duration above 0 and up to 24h, e.g. 30s"))?;
    let mut slow_start = SlowStart {
        window_ms: window_ms as u32,
        min_permille: 100,
        aggression_centi: 100,
    };
    let (mut min_seen, mut aggression_seen) = (false, false);
    for &param in params {
        match param.split_once('=') {
            Some(("min", value)) => {
                if std::mem::replace(&mut min_seen, true) {
                    return Err(duplicate(SHIFT_SLOW_START, param));
                }
                slow_start.min_permille = parse_percent(value)
                    .ok_or_else(|| invalid(param, "min=PERCENT from 0% to 100%, e.g. min=10%"))?;
            }
            Some(("aggression", value)) => {
                if std::mem::replace(&mut aggression_seen, true) {
                    return Err(duplicate(SHIFT_SLOW_START, param));
                }
                slow_start.aggression_centi = parse_aggression(value).ok_or_else(|| {
                    invalid(
                        param,
                        "aggression=NUMBER from 0.1 to 10, e.g. aggression=1.0",
                    )
                })?;
            }
            _ => {
                return Err(invalid(
                    param,
                    "a duration, then \"min=PERCENT\" or \"aggression=NUMBER\"",
                ))
            }
        }
    }
    Ok(slow_start)
}

/// "10%" or "12.5%" in thousandths.
fn parse_percent(value: &str) -> Option<u16> {
    let number: f64 = value.strip_suffix('%')?.parse().ok()?;
    (0.0..=100.0)
        .contains(&number)
        .then(|| (number * 10.0).round() as u16)
}

/// "1.0" or "2" in hundredths, from 0.1 to 10.
fn parse_aggression(value: &str) -> Option<u16> {
    let number: f64 = value.parse().ok()?;
    (0.1..=10.0)
        .contains(&number)
        .then(|| (number * 100.0).round() as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_alone_ramps_linearly_from_ten_percent() {
        assert_eq!(
            parse_shift_slow_start(&["30s"]),
            Ok(SlowStart {
                window_ms: 30_000,
                min_permille: 100,
                aggression_centi: 100
            })
        );
        assert_eq!(
            parse_shift_slow_start(&["1m", "min=25%", "aggression=2.5"]),
            Ok(SlowStart {
                window_ms: 60_000,
                min_permille: 250,
                aggression_centi: 250
            })
        );
    }

    #[test]
    fn bad_arguments_are_refused_with_what_was_expected() {
        let refused = |args: &[&str]| parse_shift_slow_start(args).unwrap_err().to_string();
        assert!(refused(&[]).contains("needs a duration"));
        assert!(refused(&["0s"]).contains("invalid parameter \"0s\""));
        assert!(refused(&["25h"]).contains("up to 24h"));
        assert!(refused(&["10s", "min=150%"]).contains("min=PERCENT"));
        assert!(refused(&["10s", "min=10"]).contains("min=PERCENT"));
        assert!(refused(&["10s", "aggression=0"]).contains("aggression=NUMBER"));
        assert!(refused(&["10s", "min=5%", "min=6%"]).contains("duplicate parameter \"min\""));
        assert!(refused(&["10s", "slow"]).contains("invalid parameter \"slow\""));
    }
}
