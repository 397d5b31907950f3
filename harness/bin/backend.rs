//! A demo backend as its own process: `backend NAME PORT` answers every request with NAME until
//! it gets SIGTERM or SIGINT. Stands in for a container in the demo, the deploy tests and the
//! compose example.

use std::process::ExitCode;

use harness::Backend;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, port) = match args.as_slice() {
        [name, port] => match port.parse::<u16>() {
            Ok(port) => (name, port),
            Err(_) => return usage(&format!("port {port:?} is not a number")),
        },
        _ => return usage("expected NAME PORT"),
    };
    let backend = Backend::start_on(name, port);
    harness::wait_for_interrupt();
    drop(backend);
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("backend: {problem}\nusage: backend NAME PORT");
    ExitCode::from(2)
}
