//! `status` and `metrics`: reading, never changing.

use std::io::IsTerminal;
use std::time::Duration;

use super::Ctx;
use crate::exit::Failure;
use crate::output::render_table;

pub async fn status(
    ctx: &Ctx,
    upstream: Option<String>,
    watch: bool,
    every: Duration,
) -> Result<(), Failure> {
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
        for (client, upstreams) in ctx.fleet.clients().iter().zip(&all) {
            if ctx.fleet.clients().len() > 1 {
                println!("# {}", client.socket().display());
            }
            for upstream in upstreams {
                if ctx.json {
                    println!(
                        "{}",
                        serde_json::to_string(upstream).expect("JSON of wire types")
                    );
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
