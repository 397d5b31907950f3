//! `GET upstreams/NAME/history[?since=GEN]`: the changes the upstream keeps (`shift_history`),
//! oldest first, those of a generation above `since` only when it is given. Read under the
//! table's write lock, as they are written.

use shift_wire::UpstreamHistory;

use super::{ok, Endpoint, Failure, Respond, Writer};

pub(super) fn history(endpoint: &Endpoint, args: &str, writer: &Writer) -> Respond {
    let since = since_of(args)?;
    let table = endpoint.table;
    let entries = match endpoint.history {
        Some(ring) => {
            let guard = table
                .lock(writer.pid, writer.is_alive)
                .map_err(|err| Failure::new(503, "busy", err.to_string()))?;
            let changes = ring.since(since);
            drop(guard);
            changes.iter().map(|change| change.to_wire()).collect()
        }
        None => Vec::new(),
    };
    let answer = UpstreamHistory {
        name: table.name().to_string(),
        capacity: endpoint.history.map_or(0, |ring| ring.capacity() as u64),
        entries,
    };
    Ok((ok(&answer), None))
}

/// `since=GEN`, 0 without it; anything else is refused.
fn since_of(args: &str) -> Result<u64, Failure> {
    let mut since = 0;
    for pair in args.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("since", value)) => {
                since = value.parse().map_err(|_| {
                    Failure::new(
                        400,
                        "bad_request",
                        format!(
                            "since \"{}\" is not a generation number",
                            value.escape_default()
                        ),
                    )
                })?;
            }
            _ => {
                return Err(Failure::new(
                    400,
                    "bad_request",
                    format!(
                        "unknown query \"{}\"; history takes since=GEN (the changes after that \
                         generation)",
                        pair.escape_default()
                    ),
                ))
            }
        }
    }
    Ok(since)
}
