//! The demo that `scripts/demo.sh` runs, end to end (`--once`: it exits instead of waiting).

use std::process::Command;

use harness::free_port;

#[test]
fn the_demo_shifts_traffic_and_shows_the_rollback() {
    let demo = std::path::PathBuf::from(env!("CARGO_BIN_EXE_demo"));
    let output = Command::new(demo)
        .args(["--once", "--port", &free_port().to_string()])
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    // Before the canary, a pinned request reaches standby green; an ordinary one, blue.
    assert!(
        stdout.contains(": green' http://127.0.0.1:") && stdout.contains("/\ngreen\n$ curl http"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/\nblue\n\n== 1."),
        "the unpinned request did not reach blue:\n{stdout}"
    );
    assert!(
        stdout.contains("green 100.0%"),
        "the split never reached green:\n{stdout}"
    );
    assert!(
        stdout.contains("exited with exit status: 1 (1 = rolled back)"),
        "{stdout}"
    );
    assert!(stderr.contains("rolled back because step 2/3"), "{stderr}");
    // After the rollback, blue serves everything again.
    let last = stdout
        .lines()
        .rfind(|line| line.contains("traffic, last second"))
        .unwrap();
    assert!(last.contains("blue 100.0%"), "last window: {last}");
}

#[test]
fn no_nginx_outlives_a_killed_demo() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::Duration;

    let demo = std::path::PathBuf::from(env!("CARGO_BIN_EXE_demo"));
    let mut child = Command::new(demo)
        .args(["--port", &free_port().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    // "Nginx (master pid N) with the shift module:"
    let master: i32 = first
        .split("master pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no master pid in {first:?}"));
    let alive = || nix::sys::signal::kill(nix::unistd::Pid::from_raw(master), None).is_ok();
    assert!(alive());
    child
        .kill()
        .expect("SIGKILL the demo: no cleanup code of its own runs");
    child.wait().unwrap();
    let gone = harness::wait_until(Duration::from_secs(10), || !alive());
    assert!(
        gone.is_some(),
        "nginx master {master} outlived the killed demo"
    );
}
