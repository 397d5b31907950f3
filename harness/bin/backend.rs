//! A demo backend as its own process: `backend NAME [ADDRESS:]PORT` answers every request with
//! NAME until it gets SIGTERM or SIGINT (on 127.0.0.1 unless ADDRESS is given). Stands in for a container in the demo, the deploy tests and the
//! compose example.

use std::process::ExitCode;

use harness::Backend;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, address) = match args.as_slice() {
        [name, address] => match address.parse::<std::net::SocketAddr>() {
            Ok(address) => (name, address),
            Err(_) => match address.parse::<u16>() {
                Ok(port) => (name, std::net::SocketAddr::from(([127, 0, 0, 1], port))),
                Err(_) => return usage(&format!("{address:?} is not a port or ADDRESS:PORT")),
            },
        },
        _ => return usage("expected NAME [ADDRESS:]PORT"),
    };
    let backend = Backend::start_at(name, address);
    harness::wait_for_interrupt();
    drop(backend);
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("backend: {problem}\nusage: backend NAME [ADDRESS:]PORT");
    ExitCode::from(2)
}
