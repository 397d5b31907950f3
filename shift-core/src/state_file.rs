//! The optional state file of `shift state=PATH`: the runtime weights and states of one
//! upstream, saved on every change (write to a temporary file, then rename) and read when the
//! zone has no state for the upstream (a start or restart, a binary upgrade). A file is checked
//! like an API request before anything in it is used: a file that fails is not applied at all.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use shift_wire::{PeerOrigin, PeerState};

use shift_wire::MAX_WEIGHT;

use crate::table::{CarriedPeer, Label, PeerConfig, MAX_GENERATION, NAME_CAPACITY};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedUpstream {
    pub upstream: String,
    pub generation: u64,
    pub peers: Vec<SavedPeer>,
    /// Its latest changes (`shift_history`) when it was saved, oldest first: a restart keeps
    /// them. Absent in files written before there was a history, or without one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<shift_wire::HistoryEntry>,
}

/// A peer's runtime values with the config line they were set under: on restore, a peer whose
/// config line has changed since takes the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedPeer {
    pub server: String,
    pub config_weight: u32,
    pub config_down: bool,
    pub backup: bool,
    pub weight: u32,
    pub state: PeerState,
    /// Absent in files written before peers could be added at run time.
    #[serde(default, skip_serializing_if = "is_config")]
    pub origin: PeerOrigin,
    /// The label its `shift_label` gave it, and the one it had (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// For a resolved peer, the id of the name it came from (`resolve::source_id` of
    /// `NAME:PORT`): after a restart the name's new addresses take its place (absent: 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub source: u64,
}

fn is_zero(source: &u64) -> bool {
    *source == 0
}

/// A saved label; `validate` refused files with invalid ones.
fn label_of(text: &Option<String>) -> Label {
    Label::parse(text.as_deref().unwrap_or("")).unwrap_or(Label::NONE)
}

fn is_config(origin: &PeerOrigin) -> bool {
    *origin == PeerOrigin::Config
}

impl SavedUpstream {
    pub fn new(upstream: &str, generation: u64, peers: &[CarriedPeer]) -> SavedUpstream {
        SavedUpstream {
            upstream: upstream.to_string(),
            generation,
            peers: peers
                .iter()
                .map(|peer| SavedPeer {
                    server: peer.config.server.clone(),
                    config_weight: peer.config.weight,
                    config_down: peer.config.down,
                    backup: peer.config.backup,
                    weight: peer.weight,
                    state: peer.state,
                    origin: peer.origin,
                    config_label: peer.config.label.to_wire(),
                    label: peer.label.to_wire(),
                    source: peer.source,
                })
                .collect(),
            history: Vec::new(),
        }
    }

    /// The saved peers as a reload would carry them (health and counters start afresh).
    pub fn carried(&self) -> Vec<CarriedPeer> {
        self.peers
            .iter()
            .map(|peer| CarriedPeer {
                config: PeerConfig {
                    server: peer.server.clone(),
                    weight: peer.config_weight,
                    down: peer.config_down,
                    backup: peer.backup,
                    label: label_of(&peer.config_label),
                },
                weight: peer.weight,
                state: peer.state,
                label: label_of(&peer.label),
                health: None,
                counters: None,
                origin: peer.origin,
                source: peer.source,
            })
            .collect()
    }
}

/// Why a state file is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read state file \"{path}\": {reason}")]
    Unreadable { path: String, reason: String },
    #[error("state file \"{path}\" is not valid: {reason}")]
    Invalid { path: String, reason: String },
}

impl SavedUpstream {
    /// Checks what the API would check before taking any of it: the upstream's name, the
    /// generation, each weight's range, and that no peer is named twice.
    pub fn validate(&self, upstream: &str) -> Result<(), String> {
        if self.upstream != upstream {
            return Err(format!(
                "it holds upstream \"{}\", not \"{upstream}\"",
                self.upstream
            ));
        }
        if self.generation > MAX_GENERATION {
            return Err(format!(
                "generation {} is above {MAX_GENERATION}",
                self.generation
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for peer in &self.peers {
            if peer.server.is_empty() || peer.server.len() > NAME_CAPACITY {
                return Err(format!(
                    "peer name \"{}\" is empty or longer than {NAME_CAPACITY} bytes",
                    peer.server
                ));
            }
            if !seen.insert(peer.server.as_str()) {
                return Err(format!("peer \"{}\" is listed twice", peer.server));
            }
            // A peer added at run time is placed again from the file alone: it must be an
            // address as the API writes it (a config line's name is the config's business).
            let canonical = peer
                .server
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|address| address.port() != 0 && address.to_string() == peer.server);
            if peer.origin != PeerOrigin::Config && !canonical {
                return Err(format!(
                    "peer \"{}\" was added at run time but is not an address IP:PORT",
                    peer.server.escape_default()
                ));
            }
            for label in [&peer.config_label, &peer.label].into_iter().flatten() {
                Label::parse(label).map_err(|err| format!("peer \"{}\": {err}", peer.server))?;
            }
            // The API allows 0..=MAX_WEIGHT; a config line may set more, and keeps it.
            let limit = MAX_WEIGHT.max(peer.config_weight);
            if peer.weight > limit {
                return Err(format!(
                    "weight {} of peer \"{}\" is out of range 0..={limit}",
                    peer.weight, peer.server
                ));
            }
        }
        Ok(())
    }
}

/// Writes `saved` to `path` atomically: a reader sees the old file or the new one, never half.
pub fn save(path: &Path, saved: &SavedUpstream) -> io::Result<()> {
    let mut json = serde_json::to_vec_pretty(saved).map_err(io::Error::other)?;
    json.push(b'\n');
    let mut file = tempfile::NamedTempFile::new_in(directory_of(path))?;
    // Readable by the operators, as before (a temporary file starts at 0600).
    fs::set_permissions(
        file.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    file.write_all(&json)?;
    file.as_file().sync_all()?;
    file.persist(path).map(drop).map_err(|err| err.error)
}

/// Reads the state file of `upstream` and validates it; `Ok(None)` when there is none yet.
pub fn load(path: &Path, upstream: &str) -> Result<Option<SavedUpstream>, StateFileError> {
    let display = path.display().to_string();
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => {
            return Err(StateFileError::Unreadable {
                path: display,
                reason: err.to_string(),
            })
        }
    };
    let invalid = |reason: String| StateFileError::Invalid {
        path: display.clone(),
        reason,
    };
    let saved: SavedUpstream =
        serde_json::from_slice(&bytes).map_err(|err| invalid(err.to_string()))?;
    saved.validate(upstream).map_err(invalid)?;
    Ok(Some(saved))
}

/// An exclusive lock on the directory of a state file, held while it is read or written. During
/// a binary upgrade the old binary's worker holds it while it checks that no new binary has
/// taken over and saves, and the new master while it reads the file: so the new master reads
/// every change the old workers acknowledged, and they acknowledge none after it read.
pub struct DirLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

/// Locks the directory the state file `path` is in (waits for another holder).
pub fn lock_dir(path: &Path) -> io::Result<DirLock> {
    lock_directory(directory_of(path))
}

/// The directory a state file is in.
pub fn directory_of(path: &Path) -> &Path {
    path.parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Locks `dir`. A process must not hold two locks on one directory: the second waits for the
/// first.
pub fn lock_directory(dir: &Path) -> io::Result<DirLock> {
    let file = fs::File::open(dir)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map(DirLock)
        .map_err(|(_, errno)| io::Error::from(errno))
}

/// A `state=` path as Nginx takes its own paths: a relative one from the prefix (`-p`), so
/// that a restart from another working directory finds the same file.
pub fn resolve(path: &Path, prefix: &Path) -> std::path::PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        prefix.join(path)
    }
}

/// What is wrong with the directory a state file will be written in, for the worker user
/// `uid`/`gid`: `Err` when it does not exist (every change would fail), `Ok(Some(warning))`
/// when its mode bits do not let that user write (a supplementary group may still allow it),
/// `Ok(None)` when it looks fine.
pub fn check_directory(path: &Path, uid: u32, gid: u32) -> Result<Option<String>, String> {
    use std::os::unix::fs::MetadataExt;
    let dir = directory_of(path);
    let meta = match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => meta,
        Ok(_) => return Err(format!("\"{}\" is not a directory", dir.display())),
        Err(err) => {
            return Err(format!(
                "the directory of state file \"{}\" cannot be used: \"{}\": {err}; create it, \
                 writable by the worker user",
                path.display(),
                dir.display()
            ))
        }
    };
    let mode = meta.mode();
    let writable = uid == 0
        || (meta.uid() == uid && mode & 0o200 != 0)
        || (meta.gid() == gid && mode & 0o020 != 0)
        || mode & 0o002 != 0;
    Ok((!writable).then(|| {
        format!(
            "the directory \"{}\" of state file \"{}\" is not writable by the worker user \
             (uid {uid}, gid {gid}), by its mode {:o}: every change through the API would fail",
            dir.display(),
            path.display(),
            mode & 0o7777
        )
    }))
}

/// Where a rejected state file is moved, so that it can be looked at and the next save does
/// not overwrite it.
pub fn rejected_path(path: &Path) -> std::path::PathBuf {
    let mut rejected = path.as_os_str().to_owned();
    rejected.push(".rejected");
    rejected.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.json");
        assert_eq!(load(&path, "app").unwrap(), None);
        let saved = SavedUpstream {
            history: Vec::new(),
            upstream: "app".into(),
            generation: 4,
            peers: vec![
                SavedPeer {
                    server: "127.0.0.1:8001".into(),
                    config_weight: 1,
                    config_down: true,
                    backup: false,
                    weight: 100,
                    state: PeerState::Up,
                    origin: PeerOrigin::Config,
                    config_label: Some("blue".into()),
                    label: Some("blue".into()),
                    source: 0,
                },
                SavedPeer {
                    server: "10.0.0.7:8000".into(),
                    config_weight: 5,
                    config_down: false,
                    backup: false,
                    weight: 5,
                    state: PeerState::Drain,
                    origin: PeerOrigin::Api,
                    config_label: None,
                    label: Some("green".into()),
                    source: 0,
                },
                SavedPeer {
                    server: "172.18.0.5:8000".into(),
                    config_weight: 1,
                    config_down: true,
                    backup: false,
                    weight: 3,
                    state: PeerState::Up,
                    origin: PeerOrigin::Resolved,
                    config_label: None,
                    label: None,
                    source: crate::resolve::source_id("backend_green:8000"),
                },
            ],
        };
        save(&path, &saved).unwrap();
        assert_eq!(load(&path, "app").unwrap(), Some(saved.clone()));
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o644, "readable by the operators");
        assert!(!dir.path().join("app.json.tmp").exists());
        assert_eq!(SavedUpstream::new("app", 4, &saved.carried()), saved);
    }

    #[test]
    fn relative_paths_are_taken_from_the_prefix() {
        let prefix = Path::new("/usr/local/nginx/");
        assert_eq!(
            resolve(Path::new("state/app.json"), prefix),
            Path::new("/usr/local/nginx/state/app.json")
        );
        assert_eq!(
            resolve(Path::new("/var/lib/a.json"), prefix),
            Path::new("/var/lib/a.json")
        );
    }

    #[test]
    fn a_missing_or_closed_directory_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope/app.json");
        let err = check_directory(&missing, 65534, 65534).unwrap_err();
        assert!(err.contains("nope") && err.contains("create it"), "{err}");

        let closed = dir.path().join("closed");
        fs::create_dir(&closed).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o755)).unwrap();
        let file = closed.join("app.json");
        let owner = std::os::unix::fs::MetadataExt::uid(&fs::metadata(&closed).unwrap());
        assert_eq!(
            check_directory(&file, owner, 0),
            Ok(None),
            "the owner may write"
        );
        let other = if owner == 65534 { 65533 } else { 65534 };
        let warning = check_directory(&file, other, 65534).unwrap().unwrap();
        assert!(
            warning.contains("not writable") && warning.contains("755"),
            "{warning}"
        );
        assert_eq!(check_directory(&file, 0, 0), Ok(None), "root may write");
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(check_directory(&file, other, 65534), Ok(None));
    }

    #[test]
    fn the_directory_lock_excludes_another_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.json");
        let held = lock_dir(&path).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _second = lock_dir(&path).unwrap();
            sender.send(()).unwrap();
        });
        let waited = receiver.recv_timeout(std::time::Duration::from_millis(200));
        assert!(waited.is_err(), "a second holder got the lock");
        drop(held);
        receiver
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the lock is free once dropped");
        waiter.join().unwrap();
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.json");
        fs::write(&path, "{not json").unwrap();
        let err = load(&path, "app").unwrap_err().to_string();
        assert!(
            err.contains("app.json") && err.contains("not valid"),
            "{err}"
        );
    }

    fn peer(server: &str, weight: u32) -> SavedPeer {
        SavedPeer {
            server: server.into(),
            config_weight: 1,
            config_down: false,
            backup: false,
            weight,
            state: PeerState::Up,
            origin: PeerOrigin::Config,
            config_label: None,
            label: None,
            source: 0,
        }
    }

    #[test]
    fn out_of_range_values_and_another_upstream_are_refused() {
        let good = SavedUpstream {
            history: Vec::new(),
            upstream: "app".into(),
            generation: 3,
            peers: vec![peer("a:1", 1000), peer("b:1", 0)],
        };
        assert_eq!(good.validate("app"), Ok(()));
        let cases = [
            (
                SavedUpstream {
                    peers: vec![peer("a:1", 99_999)],
                    ..good.clone()
                },
                "weight 99999",
            ),
            (
                SavedUpstream {
                    peers: vec![peer("a:1", u32::MAX)],
                    ..good.clone()
                },
                "out of range",
            ),
            (
                SavedUpstream {
                    generation: u64::MAX,
                    ..good.clone()
                },
                "generation",
            ),
            (
                SavedUpstream {
                    peers: vec![peer("a:1", 1), peer("a:1", 2)],
                    ..good.clone()
                },
                "twice",
            ),
            (
                SavedUpstream {
                    history: Vec::new(),
                    upstream: "other".into(),
                    ..good.clone()
                },
                "\"other\"",
            ),
            (
                SavedUpstream {
                    peers: vec![SavedPeer {
                        origin: PeerOrigin::Api,
                        ..peer("backend:8000", 1)
                    }],
                    ..good.clone()
                },
                "not an address IP:PORT",
            ),
            (
                SavedUpstream {
                    peers: vec![SavedPeer {
                        origin: PeerOrigin::Resolved,
                        ..peer("127.000.0.1:80", 1)
                    }],
                    ..good.clone()
                },
                "not an address IP:PORT",
            ),
        ];
        for (saved, expected) in cases {
            let err = saved.validate("app").unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn a_config_weight_above_the_api_range_may_be_kept() {
        let mut heavy = peer("a:1", 5000);
        heavy.config_weight = 5000;
        let saved = SavedUpstream {
            history: Vec::new(),
            upstream: "app".into(),
            generation: 1,
            peers: vec![heavy],
        };
        assert_eq!(saved.validate("app"), Ok(()));
    }
}
