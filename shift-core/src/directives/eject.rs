//! `shift_eject [consecutive=N] [base=TIME] [max=TIME] [max_percent=N] [panic=N%]
//! [status=LIST];` in an upstream: see `crate::eject`.

use super::{duplicate, parse_count, parse_time, DirectiveError};
use crate::eject::EjectArgs;

const SHIFT_EJECT: &str = "shift_eject";

/// The longest ejection: a day, as for slow start.
const MAX_EJECTION_MS: u64 = 24 * 3600 * 1000;

/// Parses the arguments that follow `shift_eject`; each has a default.
pub fn parse_shift_eject(args: &[&str]) -> Result<EjectArgs, DirectiveError> {
    let invalid = |param: &str, expected: &'static str| DirectiveError::InvalidParameter {
        directive: SHIFT_EJECT,
        param: param.to_string(),
        expected,
    };
    let mut eject = EjectArgs::default();
    let mut seen: Vec<&str> = Vec::new();
    for &param in args {
        let Some((name, value)) = param.split_once('=') else {
            return Err(invalid(param, EXPECTED));
        };
        if seen.contains(&name) {
            return Err(duplicate(SHIFT_EJECT, param));
        }
        seen.push(name);
        let time = || parse_time(value).filter(|&ms| ms <= MAX_EJECTION_MS);
        match name {
            "consecutive" => {
                eject.consecutive = parse_count(value)
                    .ok_or_else(|| invalid(param, "consecutive=N with N at least 1, e.g. 5"))?;
            }
            "base" => {
                eject.base_ms = time()
                    .ok_or_else(|| invalid(param, "base=TIME above 0 and up to 24h, e.g. 30s"))?;
            }
            "max" => {
                eject.max_ms = time()
                    .ok_or_else(|| invalid(param, "max=TIME above 0 and up to 24h, e.g. 300s"))?;
            }
            "max_percent" => {
                // 0 would still let one peer out (at least one always may): refused.
                eject.max_percent = parse_percent(value.strip_suffix('%').unwrap_or(value))
                    .filter(|&percent| percent > 0)
                    .ok_or_else(|| invalid(param, "max_percent=N from 1 to 100, e.g. 10"))?;
            }
            "panic" => {
                eject.panic_percent = value
                    .strip_suffix('%')
                    .and_then(parse_percent)
                    .ok_or_else(|| invalid(param, "panic=N% from 0% to 100%, e.g. 50%"))?;
            }
            "status" => {
                eject.statuses = parse_statuses(value).ok_or_else(|| {
                    invalid(
                        param,
                        "status=LIST of statuses and ranges from 100 to 599, e.g. \
                         status=500-599 or status=500,502-504",
                    )
                })?;
            }
            _ => return Err(invalid(param, EXPECTED)),
        }
    }
    if eject.base_ms > eject.max_ms {
        return Err(DirectiveError::Conflict {
            directive: SHIFT_EJECT,
            detail: format!(
                "base ({} ms) is longer than max ({} ms): an ejection lasts base × its number, \
                 at most max",
                eject.base_ms, eject.max_ms
            ),
        });
    }
    Ok(eject)
}

const EXPECTED: &str = "\"consecutive=N\", \"base=TIME\", \"max=TIME\", \"max_percent=N\", \
                        \"panic=N%\" or \"status=LIST\"";

fn parse_percent(value: &str) -> Option<u32> {
    value.parse().ok().filter(|&percent| percent <= 100)
}

/// "500-599" or "500,502-504": inclusive ranges of statuses from 100 to 599.
fn parse_statuses(value: &str) -> Option<Vec<(u16, u16)>> {
    let status = |text: &str| text.parse::<u16>().ok().filter(|s| (100..=599).contains(s));
    value
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (status(low)?, status(high)?);
                (low <= high).then_some((low, high))
            }
            None => status(part).map(|one| (one, one)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_argument_takes_every_default() {
        assert_eq!(parse_shift_eject(&[]), Ok(EjectArgs::default()));
        assert_eq!(
            parse_shift_eject(&[
                "consecutive=3",
                "base=2s",
                "max=1m",
                "max_percent=50",
                "panic=25%",
                "status=500,502-504",
            ]),
            Ok(EjectArgs {
                consecutive: 3,
                base_ms: 2_000,
                max_ms: 60_000,
                max_percent: 50,
                panic_percent: 25,
                statuses: vec![(500, 500), (502, 504)],
            })
        );
    }

    #[test]
    fn bad_arguments_are_refused_with_what_was_expected() {
        let refused = |args: &[&str]| parse_shift_eject(args).unwrap_err().to_string();
        assert!(refused(&["consecutive=0"]).contains("consecutive=N"));
        assert!(refused(&["base=0s"]).contains("base=TIME"));
        assert!(refused(&["max=25h"]).contains("up to 24h"));
        assert!(refused(&["max_percent=101"]).contains("max_percent=N"));
        assert!(refused(&["max_percent=0"]).contains("from 1 to 100"));
        assert!(refused(&["panic=50"]).contains("panic=N%"));
        assert!(refused(&["status=600"]).contains("status=LIST"));
        assert!(refused(&["status=504-500"]).contains("status=LIST"));
        assert!(refused(&["status="]).contains("status=LIST"));
        assert!(refused(&["base=6m"]).contains("longer than max"));
        assert!(refused(&["base=1s", "base=2s"]).contains("duplicate parameter \"base\""));
        assert!(refused(&["eject"]).contains("invalid parameter \"eject\""));
        assert!(refused(&["often=3"]).contains("invalid parameter \"often=3\""));
    }
}
