//! The state file, saved after a change and outside the zone's lock. A change is decided and
//! applied under the lock, which every worker's list rebuild, the metrics and the master's
//! reload also take; a write and an `fsync` there would stall them all on a slow disk, and a
//! worker killed mid-write would leave the lock behind. So the API takes a snapshot of the
//! upstream under the lock, right after applying, and the handler writes it once the lock is
//! released, before it answers: an acknowledged change is on disk.
//!
//! Writers of one upstream may finish in any order, so the file never goes backwards: under the
//! directory's lock a snapshot is written only when the file does not already hold a newer
//! generation. A newer snapshot was taken after this one's change was applied, so it holds it.

use std::path::PathBuf;

use super::{Endpoint, Failure, Reply};
use crate::history::Change;
use crate::state_file::{self, SavedUpstream};
use crate::table::Table;

/// A snapshot of an upstream to write to its state file once the zone is unlocked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSave {
    pub path: PathBuf,
    pub saved: SavedUpstream,
}

impl PendingSave {
    /// The upstream as `table` shows it now (its peers after the change), with its `history`
    /// as read under the table's lock, for an endpoint with a state file. Call under the zone's
    /// lock, right after applying.
    pub(super) fn of(
        endpoint: &Endpoint,
        table: Table,
        history: Vec<Change>,
    ) -> Option<PendingSave> {
        let path = endpoint.state_path?;
        let mut saved = SavedUpstream::new(table.name(), table.generation(), &table.carried());
        saved.history = history.iter().map(Change::to_wire).collect();
        Some(PendingSave {
            path: path.to_path_buf(),
            saved,
        })
    }
}

/// An answer, and the snapshot to save before sending it.
#[derive(Debug)]
pub struct Answered {
    pub reply: Reply,
    pub save: Option<PendingSave>,
}

/// Why a snapshot was not written.
#[derive(Debug)]
pub enum SaveError {
    /// `serving` said no: a newer Nginx binary took over, and may already have read the file.
    Superseded,
    NotSaved(std::io::Error),
}

/// Writes `pending` unless the file already holds a generation at least as new, under the
/// directory's lock; `serving`, asked under that lock, says whether this worker may still
/// acknowledge changes (a new binary reads the files under the same lock).
pub fn write(pending: &PendingSave, serving: impl FnOnce() -> bool) -> Result<(), SaveError> {
    let _dir = state_file::lock_dir(&pending.path).map_err(SaveError::NotSaved)?;
    if !serving() {
        return Err(SaveError::Superseded);
    }
    // A file that cannot be read or fails its checks is replaced.
    let on_disk = state_file::load(&pending.path, &pending.saved.upstream)
        .ok()
        .flatten()
        .map_or(0, |saved| saved.generation);
    if on_disk >= pending.saved.generation {
        return Ok(());
    }
    state_file::save(&pending.path, &pending.saved).map_err(SaveError::NotSaved)
}

/// The reply to send once `answered`'s snapshot, if any, was written: the answer itself, 503
/// when this worker no longer serves, or 500 when the file could not be written (the change is
/// in effect, and the next change that saves carries it to disk).
pub fn finish(answered: Answered, serving: impl FnOnce() -> bool) -> Reply {
    let Some(pending) = &answered.save else {
        return answered.reply;
    };
    match write(pending, serving) {
        Ok(()) => answered.reply,
        Err(SaveError::Superseded) => super::superseded_reply("a new Nginx binary took over"),
        Err(SaveError::NotSaved(err)) => Failure::new(
            500,
            "state_not_saved",
            format!(
                "the change is in effect but the state file \"{}\" could not be written ({err}): \
                 it will not survive a restart. Make the file's directory writable by the \
                 Nginx worker user; the next change saves the whole upstream",
                pending.path.display()
            ),
        )
        .into_reply(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::test_support::OwnedTable;

    fn pending(path: &std::path::Path, generation: u64, weight: u32) -> PendingSave {
        let owned = OwnedTable::new("app", &[("127.0.0.1:8000", weight, false)]);
        let mut saved = SavedUpstream::new("app", generation, &owned.view().carried());
        saved.generation = generation;
        PendingSave {
            path: path.to_path_buf(),
            saved,
        }
    }

    #[test]
    fn the_file_never_goes_back_to_an_older_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.json");
        let (older, newer) = (pending(&path, 4, 1), pending(&path, 5, 9));
        // The newer snapshot's writer got the directory first.
        write(&newer, || true).unwrap();
        write(&older, || true).unwrap();
        let on_disk = state_file::load(&path, "app").unwrap().unwrap();
        assert_eq!(on_disk, newer.saved);
        // In order, each one is written.
        let next = pending(&path, 6, 3);
        write(&next, || true).unwrap();
        assert_eq!(state_file::load(&path, "app").unwrap().unwrap(), next.saved);
    }

    /// A 200 answer whose upstream is to be saved to `path`.
    fn saving_ok(path: &std::path::Path) -> Answered {
        Answered {
            reply: Reply {
                status: 200,
                content_type: "application/json",
                body: "{}".into(),
                allow: None,
                headers: &[],
            },
            save: Some(pending(path, 2, 1)),
        }
    }

    #[test]
    fn a_superseded_worker_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.json");
        let answered = saving_ok(&path);
        let reply = finish(answered, || false);
        assert_eq!(reply.status, 503);
        assert!(!path.exists());
    }

    #[test]
    fn an_unwritable_file_says_the_change_is_in_effect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/app.json");
        let answered = saving_ok(&path);
        let reply = finish(answered, || true);
        assert_eq!(reply.status, 500);
        assert!(reply.body.contains("state_not_saved"), "{}", reply.body);
        assert!(reply.body.contains("in effect"), "{}", reply.body);
    }
}
