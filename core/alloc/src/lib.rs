//! The allocator of every switchboard process (the server, its route workers, the bench).
//!
//! mimalloc: under concurrent ingest, glibc's malloc spent a quarter of the CPU in arena
//! locking and consolidation (see ARCHITECTURE.md, "Performance"). A binary links it by
//! calling [`tune`] first thing in `main`.

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's defaults suit a busy process, not an idle one. Freed memory goes back to the
/// kernel a second later, and then only once the thread that freed it allocates again,
/// which an idle server's threads don't; and its first arena is committed up front.
/// Measured on an idle server with an empty store: 15.8 MB of anonymous memory with the
/// defaults, 7 MB with these, and no measurable change under wrk (ARCHITECTURE.md,
/// "Performance"). Call it before the runtime starts its threads.
pub fn tune() {
    // Numbers from mimalloc's `mi_option_e`, the same in its v2 and v3 (the crate names
    // only some of them).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set` stores a value in mimalloc's option table; both options are
    // read at each use, so setting them while the process runs is supported.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

#[cfg(test)]
mod tests {
    #[allow(unsafe_code)]
    fn option(n: libmimalloc_sys::mi_option_t) -> std::ffi::c_long {
        // SAFETY: reading an option is a plain load from mimalloc's option table.
        unsafe { libmimalloc_sys::mi_option_get(n) }
    }

    /// The option numbers are right for the mimalloc this build links: the purge delay's
    /// default is a second (v3; 10 ms in v2), the arena's eager commit "on overcommit
    /// systems" (2), and `tune` sets both to zero.
    #[test]
    fn tune_sets_the_options_it_names() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert!(
                [1000, 10].contains(&option(15)),
                "purge delay is {}",
                option(15)
            );
        }
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            assert_eq!(option(4), 2);
        }
        super::tune();
        assert_eq!((option(4), option(15)), (0, 0));
    }
}
