//! The zone's side of adding and removing peers, in ordinary memory, for the API's tests.

use crate::table::{PeerConfig, PeerSlot, TableHeader};

use super::{Membership, PlaceError};

/// Places slots on the heap (leaked, as the zone keeps them), with room for `room` more (then
/// it answers as a full zone).
pub(crate) struct HeapMembership {
    pub(crate) room: usize,
    pub(crate) placed: Vec<&'static PeerSlot>,
    pub(crate) epoch: u64,
}

impl Default for HeapMembership {
    fn default() -> Self {
        HeapMembership {
            room: 8,
            placed: Vec::new(),
            epoch: 0,
        }
    }
}

impl Membership for HeapMembership {
    fn place(
        &mut self,
        table: &TableHeader,
        server: &str,
    ) -> Result<&'static PeerSlot, PlaceError> {
        if self.placed.len() >= self.room {
            return Err(PlaceError::ZoneFull(format!(
                "shared zone is full (no room for \"{}\" of upstream \"{}\"): set \
                 \"shift_zone\" larger",
                server,
                table.name()
            )));
        }
        let slot: &'static PeerSlot = Box::leak(Box::new(
            PeerSlot::new(&PeerConfig {
                server: server.to_string(),
                weight: 1,
                down: false,
                backup: false,
                label: crate::table::Label::NONE,
            })
            .map_err(|err| PlaceError::ZoneFull(err.to_string()))?,
        ));
        self.placed.push(slot);
        Ok(slot)
    }

    fn next_epoch(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch
    }
}
