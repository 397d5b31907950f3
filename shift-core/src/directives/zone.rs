//! `shift_zone SIZE;` in `http`: the shared zone's size.

use super::DirectiveError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
