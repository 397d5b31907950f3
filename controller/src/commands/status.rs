//! `status` and `metrics`: reading, never changing.

use std::io::IsTerminal;
use std::time::Duration;

use super::Ctx;
use crate::exit::Failure;
use crate::output::render_table;
use crate::watch_view::WatchHistory;

pub async fn status(
    ctx: &Ctx,
    upstream: Option<String>,
    watch: bool,
    every: Duration,
) -> Result<(), Failure> {
    // With --watch on a terminal: bars and sparklines from successive reads, per Nginx.
    let drawn = watch && !ctx.json && std::io::stdout().is_terminal();
    let mut histories: Vec<WatchHistory> = ctx
        .fleet
        .clients()
        .iter()
        .map(|_| WatchHistory::new(every))
        .collect();
    loop {
        let mut all = Vec::new();
        for client in ctx.fleet.clients() {
            match &upstream {
                Some(name) => all.push(vec![client.upstream(name).await?]),
                None => all.push(client.upstreams().await?.upstreams),
            }
        }
        if watch && std::io::stdout().is_terminal() {
            print!("\x1b[2J\x1b[H");
        }
        if ctx.json && !watch {
            ctx.print_json_per_socket("upstreams", &all);
            return Ok(());
        }
        for ((client, upstreams), history) in
            ctx.fleet.clients().iter().zip(&all).zip(&mut histories)
        {
            if ctx.fleet.clients().len() > 1 {
                println!("# {}", client.socket().display());
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
    for client in ctx.fleet.clients() {
        let text = client.metrics().await?;
        if ctx.fleet.clients().len() > 1 {
            println!("# socket {}", client.socket().display());
        }
        print!("{text}");
    }
    Ok(())
}
