//! `history UPSTREAM`: who changed what in the upstream, from each Nginx's record of its latest
//! changes (`shift_history`), oldest first.

use shift_wire::{HistoryEntry, UpstreamHistory};

use super::Ctx;
use crate::exit::Failure;

/// Prints the history of `upstream` on every Nginx (with `--json`, as the API gives it).
pub async fn history(ctx: &Ctx, upstream: &str, since: u64) -> Result<(), Failure> {
    let clients = ctx.fleet.clients()?;
    let mut histories = Vec::with_capacity(clients.len());
    for client in clients {
        histories.push(client.history(upstream, since).await?);
    }
    if ctx.json {
        let sources = ctx.fleet.sources(histories.len());
        ctx.print_json_by_source("history", &sources, &histories);
        return Ok(());
    }
    for (client, history) in clients.iter().zip(&histories) {
        if clients.len() > 1 {
            println!("# socket {}", client.socket().display());
        }
        print!("{}", render(history));
    }
    Ok(())
}

/// The history as a table, one change a line.
fn render(history: &UpstreamHistory) -> String {
    if history.capacity == 0 {
        return format!(
            "upstream {} keeps no history (shift_history 0)\n",
            history.name
        );
    }
    let mut out = format!(
        "upstream {} (the last {} changes kept)\n{:>6}  {:<23}  {:<22}  {:<24}  {:<8}  CHANGE\n",
        history.name, history.capacity, "GEN", "TIME (UTC)", "BY", "PEER", "FIELD"
    );
    for entry in &history.entries {
        out += &format!(
            "{:>6}  {:<23}  {:<22}  {:<24}  {:<8}  {}\n",
            entry.generation,
            utc(entry.at_ms),
            actor(entry),
            entry.peer,
            entry.field,
            change(entry)
        );
    }
    if history.entries.is_empty() {
        out += "(no changes recorded)\n";
    }
    out
}

/// Who, with the API caller's uid and pid.
fn actor(entry: &HistoryEntry) -> String {
    match (entry.uid, entry.pid) {
        (Some(uid), Some(pid)) => format!("{} uid {uid} pid {pid}", entry.actor),
        (Some(uid), None) => format!("{} uid {uid}", entry.actor),
        _ => entry.actor.clone(),
    }
}

fn change(entry: &HistoryEntry) -> String {
    let shown = |value: &str| {
        if value.is_empty() {
            "-".to_string()
        } else {
            value.to_string()
        }
    };
    format!("{} -> {}", shown(&entry.old), shown(&entry.new))
}

/// `at_ms` as `YYYY-MM-DD hh:mm:ss.mmm` in UTC.
fn utc(at_ms: u64) -> String {
    let (days, ms) = ((at_ms / 86_400_000) as i64, at_ms % 86_400_000);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(actor: &str, uid: Option<u32>, pid: Option<u32>) -> HistoryEntry {
        HistoryEntry {
            generation: 7,
            at_ms: 1_796_285_909_089,
            actor: actor.into(),
            uid,
            pid,
            peer: "127.0.0.1:8001".into(),
            field: "label".into(),
            old: String::new(),
            new: "green".into(),
        }
    }

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00.000");
        assert_eq!(utc(1_796_285_909_089), "2026-12-03 08:18:29.089");
    }

    #[test]
    fn each_change_is_a_line_with_who_made_it() {
        let history = UpstreamHistory {
            name: "app".into(),
            capacity: 256,
            entries: vec![
                entry("api", Some(1000), Some(4242)),
                entry("health", None, None),
            ],
        };
        let text = render(&history);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "upstream app (the last 256 changes kept)");
        assert!(lines[2].contains("api uid 1000 pid 4242"), "{text}");
        assert!(lines[2].ends_with("label     - -> green"), "{text}");
        assert!(lines[3].contains("  health  "), "{text}");
        let none = UpstreamHistory {
            capacity: 0,
            entries: Vec::new(),
            ..history
        };
        assert!(render(&none).contains("keeps no history"));
    }
}
