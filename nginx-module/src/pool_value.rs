//! FFI: a value placed in a request's pool and dropped when the pool goes, before any of the
//! pool's memory is freed (Nginx runs a pool's cleanups first). As `Pool::allocate`, but the
//! allocation is checked before anything is written to it: `Pool::allocate` (ngx 0.5) writes
//! the value first, through a null pointer when the pool is out of memory.

use std::ffi::c_void;

use ngx::core::Pool;
use ngx::ffi::ngx_pool_cleanup_add;

/// Moves `value` into `pool`; null (and `value` dropped) when the pool has no memory for it or
/// its cleanup.
pub fn place<T>(pool: &Pool, value: T) -> *mut T {
    // Room for the cleanup first: once the value is in the pool, it must be dropped by it.
    // SAFETY: a live pool of this worker.
    let cleanup = unsafe { ngx_pool_cleanup_add(pool.as_ptr(), 0) };
    if cleanup.is_null() {
        return std::ptr::null_mut();
    }
    let memory = pool.alloc(std::mem::size_of::<T>()).cast::<T>();
    if memory.is_null() || !memory.is_aligned() {
        return std::ptr::null_mut();
    }
    // SAFETY: `memory` is this pool's, sized and aligned for a `T`; the cleanup (added above,
    // with no handler yet) drops it when the pool goes, and nothing else does.
    unsafe {
        memory.write(value);
        (*cleanup).handler = Some(drop_value::<T>);
        (*cleanup).data = memory.cast();
    }
    memory
}

unsafe extern "C" fn drop_value<T>(data: *mut c_void) {
    // SAFETY: the value `place` wrote, dropped once, before the pool frees its memory.
    unsafe { std::ptr::drop_in_place(data.cast::<T>()) };
}
