//! Simulates `shiftctl canary`'s verdicts (`shiftctl::deploy::verdict`) over random draws, with the
//! default gates: how often a healthy target is rolled back by noise, and how many failed
//! requests a broken one serves before it is rolled back. A canary here is 5/25/50/100% steps
//! of 30 s at 1,000 requests/s, judged every 250 ms as `shiftctl` polls; at 100% (no stable
//! traffic left) the target is compared with the stable side of the step before, as
//! `shiftctl` does. `cargo bench --bench canary_gates`; under `cargo test` it runs a few
//! canaries only.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shiftctl::deploy::verdict::{judge, Gates, Verdict, Window};

const STEPS: [f64; 4] = [0.05, 0.25, 0.50, 1.0];
const POLLS_PER_STEP: usize = 120;
const REQUESTS_PER_POLL: usize = 250;

/// How a simulated canary ended: promoted, or rolled back after the target had failed this
/// many requests.
enum Outcome {
    Promoted,
    RolledBack { target_failures: u64 },
}

fn canary(rng: &mut StdRng, stable_rate: f64, target_rate: f64, gates: &Gates) -> Outcome {
    let mut reference = Window::default();
    let mut target_failures = 0;
    for share in STEPS {
        let (mut target, mut stable) = (Window::default(), Window::default());
        for poll in 1..=POLLS_PER_STEP {
            for _ in 0..REQUESTS_PER_POLL {
                let (side, rate) = if rng.random::<f64>() < share {
                    (&mut target, target_rate)
                } else {
                    (&mut stable, stable_rate)
                };
                side.requests += 1;
                if rng.random::<f64>() < rate {
                    side.errors += 1;
                }
            }
            let compared = if stable.requests >= gates.min_requests {
                &stable
            } else {
                &reference
            };
            match judge(&target, compared, gates, poll == POLLS_PER_STEP) {
                Verdict::Fail(_) => {
                    return Outcome::RolledBack {
                        target_failures: target_failures + target.errors,
                    }
                }
                Verdict::Pass | Verdict::Wait(_) => {}
            }
        }
        target_failures += target.errors;
        if stable.requests >= gates.min_requests {
            reference = stable;
        }
    }
    Outcome::Promoted
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let runs = if full { 1000 } else { 3 };
    let gates = Gates::default();
    let mut rng = StdRng::seed_from_u64(14);
    println!("## Canary verdicts (simulated, default gates)\n");
    println!(
        "{runs} canaries per row: steps 5/25/50/100% of 30 s at 1,000 requests/s, judged every \
         250 ms.\n"
    );
    println!("| stable errors | target errors | rolled back | most failed target requests before the rollback |");
    println!("| ---: | ---: | ---: | ---: |");
    for (stable_rate, target_rate) in [(0.02, 0.02), (0.06, 0.06), (0.02, 0.04), (0.02, 1.0)] {
        let mut rolled_back = 0;
        let mut worst = 0;
        for _ in 0..runs {
            if let Outcome::RolledBack { target_failures } =
                canary(&mut rng, stable_rate, target_rate, &gates)
            {
                rolled_back += 1;
                worst = worst.max(target_failures);
            }
        }
        println!(
            "| {:.0}% | {:.0}% | {rolled_back} of {runs} | {} |",
            stable_rate * 100.0,
            target_rate * 100.0,
            if rolled_back > 0 {
                worst.to_string()
            } else {
                "-".into()
            }
        );
    }
}
