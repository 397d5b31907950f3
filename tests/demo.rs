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
        .filter(|line| line.contains("traffic, last second"))
        .last()
        .unwrap();
    assert!(last.contains("blue 100.0%"), "last window: {last}");
}
