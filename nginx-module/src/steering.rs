//! FFI: a request steered to a chosen peer — by `shift_pin` (a peer or label it names) or by
//! `shift_sticky` (the same peer for the same key). The choice is `shift_core::pin`'s; round
//! robin then connects to the chosen peer.
//!
//! To make round robin take that peer without re-implementing it, every other primary peer is
//! marked as tried for the length of one call to round robin's `get` (and a standby peer that
//! a pin names is let up for it). Round robin then picks the one peer left and does all it
//! does for a pick: the connection's address and name, `conns`, `checked`, the peer's own
//! tried bit, and the `keepalive` cache found by that address. The other marks are taken back
//! at once, so a retry (`proxy_next_upstream`) sees what stock Nginx would: a sticky key goes
//! to its next choice, a pinned request to the normal pick.

use std::cell::Cell;

use ngx::ffi::{
    ngx_http_complex_value_t, ngx_http_upstream_rr_peer_data_t, ngx_http_upstream_rr_peer_t,
    ngx_http_upstream_rr_peers_t, ngx_int_t, ngx_peer_connection_t, ngx_time,
};
use ngx::http::Request;

use crate::conf::UpstreamConf;
use shift_core::pin::{choose_pinned, choose_sticky, Candidate};
use shift_core::sticky;
use shift_core::table::{PeerSlot, Route, TableHeader};

/// Tried bitmaps this module steers through, in words: up to 512 primary peers. A larger
/// upstream takes round robin's pick.
const MAX_WORDS: usize = 8;
const BITS: usize = usize::BITS as usize;

/// What steers one request, from its `shift_sticky` and `shift_pin` values.
#[derive(Clone, Copy, Default)]
pub struct Steering {
    /// The hash of a non-empty `shift_sticky` key.
    pub key: Option<u64>,
    /// A non-empty `shift_pin` value (in the request's pool), until its first attempt.
    pin: Option<(*const u8, usize)>,
}

impl Steering {
    /// Evaluates the upstream's `shift_sticky` and `shift_pin` for `request`.
    pub fn of(request: &Request, conf: &UpstreamConf) -> Steering {
        let value = |cv: *mut ngx_http_complex_value_t| {
            // SAFETY: a non-null value was compiled by `steering_conf` for this configuration.
            let cv = unsafe { cv.as_ref() }?;
            let value = request.get_complex_value(cv)?;
            (!value.is_empty()).then_some(value.as_bytes())
        };
        Steering {
            key: value(conf.sticky).map(sticky::hash),
            pin: value(conf.pin).map(|bytes| (bytes.as_ptr(), bytes.len())),
        }
    }

    pub fn is_steered(&self) -> bool {
        self.key.is_some() || self.pin.is_some()
    }
}

/// What the worker knows of its current list, aligned with its slots (primaries first).
pub struct ListView<'a> {
    pub header: &'a TableHeader,
    pub slots: &'a [&'static PeerSlot],
    pub rr_peers: &'a [*mut ngx_http_upstream_rr_peer_t],
    pub routes: &'a [Route],
    pub hashes: &'a [u64],
}

/// Steers this attempt if the request is steered and a peer is chosen: round robin's `get` is
/// called with every other primary peer marked as tried, and its result returned. `None`: the
/// caller calls round robin as usual.
///
/// SAFETY: `rrp` is round robin's data of the request, `primary` its primary list when the
/// request started, `pc` its peer connection, and `rr_get` round robin's `get`; `view`
/// describes the list `primary` belongs to.
pub unsafe fn get(
    steering: &mut Steering,
    view: &ListView,
    rrp: *mut ngx_http_upstream_rr_peer_data_t,
    primary: *mut ngx_http_upstream_rr_peers_t,
    pc: *mut ngx_peer_connection_t,
    rr_get: unsafe extern "C" fn(*mut ngx_peer_connection_t, *mut std::ffi::c_void) -> ngx_int_t,
) -> Option<ngx_int_t> {
    // Round robin's data is only read through the pointer here: round robin writes it (and
    // its bitmap, which may lie inside it) when it is called below.
    // SAFETY: per the contract.
    let (list, tried) = unsafe { ((*rrp).peers, (*rrp).tried) };
    // Once round robin went on to the backup list, it decides.
    if list != primary || tried.is_null() {
        return None;
    }
    let pin = steering.pin.take();
    // SAFETY: the primary list round robin walks; its peers live while the request holds it.
    let count = unsafe { (*primary).number };
    if count.div_ceil(BITS) > MAX_WORDS {
        return None;
    }
    let bitmap = Bitmap {
        words: tried,
        count,
    };
    // SAFETY: as above.
    let peers = || unsafe { primaries(primary, view) };
    // Nginx's cached time, as round robin reads it.
    let now = ngx_time();
    let candidates = || {
        peers().map(|(index, peer, own)| {
            // SAFETY: the list's peers, alive while the request holds it.
            let peer = unsafe { &*peer };
            candidate(
                view,
                own,
                usable(peer, bitmap.is_set(index), now),
                peer.weight,
            )
        })
    };
    let chosen = match pin {
        Some((value, len)) => {
            // SAFETY: the value lives in the request's pool, as long as the request.
            let value = unsafe { std::slice::from_raw_parts(value, len) };
            let key = steering.key.unwrap_or_else(spread_key);
            let chosen = choose_pinned(value, key, candidates);
            view.header.record_pin(chosen.is_some());
            chosen.or_else(|| {
                steering
                    .key
                    .and_then(|key| choose_sticky(key, candidates()))
            })
        }
        None => choose_sticky(steering.key?, candidates()),
    }?;
    let (index, peer, _) = peers().nth(chosen)?;
    Some(
        // SAFETY: per the contract; `peer` is the chosen primary peer at `index`.
        unsafe { isolated_get(rrp, pc, &bitmap, index, peer, rr_get) },
    )
}

/// The primary peers round robin walks, each with its index in the tried bitmap and its place
/// in `view` (`None` for the nameless placeholder of an upstream of names only).
///
/// SAFETY: `primary` is a live round-robin list that `view` describes.
unsafe fn primaries<'a>(
    primary: *mut ngx_http_upstream_rr_peers_t,
    view: &'a ListView<'a>,
) -> impl Iterator<Item = (usize, *mut ngx_http_upstream_rr_peer_t, Option<usize>)> + 'a {
    // SAFETY: per the contract.
    let first = unsafe { (*primary).peer };
    let mut own = 0;
    std::iter::successors((!first.is_null()).then_some(first), |&peer| {
        // SAFETY: a live peer of the list; its `next` ends the list with null.
        let next = unsafe { (*peer).next };
        (!next.is_null()).then_some(next)
    })
    .enumerate()
    .map(move |(index, peer)| {
        let place = (view.rr_peers.get(own) == Some(&peer)).then(|| {
            own += 1;
            own - 1
        });
        (index, peer, place)
    })
}

/// What round robin checks before it picks a peer, its state aside: not tried by this request,
/// not out after `max_fails` failures within `fail_timeout`, under `max_conns`.
fn usable(peer: &ngx_http_upstream_rr_peer_t, tried: bool, now: i64) -> bool {
    let failed = peer.max_fails != 0
        && peer.fails >= peer.max_fails
        && now - peer.checked <= peer.fail_timeout;
    let full = peer.max_conns != 0 && peer.conns >= peer.max_conns;
    !tried && !failed && !full
}

/// A primary peer as the choice sees it: `own` is its place in `view`. A peer that takes
/// requests weighs what round robin picks it by (`rr_weight`): the table's weight, or while a
/// slow start runs the ramped one, every peer's scaled alike (`ramp.rs`), so that sticky keys
/// move to a ramping peer as its weight grows, not all at once. Round robin's weight of a peer
/// that takes none is not kept up to date: the table's is used.
fn candidate<'a>(
    view: &'a ListView,
    own: Option<usize>,
    usable: bool,
    rr_weight: isize,
) -> Candidate<'a> {
    match own.and_then(|own| Some((view.slots.get(own)?, view.routes.get(own)?, own))) {
        Some((slot, route, own)) => Candidate {
            hash: view.hashes.get(own).copied().unwrap_or(0),
            server: slot.server_bytes(),
            label: route.label,
            weight: if route.eligible {
                u32::try_from(rr_weight).unwrap_or(0)
            } else {
                route.weight
            },
            eligible: route.eligible,
            pinnable: route.pinnable,
            usable,
        },
        // The placeholder: never chosen.
        None => Candidate {
            hash: 0,
            server: b"",
            label: shift_core::table::Label::NONE,
            weight: 0,
            eligible: false,
            pinnable: false,
            usable: false,
        },
    }
}

/// A key for a pinned request without a sticky one: consecutive requests spread over the
/// peers a label names.
fn spread_key() -> u64 {
    thread_local!(static NEXT: Cell<u64> = const { Cell::new(0) });
    NEXT.with(|next| {
        next.set(next.get().wrapping_add(1));
        sticky::hash(&next.get().to_le_bytes())
    })
}

/// The request's tried bitmap of the primary list's `count` peers, as round robin keeps it.
struct Bitmap {
    words: *mut usize,
    count: usize,
}

impl Bitmap {
    fn is_set(&self, index: usize) -> bool {
        // SAFETY: round robin sized the bitmap for at least `count` peers; `index` is one.
        unsafe { *self.words.add(index / BITS) & (1 << (index % BITS)) != 0 }
    }

    fn set(&self, index: usize) {
        // SAFETY: as `is_set`; the worker is single-threaded and nothing else holds it now.
        unsafe { *self.words.add(index / BITS) |= 1 << (index % BITS) };
    }

    fn save(&self) -> [usize; MAX_WORDS] {
        let mut saved = [0; MAX_WORDS];
        for (word, value) in saved.iter_mut().enumerate().take(self.count.div_ceil(BITS)) {
            // SAFETY: as `is_set`, for each word of `count` bits.
            *value = unsafe { *self.words.add(word) };
        }
        saved
    }

    fn restore(&self, saved: &[usize; MAX_WORDS]) {
        for (word, value) in saved.iter().enumerate().take(self.count.div_ceil(BITS)) {
            // SAFETY: as `save`.
            unsafe { *self.words.add(word) = *value };
        }
    }
}

/// Round robin's `get` with only the peer at `index` left to pick (let up if it was down),
/// then the bitmap as it was plus that peer's own bit. Should round robin not take it (it
/// checks what `usable` does, so it does not happen), the bitmap is put back and round robin
/// picks as usual.
///
/// SAFETY: as `get`; `bitmap` is the request's bitmap of the primary list, and `peer` the
/// primary peer at `index`.
unsafe fn isolated_get(
    rrp: *mut ngx_http_upstream_rr_peer_data_t,
    pc: *mut ngx_peer_connection_t,
    bitmap: &Bitmap,
    index: usize,
    peer: *mut ngx_http_upstream_rr_peer_t,
    rr_get: unsafe extern "C" fn(*mut ngx_peer_connection_t, *mut std::ffi::c_void) -> ngx_int_t,
) -> ngx_int_t {
    let saved = bitmap.save();
    for other in (0..bitmap.count).filter(|&other| other != index) {
        bitmap.set(other);
    }
    // SAFETY: per the contract: the request's own round-robin data and peers, touched only by
    // this (single-threaded) worker, put back before anything else runs.
    unsafe {
        let list = (*rrp).peers;
        let down = (*peer).down;
        (*peer).down = 0;
        let rc = rr_get(pc, rrp.cast());
        (*peer).down = down;
        if (*rrp).peers != list {
            return rc; // it went on to the backups, with a bitmap of their own
        }
        bitmap.restore(&saved);
        if rc == ngx::core::Status::NGX_OK.0 && (*rrp).current == peer {
            bitmap.set(index);
            return rc;
        }
        rr_get(pc, rrp.cast())
    }
}
