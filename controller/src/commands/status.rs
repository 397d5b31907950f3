//! `status` and `metrics`: reading, never changing.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use shift_wire::Upstream;
use shiftctl::fleet::status as fleet_status;

use super::Ctx;
use crate::exit::Failure;
use crate::fleet::etcd::now_ms;
use crate::fleet::Fleet;
use crate::view::table::render_table;
use crate::view::watch::WatchHistory;

/// Every Nginx's upstreams (or the one named), by source: a socket, or a reporting host.
async fn read_all(
    ctx: &Ctx,
    upstream: Option<&str>,
) -> Result<Vec<(String, Vec<Upstream>)>, Failure> {
    let chosen = |upstreams: Vec<Upstream>| -> Vec<Upstream> {
        upstreams
            .into_iter()
            .filter(|state| upstream.is_none_or(|name| state.name == name))
            .collect()
    };
    match &ctx.fleet {
        Fleet::Etcd(etcd) => {
            let mut reports = etcd.store().reports().await?;
            reports.sort_by(|a, b| a.host.cmp(&b.host));
            Ok(reports
                .into_iter()
                .map(|report| (report.host, chosen(report.upstreams)))
                .collect())
        }
        Fleet::Sockets(_) => {
            let mut all = Vec::new();
            for client in ctx.fleet.clients()? {
                let source = client.socket().display().to_string();
                match upstream {
                    Some(name) => all.push((source, vec![client.upstream(name).await?])),
                    None => all.push((source, client.upstreams().await?.upstreams)),
                }
            }
            Ok(all)
        }
    }
}

/// `status --fleet`: the hosts' sync and each upstream's split, from etcd.
pub async fn fleet_status(ctx: &Ctx) -> Result<(), Failure> {
    let Fleet::Etcd(etcd) = &ctx.fleet else {
        return Err(Failure::usage(anyhow::anyhow!(
            "status --fleet reads the fleet's state in etcd: give --etcd URL (or SHIFT_ETCD)"
        )));
    };
    let store = etcd.store();
    let snapshot = store.desired_snapshot(None).await?;
    let members = store.members().await?;
    let reports = store.reports().await?;
    let desired: BTreeMap<String, (i64, shift_wire::fleet::DesiredUpstream)> = snapshot
        .upstreams
        .into_iter()
        .map(|(name, versioned)| (name, (versioned.mod_revision, versioned.value)))
        .collect();
    let mut status = fleet_status::fleet_status(&desired, &members, &reports, now_ms());
    // Alarms are read through etcd's maintenance service, which a proxy or a role may refuse:
    // then the status says so, and shows the rest.
    let (alarms, unknown) = match store.alarms().await {
        Ok(alarms) => (alarms, None),
        Err(err) => (
            Vec::new(),
            Some(format!("cannot read etcd's alarms ({err})")),
        ),
    };
    status.warnings = fleet_status::warnings(&alarms, &snapshot.unreadable);
    status.warnings.extend(unknown);
    if ctx.json {
        let json = serde_json::to_string_pretty(&status).expect("JSON of the fleet status");
        println!("{json}");
    } else {
        print!("{}", fleet_status::render(&status));
    }
    Ok(())
}

pub async fn status(
    ctx: &Ctx,
    upstream: Option<String>,
    watch: bool,
    every: Duration,
) -> Result<(), Failure> {
    // With --watch on a terminal: bars and sparklines from successive reads, per Nginx.
    let drawn = watch && !ctx.json && std::io::stdout().is_terminal();
    let mut histories: BTreeMap<String, WatchHistory> = BTreeMap::new();
    loop {
        if let (true, Fleet::Etcd(etcd)) = (watch, &ctx.fleet) {
            // The agents then report their counters at every --every, not every 30 s.
            etcd.ask_for_fresh_reports().await;
        }
        let all = read_all(ctx, upstream.as_deref()).await?;
        if watch && std::io::stdout().is_terminal() {
            print!("\x1b[2J\x1b[H");
        }
        if ctx.json && !watch {
            let sources: Vec<String> = all.iter().map(|(source, _)| source.clone()).collect();
            let values: Vec<&Vec<Upstream>> = all.iter().map(|(_, upstreams)| upstreams).collect();
            ctx.print_json_by_source("upstreams", &sources, &values);
            return Ok(());
        }
        let several = all.len() > 1 || matches!(ctx.fleet, Fleet::Etcd(_));
        for (source, upstreams) in &all {
            let history = histories
                .entry(source.clone())
                .or_insert_with(|| WatchHistory::new(every));
            if several {
                println!("# {source}");
            }
            for upstream in upstreams {
                if ctx.json {
                    println!(
                        "{}",
                        serde_json::to_string(upstream).expect("JSON of wire types")
                    );
                } else if drawn {
                    history.record(upstream);
                    print!("{}", history.render(upstream));
                } else {
                    print!("{}", render_table(upstream));
                }
            }
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(every).await;
    }
}

pub async fn metrics(ctx: &Ctx) -> Result<(), Failure> {
    let clients = ctx.fleet.clients()?;
    for client in clients {
        let text = client.metrics().await?;
        if clients.len() > 1 {
            println!("# socket {}", client.socket().display());
        }
        print!("{text}");
    }
    Ok(())
}
