//! The query string of a change: `full=1` asks for the whole upstream in the answer, and a
//! DELETE (which has no body) may carry `expect_generation=N`, `close_after=DURATION` and
//! `close_spread=DURATION`. Anything else is refused, so that a misspelt option is not silently
//! ignored.

use super::Failure;

/// What a change's query string asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Query {
    /// Answer with the whole upstream, not only what the change touched.
    pub(super) full: bool,
    pub(super) expect_generation: Option<u64>,
    /// A DELETE's deadline for the requests the peer still carries, as written.
    pub(super) close_after: Option<String>,
    pub(super) close_spread: Option<String>,
}

impl Query {
    /// Parses `args` for `method`; `expect_generation` and the close options are taken only
    /// where `takes_generation` (a DELETE: the others carry them in their body).
    pub(super) fn parse(
        args: &str,
        method: &str,
        takes_generation: bool,
    ) -> Result<Query, Failure> {
        let mut query = Query::default();
        for pair in args.split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=').unwrap_or((pair, "")) {
                ("full", "1" | "true" | "") => query.full = true,
                ("full", "0" | "false") => query.full = false,
                ("expect_generation", value) if takes_generation => {
                    query.expect_generation = Some(value.parse().map_err(|_| {
                        Failure::new(
                            400,
                            "bad_request",
                            format!("expect_generation \"{value}\" is not a generation number"),
                        )
                    })?);
                }
                ("close_after", value) if takes_generation => {
                    query.close_after = Some(value.to_string());
                }
                ("close_spread", value) if takes_generation => {
                    query.close_spread = Some(value.to_string());
                }
                _ => {
                    let takes = if takes_generation {
                        "full=1 (answer with the whole upstream), expect_generation=N, \
                         close_after=DURATION and close_spread=DURATION"
                    } else {
                        "full=1 (answer with the whole upstream)"
                    };
                    return Err(Failure::new(
                        400,
                        "bad_request",
                        format!(
                            "unknown query \"{}\"; {method} takes {takes}",
                            pair.escape_default()
                        ),
                    ));
                }
            }
        }
        Ok(query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_generations_are_read_and_anything_else_refused() {
        assert_eq!(Query::parse("", "PATCH", false).unwrap(), Query::default());
        assert!(Query::parse("full=1", "PATCH", false).unwrap().full);
        assert!(!Query::parse("full=1&full=0", "PATCH", false).unwrap().full);
        let delete = Query::parse("expect_generation=7&full", "DELETE", true).unwrap();
        assert_eq!((delete.full, delete.expect_generation), (true, Some(7)));
        let closing = Query::parse("close_after=30s&close_spread=10s", "DELETE", true).unwrap();
        assert_eq!(closing.close_after.as_deref(), Some("30s"));
        assert_eq!(closing.close_spread.as_deref(), Some("10s"));
        for (args, takes_generation) in [
            ("expect_generation=7", false),
            ("close_after=30s", false),
            ("expect_generation=x", true),
            ("fulll=1", false),
            ("full=2", true),
        ] {
            let failure = Query::parse(args, "PATCH", takes_generation).unwrap_err();
            assert_eq!(failure.status, 400, "{args}");
        }
    }
}
