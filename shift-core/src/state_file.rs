//! The optional state file of `shift state=PATH`: the runtime weights and states of one
//! upstream, saved on every change (write to a temporary file, then rename) and read on start.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use shift_wire::PeerState;

use crate::table::{CarriedPeer, PeerConfig};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedUpstream {
    pub upstream: String,
    pub generation: u64,
    pub peers: Vec<SavedPeer>,
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
                })
                .collect(),
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
                },
                weight: peer.weight,
                state: peer.state,
                health: None,
                counters: None,
            })
            .collect()
    }
}

/// Writes `saved` to `path` atomically: a reader sees the old file or the new one, never half.
pub fn save(path: &Path, saved: &SavedUpstream) -> io::Result<()> {
    let mut json = serde_json::to_vec_pretty(saved).map_err(io::Error::other)?;
    json.push(b'\n');
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let mut file = fs::File::create(&temporary)?;
    file.write_all(&json)?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

/// Reads a state file; `Ok(None)` when there is none yet.
pub fn load(path: &Path) -> Result<Option<SavedUpstream>, String> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| format!("state file \"{}\" is not valid: {err}", path.display())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(format!(
            "cannot read state file \"{}\": {err}",
            path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.json");
        assert_eq!(load(&path).unwrap(), None);
        let saved = SavedUpstream {
            upstream: "app".into(),
            generation: 4,
            peers: vec![SavedPeer {
                server: "127.0.0.1:8001".into(),
                config_weight: 1,
                config_down: true,
                backup: false,
                weight: 100,
                state: PeerState::Up,
            }],
        };
        save(&path, &saved).unwrap();
        assert_eq!(load(&path).unwrap(), Some(saved.clone()));
        assert!(!dir.path().join("app.json.tmp").exists());
        assert_eq!(SavedUpstream::new("app", 4, &saved.carried()), saved);
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.json");
        fs::write(&path, "{not json").unwrap();
        let err = load(&path).unwrap_err();
        assert!(
            err.contains("app.json") && err.contains("not valid"),
            "{err}"
        );
    }
}
