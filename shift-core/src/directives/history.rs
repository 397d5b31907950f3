//! `shift_history N;` in an upstream: how many changes its history keeps (`crate::history`).

use super::DirectiveError;

const SHIFT_HISTORY: &str = "shift_history";

/// Without the directive.
pub const DEFAULT_HISTORY: usize = 256;
/// The most an upstream keeps: 16,384 changes of 256 bytes, 4 MiB of the zone.
pub const MAX_HISTORY: usize = 16_384;

/// Parses the argument of `shift_history`: a count from 0 (none kept) to `MAX_HISTORY`.
pub fn parse_shift_history(args: &[&str]) -> Result<usize, DirectiveError> {
    let &[count] = args else {
        return Err(DirectiveError::Conflict {
            directive: SHIFT_HISTORY,
            detail: "it takes one number, the changes to keep, e.g. \"shift_history 256;\"".into(),
        });
    };
    count
        .parse()
        .ok()
        .filter(|&count| count <= MAX_HISTORY)
        .ok_or_else(|| DirectiveError::InvalidParameter {
            directive: SHIFT_HISTORY,
            param: count.to_string(),
            expected: "a number of changes from 0 (none kept) to 16384",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_zero_to_the_most_are_taken() {
        assert_eq!(parse_shift_history(&["256"]), Ok(256));
        assert_eq!(parse_shift_history(&["0"]), Ok(0));
        assert_eq!(parse_shift_history(&["16384"]), Ok(MAX_HISTORY));
        for args in [&["16385"][..], &["-1"], &["many"], &[], &["1", "2"]] {
            let err = parse_shift_history(args).unwrap_err().to_string();
            assert!(err.contains("shift_history"), "{args:?}: {err}");
        }
    }
}
