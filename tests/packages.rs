//! The Debian packages that `scripts/package.sh` builds: their fields, their files, the module
//! they carry loaded into the Nginx it was built for, and (on request) a real install, use and
//! purge on this machine.
//!
//! They need the built packages, so they are ignored in a plain `cargo test`; `scripts/test.sh`
//! runs them after `scripts/package.sh`, with `SHIFT_PACKAGES=target/packages`. It skips
//! `nginx_org_module_serves_in_its_nginx` when there is no nginx.org source to build from, and
//! `installs_serves_removes_and_purges` unless `CI=true` or `SHIFT_TEST_INSTALL=1`, since that
//! one installs into the machine's own `/etc/nginx`.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::debian::{dpkg, is_installed, is_known, Deb};
use harness::{check_config, free_port, Backend, HttpClient, Nginx, NginxOptions};

const DEBIAN_NGINX: &str = "/usr/sbin/nginx";
const MODULE_SO: &str = "/usr/lib/nginx/modules/ngx_http_shift_module.so";
const AVAILABLE: &str = "/usr/share/nginx/modules-available/mod-http-shift.conf";
const ENABLED: &str = "/etc/nginx/modules-enabled/50-mod-http-shift.conf";
const ABI_SUBSTVARS: &str = "/usr/share/nginx/src/debian/libnginx-mod.abisubstvars";

/// A whole nginx.conf: `load` brings the module in, then one `shift` upstream in front of
/// `backend` on `port`, and the admin API on `{prefix}/shift.sock`.
fn config(load: &str, backend: &Backend, port: u16) -> String {
    format!(
        "{load}\n\
         worker_processes 1;\n\
         error_log {{prefix}}/logs/error.log info;\n\
         pid {{prefix}}/logs/nginx.pid;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
           access_log off;\n\
           upstream app {{ server {backend}; shift; }}\n\
           server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n\
           server {{ listen unix:{{prefix}}/shift.sock; location /api/ {{ shift_api; }} }}\n\
         }}\n",
        backend = backend.addr()
    )
}

/// Starts `options`' Nginx and checks that a request goes through the `shift` upstream.
fn serve(options: NginxOptions, backend: &Backend, port: u16) -> Nginx {
    let check = check_config(&options);
    assert!(check.ok, "nginx -t failed:\n{}", check.output);
    let nginx = Nginx::start(options);
    let response = HttpClient::new(port)
        .get("/")
        .expect("request through nginx");
    assert_eq!(
        (response.status, response.body.as_str()),
        (200, backend.name())
    );
    nginx
}

/// The ABI of Debian's nginx, as nginx-dev declares it to dh_nginx: `nginx-abi-1.22.1-7`.
fn debian_nginx_abi() -> String {
    let substvars = fs::read_to_string(ABI_SUBSTVARS)
        .unwrap_or_else(|err| panic!("{ABI_SUBSTVARS}: {err}; install nginx-dev"));
    substvars
        .lines()
        .find_map(|line| line.strip_prefix("nginx:abi="))
        .expect("nginx:abi in the substvars")
        .trim()
        .to_owned()
}

fn nginx_version(binary: &Path) -> String {
    let output = Command::new(binary).arg("-v").output().expect("nginx -v");
    let text = String::from_utf8_lossy(&output.stderr);
    text.trim()
        .strip_prefix("nginx version: nginx/")
        .unwrap_or_else(|| panic!("unexpected nginx -v: {text}"))
        .to_owned()
}

/// The maintainer scripts a package carries are executable and parse as sh.
fn assert_scripts_parse(deb: &Deb, scripts: &[&str]) {
    let control = deb.control();
    for script in scripts {
        let path = control.path().join(script);
        let mode = fs::metadata(&path)
            .unwrap_or_else(|err| panic!("{script}: {err}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable");
        let status = Command::new("sh").arg("-n").arg(&path).status().unwrap();
        assert!(status.success(), "{script} does not parse");
    }
}

#[test]
#[ignore = "needs scripts/package.sh's packages: scripts/test.sh runs it"]
fn debian_module_package_follows_dh_nginx() {
    let deb = Deb::find("libnginx-mod-http-shift");
    assert_eq!(deb.field("Depends"), debian_nginx_abi());
    assert_eq!(deb.field("Section"), "httpd");
    let files = deb.files();
    for expected in [
        MODULE_SO,
        AVAILABLE,
        "/usr/lib/tmpfiles.d/nginx-shift.conf",
        "/usr/share/doc/libnginx-mod-http-shift/directives.md",
        "/usr/share/doc/libnginx-mod-http-shift/copyright",
    ] {
        assert!(
            files.iter().any(|file| file == expected),
            "no {expected} in {files:?}"
        );
    }
    // Nothing under /etc: the link into modules-enabled is made by postinst, as dh_nginx does.
    assert!(!deb.contents().iter().any(|path| path.starts_with("/etc/")));

    let root = deb.extract();
    let snippet = fs::read_to_string(root.path().join(AVAILABLE.trim_start_matches('/'))).unwrap();
    assert_eq!(snippet, "load_module modules/ngx_http_shift_module.so;\n");
    assert_scripts_parse(&deb, &["postinst", "prerm", "postrm"]);
}

/// Loads the module that `deb` carries, unpacked, into `nginx`, and proxies a request.
fn serve_packaged_module(deb: &Deb, nginx: impl Into<PathBuf>) {
    let root = deb.extract();
    let module = root.path().join(MODULE_SO.trim_start_matches('/'));
    let backend = Backend::start("packaged");
    let port = free_port();
    let load = format!("load_module {};", module.display());
    let options = NginxOptions::full_config(config(&load, &backend, port), 1).binary(nginx);
    serve(options, &backend, port);
}

/// The packaged `.so` loads into Debian's own nginx, whose ABI it declares, and proxies.
#[test]
#[ignore = "needs scripts/package.sh's packages: scripts/test.sh runs it"]
fn debian_module_serves_in_debian_nginx() {
    serve_packaged_module(&Deb::find("libnginx-mod-http-shift"), DEBIAN_NGINX);
}

/// The nginx.org variant depends on the nginx.org package of the Nginx it was built against
/// (`SHIFT_NGINX_ORG`, built from the same source) and loads into that Nginx.
#[test]
#[ignore = "needs scripts/package.sh's packages and SHIFT_NGINX_ORG: scripts/test.sh runs it"]
fn nginx_org_module_serves_in_its_nginx() {
    let nginx: PathBuf = std::env::var_os("SHIFT_NGINX_ORG")
        .expect("SHIFT_NGINX_ORG: the Nginx the nginx.org package was built against")
        .into();
    let version = nginx_version(&nginx);
    let deb = Deb::find("nginx-module-shift");
    assert_eq!(deb.field("Depends"), format!("nginx-r{version}"));
    assert!(deb.field("Version").starts_with(&format!("{version}+")));
    assert!(deb.files().iter().any(|file| file == MODULE_SO));
    assert_scripts_parse(&deb, &["postinst", "prerm", "postrm"]);
    serve_packaged_module(&deb, nginx);
}

#[test]
#[ignore = "needs scripts/package.sh's packages: scripts/test.sh runs it"]
fn shiftctl_package_has_man_pages_and_completions() {
    let deb = Deb::find("shiftctl");
    let files = deb.files();
    let root = deb.extract();
    let shiftctl = root.path().join("usr/bin/shiftctl");
    let help = Command::new(&shiftctl).arg("--help").output().unwrap();
    assert!(help.status.success());

    // A page for the command and one for each command `--help` lists.
    let help = String::from_utf8_lossy(&help.stdout).into_owned();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|command| *command != "help")
        .collect();
    assert!(commands.contains(&"canary"), "{help}");
    let pages = std::iter::once("shiftctl".to_owned())
        .chain(commands.iter().map(|command| format!("shiftctl-{command}")));
    for page in pages {
        let path = format!("/usr/share/man/man1/{page}.1.gz");
        assert!(files.contains(&path), "no {path} in {files:?}");
        let text = gunzip(&root.path().join(path.trim_start_matches('/')));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }

    // bash completes commands and a command's options; zsh and fish get their scripts.
    let bash = root
        .path()
        .join("usr/share/bash-completion/completions/shiftctl");
    assert_eq!(complete(&bash, &["shiftctl", "can"]), ["canary"]);
    assert_eq!(
        complete(&bash, &["shiftctl", "canary", "--max-l"]),
        ["--max-latency-increase"]
    );
    for script in [
        "usr/share/zsh/vendor-completions/_shiftctl",
        "usr/share/fish/vendor_completions.d/shiftctl.fish",
    ] {
        let text = fs::read_to_string(root.path().join(script)).unwrap();
        assert!(text.contains("max-latency-increase"), "{script}");
    }
}

fn gunzip(path: &Path) -> String {
    let output = Command::new("gzip").arg("-dc").arg(path).output().unwrap();
    assert!(output.status.success(), "{} is not gzip", path.display());
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What bash's completion for shiftctl offers for these words (the last one being typed).
fn complete(script: &Path, words: &[&str]) -> Vec<String> {
    let words_list = words.join(" ");
    let program = format!(
        "source {script}; COMP_WORDS=({words_list}); COMP_CWORD={index}; \
         COMP_LINE='{words_list}'; COMP_POINT=${{#COMP_LINE}}; \
         _shiftctl shiftctl {current} {previous}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script = script.display(),
        index = words.len() - 1,
        current = words[words.len() - 1],
        previous = words[words.len() - 2],
    );
    let output = harness::run_ok(Command::new("bash").arg("-c").arg(program));
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

const PACKAGES: [&str; 2] = ["libnginx-mod-http-shift", "shiftctl"];

/// Purges the packages whatever happened, so that a failing test leaves the machine as it was.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        for package in PACKAGES {
            if is_known(package) {
                let _ = Command::new("dpkg").args(["--purge", package]).output();
            }
        }
    }
}

/// Installs both packages on this machine with dpkg, runs Debian's own nginx with the packaged
/// modules-enabled snippet and shiftctl from PATH, then removes and purges them.
#[test]
#[ignore = "installs into this machine's /etc/nginx: scripts/test.sh runs it in CI or with SHIFT_TEST_INSTALL=1"]
fn installs_serves_removes_and_purges() {
    let debs = PACKAGES.map(Deb::find);
    let files: Vec<String> = debs.iter().flat_map(Deb::files).collect();
    let _purge = PurgeOnDrop;
    for package in PACKAGES {
        if is_known(package) {
            dpkg(&["--purge".as_ref(), package.as_ref()]);
        }
    }

    let mut install: Vec<&OsStr> = vec!["--install".as_ref()];
    install.extend(debs.iter().map(|deb| deb.path.as_os_str()));
    dpkg(&install);
    assert_eq!(fs::read_link(ENABLED).unwrap(), Path::new(AVAILABLE));
    for path in &files {
        assert!(Path::new(path).exists(), "{path} not installed");
    }
    let state_dir = fs::metadata("/var/lib/nginx-shift").expect("/var/lib/nginx-shift");
    let www_data = nix::unistd::User::from_name("www-data").unwrap().unwrap();
    assert_eq!(
        state_dir.uid(),
        www_data.uid.as_raw(),
        "state files are written by the workers"
    );
    assert!(Path::new("/run/nginx-shift").is_dir());

    // The machine's own config now loads the module, and so does one that uses it.
    let system_check = Command::new(DEBIAN_NGINX).arg("-t").output().unwrap();
    assert!(
        system_check.status.success(),
        "{}",
        String::from_utf8_lossy(&system_check.stderr)
    );
    let backend = Backend::start("installed");
    let port = free_port();
    let load = "include /etc/nginx/modules-enabled/*.conf;";
    let options = NginxOptions::full_config(config(load, &backend, port), 1)
        .binary(DEBIAN_NGINX)
        .installed_prefix();
    let nginx = serve(options, &backend, port);

    let which = Command::new("sh")
        .args(["-c", "command -v shiftctl"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&which.stdout).trim(),
        "/usr/bin/shiftctl"
    );
    let status = Command::new("shiftctl")
        .arg("--socket")
        .arg(nginx.path("shift.sock"))
        .arg("status")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(table.contains(&backend.addr().to_string()), "{table}");
    drop(nginx);

    // Removing disables the module (the link is put aside, as dh_nginx does) and takes its files.
    dpkg(&[
        "--remove".as_ref(),
        PACKAGES[0].as_ref(),
        PACKAGES[1].as_ref(),
    ]);
    assert!(
        fs::symlink_metadata(ENABLED).is_err(),
        "{ENABLED} left enabled"
    );
    for path in &files {
        assert!(!Path::new(path).exists(), "{path} left after dpkg -r");
    }
    let system_check = Command::new(DEBIAN_NGINX).arg("-t").output().unwrap();
    assert!(
        system_check.status.success(),
        "nginx -t fails after dpkg -r"
    );

    // Purging leaves nothing: no link put aside, no state, no package known to dpkg.
    dpkg(&[
        "--purge".as_ref(),
        PACKAGES[0].as_ref(),
        PACKAGES[1].as_ref(),
    ]);
    for path in [
        format!("{ENABLED}.removed"),
        "/var/lib/nginx-shift".to_owned(),
        "/run/nginx-shift".to_owned(),
    ] {
        assert!(
            fs::symlink_metadata(&path).is_err(),
            "{path} left after purge"
        );
    }
    for package in PACKAGES {
        assert!(
            !is_installed(package) && !is_known(package),
            "{package} still known to dpkg"
        );
    }
}
