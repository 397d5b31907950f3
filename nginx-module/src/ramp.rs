//! FFI: slow start in a worker's round robin (`shift_core::slow_start`). When the worker copies
//! the table, a peer whose ramp runs gets the weight its ramp gives now; then, on each request
//! while any ramp runs, those peers' weights follow the clock (once per millisecond at most),
//! so that a peer's share grows continuously rather than in steps of a tick. While a ramp runs,
//! every peer of the upstream is weighed `RAMP_SCALE` times finer, so that a peer of weight 1
//! ramps too; when the last ramp ends, the weights are the table's again.

use shift_core::slow_start::RAMP_SCALE;
use shift_core::table::TableHeader;

use ngx::ffi::ngx_http_upstream_rr_peer_t;

use crate::conf::UpstreamConf;
use crate::peer_list::PeerList;
use crate::upstream_state::Placement;

/// After a copy of the table's routes (which set every peer's whole weight): notes the peers
/// that ramp, and weighs the upstream finely while any does.
pub fn start(conf: &mut UpstreamConf, header: &TableHeader, now_ms: u64) {
    let slow_start = header.slow_start();
    let routing = &mut conf.routing;
    routing.ramping.clear();
    routing.ramp_weights_ms = 0;
    routing.ramp_scaled = false;
    for (index, route) in routing.routes.iter().enumerate() {
        let slow_start = slow_start.with_window(route.ramp_window_ms);
        if route.eligible && slow_start.ramps(route.ramp_from_ms, now_ms) {
            routing.ramping.push(index);
        }
    }
    if conf.routing.ramping.is_empty() {
        return;
    }
    set_weights(conf, |weight| weight * RAMP_SCALE);
    conf.routing.ramp_scaled = true;
    follow(conf, header, now_ms);
}

/// On each request while a ramp runs: the ramping peers' weights as of `now_ms`; once the last
/// ramp ended, every peer's whole weight again.
pub fn follow(conf: &mut UpstreamConf, header: &TableHeader, now_ms: u64) {
    if conf.routing.ramping.is_empty() || conf.routing.ramp_weights_ms == now_ms {
        return;
    }
    conf.routing.ramp_weights_ms = now_ms;
    let slow_start = header.slow_start();
    let UpstreamConf {
        routing, placement, ..
    } = conf;
    let rr_peers = rr_peers(routing.list, placement);
    let routes = &routing.routes;
    routing.ramping.retain(|&index| {
        let (Some(route), Some(&peer)) = (routes.get(index), rr_peers.get(index)) else {
            return false;
        };
        let whole = route.weight * RAMP_SCALE;
        let weight = slow_start
            .with_window(route.ramp_window_ms)
            .effective_weight(whole, route.ramp_from_ms, now_ms);
        // SAFETY: the list's or the configuration's round-robin peers, alive while this worker
        // routes with them and touched only by this (single-threaded) worker.
        let peer = unsafe { &mut *peer };
        // What round robin took off after a failure stays off: it comes back a pick at a time.
        let shortfall = (peer.weight - peer.effective_weight).max(0);
        peer.weight = weight as isize;
        peer.effective_weight = (weight as isize - shortfall).max(0);
        weight < whole
    });
    if routing.ramping.is_empty() && routing.ramp_scaled {
        routing.ramp_scaled = false;
        set_weights(conf, |weight| weight);
    }
}

/// Sets every peer that takes requests to `weigh` of its table weight, as a copy does.
fn set_weights(conf: &mut UpstreamConf, weigh: impl Fn(u32) -> u32) {
    let UpstreamConf {
        routing, placement, ..
    } = conf;
    for (&peer, route) in rr_peers(routing.list, placement)
        .iter()
        .zip(&routing.routes)
    {
        if !route.eligible {
            continue;
        }
        // SAFETY: as in `follow`.
        let peer = unsafe { &mut *peer };
        peer.weight = weigh(route.weight) as isize;
        peer.effective_weight = peer.weight;
        peer.current_weight = 0;
    }
}

/// The round-robin peers the worker routes with now, in its routes' order: those of its own
/// `list` (`WorkerRouting::list`), or its configuration's.
fn rr_peers(list: *mut PeerList, placement: &Placement) -> &[*mut ngx_http_upstream_rr_peer_t] {
    // SAFETY: a non-null list is this worker's current one, alive while it is (longer than
    // the caller's use, within one request).
    match unsafe { list.as_ref() } {
        Some(list) => &list.rr_peers,
        None => &placement.rr_peers,
    }
}
