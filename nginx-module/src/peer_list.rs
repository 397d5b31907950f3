//! FFI: each worker's own round-robin peer list for an upstream whose peers changed at run time.
//!
//! Round robin keeps, per request, a bitmap of the peers it tried, sized from the list's peer
//! count when the request starts; a list must therefore never change under a running request.
//! When a peer is added or removed, a worker builds a new list (copies of its configuration's
//! primary peers, the run-time peers, and the configuration's own backup list) and points its
//! copy of the upstream's `peer.data` at it. Requests already running keep the list they
//! started with: each holds a reference (dropped by a cleanup of the request's pool), and a
//! replaced list is freed when its last request ends. Until that moment the worker's record
//! shows the list's epoch, and a removed peer it holds keeps its place in the zone (see
//! `shift_core::reclaim`): no request ever reaches a freed peer.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ptr;

use ngx::ffi::{
    ngx_http_upstream_rr_peer_t, ngx_http_upstream_rr_peers_t, ngx_str_t, sockaddr, socklen_t,
};
use nix::sys::socket::{SockaddrLike, SockaddrStorage};
use shift_core::reclaim::HeldEpochs;
use shift_core::table::PeerSlot;

/// Stock Nginx's `server` defaults for a peer added at run time.
const MAX_FAILS: usize = 1;
const FAIL_TIMEOUT_SECONDS: i64 = 10;

/// A peer that goes into a new list.
pub enum Member {
    /// A primary peer of the configuration: copied from its round-robin peer.
    Config(*mut ngx_http_upstream_rr_peer_t),
    /// A backup peer of the configuration, kept in the configuration's own backup list.
    Backup(*mut ngx_http_upstream_rr_peer_t),
    /// A peer added at run time.
    Runtime,
}

/// One list, owned by the worker that built it.
pub struct PeerList {
    /// What round robin reads: the primary peers, with the configuration's backup list next.
    pub peers: ngx_http_upstream_rr_peers_t,
    entries: Vec<ngx_http_upstream_rr_peer_t>,
    /// Boxed: the entries point into them, and a growing vector would move them.
    #[allow(clippy::vec_box)]
    addresses: Vec<Box<SockaddrStorage>>,
    names: Vec<Box<[u8]>>,
    /// Every peer round robin can pick from this list, primaries then backups: its slot, its
    /// round-robin peer and its position in the load.
    pub slots: Vec<&'static PeerSlot>,
    pub rr_peers: Vec<*mut ngx_http_upstream_rr_peer_t>,
    pub positions: Vec<usize>,
    /// The zone's membership epoch when it was built, and its upstream's index among the
    /// load's tables.
    pub epoch: u64,
    table_index: usize,
    /// Requests that started with this list and have not ended.
    requests: usize,
    /// Replaced by a newer list: freed when its last request ends.
    retired: bool,
}

thread_local! {
    /// This worker's lists still alive: current ones and retired ones with requests.
    static LISTS: RefCell<Vec<*mut PeerList>> = const { RefCell::new(Vec::new()) };
}

impl PeerList {
    /// Builds a list from `members` (each with its slot and load position), on top of
    /// `original`, the configuration's own list.
    pub fn build(
        original: &ngx_http_upstream_rr_peers_t,
        members: &[(Member, &'static PeerSlot, usize)],
        epoch: u64,
        table_index: usize,
    ) -> *mut PeerList {
        let mut list = Box::new(PeerList {
            peers: *original,
            entries: Vec::new(),
            addresses: Vec::new(),
            names: Vec::new(),
            slots: Vec::new(),
            rr_peers: Vec::new(),
            positions: Vec::new(),
            epoch,
            table_index,
            requests: 0,
            retired: false,
        });
        let mut backups = Vec::new();
        for (member, slot, position) in members {
            slot.verify();
            let entry = match member {
                Member::Backup(rr_peer) => {
                    backups.push((*slot, *rr_peer, *position));
                    continue;
                }
                // SAFETY: the configuration's round-robin peers live as long as its cycle.
                Member::Config(rr_peer) => copy_of(unsafe { &**rr_peer }),
                Member::Runtime => {
                    // Not an address (a hand-edited state file): it takes no traffic, and
                    // the rest of the list still does.
                    let Some((storage, socklen)) = socket_address(slot.server()) else {
                        continue;
                    };
                    let name: Box<[u8]> = slot.server().as_bytes().into();
                    let entry = runtime_peer(&storage, socklen, &name, slot.config().weight);
                    list.addresses.push(storage);
                    list.names.push(name);
                    entry
                }
            };
            list.entries.push(entry);
            list.slots.push(*slot);
            list.positions.push(*position);
        }
        // The entries stay where they are from here on: link them.
        let count = list.entries.len();
        let base = list.entries.as_mut_ptr();
        for index in 0..count {
            // SAFETY: `index` and `index + 1` are within the vector's `count` elements.
            unsafe {
                (*base.add(index)).next = if index + 1 < count {
                    base.add(index + 1)
                } else {
                    ptr::null_mut()
                };
                list.rr_peers.push(base.add(index));
            }
        }
        for (slot, rr_peer, position) in backups {
            list.slots.push(slot);
            list.rr_peers.push(rr_peer);
            list.positions.push(position);
        }
        let total_weight: usize = list.entries.iter().map(|entry| entry.weight as usize).sum();
        let no_backup = original.next.is_null();
        list.peers.peer = if count == 0 { ptr::null_mut() } else { base };
        list.peers.number = count;
        list.peers.tries = count;
        list.peers.total_weight = total_weight;
        list.peers.set_single((count == 1 && no_backup) as u32);
        list.peers.set_weighted((total_weight != count) as u32);
        let list = Box::into_raw(list);
        LISTS.with(|lists| lists.borrow_mut().push(list));
        list
    }

    /// A request started with `list`.
    pub fn hold(list: *mut PeerList) {
        // SAFETY: a listed (not freed) list of this worker.
        unsafe { (*list).requests += 1 };
    }

    /// A request that held `list` ended.
    pub fn release(list: *mut PeerList) {
        // SAFETY: as `hold`; the worker is single-threaded.
        let done = unsafe {
            (*list).requests -= 1;
            (*list).retired && (*list).requests == 0
        };
        if done {
            free(list);
        }
    }

    /// `list` is replaced: freed now if no request holds it, else when the last one ends.
    pub fn retire(list: *mut PeerList) {
        // SAFETY: as `hold`.
        let idle = unsafe {
            (*list).retired = true;
            (*list).requests == 0
        };
        if idle {
            free(list);
        }
    }

    /// The slot and load position of the peer round robin chose from this list.
    pub fn find(
        &self,
        rr_peer: *mut ngx_http_upstream_rr_peer_t,
    ) -> Option<(&'static PeerSlot, usize)> {
        let index = self.rr_peers.iter().position(|&own| own == rr_peer)?;
        Some((self.slots[index], self.positions[index]))
    }
}

/// A request's hold on the list it started with, dropped with the request's pool.
pub struct ListHold(*mut PeerList);

impl ListHold {
    pub fn new(list: *mut PeerList) -> ListHold {
        PeerList::hold(list);
        ListHold(list)
    }
}

impl Drop for ListHold {
    fn drop(&mut self) {
        PeerList::release(self.0);
    }
}

/// The epochs of this worker's lists (current ones, and retired ones with requests) for the
/// load's table `table_index`.
pub fn held_epochs(table_index: usize) -> HeldEpochs {
    LISTS.with(|lists| {
        HeldEpochs::of(
            lists
                .borrow()
                .iter()
                // SAFETY: listed lists are not freed.
                .map(|&list| unsafe { &*list })
                .filter(|list| list.table_index == table_index)
                .map(|list| list.epoch),
        )
    })
}

fn free(list: *mut PeerList) {
    LISTS.with(|lists| lists.borrow_mut().retain(|&own| own != list));
    // SAFETY: made by `Box::into_raw` in `build`; no request holds it and it is no upstream's
    // current list any more.
    let list = unsafe { Box::from_raw(list) };
    for entry in &list.entries {
        if !entry.ssl_session.is_null() {
            // SAFETY: round robin keeps the TLS session it saved for a peer of an upstream
            // without `zone` (which `shift` refuses) as an `SSL_SESSION` it owns, and frees the
            // one it replaces: nobody else frees this one.
            unsafe { ngx::ffi::SSL_SESSION_free(entry.ssl_session.cast()) };
        }
    }
    let table_index = list.table_index;
    drop(list);
    crate::shm::publish_held(table_index, &held_epochs(table_index));
}

/// A configuration peer's copy for a new list: its passive-health state comes along; its
/// connection count (kept on the original by running requests) and its cached TLS session (freed
/// by whichever list replaces it) do not.
fn copy_of(original: &ngx_http_upstream_rr_peer_t) -> ngx_http_upstream_rr_peer_t {
    let mut entry = *original;
    entry.conns = 0;
    entry.ssl_session = ptr::null_mut();
    entry.ssl_session_len = 0;
    entry.next = ptr::null_mut();
    entry
}

/// The socket address of a run-time peer's name (`IP:PORT`), and its exact length: Nginx
/// copies `socklen` bytes of it (the keepalive cache into a `ngx_sockaddr_t`), so it must not
/// be the storage's full size.
pub fn socket_address(server: &str) -> Option<(Box<SockaddrStorage>, socklen_t)> {
    let (storage, len) = match server.parse::<SocketAddr>().ok()? {
        SocketAddr::V4(address) => (
            SockaddrStorage::from(address),
            std::mem::size_of::<nix::libc::sockaddr_in>(),
        ),
        SocketAddr::V6(address) => (
            SockaddrStorage::from(address),
            std::mem::size_of::<nix::libc::sockaddr_in6>(),
        ),
    };
    Some((Box::new(storage), len as socklen_t))
}

fn runtime_peer(
    address: &SockaddrStorage,
    socklen: socklen_t,
    name: &[u8],
    weight: u32,
) -> ngx_http_upstream_rr_peer_t {
    // SAFETY: an all-zero round-robin peer (null pointers, zero counts) is valid; Nginx's own
    // peers start from `ngx_pcalloc`.
    let mut entry: ngx_http_upstream_rr_peer_t = unsafe { MaybeUninit::zeroed().assume_init() };
    entry.sockaddr = address.as_ptr().cast::<sockaddr>().cast_mut();
    entry.socklen = socklen;
    let name = ngx_str_t {
        len: name.len(),
        data: name.as_ptr().cast_mut(),
    };
    entry.name = name;
    entry.server = name;
    entry.weight = weight as isize;
    entry.effective_weight = weight as isize;
    entry.max_fails = MAX_FAILS;
    entry.fail_timeout = FAIL_TIMEOUT_SECONDS;
    // No request until the table's routes are copied in, right after the list is built (a
    // drained or unhealthy peer must not take one meanwhile).
    entry.down = 1;
    entry
}
