//! Built Debian packages, read with `dpkg-deb` (fields, file lists, maintainer scripts,
//! extracted contents), and installed or purged with `dpkg` for the install test.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use tempfile::TempDir;

/// Where `scripts/package.sh` put the packages: `SHIFT_PACKAGES`, set by `scripts/test.sh`.
pub fn packages_dir() -> PathBuf {
    std::env::var_os("SHIFT_PACKAGES")
        .map(PathBuf::from)
        .expect(
            "SHIFT_PACKAGES is not set: run scripts/package.sh, then these tests with \
         SHIFT_PACKAGES=target/packages (scripts/test.sh does both)",
        )
}

/// One `.deb` file.
pub struct Deb {
    pub path: PathBuf,
}

impl Deb {
    /// The package named `name` in `SHIFT_PACKAGES` (its only version there).
    pub fn find(name: &str) -> Deb {
        let dir = packages_dir();
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| {
                let file = path.file_name().unwrap_or_default().to_string_lossy();
                file.starts_with(&format!("{name}_")) && file.ends_with(".deb")
            })
            .collect();
        assert_eq!(found.len(), 1, "want one {name}_*.deb in {}", dir.display());
        Deb {
            path: found.remove(0),
        }
    }

    /// A control field, e.g. `Depends`.
    pub fn field(&self, name: &str) -> String {
        let output = crate::run_ok(
            Command::new("dpkg-deb")
                .arg("--field")
                .arg(&self.path)
                .arg(name),
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// The paths it installs, as `dpkg-deb --contents` lists them, without the leading `.`:
    /// `/usr/lib/nginx/modules/ngx_http_shift_module.so`. Directories end with `/`.
    pub fn contents(&self) -> Vec<String> {
        let output = crate::run_ok(Command::new("dpkg-deb").arg("--contents").arg(&self.path));
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .map(|path| path.trim_start_matches('.').to_owned())
            .collect()
    }

    /// The files it installs (no directories).
    pub fn files(&self) -> Vec<String> {
        self.contents()
            .into_iter()
            .filter(|path| !path.ends_with('/'))
            .collect()
    }

    /// Its files unpacked into a temporary directory, as they would land under `/`.
    pub fn extract(&self) -> TempDir {
        self.unpack("--extract")
    }

    /// Its control files (`control`, `postinst`, …) unpacked into a temporary directory.
    pub fn control(&self) -> TempDir {
        self.unpack("--control")
    }

    fn unpack(&self, what: &str) -> TempDir {
        let dir = tempfile::tempdir().expect("temporary directory");
        crate::run_ok(
            Command::new("dpkg-deb")
                .arg(what)
                .arg(&self.path)
                .arg(dir.path()),
        );
        dir
    }
}

/// Whether dpkg has the package installed (not merely known, e.g. removed but not purged).
pub fn is_installed(package: &str) -> bool {
    let output = Command::new("dpkg-query")
        .args(["--show", "--showformat=${Status}", package])
        .output()
        .expect("run dpkg-query");
    String::from_utf8_lossy(&output.stdout).ends_with(" installed")
}

/// Whether dpkg knows the package at all: installed, or removed with its configuration kept.
pub fn is_known(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["--show", package])
        .output()
        .expect("run dpkg-query")
        .status
        .success()
}

/// Runs `dpkg` with these arguments and returns what it printed; panics if it fails.
pub fn dpkg(args: &[&OsStr]) -> String {
    let output = crate::run_ok(Command::new("dpkg").args(args));
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
