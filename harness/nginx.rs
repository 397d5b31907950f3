//! A real Nginx with the module loaded, on a generated config in a temporary prefix.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use crate::{module_path, nginx_binary};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How to run Nginx. `http` is the body of the `http {}` block; `{prefix}` in it is replaced by
/// the temporary prefix directory (for Unix sockets and state files).
#[derive(Debug, Clone)]
pub struct NginxOptions {
    pub workers: u32,
    pub http: String,
    /// Lines for the main context, after the harness's own.
    pub main: String,
    /// A whole nginx.conf used as it is (`http` and `main` are then unused); it must load the
    /// module itself and not set `daemon`. Its `worker_processes` must match `workers`.
    pub full: Option<String>,
    /// Run as a daemon (`daemon on`), as init systems start Nginx: the master is then no child
    /// of the harness. Nginx honours a binary upgrade (USR2) only in a master whose parent has
    /// changed since it started, so the binary upgrade scenario needs it.
    pub daemon: bool,
    /// The error log's level (`info` unless set).
    pub log_level: &'static str,
    /// The Nginx to run instead of the one the tests were built for (`SHIFT_NGINX`), e.g. the
    /// package tests' `/usr/sbin/nginx`.
    pub binary: Option<PathBuf>,
    /// Run with the binary's own prefix (no `-p`), as an installed Nginx runs: relative paths
    /// such as a packaged `load_module modules/…;` then resolve where the package put them. The
    /// config still lives in the temporary prefix.
    pub installed_prefix: bool,
    /// Each worker's `worker_connections`.
    pub worker_connections: u32,
}

impl NginxOptions {
    pub fn new(http: impl Into<String>) -> NginxOptions {
        NginxOptions {
            workers: 2,
            http: http.into(),
            main: String::new(),
            full: None,
            daemon: false,
            log_level: "info",
            binary: None,
            installed_prefix: false,
            worker_connections: 1024,
        }
    }

    /// Runs a complete nginx.conf, as an operator would write it.
    pub fn full_config(config: impl Into<String>, workers: u32) -> NginxOptions {
        NginxOptions {
            workers,
            http: String::new(),
            main: String::new(),
            full: Some(config.into()),
            daemon: false,
            log_level: "info",
            binary: None,
            installed_prefix: false,
            worker_connections: 1024,
        }
    }

    /// Room for more connections than the default 1,024 per worker (a proxied WebSocket
    /// takes two).
    pub fn worker_connections(mut self, connections: u32) -> NginxOptions {
        self.worker_connections = connections;
        self
    }

    pub fn workers(mut self, workers: u32) -> NginxOptions {
        self.workers = workers;
        self
    }

    pub fn daemon(mut self) -> NginxOptions {
        self.daemon = true;
        self
    }

    pub fn binary(mut self, binary: impl Into<PathBuf>) -> NginxOptions {
        self.binary = Some(binary.into());
        self
    }

    pub fn installed_prefix(mut self) -> NginxOptions {
        self.installed_prefix = true;
        self
    }

    fn nginx(&self) -> PathBuf {
        self.binary.clone().unwrap_or_else(nginx_binary)
    }
}

/// A running Nginx master with its workers. Dropping it stops Nginx; when the test is failing,
/// the drop also prints Nginx's error log.
pub struct Nginx {
    prefix: TempDir,
    child: Option<Child>,
    /// The master a binary upgrade started, once the old one (`child`) has quit.
    adopted_master: Option<u32>,
    options: NginxOptions,
}

/// What `nginx -t` said about a config.
#[derive(Debug)]
pub struct ConfigCheck {
    pub ok: bool,
    pub output: String,
}

/// Runs `nginx -t` on the config these options generate.
pub fn check_config(options: &NginxOptions) -> ConfigCheck {
    let prefix = new_prefix();
    write_config(prefix.path(), options);
    let output = Command::new(options.nginx())
        .arg("-t")
        .args(prefix_args(prefix.path(), options))
        .output()
        .expect("run nginx -t");
    ConfigCheck {
        ok: output.status.success(),
        output: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl Nginx {
    /// Starts Nginx and waits until its listeners are open and its workers are running.
    pub fn start(options: NginxOptions) -> Nginx {
        Nginx::start_in(new_prefix(), options)
    }

    fn start_in(prefix: TempDir, options: NginxOptions) -> Nginx {
        write_config(prefix.path(), &options);
        let stderr = fs::File::create(prefix.path().join("logs/stderr.log")).expect("stderr log");
        let child = nginx_command(prefix.path(), &options)
            .stderr(stderr)
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx {
            prefix,
            child: Some(child),
            adopted_master: None,
            options,
        };
        if nginx.options.daemon {
            nginx.adopt_daemon();
        }
        nginx.wait_for_workers(&[]);
        nginx
    }

    /// As `start`, with directories made in the prefix first (mode 0777, so that workers that
    /// run as another user may write there), e.g. for a relative `state=` path.
    pub fn start_with_prefix_dirs(options: NginxOptions, dirs: &[&str]) -> Nginx {
        let prefix = new_prefix();
        for dir in dirs {
            let path = prefix.path().join(dir);
            fs::create_dir_all(&path).expect("a prefix directory");
            fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).expect("chmod");
        }
        Nginx::start_in(prefix, options)
    }

    /// The temporary prefix; `{prefix}` in the config.
    pub fn prefix(&self) -> &Path {
        self.prefix.path()
    }

    /// A path inside the prefix.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.prefix.path().join(relative)
    }

    pub fn master_pid(&self) -> u32 {
        self.adopted_master
            .unwrap_or_else(|| self.child.as_ref().expect("nginx is running").id())
    }

    /// Waits for a daemonising Nginx to hand over to its master, and takes the master's pid from
    /// the pid file.
    fn adopt_daemon(&mut self) {
        let mut launcher = self.child.take().expect("the launching process");
        let status = launcher.wait().expect("wait for nginx to daemonise");
        assert!(
            status.success(),
            "nginx did not start:\n{}",
            self.error_log()
        );
        let pid_file = self.path("logs/nginx.pid");
        let read_pid = || {
            fs::read_to_string(&pid_file)
                .ok()?
                .trim()
                .parse::<u32>()
                .ok()
        };
        let pid = crate::wait_for(STARTUP_TIMEOUT, read_pid)
            .unwrap_or_else(|| panic!("no pid file\n{}", self.error_log()));
        self.adopted_master = Some(pid);
    }

    /// The first half of a binary upgrade, as operators do it: USR2 to the master, which starts
    /// a new master (the same binary here) beside itself. Waits until the new master's workers
    /// run, and returns its pid; both generations serve until `finish_binary_upgrade`.
    pub fn begin_binary_upgrade(&mut self) -> u32 {
        let old = self.master_pid();
        self.signal(Signal::SIGUSR2);
        let workers = self.options.workers as usize;
        let new_master = || {
            children_of(old)
                .into_iter()
                .find(|&pid| children_of(pid).len() == workers)
        };
        crate::wait_for(STARTUP_TIMEOUT, new_master).unwrap_or_else(|| {
            panic!(
                "no new master with workers after USR2\n{}",
                self.error_log()
            )
        })
    }

    /// The second half: WINCH to the old master (its workers finish and exit), then QUIT; the
    /// new master is the one this harness runs from then on.
    pub fn finish_binary_upgrade(&mut self, new_master: u32) {
        let old = self.master_pid();
        let pid = Pid::from_raw(old as i32);
        kill(pid, Signal::SIGWINCH).expect("WINCH the old master");
        kill(pid, Signal::SIGQUIT).expect("QUIT the old master");
        let gone = crate::wait_until(STARTUP_TIMEOUT, || !shift_core::process::process_alive(old));
        assert!(
            gone.is_some(),
            "the old master did not quit\n{}",
            self.error_log()
        );
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        self.adopted_master = Some(new_master);
    }

    /// The error log so far.
    pub fn error_log(&self) -> String {
        fs::read_to_string(self.path("logs/error.log")).unwrap_or_default()
    }

    /// The pids of the master's worker processes.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.master_pid())
    }

    /// `nginx -s reload` with a new `http {}` body (or the same one): rewrites the config, signals
    /// the master, and waits until every old worker is gone and the new ones run.
    pub fn reload(&mut self, http: Option<&str>) {
        let old = self.begin_reload(http);
        self.finish_reload(&old);
    }

    /// The first half of `reload`: rewrites the config and signals the master, without waiting;
    /// returns the old workers' pids for `finish_reload`.
    pub fn begin_reload(&mut self, http: Option<&str>) -> Vec<u32> {
        if let Some(http) = http {
            self.options.http = http.to_string();
        }
        write_config(self.prefix(), &self.options);
        let old = self.worker_pids();
        self.signal(Signal::SIGHUP);
        old
    }

    /// `nginx -s reload` with a config that Nginx will refuse (say, a `listen` that cannot bind):
    /// waits until the master has logged why, and checks that the same workers still run. The
    /// config on disk is left as it is, so that the next `reload` starts from the good one.
    pub fn failed_reload(&mut self, http: &str) -> String {
        let good = self.options.http.clone();
        let log_before = self.error_log().len();
        let workers = self.worker_pids();
        self.options.http = http.to_string();
        write_config(self.prefix(), &self.options);
        self.options.http = good;
        self.signal(Signal::SIGHUP);
        let emerg_line = || {
            let log = self.error_log();
            let new = log.get(log_before..).unwrap_or_default();
            new.lines()
                .find(|line| line.contains("[emerg]"))
                .map(str::to_string)
        };
        let why = crate::wait_for(STARTUP_TIMEOUT, emerg_line).unwrap_or_else(|| {
            panic!(
                "the reload did not fail within {STARTUP_TIMEOUT:?}\n{}",
                self.error_log()
            )
        });
        write_config(self.prefix(), &self.options);
        assert_eq!(
            self.worker_pids(),
            workers,
            "a failed reload keeps the workers"
        );
        why
    }

    /// Waits until the workers in `old` are gone and the new ones run.
    pub fn finish_reload(&mut self, old: &[u32]) {
        self.wait_for_workers(old);
    }

    /// Stops Nginx and restarts it on the same prefix (state files survive, shared memory not).
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Stops Nginx, as a host that goes down; `start_again` brings it back on the same prefix.
    pub fn stop_for_now(&mut self) {
        self.stop();
    }

    /// Starts a stopped Nginx again on the same prefix and config.
    pub fn start_again(&mut self) {
        let stderr = fs::OpenOptions::new()
            .append(true)
            .open(self.path("logs/stderr.log"))
            .expect("stderr log");
        self.child = Some(
            nginx_command(self.prefix(), &self.options)
                .stderr(stderr)
                .spawn()
                .expect("restart nginx"),
        );
        self.wait_for_workers(&[]);
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(self.master_pid() as i32);
        kill(pid, signal).expect("signal the nginx master");
    }

    fn wait_for_workers(&mut self, old: &[u32]) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let pid_file = self.path("logs/nginx.pid");
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "nginx exited with {status} while starting\n--- stderr ---\n{}\n--- error.log ---\n{}",
                    fs::read_to_string(self.path("logs/stderr.log")).unwrap_or_default(),
                    self.error_log()
                );
            }
            let workers = self.worker_pids();
            let ready = pid_file.exists()
                && workers.len() == self.options.workers as usize
                && workers.iter().all(|pid| !old.contains(pid));
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not get {} fresh workers in {STARTUP_TIMEOUT:?} (have {workers:?}, \
                 old {old:?})\n--- error.log ---\n{}",
                self.options.workers,
                self.error_log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(pid) = self.adopted_master.take() {
            // Not our child (its parent was the old master): signal it and watch it go.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while shift_core::process::process_alive(pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if shift_core::process::process_alive(pid) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- nginx error.log ({}) ---\n{}--- end of error.log ---",
                self.path("logs/error.log").display(),
                self.error_log()
            );
        }
        self.stop();
    }
}

fn new_prefix() -> TempDir {
    let prefix = tempfile::Builder::new()
        .prefix("nginx-shift-")
        .tempdir()
        .expect("temp prefix");
    // Workers run as an unprivileged user when the tests run as root: let them in.
    fs::set_permissions(prefix.path(), fs::Permissions::from_mode(0o755)).expect("chmod prefix");
    fs::create_dir_all(prefix.path().join("logs")).expect("logs dir");
    fs::create_dir_all(prefix.path().join("conf")).expect("conf dir");
    prefix
}

fn prefix_args(prefix: &Path, options: &NginxOptions) -> Vec<String> {
    let config = vec![
        "-c".into(),
        prefix.join("conf/nginx.conf").display().to_string(),
    ];
    if options.installed_prefix {
        return config;
    }
    [vec!["-p".into(), format!("{}/", prefix.display())], config].concat()
}

/// The Nginx master, in the foreground. It gets SIGTERM when the thread that started it dies, so
/// a test or demo that is killed (or whose terminal hangs up, which Nginx would take for a
/// reload) leaves no Nginx behind.
fn nginx_command(prefix: &Path, options: &NginxOptions) -> Command {
    let mut command = Command::new(options.nginx());
    command
        .args(prefix_args(prefix, options))
        .args(daemon_args(options))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe system call (prctl).
    unsafe {
        command
            .pre_exec(|| nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(io::Error::from));
    }
    command
}

/// A whole config sets neither `daemon` nor runs in the foreground by itself.
fn daemon_args(options: &NginxOptions) -> Vec<&'static str> {
    if options.full.is_some() {
        vec!["-g", "daemon off;"]
    } else {
        Vec::new()
    }
}

fn write_config(prefix: &Path, options: &NginxOptions) {
    let prefix_text = prefix.display().to_string();
    if let Some(full) = &options.full {
        let config = full.replace("{prefix}", &prefix_text);
        fs::write(prefix.join("conf/nginx.conf"), config).expect("write nginx.conf");
        return;
    }
    let config = format!(
        "load_module {module};\n\
         daemon {daemon};\n\
         master_process on;\n\
         worker_processes {workers};\n\
         error_log {prefix}/logs/error.log {log_level};\n\
         pid {prefix}/logs/nginx.pid;\n\
         {main}\n\
         events {{ worker_connections {connections}; }}\n\
         http {{\n\
         access_log off;\n\
         {http}\n\
         }}\n",
        module = module_path().display(),
        workers = options.workers,
        connections = options.worker_connections,
        daemon = if options.daemon { "on" } else { "off" },
        log_level = options.log_level,
        prefix = prefix_text,
        main = options.main,
        http = options.http.replace("{prefix}", &prefix_text),
    );
    fs::write(prefix.join("conf/nginx.conf"), config).expect("write nginx.conf");
}

/// Pids whose parent is `parent`, read from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                // The command name is in parentheses and may hold spaces: the ppid is the second
                // field after the closing one.
                .and_then(|stat| stat.rsplit_once(')').map(|(_, rest)| rest.to_string()))
                .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect();
    pids.sort_unstable();
    pids
}
