//! What the admin API answers, wherever the request came from (an event loop's request in
//! `api_handler`, a connection an API thread accepted in `api_thread`): the status page, a whole
//! listing read a page per lock, or one request decided and applied under the zone's lock, with
//! the state file written once the lock is released.

use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::conf::MainConf;
use crate::shm::{api_view, still_serving, ApiView, NotServing};
use shift_core::api::{self, ApiContext, ApiRequest, Listing, Reply, Writer};
use shift_core::process::{own_token, token_alive};

/// The zone locked for the API, or what to answer instead: the 503 of a superseded worker, or
/// `None` when the zone cannot be read.
fn locked(main: &MainConf) -> Result<ApiView, Option<Reply>> {
    api_view(main).map_err(|not_serving| match not_serving {
        NotServing::Superseded(why) => Some(api::superseded_reply(why)),
        NotServing::NoZone => None,
    })
}

/// The uid and pid of the process at the other end of the Unix socket `socket`.
pub fn peer_credentials(socket: impl AsFd) -> Option<(u32, u32)> {
    getsockopt(&socket, PeerCredentials)
        .ok()
        .map(|credentials| (credentials.uid(), credentials.pid() as u32))
}

/// The answer to `request` when it is not a listing (see [`answer_whole`]); `None` when the
/// zone cannot be read.
pub fn answer(main: &MainConf, request: &ApiRequest) -> Option<Reply> {
    // The zone stays locked while the request is decided and applied (a configuration committed
    // meanwhile waits for the change, and the change sees the last committed configuration);
    // the state file is written once it is unlocked.
    let view = match locked(main) {
        Ok(view) => view,
        Err(instead) => return instead,
    };
    #[cfg(debug_assertions)]
    if request.method != "GET" {
        crate::shm::hold_zone_while_flagged();
    }
    let writer = Writer {
        pid: own_token(),
        is_alive: &token_alive,
    };
    let mut membership = view.membership();
    let answered = api::handle(
        request,
        &mut ApiContext {
            upstreams: &view,
            writer: &writer,
            zone: Some(view.usage()),
            membership: &mut membership,
        },
    );
    drop(view);
    Some(api::save::finish(answered, still_serving))
}

/// Whatever `request` asks, read and answered at once: the status page, a listing (the zone
/// locked for one page at a time), or [`answer`]. For a thread, which holds no event loop up.
pub fn answer_whole(main: &MainConf, request: &ApiRequest) -> Option<Reply> {
    if let Some(page) = api::status_page(request) {
        return Some(page);
    }
    match api::listing(request) {
        Some(listing) => whole_listing(main, listing),
        None => answer(main, request),
    }
}

/// Every page of `listing`, each under the zone's lock, then its rendering without it.
fn whole_listing(main: &MainConf, mut listing: Listing) -> Option<Reply> {
    loop {
        let view = match locked(main) {
            Ok(view) => view,
            Err(instead) => return instead,
        };
        let read = listing.step(&view, Some(view.usage()));
        drop(view);
        if read {
            break;
        }
    }
    while !listing.render_step() {}
    Some(listing.finish())
}
