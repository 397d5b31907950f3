//! What a change moved: a peer's values before and after, and whole tables compared by address.

use std::collections::{HashMap, HashSet};

/// A peer's values a change may move, read inside the table's write lock before and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    weight: u32,
    state: shift_wire::PeerState,
    label: crate::table::Label,
}

impl Snapshot {
    pub fn of(slot: &crate::table::PeerSlot) -> Snapshot {
        Snapshot {
            weight: slot.weight(),
            state: slot.state(),
            label: slot.label(),
        }
    }

    /// What differs in `after`: (field, old, new), in a fixed order.
    pub fn changes_to(&self, after: &Snapshot) -> Vec<(&'static str, String, String)> {
        let label = |label: crate::table::Label| label.to_wire().unwrap_or_default();
        let mut changes = Vec::new();
        if self.weight != after.weight {
            changes.push(("weight", self.weight.to_string(), after.weight.to_string()));
        }
        if self.state != after.state {
            changes.push((
                "state",
                self.state.as_str().to_string(),
                after.state.as_str().to_string(),
            ));
        }
        if self.label != after.label {
            changes.push(("label", label(self.label), label(after.label)));
        }
        changes
    }

    /// The values of a peer that joins or leaves, as `member` changes: its weight and state.
    pub fn describe(&self) -> String {
        format!("weight {} {}", self.weight, self.state.as_str())
    }
}

/// A peer as a whole-table change sees it: its address, whether it is a member (current), and
/// its values.
pub type Member = (String, bool, Snapshot);

/// What changed between two looks at a table's peers (by address): peers that joined or left
/// (`member`), and the values of those that stayed. Peers in neither look, or members in
/// neither, give nothing.
pub fn differences(
    before: &[Member],
    after: &[Member],
) -> Vec<(String, &'static str, String, String)> {
    // By address, so that a table of thousands of peers is compared in one pass.
    let earlier: HashMap<&str, &Member> = before
        .iter()
        .map(|member| (member.0.as_str(), member))
        .collect();
    let later: HashSet<&str> = after.iter().map(|(server, _, _)| server.as_str()).collect();
    let mut changes = Vec::new();
    for (server, current, values) in after {
        let was = earlier
            .get(server.as_str())
            .filter(|(_, was_current, _)| *was_current);
        match (was, current) {
            (None, true) => {
                changes.push((server.clone(), "member", String::new(), values.describe()))
            }
            (Some((_, _, old)), true) => {
                for (field, from, to) in old.changes_to(values) {
                    changes.push((server.clone(), field, from, to));
                }
            }
            (Some((_, _, old)), false) => {
                changes.push((server.clone(), "member", old.describe(), String::new()))
            }
            (None, false) => {}
        }
    }
    for (server, current, values) in before {
        if *current && !later.contains(server.as_str()) {
            changes.push((server.clone(), "member", values.describe(), String::new()));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_members_that_came_and_went_and_values_that_moved() {
        use shift_wire::PeerState;
        let snapshot = |weight, state| Snapshot {
            weight,
            state,
            label: crate::table::Label::NONE,
        };
        let before = vec![
            ("a:1".to_string(), true, snapshot(1, PeerState::Up)),
            ("b:1".to_string(), true, snapshot(1, PeerState::Up)),
            ("c:1".to_string(), false, snapshot(1, PeerState::Up)),
            ("gone:1".to_string(), true, snapshot(2, PeerState::Drain)),
        ];
        let after = vec![
            ("a:1".to_string(), true, snapshot(5, PeerState::Up)),
            ("b:1".to_string(), false, snapshot(1, PeerState::Up)),
            ("c:1".to_string(), true, snapshot(1, PeerState::Down)),
            ("new:1".to_string(), true, snapshot(3, PeerState::Up)),
        ];
        let seen: Vec<(String, &str, String, String)> = differences(&before, &after);
        let text: Vec<String> = seen
            .iter()
            .map(|(peer, field, old, new)| format!("{peer} {field} [{old}] [{new}]"))
            .collect();
        assert_eq!(
            text,
            [
                "a:1 weight [1] [5]",
                "b:1 member [weight 1 up] []",
                "c:1 member [] [weight 1 down]",
                "new:1 member [] [weight 3 up]",
                "gone:1 member [weight 2 drain] []",
            ]
        );
    }
}
