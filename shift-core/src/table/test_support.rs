//! Tables in ordinary memory for the tests of this crate.

use super::*;

/// The Unix time tests change things at (a November 2023 millisecond).
pub(crate) const NOW_MS: u64 = 1_700_000_000_000;

/// A table in ordinary memory (leaked, as the zone would hold it for the process's life).
pub(crate) struct OwnedTable {
    pub(crate) header: &'static TableHeader,
    pub(crate) peers: Vec<&'static PeerSlot>,
    /// A history of 8 changes.
    pub(crate) history: crate::history::Ring<'static>,
}

impl OwnedTable {
    pub(crate) fn new(name: &str, peers: &[(&str, u32, bool)]) -> OwnedTable {
        let configs: Vec<PeerConfig> = peers
            .iter()
            .map(|&(server, weight, down)| PeerConfig {
                server: server.into(),
                weight,
                down,
                backup: false,
                label: Label::NONE,
            })
            .collect();
        OwnedTable::with_checks(name, &configs, CheckMode::Off)
    }

    pub(crate) fn checked(name: &str, peers: &[&str], checks: CheckMode) -> OwnedTable {
        let configs: Vec<PeerConfig> = peers
            .iter()
            .map(|server| PeerConfig {
                server: server.to_string(),
                weight: 1,
                down: false,
                backup: false,
                label: Label::NONE,
            })
            .collect();
        OwnedTable::with_checks(name, &configs, checks)
    }

    /// A table as a first configuration commits it.
    pub(crate) fn with_checks(name: &str, configs: &[PeerConfig], checks: CheckMode) -> OwnedTable {
        let header: &'static TableHeader =
            Box::leak(Box::new(TableHeader::new(name, checks).unwrap()));
        let peers: Vec<&'static PeerSlot> = configs
            .iter()
            .map(|config| &*Box::leak(Box::new(PeerSlot::new(config).unwrap())))
            .collect();
        let history = crate::history::Ring {
            written: Box::leak(Box::new(std::sync::atomic::AtomicU64::new(0))),
            records: Box::leak(
                (0..8)
                    .map(|_| Default::default())
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            ),
        };
        let owned = OwnedTable {
            header,
            peers,
            history,
        };
        owned
            .view()
            .lock(1, |_| true)
            .unwrap()
            .commit(checks, configs, &[], 1, NOW_MS);
        owned
    }

    pub(crate) fn view(&self) -> Table<'_> {
        Table::new(self.header, &self.peers)
    }
}

pub(crate) fn routes(table: Table) -> Vec<Route> {
    let mut routes = Vec::new();
    table
        .routes_if_changed(u64::MAX, &mut routes)
        .expect("a quiet table reads");
    routes
}

pub(crate) fn config(server: &str, weight: u32, down: bool) -> PeerConfig {
    PeerConfig {
        server: server.into(),
        weight,
        down,
        backup: false,
        label: Label::NONE,
    }
}

/// The route of an unlabelled, healthy peer.
pub(crate) fn route(weight: u32, eligible: bool) -> Route {
    Route {
        weight,
        eligible,
        pinnable: true,
        label: Label::NONE,
        ramp_from_ms: 0,
        ramp_window_ms: 0,
    }
}

/// A slot on the heap for `server` (weight 1, up), leaked as the zone keeps slots.
pub(crate) fn leaked_slot(server: &str) -> &'static PeerSlot {
    Box::leak(Box::new(PeerSlot::new(&config(server, 1, false)).unwrap()))
}
