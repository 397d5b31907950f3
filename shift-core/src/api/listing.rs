//! `GET upstreams` and `GET metrics`: every upstream, read a page at a time. The FFI handler
//! takes the zone's lock for one page and lets the worker's event loop run between pages, so a
//! zone of thousands of peers never holds traffic up for the whole answer; a small zone fits in
//! one page. Each upstream is read consistently on its own; a reload between two pages may add
//! or drop upstreams, and the listing goes on after the last name it read. The metrics' text
//! (about 100 lines a peer) is then rendered a part per turn too, without the lock.

use shift_wire::Upstream;

use super::{ok_json, Reply, Upstreams};
use crate::metrics::{self, Rendering, ZoneUsage};

/// Peers read per page: reading and encoding one takes a few microseconds, so a page stays well
/// under a millisecond.
pub const PAGE_PEERS: usize = 128;

/// Lines of metrics rendered per part once every upstream is read (about 80 bytes each).
pub const PAGE_LINES: usize = 2000;

/// What is listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `GET upstreams`: JSON, `shift_wire::UpstreamList`.
    Upstreams,
    /// `GET metrics`: Prometheus text, rendered once every upstream is read.
    Metrics,
}

/// A listing under way.
pub struct Listing {
    kind: ListKind,
    /// The last upstream read: the next page starts after it.
    last_name: Option<String>,
    /// `Upstreams`: the JSON so far, each upstream encoded as soon as it is read.
    json: String,
    /// `Metrics`: the upstreams read so far, then their text as it is rendered.
    wires: Vec<Upstream>,
    rendering: Option<Rendering>,
    /// Every upstream is read.
    read: bool,
    /// When it was asked for (Unix ms): where slow starts stand.
    now_ms: u64,
}

impl Listing {
    pub fn new(kind: ListKind, now_ms: u64) -> Listing {
        Listing {
            now_ms,
            kind,
            last_name: None,
            json: String::from("{\"upstreams\":["),
            wires: Vec::new(),
            rendering: None,
            read: false,
        }
    }

    /// Whether every upstream is read: what is left ([`render_step`](Self::render_step)) needs
    /// no lock.
    pub fn is_read(&self) -> bool {
        self.read
    }

    /// Reads the next page (at least one upstream, then until `PAGE_PEERS` peers are read);
    /// true once every upstream is read. Call under the zone's lock; `zone` is its usage now.
    pub fn step(&mut self, upstreams: &dyn Upstreams, zone: Option<ZoneUsage>) -> bool {
        self.read = self.read_page(upstreams);
        if self.read && self.kind == ListKind::Metrics {
            self.rendering = Some(Rendering::new(zone));
        }
        self.read
    }

    fn read_page(&mut self, upstreams: &dyn Upstreams) -> bool {
        let mut index = match &self.last_name {
            None => 0,
            Some(last) => first_after(upstreams, last),
        };
        let mut peers = 0;
        while peers < PAGE_PEERS {
            let Some(data) = upstreams.at(index) else {
                return true;
            };
            index += 1;
            let wire = data.endpoint(self.now_ms).wire();
            peers += wire.peers.len().max(1);
            self.last_name = Some(wire.name.clone());
            match self.kind {
                ListKind::Upstreams => {
                    if !self.json.ends_with('[') {
                        self.json.push(',');
                    }
                    // Plain values only: encoding cannot fail.
                    self.json
                        .push_str(&serde_json::to_string(&wire).unwrap_or_default());
                }
                ListKind::Metrics => self.wires.push(wire),
            }
        }
        index >= upstreams.count()
    }

    /// Renders the next part of the metrics once every upstream is read; true when the answer
    /// is ready (at once for `GET upstreams`).
    pub fn render_step(&mut self) -> bool {
        match &mut self.rendering {
            Some(rendering) => rendering.step(&self.wires, PAGE_LINES),
            None => true,
        }
    }

    /// Reads and renders everything at once: for small zones and the tests.
    pub fn run(mut self, upstreams: &dyn Upstreams, zone: Option<ZoneUsage>) -> Reply {
        while !self.step(upstreams, zone) {}
        while !self.render_step() {}
        self.finish()
    }

    /// The answer, once `step` and `render_step` said it is ready.
    pub fn finish(mut self) -> Reply {
        match (self.kind, self.rendering) {
            (ListKind::Metrics, Some(rendering)) => Reply {
                status: 200,
                content_type: metrics::CONTENT_TYPE,
                body: rendering.finish(),
                allow: None,
                headers: &[],
            },
            _ => {
                self.json.push_str("]}\n");
                ok_json(self.json)
            }
        }
    }
}

/// The index of the first upstream whose name sorts after `last`.
fn first_after(upstreams: &dyn Upstreams, last: &str) -> usize {
    let (mut low, mut high) = (0, upstreams.count());
    while low < high {
        let middle = low + (high - low) / 2;
        match upstreams.name_at(middle) {
            Some(name) if name <= last => low = middle + 1,
            _ => high = middle,
        }
    }
    low
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TableList;
    use crate::table::test_support::OwnedTable;
    use crate::table::test_support::NOW_MS;
    use shift_wire::UpstreamList;

    fn tables(count: usize, peers: usize) -> Vec<OwnedTable> {
        (0..count)
            .map(|index| {
                let servers: Vec<String> = (0..peers)
                    .map(|peer| format!("10.0.{index}.{peer}:80"))
                    .collect();
                let configs: Vec<(&str, u32, bool)> = servers
                    .iter()
                    .map(|server| (server.as_str(), 1, false))
                    .collect();
                OwnedTable::new(&format!("app{index:03}"), &configs)
            })
            .collect()
    }

    fn list_of(owned: &[OwnedTable]) -> TableList<'_> {
        TableList::new(owned.iter().map(|table| (table.view(), None)).collect())
    }

    fn names(reply: &Reply) -> Vec<String> {
        let list: UpstreamList = serde_json::from_str(&reply.body).unwrap();
        list.upstreams
            .into_iter()
            .map(|upstream| upstream.name)
            .collect()
    }

    #[test]
    fn pages_hold_a_bounded_number_of_peers_and_add_up_to_the_whole() {
        let owned = tables(100, 5);
        let upstreams = list_of(&owned);
        let mut listing = Listing::new(ListKind::Upstreams, NOW_MS);
        let mut pages = 1;
        while !listing.step(&upstreams, None) {
            pages += 1;
        }
        // 500 peers, at most PAGE_PEERS (rounded up to a whole upstream) per page.
        assert_eq!(pages, 500usize.div_ceil(PAGE_PEERS));
        let reply = listing.finish();
        let all = names(&reply);
        assert_eq!(all.len(), 100);
        assert!(all.windows(2).all(|pair| pair[0] < pair[1]));
        let whole = Listing::new(ListKind::Upstreams, NOW_MS).run(&upstreams, None);
        assert_eq!(reply, whole);
    }

    #[test]
    fn a_reload_between_pages_neither_repeats_nor_skips_a_name_it_keeps() {
        let owned = tables(60, 5);
        let mut listing = Listing::new(ListKind::Upstreams, NOW_MS);
        assert!(!listing.step(&list_of(&owned), None));
        // A reload drops the first ten upstreams and adds one that sorts first.
        let mut after: Vec<OwnedTable> = owned.into_iter().skip(10).collect();
        after.push(OwnedTable::new("a-new", &[("10.9.9.9:80", 1, false)]));
        while !listing.step(&list_of(&after), None) {}
        let all = names(&listing.finish());
        let mut unique = all.clone();
        unique.dedup();
        assert_eq!(unique, all, "a name listed twice");
        for kept in 26..60 {
            assert!(
                all.contains(&format!("app{kept:03}")),
                "app{kept:03} skipped"
            );
        }
    }

    #[test]
    fn an_upstream_with_more_peers_than_a_page_is_read_whole() {
        let owned = tables(3, PAGE_PEERS * 2);
        let upstreams = list_of(&owned);
        let mut listing = Listing::new(ListKind::Metrics, NOW_MS);
        let mut pages = 1;
        while !listing.step(&upstreams, None) {
            pages += 1;
        }
        assert_eq!(pages, 3);
        assert!(listing.is_read());
        let mut parts = 1;
        while !listing.render_step() {
            parts += 1;
        }
        // At least one upstream's lines of a family per part: the histograms' families alone
        // take a part per upstream.
        assert!(parts >= 2 * 3, "{parts} parts");
        let reply = listing.finish();
        assert!(reply.body.contains("upstream=\"app002\""), "{}", reply.body);
    }

    #[test]
    fn an_empty_zone_lists_nothing() {
        let upstreams = TableList::new(Vec::new());
        let reply = Listing::new(ListKind::Upstreams, NOW_MS).run(&upstreams, None);
        assert_eq!(reply.body, "{\"upstreams\":[]}\n");
    }
}
