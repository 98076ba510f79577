//! Allocator and thread-pool settings for the programs that train (the `simclr` binary, the
//! benchmarks).

use libmimalloc_sys::{mi_option_large_os_pages, mi_option_set, mi_option_t};

/// `mi_option_purge_delay` in `mi_option_t` (`mimalloc.h`; the same index in mimalloc 2 and
/// 3, whichever `libmimalloc-sys` builds; the Rust bindings export no constant for it).
const MI_OPTION_PURGE_DELAY: mi_option_t = 15;

/// Tunes mimalloc for training: keep freed memory instead of returning it to the kernel, and
/// back it with large (2 MiB) pages where the kernel allows.
///
/// Every training step frees and reallocates the same activation and gradient buffers. By
/// default mimalloc gives freed memory back after 10 ms, and the kernel zeroes fresh pages
/// when the next step touches them (`clear_page_erms`: 8% of a full-width ResNet-18 step in
/// `perf`). Kept, and mapped for large pages, the buffers are reused as they are.
/// Measured with `bench_step` (full-width ResNet-18, 2×128 views 32×32×3, runs interleaved
/// with an untuned build): median step 8.86–8.88 s → 6.87–7.40 s, kernel time over 5 steps
/// 5.1–7.2 s → 1.0–1.1 s, peak resident memory 1930–1970 → 2120 MiB; at ¼ width (28×28×1)
/// 0–11% faster with the same peak. Has an effect only in a program whose global allocator is
/// `mimalloc::MiMalloc`; call it first thing in `main`.
pub fn tune_allocator_for_training() {
    // SAFETY: each call sets one integer option, which mimalloc reads when it maps or purges
    // memory: -1 means "never purge", 1 "enabled" (mimalloc.h).
    unsafe {
        mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        mi_option_set(mi_option_large_os_pages, 1);
    }
}

/// The environment variable candle reads its workers' spin limit from.
pub const CANDLE_SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// How long (in `spin_loop` hints) an idle candle worker spins before it parks, unless
/// [`CANDLE_SPIN_LIMIT_VAR`] says otherwise. candle's default is 25,000.
pub const CANDLE_SPIN_LIMIT: u32 = 2_000;

/// Makes candle's element-wise worker threads park sooner when idle (unless the user set
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT`).
///
/// candle runs element-wise ops (BatchNorm arithmetic, ReLU, the optimiser's updates) on its
/// own pool of worker threads, which spin 25,000 times after each op before parking. Between
/// those ops the convolutions run on rayon's pool, and on a small machine the spinning worker
/// takes a core from them (`perf`: 7% of a ¼-width step's samples in candle's spin loop).
/// Measured with `bench_step`, runs interleaved, median step: ResNet-18 ¼ width (2×128 views
/// 28×28×1) 0.273–0.288 s → 0.253–0.265 s, full width (32×32×3) 2.79–2.86 s → 2.68–2.73 s,
/// ResNet-50 ¼ width 0.86–0.93 s → 0.84–0.88 s. candle reads the variable once, when its pool
/// starts: call this first thing in `main`.
///
/// # Safety
/// It writes the process environment (`std::env::set_var`): no other thread may exist yet
/// (none reading or writing the environment), so call it first thing in `main`.
pub unsafe fn tune_threads_for_training() {
    if std::env::var_os(CANDLE_SPIN_LIMIT_VAR).is_none() {
        // SAFETY: the caller guarantees that no other thread exists (this fn's contract).
        unsafe { std::env::set_var(CANDLE_SPIN_LIMIT_VAR, CANDLE_SPIN_LIMIT.to_string()) };
    }
}

/// Everything a training program sets up before it starts: the allocator
/// ([`tune_allocator_for_training`]), candle's workers ([`tune_threads_for_training`]) and,
/// when given, the number of threads of the step (`RAYON_NUM_THREADS`, which candle and
/// rayon read, and rayon's global pool).
///
/// # Safety
/// As [`tune_threads_for_training`]: call it first thing in `main`, before any other thread
/// exists.
pub unsafe fn prepare_process_for_training(threads: Option<usize>) {
    tune_allocator_for_training();
    // SAFETY: forwarded from this fn's contract: no other thread exists.
    unsafe { tune_threads_for_training() };
    if let Some(n) = threads {
        // SAFETY: as above.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
}
