//! Allocator settings of the `pulse` binary (mimalloc is its global allocator).

/// `mi_option_purge_delay` in mimalloc's `mi_option_t` (mimalloc.h): how long
/// freed memory stays mapped before it is returned to the OS. The binding
/// crate does not name it, so the index is pinned here and checked by a test.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory is kept for reuse.
///
/// The gateway and the processor allocate and free buffers of a few hundred
/// KiB many times a second (request bodies, decoded batches, checkpoints).
/// With mimalloc's default of 10 ms those pages go back to the OS between two
/// requests and come back zero-filled by the kernel, which took 15 % of the
/// gateway's CPU time under load (BENCHMARKS.md, gateway → Kafka). A second
/// keeps them across requests and still returns memory soon after a burst.
const PURGE_DELAY_MS: std::os::raw::c_long = 1_000;

/// Applies the settings; call first thing in `main`.
pub fn configure() {
    // SAFETY: `mi_option_set` only stores an integer option; any value is valid.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_option_is_the_purge_delay() {
        // SAFETY: reading an option has no preconditions.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 10, "mimalloc's documented purge delay default");
        configure();
        // SAFETY: as above.
        let set = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(set, PURGE_DELAY_MS);
    }
}
