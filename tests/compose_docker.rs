//! The Compose examples on a real Docker Engine with the real `docker-compose`: the very files in
//! `examples/`, with an override file that swaps in the test images (built from this machine's
//! binaries, nothing pulled) and publishes Nginx on 127.0.0.1 only. Docker's embedded DNS, its
//! address allocation (a new container takes the address of one just removed) and `--scale` are
//! the real ones. Skipped with a printed reason where no Docker daemon runs, except in CI;
//! `scripts/test.sh` starts one as root and runs them (`--ignored`).

use std::collections::BTreeSet;
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

/// An example's Compose project on real Docker: its own files with an override that swaps in
/// the test images, mounts this build's module and the test's directories (the admin socket's,
/// the state files', Nginx's logs) and publishes Nginx on 127.0.0.1 only. Taken down on drop.
/// The override adds `filler`, started only when named: another service's container, which
/// answers as `filler`, to take an address a stopped container freed.
struct Stage {
    // Dropped first (fields drop in order): taking the project down reads the override file
    // in `work`.
    project: ComposeProject,
    example: PathBuf,
    work: tempfile::TempDir,
    run: PathBuf,
    state: PathBuf,
    logs: PathBuf,
    http: u16,
}

impl Stage {
    fn new(example: &str, project: &str) -> Stage {
        docker::images();
        let example = example_dir(example);
        let work = tempfile::tempdir().unwrap();
        let [run, state, logs] = ["run", "state", "logs"].map(|name| shared_dir(work.path(), name));
        let override_file = work.path().join("docker-compose.test.yml");
        fs::write(
            &override_file,
            format!(
                "services:\n  nginx:\n    image: {image}\n    volumes:\n\
                 \x20     - {example}/nginx.conf:/etc/nginx/nginx.conf:ro\n\
                 \x20     - {module}:/etc/nginx/modules/libngx_http_shift_module.so:ro\n\
                 \x20     - {run}:/run/nginx-shift\n\
                 \x20     - {state}:/var/lib/nginx-shift\n\
                 \x20     - {logs}:/usr/local/nginx/logs\n\
                 \x20 filler:\n    image: {filler}\n    profiles: [\"filler\"]\n\
                 \x20   entrypoint: [\"/usr/bin/backend\", \"filler\", \"0.0.0.0:8000\"]\n",
                image = docker::NGINX_IMAGE,
                filler = docker::backend_image("v1"),
                example = example.display(),
                module = module_path().display(),
                run = run.display(),
                state = state.display(),
                logs = logs.display(),
            ),
        )
        .unwrap();
        let http = free_port();
        let project = ComposeProject::new(
            project,
            &[example.join("docker-compose.yml"), override_file],
            &[
                ("BACKEND_IMAGE", docker::backend_image("v1")),
                ("NGINX_PORT", format!("127.0.0.1:{http}")),
            ],
        );
        Stage {
            project,
            example,
            work,
            run,
            state,
            logs,
            http,
        }
    }

    fn admin(&self) -> Admin {
        Admin::new(self.run.join("shift.sock"), "/api/")
    }

    /// The example's plan `file` with each canary step (or new replica) watched for 1 s
    /// instead of 30 and `health_timeout` as given, written beside the test's files.
    fn plan(&self, file: &str, health_timeout: &str) -> PathBuf {
        let plan = fs::read_to_string(self.example.join(file))
            .unwrap()
            // Shorter watches, and the quiet timeout the example's 30 s interval gives (10 x 30 s):
            // the tests' light traffic needs longer than 10 x 1 s for a step's 100 requests.
            .replace(
                "interval = \"30s\"",
                "interval = \"1s\"\nquiet_timeout = \"300s\"",
            )
            .replace(
                "health_timeout = \"120s\"",
                &format!("health_timeout = \"{health_timeout}\""),
            );
        let path = self.work.path().join(format!("{health_timeout}-{file}"));
        fs::write(&path, plan).unwrap();
        path
    }

    /// `shiftctl deploy PLAN` of `version`, as a user runs it from the example's directory
    /// (the plan's hooks are relative to it).
    fn deploy(&self, plan: &Path, version: &str) -> std::process::Output {
        self.shiftctl(version)
            .arg("deploy")
            .arg(plan)
            .output()
            .unwrap()
    }

    /// `deploy` that must succeed; its time goes to `timings`. Returns what it printed.
    fn deploy_ok(&self, plan: &Path, version: &str, timings: &mut Vec<Duration>) -> String {
        let started = Instant::now();
        let output = self.deploy(plan, version);
        timings.push(started.elapsed());
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "deploy of {version} by {}: {stderr}\nnginx: {}",
            plan.display(),
            self.error_log()
        );
        stderr
    }

    /// `shiftctl` on the project's Nginx, from the example's directory, with `BACKEND_IMAGE`
    /// the image of `version`.
    fn shiftctl(&self, version: &str) -> Command {
        let mut command = Command::new(shiftctl_binary());
        command
            .current_dir(&self.example)
            .arg("--socket")
            .arg(self.run.join("shift.sock"))
            .arg("--state-dir")
            .arg(&self.state)
            .envs(self.project.env.iter().map(|(key, value)| (key, value)))
            .env("BACKEND_IMAGE", docker::backend_image(version));
        command
    }

    /// Nginx's error log.
    fn error_log(&self) -> String {
        fs::read_to_string(self.logs.join("error.log")).unwrap_or_default()
    }

    /// Who answers a dozen requests.
    fn answers(&self) -> BTreeSet<String> {
        (0..12)
            .map(|_| harness::HttpClient::new(self.http).get("/").unwrap().body)
            .collect()
    }
}

/// The addresses of the running `backend` containers, as Nginx lists its peers.
fn containers(project: &ComposeProject) -> BTreeSet<String> {
    containers_of(project, "backend")
}

/// The addresses of `service`'s running containers, as Nginx lists its peers.
fn containers_of(project: &ComposeProject, service: &str) -> BTreeSet<String> {
    project
        .addresses(service)
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
    let stage = Stage::new("compose-scale", "scale");
    let (http, project) = (stage.http, &stage.project);
    project.compose(&["up", "-d", "--scale", "backend=3"]);
    let admin = stage.admin();
    let up = wait_until(Duration::from_secs(90), || {
        stage.run.join("shift.sock").exists() && {
            let now = admin.eligible("backend");
            now.len() == 3 && now == containers(project)
        }
    });
    assert!(
        up.is_some(),
        "three replicas take traffic: containers {:?}, nginx {}",
        containers(project),
        project.logs("nginx")
    );

    // The example's plan, watching each new replica for 1 s instead of 30.
    let plan_path = stage.plan("deploy.toml", "120s");

    let traffic = Traffic::paced(http, Duration::from_millis(20));
    let mut timings = Vec::new();
    // Five deploys in a row, back and forth.
    let versions = ["v2", "v1", "v2", "v1", "v2"];
    for version in versions {
        let before = containers(project);
        stage.deploy_ok(&plan_path, version, &mut timings);
        let after = containers(project);
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
    let serving = containers(project);
    let last = versions[versions.len() - 1];
    let bad_plan = stage.plan("deploy.toml", "15s");
    let output = stage.deploy(&bad_plan, "broken");
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
    assert_eq!(containers(project), serving, "only the old replicas run");
    assert_eq!(admin.eligible("backend"), serving);
    assert_eq!(harness::HttpClient::new(http).get("/").unwrap().body, last);

    finish_traffic(&stage, traffic, &timings);
}

/// Every peer of `backend` with `label` (a side of examples/compose), eligible or not.
fn side_peers(admin: &Admin, label: &str) -> BTreeSet<String> {
    admin
        .upstream("backend")
        .peers
        .into_iter()
        .filter(|peer| peer.label.as_deref() == Some(label))
        .map(|peer| peer.server)
        .collect()
}

fn other_side(side: &str) -> &'static str {
    if side == "blue" {
        "green"
    } else {
        "blue"
    }
}

/// Stops the request loop that ran through the deploys: not one request failed, and none
/// went to an address without a container. Returns who answered how often.
fn finish_traffic(
    stage: &Stage,
    traffic: Traffic,
    timings: &[Duration],
) -> std::collections::BTreeMap<String, u64> {
    let report = traffic.stop();
    assert!(
        report.failed.is_empty(),
        "failed requests through the deploys: {:?} (answers {:?})",
        report.failed,
        report.answers
    );
    assert!(report.total() > 100, "the loop ran: {:?}", report.answers);
    assert_no_request_went_astray(stage);
    eprintln!(
        "deploys took {timings:?}; {} requests, none failed",
        report.total()
    );
    report.answers
}

/// No request went to an address without a container: Nginx logs each failed connect to an
/// upstream, and `no live upstreams` when it had none to try.
fn assert_no_request_went_astray(stage: &Stage) {
    let log = stage.error_log();
    let astray: Vec<&str> = log
        .lines()
        .filter(|line| {
            line.contains("while connecting to upstream") || line.contains("no live upstreams")
        })
        .collect();
    assert!(astray.is_empty(), "requests went astray: {astray:#?}");
}

/// Starts examples/compose with `services` up (v1) and waits until blue alone takes traffic.
fn start_blue_green(stage: &Stage, services: &[&str]) -> Admin {
    let mut up = vec!["up", "-d"];
    up.extend(services);
    stage.project.compose(&up);
    let admin = stage.admin();
    let blue = || containers_of(&stage.project, "backend_blue");
    let serving = wait_until(Duration::from_secs(90), || {
        stage.run.join("shift.sock").exists() && {
            let now = admin.eligible("backend");
            now.len() == 1 && now == blue()
        }
    });
    assert!(
        serving.is_some(),
        "blue takes traffic: containers {:?}, nginx {}",
        blue(),
        stage.error_log()
    );
    admin
}

/// Option 1 of the seed note: `backend_blue` and `backend_green` on the project's network,
/// `server backend_blue:8000 resolve` and `backend_green`'s labelled through 127.0.0.11, and
/// five deploys in a row by the example's own plan: start the idle side, wait for its check,
/// a canary in steps, stop the old side. Docker gives a side started again a new address, or
/// the one it had. Then a bad release (every answer 500) never takes traffic and is stopped.
/// A paced request loop from the host counts failed requests through all of it.
#[test]
#[ignore = "real Docker, minutes: scripts/test.sh runs it beside the other Nginx builds"]
fn the_blue_green_example_deploys_on_real_docker() {
    if !docker::require("the_blue_green_example_deploys_on_real_docker") {
        return;
    }
    let stage = Stage::new("compose", "bluegreen");
    let admin = start_blue_green(&stage, &["nginx", "backend_blue"]);
    let plan = stage.plan("deploy.toml", "120s");

    let traffic = Traffic::paced(stage.http, Duration::from_millis(20));
    let mut timings = Vec::new();
    let mut live = "blue";
    let versions = ["v2", "v1", "v2", "v1", "v2"];
    for version in versions {
        let next = other_side(live);
        stage.deploy_ok(&plan, version, &mut timings);
        let serving = containers_of(&stage.project, &format!("backend_{next}"));
        assert_eq!(serving.len(), 1, "{next} runs: {serving:?}");
        assert!(
            containers_of(&stage.project, &format!("backend_{live}")).is_empty(),
            "{live} is stopped"
        );
        assert_eq!(
            admin.eligible("backend"),
            serving,
            "only {next} takes traffic"
        );
        assert_eq!(stage.answers(), BTreeSet::from([version.to_string()]));
        eprintln!(
            "deploy of {version} to {next}: {:?}",
            timings.last().unwrap()
        );
        live = next;
    }

    // A bad release: it answers 500, to its checks too. It never takes traffic, and the deploy
    // stops it.
    let idle = other_side(live);
    let output = stage.deploy(&stage.plan("deploy.toml", "15s"), "broken");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("traffic stays on {live}; {idle} is stopped")),
        "{stderr}"
    );
    assert!(containers_of(&stage.project, &format!("backend_{idle}")).is_empty());
    let last = versions[versions.len() - 1];
    assert_eq!(stage.answers(), BTreeSet::from([last.to_string()]));

    finish_traffic(&stage, traffic, &timings);
}

/// Option 2 of the seed note: both sides run; each deploy recreates the idle one with the new
/// image (`up -d --force-recreate`: a new container; Docker gives it its old address back,
/// unless another container took that, which the test arranges from the third deploy on), whose
/// name Nginx looks up again through 127.0.0.11; the switch waits until a lookup after the
/// recreation gives the side's addresses, so no request goes to the old one. Five deploys in a row, then a
/// rollback flips back at once, then a bad release is recreated on the idle side and never
/// takes traffic. A paced request loop from the host counts failed requests.
#[test]
#[ignore = "real Docker, minutes: scripts/test.sh runs it beside the other Nginx builds"]
fn the_recreate_example_switches_on_real_docker() {
    if !docker::require("the_recreate_example_switches_on_real_docker") {
        return;
    }
    let stage = Stage::new("compose", "recreate");
    let admin = start_blue_green(&stage, &["nginx", "backend_blue", "backend_green"]);
    let plan = stage.plan("deploy-recreate.toml", "120s");

    let traffic = Traffic::paced(stage.http, Duration::from_millis(20));
    let mut timings = Vec::new();
    let mut live = "blue";
    let versions = ["v2", "v1", "v2", "v1", "v2"];
    for (number, version) in versions.into_iter().enumerate() {
        let next = other_side(live);
        let service = format!("backend_{next}");
        let before = containers_of(&stage.project, &service);
        // From the third deploy on, the idle side's address is another container's by the time
        // it is recreated (Docker gives a new container the lowest free address), so it comes
        // back with a new one, and Nginx still lists the old one until it looks the name up.
        let moved = number >= 2;
        if moved {
            stage.project.compose(&["stop", &service]);
            let fillers = containers_of(&stage.project, "filler").len() + 1;
            let scale = format!("filler={fillers}");
            stage
                .project
                .compose(&["up", "-d", "--no-deps", "--scale", &scale, "filler"]);
            assert!(
                containers_of(&stage.project, "filler").is_superset(&before),
                "a filler took {next}'s address {before:?}"
            );
        }
        let stderr = stage.deploy_ok(&plan, version, &mut timings);
        assert!(
            stderr.contains(&format!("{next} is live, {live} is idle, for a rollback")),
            "{stderr}"
        );
        let serving = containers_of(&stage.project, &format!("backend_{next}"));
        assert_eq!(serving.len(), 1, "{next} runs: {serving:?}");
        assert_eq!(
            side_peers(&admin, next),
            serving,
            "{next}'s peers are its new container alone"
        );
        assert_eq!(
            admin.eligible("backend"),
            serving,
            "only {next} takes traffic"
        );
        assert_eq!(
            containers_of(&stage.project, &format!("backend_{live}")).len(),
            1,
            "{live} stays up for a rollback"
        );
        assert_eq!(stage.answers(), BTreeSet::from([version.to_string()]));
        if moved {
            assert!(
                serving.is_disjoint(&before),
                "{next} came back at a new address"
            );
        }
        eprintln!(
            "deploy of {version} to {next}: {:?}; {before:?} -> {serving:?}",
            timings.last().unwrap()
        );
        live = next;
    }

    // The rollback flips back to the side that still runs the version before.
    harness::run_ok(stage.shiftctl("v1").args(["rollback", "backend"]));
    live = other_side(live);
    let previous = versions[versions.len() - 2];
    assert_eq!(stage.answers(), BTreeSet::from([previous.to_string()]));

    // A bad release, recreated on the idle side: it never passes its check, so traffic stays.
    let output = stage.deploy(&stage.plan("deploy-recreate.toml", "15s"), "broken");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("traffic stays on {live}")),
        "{stderr}"
    );
    assert_eq!(stage.answers(), BTreeSet::from([previous.to_string()]));

    let answers = finish_traffic(&stage, traffic, &timings);
    assert!(
        !answers.contains_key("filler"),
        "a request reached the container at a side's old address: {answers:?}"
    );
}
