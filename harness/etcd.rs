//! A real etcd (Debian's `etcd-server`) on loopback ports the harness picks, with its data in
//! a temporary directory, and `shiftctl agent` processes beside the test's Nginx instances.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{free_port, shiftctl_binary, wait_until};

pub struct Etcd {
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
    /// With mutual TLS: the test CA's certificate, and a client certificate and key it signed.
    tls: Option<ClientTls>,
    /// More of etcd's options, e.g. a small `--quota-backend-bytes`.
    options: Vec<String>,
}

/// What a client of an etcd with mutual TLS presents.
pub struct ClientTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with(false, Vec::new())
    }

    /// An etcd that serves only TLS and accepts only clients with a certificate of the test CA
    /// the harness makes.
    pub fn start_with_mutual_tls() -> Etcd {
        Etcd::start_with(true, Vec::new())
    }

    /// An etcd whose database may grow to `bytes` only: past it, etcd raises its NOSPACE alarm
    /// and refuses writes.
    pub fn start_with_quota(bytes: u64) -> Etcd {
        Etcd::start_with(false, vec![format!("--quota-backend-bytes={bytes}")])
    }

    fn start_with(mutual_tls: bool, options: Vec<String>) -> Etcd {
        let dir = TempDir::new().expect("a directory for etcd");
        let tls = mutual_tls.then(|| make_test_ca(dir.path()));
        let mut etcd = Etcd {
            child: None,
            client_port: free_port(),
            peer_port: free_port(),
            dir,
            tls,
            options,
        };
        etcd.start_again();
        etcd
    }

    /// The client URL, e.g. `http://127.0.0.1:23790` (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The `shiftctl` options that reach it: `--etcd`, and the TLS files when it has TLS.
    pub fn client_args(&self) -> Vec<String> {
        let mut args = vec![format!("--etcd={}", self.url())];
        if let Some(tls) = &self.tls {
            args.push(format!("--etcd-ca={}", tls.ca.display()));
            args.push(format!("--etcd-cert={}", tls.cert.display()));
            args.push(format!("--etcd-key={}", tls.key.display()));
        }
        args
    }

    /// Starts it again after `stop`, on the same ports and data.
    pub fn start_again(&mut self) {
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = fs::File::create(self.dir.path().join("etcd.log")).expect("etcd log");
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            let dir = self.dir.path();
            command
                .arg(format!("--cert-file={}", dir.join("server.pem").display()))
                .arg(format!("--key-file={}", dir.join("server.key").display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.url()))
            .arg(format!("--advertise-client-urls={}", self.url()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .args(&self.options)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run etcd (apt-get install etcd-server; scripts/test.sh does)");
        self.child = Some(child);
        let ready = wait_until(Duration::from_secs(20), || {
            self.etcdctl(&["endpoint", "health"]).is_some()
        });
        assert!(ready.is_some(), "etcd did not start:\n{}", self.log());
    }

    /// Stops it (SIGTERM), as an etcd restart or outage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Runs `etcdctl` against it; its output, or None if it failed.
    pub fn etcdctl(&self, args: &[&str]) -> Option<String> {
        let mut command = Command::new("etcdctl");
        command
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.url()));
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cacert={}", tls.ca.display()))
                .arg(format!("--cert={}", tls.cert.display()))
                .arg(format!("--key={}", tls.key.display()));
        }
        let output = command
            .args(args)
            .output()
            .expect("run etcdctl (apt-get install etcd-client; scripts/test.sh does)");
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let status = self
            .etcdctl(&["endpoint", "status", "--write-out=json"])
            .expect("etcdctl endpoint status");
        let json: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
        json[0]["Status"]["header"]["revision"]
            .as_i64()
            .expect("a revision in the status")
    }

    /// Compacts the history up to the current revision: a watch from before it fails.
    pub fn compact(&self) -> i64 {
        let revision = self.revision();
        self.etcdctl(&["compact", &revision.to_string(), "--physical"])
            .expect("etcdctl compact");
        revision
    }
}

/// A test CA in `dir` with a server certificate for 127.0.0.1 and a client certificate, made
/// with the openssl command.
fn make_test_ca(dir: &Path) -> ClientTls {
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("run openssl (apt-get install openssl; scripts/test.sh does)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &[
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=nginx-shift test CA",
            ],
            &key[..],
            &["-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    for (name, extension) in [
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ] {
        let (key_file, pem) = (format!("{name}.key"), format!("{name}.pem"));
        openssl(
            &[
                &["req", "-subj", &format!("/CN={name}")],
                &key[..],
                &["-keyout", &key_file, "-out", &format!("{name}.csr")],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-extfile",
            &extension_file(dir, name, extension),
        ]);
    }
    ClientTls {
        ca: dir.join("ca.pem"),
        cert: dir.join("client.pem"),
        key: dir.join("client.key"),
    }
}

/// A file holding one X.509 v3 extension line, for `openssl x509 -extfile`.
fn extension_file(dir: &Path, name: &str, extension: &str) -> String {
    let path = dir.join(format!("{name}.ext"));
    fs::write(&path, format!("{extension}\n")).expect("extension file");
    path.display().to_string()
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- etcd log ---\n{}--- end of etcd log ---", self.log());
        }
        self.stop();
    }
}

/// `shiftctl agent` beside one Nginx, its stderr kept in a file.
pub struct Agent {
    child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
    _dir: TempDir,
}

impl Agent {
    /// Starts the agent of `host` for the Nginx whose admin API is at `socket`, with a short
    /// lease and tick so that tests see changes quickly.
    pub fn start(etcd: &Etcd, socket: &Path, host: &str) -> Agent {
        let dir = TempDir::new().expect("a directory for the agent's log");
        let mut args = etcd.client_args();
        args.extend([
            format!("--socket={}", socket.display()),
            "agent".to_string(),
            format!("--host={host}"),
            "--lease=2s".to_string(),
            "--every=200ms".to_string(),
        ]);
        let mut agent = Agent {
            child: None,
            args,
            log: dir.path().join("agent.log"),
            _dir: dir,
        };
        agent.start_again();
        agent
    }

    /// Starts it again after `kill`, appending to the same log.
    pub fn start_again(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("agent log");
        let child = Command::new(shiftctl_binary())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run shiftctl agent");
        self.child = Some(child);
    }

    /// Kills it (SIGKILL): no goodbye, its lease runs out.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}--- end of agent log ---", self.log());
        }
        self.kill();
    }
}
