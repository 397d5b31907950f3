//! `examples/compose/` and `examples/compose-scale/`: the compose files name the services and
//! ports that nginx.conf and deploy.toml use, and the configs and deploy plans work — run with
//! local processes standing in for the containers (and dnsmasq for Docker's DNS), since no
//! Docker engine runs here.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use harness::{
    free_port, module_path, shiftctl_command, wait_until, Admin, Agent, Dnsmasq, Etcd,
    HookedBackends, HttpClient, Nginx, NginxOptions, Traffic,
};
use shift_wire::Health;

fn example(file: &str) -> String {
    let path = format!("{}/examples/compose/{file}", env!("CARGO_MANIFEST_DIR"));
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"))
}

/// The backend services of the compose file and the port each is told to listen on.
fn backend_ports(compose: &serde_yaml::Value) -> BTreeMap<String, String> {
    let services = compose["services"].as_mapping().expect("services");
    services
        .iter()
        .filter_map(|(name, service)| {
            let port = service["environment"]["PORT"].as_str()?;
            Some((name.as_str()?.to_string(), port.to_string()))
        })
        .collect()
}

#[test]
fn the_compose_file_matches_the_config_and_the_plans() {
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&example("docker-compose.yml")).expect("YAML");
    let services: Vec<&str> = compose["services"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(|k| k.as_str())
        .collect();
    assert_eq!(services, ["nginx", "backend_blue", "backend_green"]);
    let ports = backend_ports(&compose);
    assert_eq!(
        ports,
        BTreeMap::from([
            ("backend_blue".into(), "8000".into()),
            ("backend_green".into(), "8000".into())
        ])
    );
    for service in &services {
        assert!(
            compose["services"][service]["network_mode"].is_null(),
            "{service} is on the project's network, where Docker's DNS names it"
        );
    }

    let config = example("nginx.conf");
    assert!(config.contains("resolver 127.0.0.11 "), "Docker's DNS");
    let plan: toml::Value = toml::from_str(&example("deploy.toml")).expect("TOML");
    let recreate: toml::Value = toml::from_str(&example("deploy-recreate.toml")).expect("TOML");
    assert_eq!(plan["strategy"].as_str(), Some("canary"));
    assert_eq!(recreate["strategy"].as_str(), Some("switch"));
    for (service, port) in &ports {
        let side = service.trim_start_matches("backend_");
        assert!(
            config.contains(&format!("server {service}:{port} resolve"))
                && config.contains(&format!("shift_label {service}:{port} {side};")),
            "nginx.conf resolves {service} and labels it {side}"
        );
        let planned = &plan["sides"][side];
        assert_eq!(planned["server"].as_str(), Some(side), "sides are labels");
        assert_eq!(
            planned["start"].as_str(),
            Some(format!("./compose.sh up -d {service}").as_str())
        );
        assert_eq!(
            planned["stop"].as_str(),
            Some(format!("./compose.sh stop {service}").as_str())
        );
        let recreated = &recreate["sides"][side];
        assert_eq!(recreated["server"].as_str(), Some(side));
        assert_eq!(
            recreated["start"].as_str(),
            Some(format!("./compose.sh up -d --force-recreate {service}").as_str())
        );
        assert!(recreated.get("stop").is_none(), "the old side stays up");
    }

    let volumes: Vec<&str> = compose["services"]["nginx"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        volumes.contains(&"./nginx.conf:/etc/nginx/nginx.conf:ro"),
        "{volumes:?}"
    );
    let module_mount = volumes
        .iter()
        .find(|v| v.contains("libngx_http_shift_module.so"))
        .expect("module mounted");
    let module_in_container = module_mount.split(':').nth(1).unwrap();
    assert!(
        config.contains(&format!("load_module {module_in_container};")),
        "load_module path differs"
    );
    assert!(
        volumes.contains(&"./run:/run/nginx-shift"),
        "the socket directory reaches the host"
    );
    assert!(config.contains("listen unix:/run/nginx-shift/shift.sock;"));
}

/// The example's nginx.conf with this machine's paths and free ports in place of the
/// container's: the module, blue and green at `ports` (static lines standing in for their
/// service names), the proxy on `http`, the admin socket in the prefix and state files in
/// `state_dir`.
fn example_config(ports: (u16, u16), http: u16, state_dir: &std::path::Path) -> String {
    let (blue, green) = ports;
    let config = example("nginx.conf");
    for line in [
        "server backend_blue:8000 resolve;",
        "server backend_green:8000 resolve down;",
    ] {
        assert!(config.contains(line), "the example has {line}");
    }
    config
        .replace(
            "/etc/nginx/modules/libngx_http_shift_module.so",
            &module_path().display().to_string(),
        )
        .replace("backend_blue:8000 resolve", &format!("127.0.0.1:{blue}"))
        .replace("backend_green:8000 resolve", &format!("127.0.0.1:{green}"))
        .replace("backend_blue:8000", &format!("127.0.0.1:{blue}"))
        .replace("backend_green:8000", &format!("127.0.0.1:{green}"))
        .replace("listen 80;", &format!("listen 127.0.0.1:{http};"))
        .replace("/run/nginx-shift/shift.sock", "{prefix}/shift.sock")
        .replace("/var/lib/nginx-shift", &state_dir.display().to_string())
}

/// A state directory the workers may write `state=` files into.
fn worker_state_dir() -> tempfile::TempDir {
    let state_dir = tempfile::tempdir().unwrap();
    fs::set_permissions(state_dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    state_dir
}

/// The example plan, with local processes instead of compose services, and 1s canary steps.
fn example_plan(sides: &HookedBackends, ports: (u16, u16)) -> std::path::PathBuf {
    let (blue, green) = ports;
    let plan = example("deploy.toml");
    for hook in [
        "./compose.sh up -d backend_blue",
        "./compose.sh up -d backend_green",
        "./compose.sh stop backend_blue",
        "./compose.sh stop backend_green",
    ] {
        assert!(plan.contains(hook), "the example's plan runs {hook}");
    }
    let plan = plan
        .replace("./compose.sh up -d backend_blue", &sides.start_hook(blue))
        .replace("./compose.sh up -d backend_green", &sides.start_hook(green))
        .replace("./compose.sh stop backend_blue", &sides.stop_hook())
        .replace("./compose.sh stop backend_green", &sides.stop_hook())
        // Shorter watches, and the quiet timeout the example's 30 s interval gives (10 x 30 s):
        // the tests' light traffic needs longer than 10 x 1 s for a step's 100 requests.
        .replace(
            "interval = \"30s\"",
            "interval = \"1s\"\nquiet_timeout = \"300s\"",
        )
        .replace("health_timeout = \"120s\"", "health_timeout = \"20s\"");
    let plan_path = sides.dir().join("deploy.toml");
    fs::write(&plan_path, plan).unwrap();
    plan_path
}

/// Waits until blue passes the example's health check (`GET /api/users/`) on `socket`.
fn wait_for_healthy_blue(socket: &std::path::Path) {
    let admin = Admin::new(socket, "/api/");
    let blue_healthy = wait_until(Duration::from_secs(15), || {
        admin.upstream("backend").peers[0].health == Health::Healthy
    });
    assert!(
        blue_healthy.is_some(),
        "blue never passed GET /api/users/: {:?}",
        admin.upstream("backend")
    );
}

/// Who answers 20 requests on `http`.
fn served(http: u16) -> std::collections::BTreeSet<String> {
    let mut client = HttpClient::new(http);
    (0..20)
        .map(|_| client.get("/").expect("nginx answers").body)
        .collect()
}

#[test]
fn the_example_config_and_plan_deploy_with_local_processes() {
    let ports = (free_port(), free_port());
    let http = free_port();
    let state_dir = worker_state_dir();
    let config = example_config(ports, http, state_dir.path());
    let nginx = Nginx::start(NginxOptions::full_config(config, 2));
    let sides = HookedBackends::new();
    let plan_path = example_plan(&sides, ports);

    // `docker compose up -d nginx backend_blue`, as the example's README starts it.
    sides.start_now("blue", ports.0);
    wait_for_healthy_blue(&nginx.path("shift.sock"));
    assert_eq!(served(http), ["blue".to_string()].into());

    let deploy = || {
        shiftctl_command(&[nginx.path("shift.sock")], Some(state_dir.path()))
            .arg("deploy")
            .arg(&plan_path)
            .output()
            .unwrap()
    };
    // Users keep coming: each canary step needs requests to judge the new side by.
    let traffic = Traffic::start(http, 2);
    let output = deploy();
    let report = traffic.stop();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(sides.log(), "start green\nstop blue\n");
    assert_eq!(served(http), ["green".to_string()].into());
    assert!(
        state_dir.path().join("backend.json").exists(),
        "the workers saved the state file"
    );

    let traffic = Traffic::start(http, 2);
    let output = deploy();
    let report = traffic.stop();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(
        sides.log(),
        "start green\nstop blue\nstart blue\nstop green\n"
    );
    assert_eq!(served(http), ["blue".to_string()].into());
}

/// The same plan over two Nginx hosts through etcd, each with its agent: the canary moves both.
#[test]
fn the_example_plan_deploys_a_fleet_through_etcd() {
    let etcd = Etcd::start();
    let ports = (free_port(), free_port());
    let sides = HookedBackends::new();
    let plan_path = example_plan(&sides, ports);
    sides.start_now("blue", ports.0);
    let hosts: Vec<(Nginx, Agent, u16, tempfile::TempDir)> = (0..2)
        .map(|index| {
            let (http, state_dir) = (free_port(), worker_state_dir());
            let config = example_config(ports, http, state_dir.path());
            let nginx = Nginx::start(NginxOptions::full_config(config, 2));
            wait_for_healthy_blue(&nginx.path("shift.sock"));
            let agent = Agent::start(&etcd, &nginx.path("shift.sock"), &format!("web{index}"));
            (nginx, agent, http, state_dir)
        })
        .collect();

    // Both hosts take users while the controller (its own state directory) deploys.
    let controller_dir = tempfile::tempdir().unwrap();
    let traffic: Vec<Traffic> = hosts.iter().map(|host| Traffic::start(host.2, 1)).collect();
    let output = std::process::Command::new(harness::shiftctl_binary())
        .args(etcd.client_args())
        .arg("--state-dir")
        .arg(controller_dir.path())
        .arg("deploy")
        .arg(&plan_path)
        .output()
        .unwrap();
    for traffic in traffic {
        let report = traffic.stop();
        assert!(report.failed.is_empty(), "{report:?}");
    }
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(sides.log(), "start green\nstop blue\n");
    for host in &hosts {
        assert_eq!(served(host.2), ["green".to_string()].into());
    }
}

fn scaled(file: &str) -> String {
    let path = format!(
        "{}/examples/compose-scale/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"))
}

#[test]
fn the_scaled_example_rolls_its_replicas_with_local_processes_and_dnsmasq() {
    roll_the_scaled_example(
        Addresses::New,
        "start 127.0.0.5\nstop 127.0.0.2\nstart 127.0.0.6\nstop 127.0.0.3\nstart 127.0.0.7\nstop 127.0.0.4\n",
        &[5, 6, 7],
    );
}

/// As Docker does: each new replica gets the address of the one removed just before it, so
/// from the second step on the new replica is a known address that came back.
#[test]
fn the_scaled_example_rolls_replicas_that_take_removed_ones_addresses() {
    roll_the_scaled_example(
        Addresses::Reused,
        "start 127.0.0.5\nstop 127.0.0.2\nstart 127.0.0.2\nstop 127.0.0.3\nstart 127.0.0.3\nstop 127.0.0.4\n",
        &[5, 2, 3],
    );
}

/// Where the stand-in for Compose puts a new replica.
#[derive(PartialEq)]
enum Addresses {
    /// The next address never used.
    New,
    /// The address a removed replica had, when there is one.
    Reused,
}

/// The scaled example's plan rolled over three replicas 127.0.0.2–4 with local processes and
/// dnsmasq, the replicas placed as `addresses` says; `log` is what the hooks did, `ending` the
/// replicas serving at the end.
fn roll_the_scaled_example(addresses: Addresses, log: &str, ending: &[u8]) {
    let compose: serde_yaml::Value = serde_yaml::from_str(&scaled("docker-compose.yml")).unwrap();
    assert_eq!(
        compose["services"]["backend"]["environment"]["PORT"].as_str(),
        Some("8000")
    );
    assert!(
        compose["services"]["backend"]["network_mode"].is_null(),
        "the default network"
    );
    let config = scaled("nginx.conf");
    assert!(
        config.contains("resolver 127.0.0.11 valid=5s"),
        "Docker's DNS"
    );
    assert!(config.contains("server backend:8000 resolve;"));

    // `docker compose up -d --scale backend=3`: three replicas on their own IPs, one port, and
    // Docker's DNS answering the service name with them.
    let (port, http) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let dns = Dnsmasq::start(&[]);
    fs::write(dir.path().join("next"), "2").unwrap();
    let (d, hosts, dns_pid) = (dir.path().display(), dns.hosts_path().display(), dns.pid());
    fs::write(dir.path().join("free"), "").unwrap();
    let pick = match addresses {
        Addresses::New => format!("n=$(cat {d}/next); echo $((n + 1)) > {d}/next"),
        Addresses::Reused => format!(
            "n=$(head -n 1 {d}/free); sed -i 1d {d}/free; \
             if [ -z \"$n\" ]; then n=$(cat {d}/next); echo $((n + 1)) > {d}/next; fi"
        ),
    };
    let start = format!(
        "{pick}; \
         {backend} v$n 127.0.0.$n:{port} >/dev/null 2>&1 & echo $! > {d}/127.0.0.$n:{port}.pid; \
         echo \"127.0.0.$n backend\" >> {hosts}; kill -HUP {dns_pid}; echo start 127.0.0.$n >> {d}/log",
        backend = harness::backend_binary().display()
    );
    // The replica is gone, its address free, when the hook returns (as `docker rm -f`).
    let stop = format!(
        "ip=${{SHIFT_SERVER%:*}}; sed -i \"/^$ip /d\" {hosts}; kill -HUP {dns_pid}; \
         pid=$(cat {d}/$SHIFT_SERVER.pid); kill $pid; \
         while kill -0 $pid 2>/dev/null; do sleep 0.05; done; \
         echo ${{ip##*.}} >> {d}/free; echo stop $ip >> {d}/log"
    );
    for _ in 0..3 {
        assert!(std::process::Command::new("sh")
            .arg("-c")
            .arg(&start)
            .status()
            .unwrap()
            .success());
    }
    fs::write(dir.path().join("log"), "").unwrap();

    // The example's nginx.conf, with this machine's paths, ports and DNS server.
    let server_line = if harness::nginx_version() >= (1, 27, 3) {
        format!("server backend:{port} resolve;")
    } else {
        format!("shift_resolve backend:{port};")
    };
    let config = config
        .replace(
            "/etc/nginx/modules/libngx_http_shift_module.so",
            &module_path().display().to_string(),
        )
        .replace(
            "resolver 127.0.0.11 valid=5s",
            &format!("resolver 127.0.0.1:{} valid=1s", dns.port()),
        )
        .replace("server backend:8000 resolve;", &server_line)
        .replace("interval=2s", "interval=300ms")
        .replace("listen 80;", &format!("listen 127.0.0.1:{http};"))
        .replace("/run/nginx-shift/shift.sock", "{prefix}/shift.sock")
        .replace("/var/lib/nginx-shift", &dir.path().display().to_string());
    let nginx = Nginx::start(NginxOptions::full_config(config, 2));
    let admin = Admin::new(nginx.path("shift.sock"), "/api/");
    let taking = || admin.eligible("backend");
    let replicas = |ns: &[u8]| -> std::collections::BTreeSet<String> {
        ns.iter().map(|n| format!("127.0.0.{n}:{port}")).collect()
    };
    assert!(
        wait_until(Duration::from_secs(15), || taking() == replicas(&[2, 3, 4])).is_some(),
        "the three replicas take traffic: {:?}",
        admin.upstream("backend")
    );

    // The example's plan, with local hooks and 1 s watches.
    let plan = scaled("deploy.toml")
        .replace("\"./start-replica.sh\"", &format!("'{start}'"))
        .replace("\"./stop-replica.sh\"", &format!("'{stop}'"))
        // Shorter watches, and the quiet timeout the example's 30 s interval gives (10 x 30 s):
        // the tests' light traffic needs longer than 10 x 1 s for a step's 100 requests.
        .replace(
            "interval = \"30s\"",
            "interval = \"1s\"\nquiet_timeout = \"300s\"",
        )
        .replace("health_timeout = \"120s\"", "health_timeout = \"20s\"");
    let plan_path = dir.path().join("deploy.toml");
    fs::write(&plan_path, plan).unwrap();
    let traffic = Traffic::start(http, 1);
    let output = shiftctl_command(&[nginx.path("shift.sock")], Some(dir.path()))
        .arg("deploy")
        .arg(&plan_path)
        .output()
        .unwrap();
    let failed = traffic.stop().failed;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        failed.is_empty(),
        "failed requests during the rolling deploy: {failed:?}"
    );
    assert_eq!(fs::read_to_string(dir.path().join("log")).unwrap(), log);
    assert!(
        wait_until(Duration::from_secs(10), || taking() == replicas(ending)).is_some(),
        "the new replicas take the traffic: {:?}",
        admin.upstream("backend")
    );
    for entry in fs::read_dir(dir.path()).unwrap().flatten() {
        if entry.path().extension().is_some_and(|ext| ext == "pid") {
            if let Ok(pid) = fs::read_to_string(entry.path())
                .unwrap()
                .trim()
                .parse::<i32>()
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
    }
}
