//! A real DNS server for name re-resolution tests: dnsmasq on a loopback port, answering from
//! a hosts file the test rewrites (SIGHUP makes it read the file again), standing in for
//! Docker's DNS at 127.0.0.11.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{free_port, wait_until};

pub struct Dnsmasq {
    child: Option<Child>,
    port: u16,
    hosts: PathBuf,
    _dir: TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq answering `records` (address, name) and nothing else.
    pub fn start(records: &[(&str, &str)]) -> Dnsmasq {
        let dir = TempDir::new().expect("a directory for dnsmasq");
        // dnsmasq reads the hosts file as the user it drops to.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let hosts = dir.path().join("hosts");
        let pid_file = dir.path().join("pid");
        let port = free_port();
        let mut dns = Dnsmasq {
            child: None,
            port,
            hosts,
            _dir: dir,
        };
        dns.write(records);
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                &format!("--port={port}"),
                &format!("--addn-hosts={}", dns.hosts.display()),
                &format!("--pid-file={}", pid_file.display()),
                "--log-facility=-",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run dnsmasq (apt-get install dnsmasq-base; scripts/test.sh does)");
        dns.child = Some(child);
        assert!(
            wait_until(Duration::from_secs(5), || pid_file.exists()).is_some(),
            "dnsmasq did not start"
        );
        dns
    }

    /// The UDP port it answers on, at 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The hosts file it answers from (`ADDRESS NAME` lines): a hook can change it, then send
    /// SIGHUP to `pid()`, as Docker's DNS learns of a container.
    pub fn hosts_path(&self) -> &std::path::Path {
        &self.hosts
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Answers `records` from now on.
    pub fn set(&self, records: &[(&str, &str)]) {
        self.write(records);
        if let Some(child) = &self.child {
            kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).expect("SIGHUP dnsmasq");
        }
    }

    /// Stops answering at all, as a DNS server that went away.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn write(&self, records: &[(&str, &str)]) {
        let text: String = records
            .iter()
            .map(|(address, name)| format!("{address} {name}\n"))
            .collect();
        fs::write(&self.hosts, text).expect("write the hosts file");
        fs::set_permissions(&self.hosts, fs::Permissions::from_mode(0o644)).unwrap();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
