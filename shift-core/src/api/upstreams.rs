//! What the API reads the zone through: one upstream found by name, or the upstreams one by one
//! in name order. The FFI module finds a name in the committed load's index (no walk of the
//! zone), so a request about one upstream costs what that upstream holds, whatever the zone's
//! size; the tests serve tables from ordinary memory.

use std::path::{Path, PathBuf};

use super::Endpoint;
use crate::history::Ring;
use crate::table::{PeerSlot, Table, TableHeader};

/// The current upstreams, under the zone's lock while the API uses them.
pub trait Upstreams {
    /// How many there are.
    fn count(&self) -> usize;
    /// The one named `name`.
    fn find(&self, name: &str) -> Option<UpstreamData<'_>>;
    /// The one at `index` in name order (`0..count()`).
    fn at(&self, index: usize) -> Option<UpstreamData<'_>>;
    /// The name of the one at `index` in name order, read without its peers.
    fn name_at(&self, index: usize) -> Option<&str>;
}

/// One current upstream as the API reads it: its header, its current peers in the committed
/// configuration's order, their requests in flight, and its state file.
pub struct UpstreamData<'z> {
    pub header: &'z TableHeader,
    pub peers: Vec<&'z PeerSlot>,
    /// Requests in flight on each of `peers`, summed over running workers.
    pub active: Vec<u64>,
    pub state_path: Option<PathBuf>,
    /// Its history (`shift_history`), when it keeps one.
    pub history: Option<Ring<'z>>,
}

impl UpstreamData<'_> {
    /// The upstream as a request that came at `now_ms` (Unix ms) works on it.
    pub fn endpoint(&self, now_ms: u64) -> Endpoint<'_> {
        Endpoint {
            table: Table::new(self.header, &self.peers),
            state_path: self.state_path.as_deref(),
            active: &self.active,
            now_ms,
            history: self.history,
        }
    }
}

/// Upstreams from tables the caller holds, sorted by name: the API's tests, and callers that
/// have their tables at hand.
pub struct TableList<'a> {
    tables: Vec<(Table<'a>, Option<&'a Path>, Option<Ring<'a>>)>,
}

impl<'a> TableList<'a> {
    pub fn new(tables: Vec<(Table<'a>, Option<&'a Path>)>) -> TableList<'a> {
        TableList::with_histories(
            tables
                .into_iter()
                .map(|(table, path)| (table, path, None))
                .collect(),
        )
    }

    /// As `new`, each table with its history ring, if it keeps one.
    pub fn with_histories(
        mut tables: Vec<(Table<'a>, Option<&'a Path>, Option<Ring<'a>>)>,
    ) -> TableList<'a> {
        tables.sort_by(|(a, _, _), (b, _, _)| a.name().cmp(b.name()));
        TableList { tables }
    }

    fn data(&self, index: usize) -> Option<UpstreamData<'a>> {
        let (table, state_path, history) = self.tables.get(index)?;
        Some(UpstreamData {
            header: table.header(),
            peers: table.peers().to_vec(),
            active: vec![0; table.peers().len()],
            state_path: state_path.map(Path::to_path_buf),
            history: *history,
        })
    }
}

impl Upstreams for TableList<'_> {
    fn count(&self) -> usize {
        self.tables.len()
    }

    fn find(&self, name: &str) -> Option<UpstreamData<'_>> {
        let index = self
            .tables
            .binary_search_by(|(table, _, _)| table.name().cmp(name))
            .ok()?;
        self.data(index)
    }

    fn at(&self, index: usize) -> Option<UpstreamData<'_>> {
        self.data(index)
    }

    fn name_at(&self, index: usize) -> Option<&str> {
        self.tables.get(index).map(|(table, _, _)| table.name())
    }
}
