//! Backends run as separate processes by shell hooks, the way `docker compose up -d` would run
//! containers: for deploy tests, whose hooks start and stop them.

use std::fs;
use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use crate::backend_binary;

/// A directory of hook logs and pid files; every backend process still running is killed on
/// drop.
pub struct HookedBackends {
    dir: TempDir,
}

impl HookedBackends {
    pub fn new() -> HookedBackends {
        HookedBackends {
            dir: TempDir::new().expect("hooks dir"),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the hooks logged, one `start SIDE` or `stop SIDE` a line.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir().join("hooks.log")).unwrap_or_default()
    }

    /// A shell command that logs `start $SHIFT_SIDE` and starts a backend named after the side on
    /// `port`, in the background.
    pub fn start_hook(&self, port: u16) -> String {
        let dir = self.dir().display();
        format!(
            "echo start $SHIFT_SIDE >> {dir}/hooks.log; {} $SHIFT_SIDE {port} >/dev/null 2>&1 & \
             echo $! > {dir}/$SHIFT_SIDE.pid",
            backend_binary().display()
        )
    }

    /// A shell command that logs `stop $SHIFT_SIDE` and stops that side's backend.
    pub fn stop_hook(&self) -> String {
        let dir = self.dir().display();
        format!("echo stop $SHIFT_SIDE >> {dir}/hooks.log; kill $(cat {dir}/$SHIFT_SIDE.pid)")
    }

    /// Starts `side` on `port` now, as a previous deploy would have left it (not logged).
    pub fn start_now(&self, side: &str, port: u16) {
        let status = Command::new("sh")
            .arg("-c")
            .arg(self.start_hook(port))
            .env("SHIFT_SIDE", side)
            .status()
            .expect("run the start hook");
        assert!(status.success(), "starting {side} failed");
        fs::write(self.dir().join("hooks.log"), "").expect("reset the hook log");
    }
}

impl Default for HookedBackends {
    fn default() -> Self {
        HookedBackends::new()
    }
}

impl Drop for HookedBackends {
    fn drop(&mut self) {
        let Ok(entries) = fs::read_dir(self.dir()) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|ext| ext == "pid") {
                if let Ok(pid) = fs::read_to_string(entry.path()) {
                    let _ = Command::new("kill").arg(pid.trim()).status();
                }
            }
        }
    }
}
