//! FFI: `shift_eject` in a worker (`shift_core::eject`). Each attempt's end is counted in its
//! peer's slot; the attempt that makes a run of failures long enough weighs the ejection under
//! the table's lock. The worker's tick lets peers back when their time is over. Both log what
//! they did, once: only the worker that changed the table does.

use ngx::ffi::{ngx_log_t, NGX_LOG_ERR, NGX_LOG_WARN};
use ngx::ngx_log_error;

use crate::conf::UpstreamConf;
use crate::peer_list::PeerList;
use shift_core::history::Actor;
use shift_core::process::{own_token, token_alive};
use shift_core::table::{Early, PeerSlot, Table};

/// After an attempt on `slot` ended (`failed` as Nginx says, `status` its response's), from the
/// request's `list` (null: the configuration's own peers).
pub fn after_attempt(
    conf: &UpstreamConf,
    list: *mut PeerList,
    slot: &'static PeerSlot,
    failed: bool,
    status: Option<u16>,
    log: *mut ngx_log_t,
) {
    let Some(args) = &conf.eject else {
        return;
    };
    if !slot.count_outcome(args.is_failure(failed, status), args.consecutive) {
        return;
    }
    let Some(table) = table_of(conf, list) else {
        return;
    };
    let Some(index) = table
        .peers()
        .iter()
        .position(|&peer| std::ptr::eq(peer, slot))
    else {
        return;
    };
    match table.eject(
        index,
        args,
        crate::clock::unix_ms(),
        own_token(),
        token_alive,
    ) {
        Ok(Some(ejected)) => {
            crate::shm::record_history(
                table.header(),
                Actor::Eject,
                vec![(
                    ejected.server.clone(),
                    "ejected",
                    "no".to_string(),
                    format!("for {} ms", ejected.for_ms),
                )],
            );
            ngx_log_error!(
                NGX_LOG_WARN,
                log,
                "shift: upstream \"{}\" peer {} ejected for {} ms after {} failed attempts in a \
                 row (ejection {})",
                table.name(),
                ejected.server,
                ejected.for_ms,
                args.consecutive,
                ejected.ejections
            );
        }
        Ok(None) => {}
        Err(err) => {
            ngx_log_error!(
                NGX_LOG_ERR,
                log,
                "shift: peer {} not ejected: {}",
                slot.server(),
                err
            );
        }
    }
}

/// From the worker's tick: lets back the upstream's peers whose ejection is over, or all of
/// them once a reload took its `shift_eject` away.
pub fn tick(conf: &UpstreamConf, log: *mut ngx_log_t) {
    let Some(table) = table_of(conf, conf.routing.list) else {
        return;
    };
    let now_ms = crate::clock::unix_ms();
    match table.end_ejections(conf.eject.as_ref(), now_ms, own_token(), token_alive) {
        Ok(returned) => {
            let back: Vec<_> = returned
                .iter()
                .map(|peer| {
                    let why = match peer.early {
                        Early::No => "no",
                        Early::Panic => "no (panic)",
                        Early::EjectionOff => "no (shift_eject off)",
                    };
                    (
                        peer.server.clone(),
                        "ejected",
                        "yes".to_string(),
                        why.to_string(),
                    )
                })
                .collect();
            crate::shm::record_history(table.header(), Actor::Eject, back);
            for peer in returned {
                ngx_log_error!(
                    NGX_LOG_WARN,
                    log,
                    "shift: upstream \"{}\" peer {} is back from its ejection{}",
                    table.name(),
                    peer.server,
                    match peer.early {
                        Early::No => "",
                        Early::Panic => " early: too few other peers take requests (panic)",
                        Early::EjectionOff => ": the upstream has no shift_eject any more",
                    }
                );
            }
        }
        // The next tick tries again.
        Err(err) => {
            ngx_log_error!(NGX_LOG_ERR, log, "shift: {}", err);
        }
    }
}

/// The table as this worker routes it: through `list`'s peers, or its configuration's.
fn table_of(conf: &UpstreamConf, list: *mut PeerList) -> Option<Table<'_>> {
    // SAFETY: `conf.placement.table` is null or a header the zone's init placed, allocated while
    // this configuration's load is live; a non-null `list` is the worker's current one or held
    // by the request that passes it, alive as long as the caller uses it.
    unsafe {
        let header = conf.placement.table.as_ref()?;
        let slots = match list.as_ref() {
            Some(list) => &list.slots,
            None => &conf.placement.slots,
        };
        Some(Table::new(header, slots))
    }
}
