//! A demo backend as its own process: `backend NAME [ADDRESS:]PORT [STATUS]` answers every
//! request with NAME (and STATUS, 200 unless given: a bad release answers 500) until it gets
//! SIGTERM or SIGINT (on 127.0.0.1 unless ADDRESS is given). Stands in for a container in the
//! demo, the deploy tests and the compose example, and is the Compose tests' backend image.

use std::process::ExitCode;

use harness::Backend;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, address, status) = match args.as_slice() {
        [name, address] => (name, address, "200"),
        [name, address, status] => (name, address, status.as_str()),
        _ => return usage("expected NAME [ADDRESS:]PORT [STATUS]"),
    };
    let address = match address.parse::<std::net::SocketAddr>() {
        Ok(address) => address,
        Err(_) => match address.parse::<u16>() {
            Ok(port) => std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            Err(_) => return usage(&format!("{address:?} is not a port or ADDRESS:PORT")),
        },
    };
    let status = match status.parse::<u16>() {
        Ok(status @ 100..=599) => status,
        _ => return usage(&format!("{status:?} is not an HTTP status")),
    };
    let backend = Backend::start_at(name, address);
    backend.set_status(status);
    harness::wait_for_interrupt();
    drop(backend);
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("backend: {problem}\nusage: backend NAME [ADDRESS:]PORT [STATUS]");
    ExitCode::from(2)
}
