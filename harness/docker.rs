//! Real Docker for the Compose tests: whether a daemon answers, the test images built from this
//! machine's own binaries (`FROM scratch`, nothing pulled), and Compose projects that are taken
//! down, containers, networks and volumes, when their guard drops, also after a failed test.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The label every test image carries, for `scripts/test.sh` to remove them at the end.
pub const IMAGE_LABEL: &str = "nginx-shift-test";

/// The vendored Nginx (1.28.3, so that `server NAME resolve` is the real directive), to run
/// with the module bind-mounted as the examples do.
pub const NGINX_IMAGE: &str = "nginx-shift-test/nginx:1.28.3";

/// The harness's backend answering with `version` on port 8000 (its name is the version).
pub fn backend_image(version: &str) -> String {
    format!("nginx-shift-test/backend:{version}")
}

/// The versions `backend_image` is built for, and the status each answers every request
/// with: `broken` is a bad release (its health checks fail too).
pub const BACKEND_VERSIONS: [(&str, u16); 3] = [("v1", 200), ("v2", 200), ("broken", 500)];

/// Whether the Compose tests can run here: a Docker daemon that answers and `docker-compose`.
/// `Err` says why not. Where `CI` is set they must run, so the caller panics instead of
/// skipping (see `require`).
pub fn available() -> Result<(), String> {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map_err(|err| format!("no docker command ({err}); install docker.io"))?;
    if !info.status.success() {
        return Err(format!(
            "no Docker daemon answers ({}); scripts/test.sh starts one as root",
            String::from_utf8_lossy(&info.stderr).trim()
        ));
    }
    match compose().arg("version").output() {
        Ok(output) if output.status.success() => Ok(()),
        _ => Err("no Compose command; install docker-compose".to_string()),
    }
}

/// Compose as the machine has it: the standalone `docker-compose` (Debian's package), else the
/// `docker compose` plugin. The examples' hooks choose the same way round.
pub fn compose() -> Command {
    let standalone = Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|output| output.status.success());
    if standalone {
        Command::new("docker-compose")
    } else {
        let mut command = Command::new("docker");
        command.arg("compose");
        command
    }
}

/// True when the Compose tests can run; otherwise prints why and returns false, or panics
/// where `CI` is set (CI must run them).
pub fn require(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(why) if std::env::var_os("CI").is_some() => {
            panic!("{test}: Docker is needed in CI: {why}")
        }
        Err(why) => {
            eprintln!("{test}: skipped: {why}");
            false
        }
    }
}

/// Runs `docker ARGS…`, panicking with its output when it fails.
pub fn docker(args: &[&str]) -> Output {
    crate::run_ok(Command::new("docker").args(args))
}

/// Builds the test images once per test process: Nginx and the backend's versions.
pub fn images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let nginx = PathBuf::from(env!("SHIFT_VENDORED_NGINX"));
        // The module too, for the libraries it needs: the examples bind-mount theirs over it.
        let module = crate::module_path();
        build(
            NGINX_IMAGE,
            &[
                (&nginx, "/usr/sbin/nginx"),
                (&module, "/etc/nginx/modules/libngx_http_shift_module.so"),
            ],
            // Nginx's compiled-in prefix holds its log, pid and temporary files; workers run as
            // `nobody`.
            &["/usr/local/nginx/logs", "/usr/local/nginx/conf"],
            r#"ENTRYPOINT ["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf", "-g", "daemon off;"]"#,
        );
        let backend = crate::backend_binary();
        for (version, status) in BACKEND_VERSIONS {
            build(
                &backend_image(version),
                &[(&backend, "/usr/bin/backend")],
                &[],
                &format!(
                    r#"ENTRYPOINT ["/usr/bin/backend", "{version}", "0.0.0.0:8000", "{status}"]"#
                ),
            );
        }
    });
}

/// An image from `binaries` (host path, path in the image), the libraries `ldd` lists for
/// them, `/etc/passwd` and `/etc/group` for `nobody`, and empty `dirs`.
fn build(tag: &str, binaries: &[(&Path, &str)], dirs: &[&str], entrypoint: &str) {
    let context = tempfile::tempdir().expect("a build context");
    let root = context.path().join("root");
    let mut libraries = BTreeSet::new();
    for (binary, inside) in binaries {
        copy(binary, &root.join(inside.trim_start_matches('/')));
        let ldd = crate::run_ok(Command::new("ldd").arg(binary));
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux… (0x…)"
            let path = line
                .split("=>")
                .last()
                .and_then(|rest| rest.split_whitespace().next())
                .filter(|path| path.starts_with('/'));
            libraries.extend(path.map(PathBuf::from));
        }
    }
    for library in &libraries {
        copy(library, &root.join(library.strip_prefix("/").unwrap()));
    }
    for dir in dirs {
        fs::create_dir_all(root.join(dir.trim_start_matches('/'))).unwrap();
    }
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        format!("FROM scratch\nCOPY root/ /\nLABEL {IMAGE_LABEL}=1\n{entrypoint}\n"),
    )
    .unwrap();
    docker(&[
        "build",
        "--quiet",
        "--tag",
        tag,
        &context.path().display().to_string(),
    ]);
}

fn copy(from: &Path, to: &Path) {
    fs::create_dir_all(to.parent().unwrap()).unwrap();
    // The library itself, not its symlink.
    fs::copy(from, to).unwrap_or_else(|err| panic!("copy {}: {err}", from.display()));
}

/// A Compose project of the test's own name, taken down with everything it created when
/// dropped. `env` is what its commands see, and what a hook that runs `docker-compose` needs
/// to act on it (`COMPOSE_PROJECT_NAME`, `COMPOSE_FILE`).
pub struct ComposeProject {
    pub name: String,
    pub env: Vec<(String, String)>,
}

impl ComposeProject {
    pub fn new(name: &str, files: &[PathBuf], env: &[(&str, String)]) -> ComposeProject {
        // Compose 1.x strips what is not a letter or digit from a project's name.
        let name = format!("shifttest{}{}", name, std::process::id());
        let mut all: Vec<(String, String)> = env
            .iter()
            .map(|(key, value)| (key.to_string(), value.clone()))
            .collect();
        all.push(("COMPOSE_PROJECT_NAME".into(), name.clone()));
        all.push((
            "COMPOSE_FILE".into(),
            files
                .iter()
                .map(|file| file.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        ));
        ComposeProject { name, env: all }
    }

    /// Compose `ARGS…` in this project, panicking when it fails.
    pub fn compose(&self, args: &[&str]) -> Output {
        crate::run_ok(self.command().args(args))
    }

    /// The last lines of `service`'s logs, for a failure's message.
    pub fn logs(&self, service: &str) -> String {
        let output = self
            .command()
            .args(["logs", "--no-color", "--tail", "30", service])
            .output();
        output.map_or_else(
            |err| err.to_string(),
            |output| String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    }

    fn command(&self) -> Command {
        let mut command = compose();
        command.envs(self.env.iter().map(|(key, value)| (key, value)));
        command
    }

    /// The addresses of the running containers of `service` on the project's network.
    pub fn addresses(&self, service: &str) -> BTreeSet<String> {
        let ids = self.compose(&["ps", "-q", service]);
        String::from_utf8_lossy(&ids.stdout)
            .split_whitespace()
            .map(|id| {
                let inspect = docker(&[
                    "inspect",
                    "-f",
                    "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                    id,
                ]);
                String::from_utf8_lossy(&inspect.stdout).trim().to_string()
            })
            .filter(|address| !address.is_empty())
            .collect()
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        let _ = self
            .command()
            .args(["down", "--volumes", "--remove-orphans", "--timeout", "1"])
            .output();
    }
}
