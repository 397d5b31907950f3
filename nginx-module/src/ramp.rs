//! FFI: slow start in a worker's round robin (`shift_core::slow_start`). When the worker copies
//! the table, a peer whose ramp runs gets the weight its ramp gives now; then, on each request
//! while any ramp runs, those peers' weights follow the clock (once per millisecond at most),
//! so that a peer's share grows continuously rather than in steps of a tick. A peer whose ramp
//! ended routes with its whole weight and is followed no more.

use shift_core::table::TableHeader;

use crate::conf::UpstreamConf;

/// After a copy of the table's routes: sets the weights of the peers that ramp, and notes them
/// for `follow`.
pub fn start(conf: &mut UpstreamConf, header: &TableHeader, now_ms: u64) {
    let slow_start = header.slow_start();
    conf.routing.ramping.clear();
    if !slow_start.is_on() {
        return;
    }
    for (index, route) in conf.routing.routes.iter().enumerate() {
        let ramping = slow_start
            .ramp_ends_ms(route.ramp_from_ms)
            .is_some_and(|ends| route.eligible && now_ms < ends);
        if ramping {
            conf.routing.ramping.push(index);
        }
    }
    conf.routing.ramp_weights_ms = 0;
    follow(conf, header, now_ms);
}

/// On each request: the weights of the peers that ramp, as of `now_ms`.
pub fn follow(conf: &mut UpstreamConf, header: &TableHeader, now_ms: u64) {
    if conf.routing.ramping.is_empty() || conf.routing.ramp_weights_ms == now_ms {
        return;
    }
    conf.routing.ramp_weights_ms = now_ms;
    let slow_start = header.slow_start();
    let UpstreamConf {
        routing, placement, ..
    } = conf;
    // SAFETY: a non-null list is this worker's current one, alive while it is.
    let rr_peers = match unsafe { routing.list.as_ref() } {
        Some(list) => &list.rr_peers,
        None => &placement.rr_peers,
    };
    let routes = &routing.routes;
    routing.ramping.retain(|&index| {
        let (Some(route), Some(&peer)) = (routes.get(index), rr_peers.get(index)) else {
            return false;
        };
        let weight = slow_start.effective_weight(route.weight, route.ramp_from_ms, now_ms);
        // SAFETY: the list's or the configuration's round-robin peers, alive while this worker
        // routes with them and touched only by this (single-threaded) worker.
        let peer = unsafe { &mut *peer };
        peer.weight = weight as isize;
        peer.effective_weight = weight as isize;
        weight < route.weight
    });
}
