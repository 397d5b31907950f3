//! The Compose examples on a real Docker Engine with the real `docker-compose`: the very files in
//! `examples/`, with an override file that swaps in the test images (built from this machine's
//! binaries, nothing pulled) and publishes Nginx on 127.0.0.1 only. Docker's embedded DNS, its
//! address allocation (a new container takes the address of one just removed) and `--scale` are
//! the real ones. Skipped with a printed reason where no Docker daemon runs, except in CI;
//! `scripts/test.sh` starts one as root and runs them (`--ignored`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::docker::{self, ComposeProject};
use harness::{free_port, module_path, shiftctl_binary, wait_until, Admin, Traffic};

fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// A directory the containers' `nobody` workers can write to.
fn shared_dir(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// The addresses of the running `backend` containers, as Nginx lists its peers.
fn containers(project: &ComposeProject) -> std::collections::BTreeSet<String> {
    project
        .addresses("backend")
        .into_iter()
        .map(|ip| format!("{ip}:8000"))
        .collect()
}

/// Option 3 of the seed note: `--scale backend=3`, `server backend:8000 resolve` through
/// 127.0.0.11, and five rolling deploys in a row by the example's own plan and hooks, back and
/// forth between two versions. Docker hands each new replica the address of the one removed before it, so
/// from the second replica on a known address comes back as a new replica. Then a bad release
/// (every answer 500) is rolled back. A paced request loop from the host counts failed
/// requests through all of it.
#[test]
#[ignore = "real Docker, minutes: scripts/test.sh runs it beside the other Nginx builds"]
fn the_scaled_example_rolls_on_real_docker() {
    if !docker::require("the_scaled_example_rolls_on_real_docker") {
        return;
    }
    docker::images();
    let example = example_dir("compose-scale");
    let work = tempfile::tempdir().unwrap();
    let (run, state) = (
        shared_dir(work.path(), "run"),
        shared_dir(work.path(), "state"),
    );
    let override_file = work.path().join("docker-compose.test.yml");
    fs::write(
        &override_file,
        format!(
            "services:\n  nginx:\n    image: {image}\n    volumes:\n\
             \x20     - {example}/nginx.conf:/etc/nginx/nginx.conf:ro\n\
             \x20     - {module}:/etc/nginx/modules/libngx_http_shift_module.so:ro\n\
             \x20     - {run}:/run/nginx-shift\n\
             \x20     - {state}:/var/lib/nginx-shift\n",
            image = docker::NGINX_IMAGE,
            example = example.display(),
            module = module_path().display(),
            run = run.display(),
            state = state.display(),
        ),
    )
    .unwrap();
    let http = free_port();
    let project = ComposeProject::new(
        "scale",
        &[example.join("docker-compose.yml"), override_file],
        &[
            ("BACKEND_IMAGE", docker::backend_image("v1")),
            ("NGINX_PORT", format!("127.0.0.1:{http}")),
        ],
    );
    project.compose(&["up", "-d", "--scale", "backend=3"]);
    let admin = Admin::new(run.join("shift.sock"), "/api/");
    let up = wait_until(Duration::from_secs(90), || {
        run.join("shift.sock").exists() && {
            let now = admin.eligible("backend");
            now.len() == 3 && now == containers(&project)
        }
    });
    assert!(
        up.is_some(),
        "three replicas take traffic: containers {:?}, nginx {}",
        containers(&project),
        project.logs("nginx")
    );

    // The example's plan, watching each new replica for 1 s instead of 30.
    let plan = fs::read_to_string(example.join("deploy.toml"))
        .unwrap()
        .replace("interval = \"30s\"", "interval = \"1s\"");
    let plan_path = work.path().join("deploy.toml");
    fs::write(&plan_path, plan).unwrap();

    let traffic = Traffic::paced(http, Duration::from_millis(20));
    let mut timings = Vec::new();
    // Five deploys in a row, back and forth.
    let versions = ["v2", "v1", "v2", "v1", "v2"];
    for version in versions {
        let before = containers(&project);
        let started = Instant::now();
        let output = deploy(&project, &example, &run, &state, &plan_path, version);
        timings.push(started.elapsed());
        assert!(
            output.status.success(),
            "deploy of {version}: {}\nnginx: {}",
            String::from_utf8_lossy(&output.stderr),
            project.logs("nginx")
        );
        let after = containers(&project);
        assert_eq!(after.len(), 3, "three replicas after the deploy: {after:?}");
        assert!(
            wait_until(Duration::from_secs(10), || admin.eligible("backend")
                == after)
            .is_some(),
            "Nginx sends traffic to the running replicas {after:?}: {:?}",
            admin.upstream("backend")
        );
        eprintln!(
            "deploy of {version}: {:?}; replicas {before:?} -> {after:?}",
            timings.last().unwrap()
        );
        // Every replica runs the new version: a dozen requests, round robin over the three.
        for _ in 0..12 {
            let answer = harness::HttpClient::new(http).get("/").unwrap();
            assert_eq!(answer.body, version, "every replica runs {version}");
        }
    }
    // A bad release: its replica answers 500, to its health checks too. The roll stops at the
    // first replica, which is taken out and removed; the three replicas of the last version keep
    // serving.
    let serving = containers(&project);
    let last = versions[versions.len() - 1];
    let bad_plan = work.path().join("deploy-bad.toml");
    fs::write(
        &bad_plan,
        fs::read_to_string(&plan_path)
            .unwrap()
            .replace("health_timeout = \"120s\"", "health_timeout = \"15s\""),
    )
    .unwrap();
    let output = deploy(&project, &example, &run, &state, &bad_plan, "broken");
    assert_eq!(
        output.status.code(),
        Some(1),
        "the bad release is rolled back: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("rolling deploy stopped at replica 1/3"),
        "{stderr}"
    );
    assert_eq!(containers(&project), serving, "only the old replicas run");
    assert_eq!(admin.eligible("backend"), serving);
    assert_eq!(harness::HttpClient::new(http).get("/").unwrap().body, last);

    let report = traffic.stop();
    assert!(
        report.failed.is_empty(),
        "failed requests through the deploys: {:?} (answers {:?})",
        report.failed,
        report.answers
    );
    assert!(report.total() > 100, "the loop ran: {:?}", report.answers);
    eprintln!(
        "deploys took {timings:?}; {} requests, none failed",
        report.total()
    );
}

/// `shiftctl deploy PLAN` of `version`, as a user runs it from the example's directory (the
/// plan's hooks are relative to it), against the project's Nginx.
fn deploy(
    project: &ComposeProject,
    example: &Path,
    run: &Path,
    state: &Path,
    plan: &Path,
    version: &str,
) -> std::process::Output {
    Command::new(shiftctl_binary())
        .current_dir(example)
        .arg("--socket")
        .arg(run.join("shift.sock"))
        .arg("--state-dir")
        .arg(state)
        .arg("deploy")
        .arg(plan)
        .envs(project.env.iter().map(|(key, value)| (key, value)))
        .env("BACKEND_IMAGE", docker::backend_image(version))
        .output()
        .unwrap()
}
