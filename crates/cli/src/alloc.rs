//! The process's memory allocator: mimalloc, told to keep freed memory for reuse.
//!
//! A training step or a long prefill allocates and frees thousands of activation-sized
//! tensors. glibc's malloc serves every block over 128 KiB with a fresh `mmap` and returns it
//! with `munmap` on free, so each tensor costs page faults, page zeroing and a TLB shoot-down
//! on the other cores; mimalloc by default also hands freed pages back after a short delay.
//! With purging off, 30 training steps of the shapes recipe took 2-3 s of system time instead
//! of 13-14 s and ran 10-15% faster with identical losses, and the NEO-2B f32 prefill ran
//! 10-15% faster (BENCHMARKS.md, "Training throughput" and the NEO-2B TTFT table). The price is that the process keeps its peak heap, which the next
//! step or request needs again anyway.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (`include/mimalloc.h`, the same index
/// in its v2 and v3 series; libmimalloc-sys does not export the name): milliseconds before
/// freed memory is returned to the OS, -1 for never.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Turns mimalloc's purging of freed memory off for the rest of the process.
pub fn keep_freed_memory() {
    // SAFETY: `mi_option_set` stores one integer in mimalloc's option table (an atomic store
    // in mimalloc); it takes no pointers, and any value of this option is valid (-1 means
    // "never purge"). Allocations made before or after stay valid.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// The purge delay mimalloc now uses (milliseconds; -1: never).
#[cfg(test)]
fn purge_delay() -> i64 {
    // SAFETY: `mi_option_get` reads one integer of mimalloc's option table; no pointers.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    #[test]
    fn purging_turns_off_and_allocation_still_works() {
        // mimalloc's default purge delay is a positive number of milliseconds (10 in v2,
        // 1000 in v3): seeing it here checks that index 15 is that option.
        let before = super::purge_delay();
        assert!(before > 0, "option 15 read {before}");
        super::keep_freed_memory();
        assert_eq!(super::purge_delay(), -1);
        for size in [1 << 10, 200 << 10, 8 << 20, 40 << 20] {
            let v = vec![7u8; size];
            assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), 7 * size);
        }
    }
}
