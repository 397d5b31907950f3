//! What shiftctl keeps in its state directory: the stable set `rollback` returns to, and the
//! flag `promote` leaves for a paused canary. Files are replaced whole, never half-written.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use shift_wire::{Upstream, UpstreamPatch};

use crate::commands::Ctx;
use crate::exit::Failure;
use crate::fleet::Fleet;
use crate::plan;

impl Ctx {
    pub(crate) fn stable_path(&self, upstream: &str) -> PathBuf {
        self.state_dir.join(format!("{upstream}.stable.json"))
    }

    /// Records the stable set (per Nginx) that `rollback` returns to: in the state directory,
    /// or with --etcd in etcd (one set, from the first host: every host is at the desired
    /// state then), where a rollback from any controller finds it.
    pub(crate) async fn save_stable(&self, upstreams: &[Upstream]) -> Result<(), Failure> {
        let width = self.fleet.width();
        let snapshots: Vec<UpstreamPatch> = upstreams[..width].iter().map(plan::snapshot).collect();
        let json = serde_json::to_vec_pretty(&snapshots).expect("JSON of wire types");
        let upstream = &upstreams[0].name;
        match &self.fleet {
            Fleet::Etcd(etcd) => Ok(etcd.store().put_stable(upstream, &json).await?),
            Fleet::Sockets(_) => write_file(&self.stable_path(upstream), &json),
        }
    }

    pub(crate) async fn load_stable(&self, upstream: &str) -> Result<Vec<UpstreamPatch>, Failure> {
        let path = self.stable_path(upstream);
        let missing = |why: String| {
            Failure::usage(anyhow::anyhow!(
                "no stable set recorded for upstream \"{upstream}\" ({why}); a switch or \
                 canary records one before it moves traffic"
            ))
        };
        let bytes = match &self.fleet {
            Fleet::Etcd(etcd) => etcd
                .store()
                .stable(upstream)
                .await?
                .ok_or_else(|| missing("none in etcd".to_string()))?,
            Fleet::Sockets(_) => {
                fs::read(&path).map_err(|err| missing(format!("{}: {err}", path.display())))?
            }
        };
        let snapshots: Vec<UpstreamPatch> = serde_json::from_slice(&bytes).map_err(|err| {
            Failure::usage(anyhow::anyhow!(
                "{} is not a stable set: {err}",
                path.display()
            ))
        })?;
        if snapshots.len() != self.fleet.width() {
            return Err(Failure::usage(anyhow::anyhow!(
                "{} was recorded for {} Nginx instance(s) (or 1 with --etcd), but this run has {}",
                path.display(),
                snapshots.len(),
                self.fleet.width()
            )));
        }
        Ok(snapshots)
    }

    /// Puts every Nginx back to the recorded stable set.
    pub(crate) async fn restore_stable(&self, upstream: &str) -> Result<Vec<Upstream>, Failure> {
        let snapshots = self.load_stable(upstream).await?;
        Ok(self
            .fleet
            .apply(upstream, |index, _| Ok(snapshots[index].clone()))
            .await?)
    }

    /// The flag `promote` writes and a paused canary waits for.
    pub(crate) fn promote_flag(&self, upstream: &str) -> PathBuf {
        self.state_dir.join(format!("{upstream}.promote"))
    }
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    // Written beside the file, synced, then renamed over it: a reader (or a crash) sees the
    // old file or the new one, never half of one.
    let write = || -> std::io::Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let mut file = tempfile::NamedTempFile::new_in(dir)?;
        // Readable by the other operators, as before (a temporary file starts at 0600).
        fs::set_permissions(
            file.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )?;
        file.write_all(bytes)?;
        file.as_file().sync_all()?;
        file.persist(path).map(drop).map_err(|err| err.error)
    };
    write().map_err(|err| {
        Failure::usage(anyhow::anyhow!(
            "cannot write {}: {err} (choose another --state-dir or SHIFT_STATE_DIR)",
            path.display()
        ))
    })
}
