//! The convolutions' gemm with bf16 inputs and f32 accumulation, for CPUs with AVX-512 BF16
//! (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later): `vdpbf16ps` does 32
//! multiply-adds per instruction where `vfmadd231ps` does 16, so the gemms' arithmetic takes
//! about half the time; the rest of the step (im2col, BatchNorm, the update) stays f32.
//!
//! `C = A · B` (or `C += A · B`): both operands are rounded to bf16 (round to nearest even, 8
//! significant bits) while they are packed; each product of two bf16 numbers is exact in f32
//! and is added in f32, as PyTorch's CPU autocast to bf16 computes a convolution. The error
//! against the f32 product is therefore that of rounding the inputs (each by at most 2⁻⁸ of
//! itself): at most `2.01·2⁻⁸·Σₖ|aᵢₖ·bₖⱼ|` plus f32's own summation error, which the tests
//! assert.
//!
//! Blocking: `k` in blocks of [`KCP`] pairs; within a block the right operand is packed in
//! panels of [`NR`] columns (`[pairs, NR]` of `u32`, each holding `(b[2p][j], b[2p+1][j])`,
//! 8 KiB–16 KiB: the L1 cache), the left in panels of [`MR`] rows (`[pairs, MR]`, each
//! `(a[i][2p], a[i][2p+1])`), and an `MR × NR` tile of `C` is held in 16 registers.

use std::arch::x86_64::*;
use std::cell::RefCell;
use std::mem::{MaybeUninit, transmute};
use std::sync::OnceLock;

use super::View;

#[cfg(target_os = "linux")]
mod amx;

/// Rows of `C` per register tile.
const MR: usize = 8;
/// Columns of `C` per register tile (two 16-lane vectors).
const NR: usize = 32;
/// Pairs of `k` per block: a packed `NR`-column panel is `KCP · NR · 4` bytes (16 KiB).
const KCP: usize = 128;

/// Whether this CPU has the instructions (`avx512f`, `avx512bw`, `avx512bf16`), checked once.
pub(super) fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    })
}

/// `f32` → bf16 bits, round to nearest even (NaN stays NaN), as `vcvtneps2bf16` rounds.
fn to_bf16(x: f32) -> u32 {
    let b = x.to_bits();
    if b & 0x7fff_ffff > 0x7f80_0000 {
        (b >> 16) | 0x40
    } else {
        (b + 0x7fff + ((b >> 16) & 1)) >> 16
    }
}

thread_local! {
    /// This thread's packed panels of `A` and `B`, and a scratch panel (AMX's `A` before its
    /// transpose), grown as needed and kept between calls.
    static PACKS: RefCell<(Vec<u32>, Vec<u32>, Vec<u32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// Whether the gemm runs on AMX tiles ([`amx`]) rather than AVX-512 BF16 instructions.
pub(super) fn amx() -> bool {
    #[cfg(target_os = "linux")]
    {
        amx::enabled()
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// `dst = lhs · rhs` (`dst += lhs · rhs` with `accumulate`) in bf16 × bf16 → f32, `dst`
/// row-major `[lhs.rows, rhs.cols]` with rows `dst_rs` scalars apart: on AMX tiles where
/// [`amx`] says so, else with AVX-512 BF16.
///
/// # Safety
/// [`supported`] must be true; `dst` must hold the block (`(m−1)·dst_rs + n` scalars) and,
/// with `accumulate`, be initialised there. The views must lie inside their slices.
pub(super) unsafe fn gemm(
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    lhs: View,
    rhs: View,
    accumulate: bool,
) {
    #[cfg(target_os = "linux")]
    if amx::enabled() {
        // SAFETY: `enabled()`; the rest is this fn's contract.
        unsafe { amx::gemm(dst, dst_rs, lhs, rhs, accumulate) };
        return;
    }
    // SAFETY: this fn's contract.
    unsafe { gemm_avx512(dst, dst_rs, lhs, rhs, accumulate) }
}

/// [`gemm`] with AVX-512 BF16's `vdpbf16ps`.
///
/// # Safety
/// As [`gemm`].
unsafe fn gemm_avx512(
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    lhs: View,
    rhs: View,
    accumulate: bool,
) {
    let blocking = Blocking {
        mr: MR,
        kcp: KCP,
        pad: 1,
    };
    PACKS.with(|cell| {
        let (pa, pb, _) = &mut *cell.borrow_mut();
        // SAFETY: this fn's contract (`supported()`, views inside their slices, `dst` holding
        // the block); `pack` and `kernel` are called within what `blocked` promises.
        unsafe {
            blocked(
                (dst, dst_rs),
                lhs,
                rhs,
                accumulate,
                &blocking,
                (pa, pb),
                |pa, (k0, k1, kcp)| pack(pa, lhs.data, (lhs.rows, lhs.rs, lhs.cs), k0, k1, kcp, MR),
                |a, b, kcp, (c, rows, cols), acc| kernel(kcp, a, b, c, dst_rs, rows, cols, acc),
            )
        }
    });
}

/// How [`blocked`] cuts the product: `k` in blocks of at most `kcp` pairs, each padded with
/// zero pairs to a multiple of `pad`; the left operand in panels of `mr` rows, the right in
/// panels of [`NR`] columns.
struct Blocking {
    mr: usize,
    kcp: usize,
    pad: usize,
}

/// The loop both kernels share: per block of `k`, the left operand's panels packed by
/// `pack_a(out, (k0, k1, kcp))` (`kcp` padded pairs of `k0..k1`, `out` sized for
/// `⌈m / mr⌉` panels), the right operand's by [`pack`]; then `tile(a, b, kcp, (c, rows,
/// cols), accumulate)` for every pair of panels, `c` starting at the block's first scalar in
/// `dst` (rows `dst_rs` apart), to be accumulated into after the first block of `k`.
///
/// # Safety
/// As [`gemm`]; `pack_a` must fill its panels, and `tile` may rely on `a` holding `mr · kcp`
/// words, `b` `kcp · NR`, and `c` its `rows` rows of `cols` scalars (initialised when
/// accumulating).
#[allow(clippy::too_many_arguments)]
unsafe fn blocked(
    (dst, dst_rs): (&mut [MaybeUninit<f32>], usize),
    lhs: View,
    rhs: View,
    accumulate: bool,
    blocking: &Blocking,
    (pa, pb): (&mut Vec<u32>, &mut Vec<u32>),
    mut pack_a: impl FnMut(&mut [u32], (usize, usize, usize)),
    mut tile: impl FnMut(&[u32], &[u32], usize, (&mut [MaybeUninit<f32>], usize, usize), bool),
) {
    let Blocking { mr, kcp: kc, pad } = *blocking;
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    let pairs = k.div_ceil(2);
    let (m_panels, n_panels) = (m.div_ceil(mr), n.div_ceil(NR));
    for p0 in (0..pairs).step_by(kc) {
        let real = kc.min(pairs - p0);
        let kcp = real.next_multiple_of(pad);
        let (k0, k1) = (2 * p0, (2 * (p0 + real)).min(k));
        pa.resize(m_panels * mr * kcp, 0);
        pb.resize(n_panels * NR * kcp, 0);
        pack_a(pa, (k0, k1, kcp));
        // SAFETY: `supported()` and the view inside its slice (this fn's contract).
        unsafe { pack(pb, rhs.data, (n, rhs.cs, rhs.rs), k0, k1, kcp, NR) };
        let acc = accumulate || p0 > 0;
        for jp in 0..n_panels {
            let cols = NR.min(n - jp * NR);
            let b = &pb[jp * NR * kcp..][..NR * kcp];
            for ip in 0..m_panels {
                let rows = mr.min(m - ip * mr);
                let a = &pa[ip * mr * kcp..][..mr * kcp];
                // The block's `rows` rows of `cols` scalars, `dst_rs` apart, lie inside `dst`
                // (this fn's contract), initialised where `acc` reads them (the caller's
                // `accumulate`, or written by the block of `k` before).
                tile(
                    a,
                    b,
                    kcp,
                    (&mut dst[ip * mr * dst_rs + jp * NR..], rows, cols),
                    acc,
                );
            }
        }
    }
}

/// Packs the pairs `(x[l][k], x[l][k+1])`, `k = k0 + 2p` for `p < kcp`, of a matrix `x`
/// whose element `(l, k)` is `data[l·s_l + k·s_k]` (`l < lanes`), as `[lanes / w][kcp][w]`
/// words: `A` with its rows as lanes (`w` = [`MR`]), `B` with its columns (`w` = [`NR`]).
/// Zero beyond `lanes` and `k1`. Contiguous lanes or a contiguous `k` are converted 16 words
/// at a time with `vcvtneps2bf16`; other strides one by one.
///
/// # Safety
/// [`supported`]; every element `(l, k)`, `l < lanes`, `k < k1` lies inside `data`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack(
    out: &mut [u32],
    data: &[f32],
    (lanes, s_l, s_k): (usize, usize, usize),
    k0: usize,
    k1: usize,
    kcp: usize,
    w: usize,
) {
    let ptr = data.as_ptr();
    if s_l == 1 {
        // Lanes contiguous: per pair, rows `k` and `k + 1` read once from end to end, 16
        // lanes at a time interleaved into the panels.
        let panels = out.len() / (w * kcp);
        for p in 0..kcp {
            let (ka, kb) = (k0 + 2 * p, k0 + 2 * p + 1);
            for panel_no in 0..panels {
                let l0 = panel_no * w;
                for c0 in (0..w).step_by(16) {
                    let width = lanes.saturating_sub(l0 + c0).min(16).min(w - c0);
                    let mask = ((1u32 << width) - 1) as __mmask16;
                    let half = |k: usize| -> __m512i {
                        if k >= k1 || width == 0 {
                            return _mm512_setzero_si512();
                        }
                        // SAFETY: the `width` lanes from `l0 + c0` at this `k < k1` are
                        // elements of the matrix, inside `data` (this fn's contract); the
                        // masked-off lanes are not read.
                        let v =
                            unsafe { _mm512_maskz_loadu_ps(mask, ptr.add((l0 + c0) + k * s_k)) };
                        // SAFETY: `__m256bh` and `__m256i` are the same 256 bits.
                        _mm512_cvtepu16_epi32(unsafe {
                            transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v))
                        })
                    };
                    let v = _mm512_or_si512(half(ka), _mm512_slli_epi32::<16>(half(kb)));
                    let all = ((1u32 << (w - c0).min(16)) - 1) as __mmask16;
                    let at = panel_no * w * kcp + p * w + c0;
                    assert!(at + (w - c0).min(16) <= out.len());
                    // SAFETY: the masked store writes `min(w − c0, 16)` words from `at`,
                    // inside `out` (asserted).
                    unsafe { _mm512_mask_storeu_epi32(out.as_mut_ptr().add(at).cast(), all, v) };
                }
            }
        }
        return;
    }
    for (panel_no, panel) in out.chunks_exact_mut(w * kcp).enumerate() {
        let l0 = panel_no * w;
        if s_k == 1 {
            // `k` contiguous: 16 pairs of up to 16 lanes converted, transposed in registers,
            // stored as 16 rows of the panel.
            for c0 in (0..w).step_by(16) {
                let g = (w - c0).min(16);
                let store_mask = ((1u32 << g) - 1) as __mmask16;
                for p1 in (0..kcp).step_by(16) {
                    let k = k0 + 2 * p1;
                    let count = k1.saturating_sub(k).min(32);
                    let m_lo = ((1u64 << count.min(16)) - 1) as __mmask16;
                    let m_hi = ((1u64 << count.saturating_sub(16)) - 1) as __mmask16;
                    let mut rows = [_mm512_setzero_si512(); 16];
                    for (c, row) in rows.iter_mut().enumerate().take(g) {
                        let l = l0 + c0 + c;
                        if l >= lanes || count == 0 {
                            continue;
                        }
                        let at = l * s_l + k;
                        // SAFETY: the first `count` scalars from `at` are elements `(l, k..)`
                        // with `k < k1`, inside `data`; masked-off lanes are not read.
                        let v = unsafe {
                            _mm512_cvtne2ps_pbh(
                                _mm512_maskz_loadu_ps(m_hi, ptr.add(at + 16)),
                                _mm512_maskz_loadu_ps(m_lo, ptr.add(at)),
                            )
                        };
                        // SAFETY: `__m512bh` and `__m512i` are the same 512 bits.
                        *row = unsafe { transmute::<__m512bh, __m512i>(v) };
                    }
                    transpose16(&mut rows);
                    for (t, row) in rows.iter().enumerate().take((kcp - p1).min(16)) {
                        // SAFETY: `(p1 + t)·w + c0 + g ≤ kcp·w`, the panel's length.
                        unsafe {
                            _mm512_mask_storeu_epi32(
                                panel.as_mut_ptr().add((p1 + t) * w + c0).cast(),
                                store_mask,
                                *row,
                            )
                        };
                    }
                }
            }
        } else {
            for c in 0..w {
                let l = l0 + c;
                let at = |k: usize| {
                    if l < lanes && k < k1 {
                        to_bf16(data[l * s_l + k * s_k])
                    } else {
                        0
                    }
                };
                for p in 0..kcp {
                    let k = k0 + 2 * p;
                    panel[p * w + c] = at(k) | at(k + 1) << 16;
                }
            }
        }
    }
}

/// Transposes a 16 × 16 matrix of 32-bit words held as 16 rows.
#[target_feature(enable = "avx512f")]
fn transpose16(r: &mut [__m512i; 16]) {
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for i in 0..4 {
        let (a, b) = (4 * i, 4 * i + 2);
        r[4 * i] = _mm512_unpacklo_epi64(t[a], t[b]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[a], t[b]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[a + 1], t[b + 1]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[a + 1], t[b + 1]);
    }
    for i in 0..4 {
        t[i] = _mm512_shuffle_i32x4::<0x88>(r[i], r[i + 4]);
        t[i + 4] = _mm512_shuffle_i32x4::<0xdd>(r[i], r[i + 4]);
        t[i + 8] = _mm512_shuffle_i32x4::<0x88>(r[i + 8], r[i + 12]);
        t[i + 12] = _mm512_shuffle_i32x4::<0xdd>(r[i + 8], r[i + 12]);
    }
    for i in 0..8 {
        r[i] = _mm512_shuffle_i32x4::<0x88>(t[i], t[i + 8]);
        r[i + 8] = _mm512_shuffle_i32x4::<0xdd>(t[i], t[i + 8]);
    }
}

/// One `MR × NR` tile: `c[..rows, ..cols] (+)= a · b` over `kcp` packed pairs.
///
/// # Safety
/// [`supported`]; `c` holds `rows` rows of `cols` scalars `c_rs` apart, initialised where
/// `accumulate` reads them.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn kernel(
    kcp: usize,
    a: &[u32],
    b: &[u32],
    c: &mut [MaybeUninit<f32>],
    c_rs: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    assert!(a.len() >= kcp * MR && b.len() >= kcp * NR);
    assert!(rows <= MR && cols <= NR && (rows == 0 || (rows - 1) * c_rs + cols <= c.len()));
    let mut lo = [_mm512_setzero_ps(); MR];
    let mut hi = [_mm512_setzero_ps(); MR];
    let (a, b) = (a.as_ptr(), b.as_ptr());
    for p in 0..kcp {
        // SAFETY: `p·NR + 32 ≤ kcp·NR ≤ b.len()` and `p·MR + MR ≤ a.len()` (asserted).
        unsafe {
            let b0: __m512bh = transmute::<__m512i, _>(_mm512_loadu_si512(b.add(p * NR).cast()));
            let b1: __m512bh =
                transmute::<__m512i, _>(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
            for r in 0..MR {
                let av: __m512bh =
                    transmute::<__m512i, _>(_mm512_set1_epi32(*a.add(p * MR + r) as i32));
                lo[r] = _mm512_dpbf16_ps(lo[r], av, b0);
                hi[r] = _mm512_dpbf16_ps(hi[r], av, b1);
            }
        }
    }
    // SAFETY: `supported()`; `c` as `store_rows` needs it (this fn's contract, asserted).
    unsafe { store_rows(c, c_rs, rows, cols, accumulate, |r| (lo[r], hi[r])) };
}

/// `c[..rows, ..cols] (+)= x`, row `r` of `x` being the two 16-lane halves `row(r)` returns:
/// masked to the row's `cols` scalars, added to what is there with `accumulate`. The end of
/// both kernels.
///
/// # Safety
/// [`supported`]; `c` holds `rows` rows of `cols ≤ 32` scalars `c_rs` apart, initialised
/// where `accumulate` reads them.
#[target_feature(enable = "avx512f")]
unsafe fn store_rows(
    c: &mut [MaybeUninit<f32>],
    c_rs: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
    mut row: impl FnMut(usize) -> (__m512, __m512),
) {
    assert!(cols <= NR && (rows == 0 || (rows - 1) * c_rs + cols <= c.len()));
    let mask = |w: usize| -> __mmask16 { ((1u32 << w.min(16)) - 1) as u16 };
    let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
    for r in 0..rows {
        let at = c[r * c_rs..].as_mut_ptr().cast::<f32>();
        let store = |at: *mut f32, m: __mmask16, v: __m512| {
            // SAFETY: lanes under `m` are among the row's `cols` scalars (inside `c`,
            // asserted) and initialised when `accumulate` reads them.
            unsafe {
                let v = if accumulate {
                    _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, at))
                } else {
                    v
                };
                _mm512_mask_storeu_ps(at, m, v);
            }
        };
        let (lo, hi) = row(r);
        store(at, m0, lo);
        if cols > 16 {
            // SAFETY: `cols > 16`, so the second half's first scalar is in the row.
            store(unsafe { at.add(16) }, m1, hi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `[rows, cols]` stored row-major, or column-major when `transposed` (the views the
    /// convolutions hand over: `colᵀ`, `Wᵀ`); with `spread`, every other scalar of a
    /// row-major store twice the size (neither stride 1: the one-by-one packing).
    fn view(data: &[f32], rows: usize, cols: usize, transposed: bool, spread: bool) -> View<'_> {
        if spread {
            View {
                data,
                rows,
                cols,
                rs: 2 * cols,
                cs: 2,
            }
        } else if transposed {
            View::row_major(data, cols, rows).t()
        } else {
            View::row_major(data, rows, cols)
        }
    }

    fn at(v: &View, i: usize, j: usize) -> f64 {
        f64::from(v.data[i * v.rs + j * v.cs])
    }

    /// The kernels this CPU runs: AVX-512 BF16, and AMX where [`amx`] is on.
    fn kernels() -> Vec<Kernel> {
        let mut kernels = vec![Kernel::Avx512];
        if amx() {
            kernels.push(Kernel::Amx);
        } else {
            eprintln!("no AMX on this CPU (or SIMCLR_AMX=0): AMX gemm not tested");
        }
        kernels
    }

    #[derive(Clone, Copy, Debug)]
    enum Kernel {
        Avx512,
        Amx,
    }

    /// Runs a bf16 gemm kernel on `[m, k] · [k, n]` into a destination with 3 spare columns
    /// per row (left untouched) and returns it with its row stride.
    fn run(
        kernel: Kernel,
        lhs: View,
        rhs: View,
        init: &[f32],
        accumulate: bool,
    ) -> (Vec<f32>, usize) {
        let rs = rhs.cols + 3;
        let mut dst: Vec<MaybeUninit<f32>> = init.iter().map(|&x| MaybeUninit::new(x)).collect();
        // SAFETY: the test runs only where supported (AMX where `amx()`); `dst` holds `m`
        // rows of `rs ≥ n` initialised scalars.
        unsafe {
            match kernel {
                Kernel::Avx512 => gemm_avx512(&mut dst, rs, lhs, rhs, accumulate),
                #[cfg(target_os = "linux")]
                Kernel::Amx => amx::gemm(&mut dst, rs, lhs, rhs, accumulate),
                #[cfg(not(target_os = "linux"))]
                Kernel::Amx => unreachable!("AMX is used on Linux only"),
            }
        }
        // SAFETY: every element was initialised above and stays so.
        (
            dst.into_iter()
                .map(|x| unsafe { x.assume_init() })
                .collect(),
            rs,
        )
    }

    /// Edges of both kernels' blocks: rows around 8, 16 and 32, columns around 16 and 32,
    /// `k` around 128 and 256 pairs and odd.
    const SHAPES: [(usize, usize, usize); 12] = [
        (1, 1, 1),
        (8, 2, 32),
        (7, 3, 15),
        (9, 255, 17),
        (16, 256, 33),
        (17, 257, 70),
        (24, 300, 256),
        (3, 600, 5),
        (40, 31, 100),
        (33, 513, 31),
        (64, 1151, 64),
        (70, 40, 97),
    ];

    #[test]
    fn transpose16_transposes() {
        if !supported() {
            return;
        }
        let m: Vec<u32> = (0..256).collect();
        // SAFETY: supported.
        let mut r = [unsafe { _mm512_setzero_si512() }; 16];
        for (i, row) in r.iter_mut().enumerate() {
            // SAFETY: supported; `m` holds 16 words from `16·i`.
            *row = unsafe { _mm512_loadu_si512(m[16 * i..].as_ptr().cast()) };
        }
        // SAFETY: supported.
        unsafe { transpose16(&mut r) };
        let mut out = [0u32; 256];
        for (i, row) in r.iter().enumerate() {
            // SAFETY: `out` holds 16 words from `16·i`.
            unsafe { _mm512_storeu_si512(out[16 * i..].as_mut_ptr().cast(), *row) };
        }
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(out[16 * i + j], m[16 * j + i], "({i}, {j})");
            }
        }
    }

    #[test]
    fn small_integers_come_out_exactly_for_every_layout_and_edge() {
        if !supported() {
            eprintln!("no AVX-512 BF16 on this CPU: bf16 gemm not tested");
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (kernel, &(m, k, n)) in kernels()
            .into_iter()
            .flat_map(|k| SHAPES.iter().map(move |s| (k, s)))
        {
            // Integers in −4..=4 are exact in bf16, their products and these sums in f32.
            let mut ints = |len: usize| -> Vec<f32> {
                (0..len)
                    .map(|_| rng.random_range(-4i32..=4) as f32)
                    .collect()
            };
            let (a, b, c0) = (ints(2 * m * k), ints(2 * k * n), ints(m * (n + 3)));
            for (ta, tb, spread, accumulate) in [
                (false, false, false, false),
                (true, false, false, true),
                (false, true, false, false),
                (true, true, false, true),
                (false, false, true, true),
            ] {
                let (lhs, rhs) = (view(&a, m, k, ta, spread), view(&b, k, n, tb, spread));
                let (got, rs) = run(kernel, lhs, rhs, &c0, accumulate);
                for i in 0..m {
                    for j in 0..rs {
                        let want = if j >= n {
                            f64::from(c0[i * rs + j])
                        } else {
                            let base = if accumulate {
                                f64::from(c0[i * rs + j])
                            } else {
                                0.0
                            };
                            base + (0..k).map(|p| at(&lhs, i, p) * at(&rhs, p, j)).sum::<f64>()
                        };
                        assert_eq!(
                            f64::from(got[i * rs + j]),
                            want,
                            "{kernel:?} [{m}, {k}]·[{k}, {n}] (transposed {ta}/{tb}, spread \
                             {spread}, accumulate {accumulate}) at ({i}, {j})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn rounding_error_is_within_the_bound_of_bf16_inputs() {
        if !supported() {
            eprintln!("no AVX-512 BF16 on this CPU: bf16 gemm not tested");
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut worst = 0.0f64;
        for (kernel, &(m, k, n)) in kernels()
            .into_iter()
            .flat_map(|k| SHAPES.iter().map(move |s| (k, s)))
        {
            let mut randn = |len: usize| -> Vec<f32> {
                (0..len)
                    .map(|_| rng.sample::<f32, _>(rand_distr::StandardNormal))
                    .collect()
            };
            let (a, b) = (randn(m * k), randn(k * n));
            let (lhs, rhs) = (view(&a, m, k, false, false), view(&b, k, n, false, false));
            let (got, rs) = run(kernel, lhs, rhs, &vec![0.0; m * (n + 3)], false);
            let mut rounded_anywhere = false;
            for i in 0..m {
                for j in 0..n {
                    let terms = (0..k).map(|p| at(&lhs, i, p) * at(&rhs, p, j));
                    let exact: f64 = terms.clone().sum();
                    let abs: f64 = terms.map(f64::abs).sum();
                    // Each input rounded by at most 2⁻⁸ of itself (8 significant bits), so
                    // each product by (1 + 2⁻⁸)² − 1 < 2.01·2⁻⁸; f32 summation adds at most
                    // k·2⁻²⁴ of Σ|·|.
                    let bound = (2.01 * 2f64.powi(-8) + k as f64 * 2f64.powi(-24)) * abs;
                    let err = (f64::from(got[i * rs + j]) - exact).abs();
                    assert!(
                        err <= bound,
                        "{kernel:?} [{m}, {k}]·[{k}, {n}] at ({i}, {j}): {err} > {bound}"
                    );
                    worst = worst.max(err / abs.max(f64::MIN_POSITIVE));
                    rounded_anywhere |= err > k as f64 * 2f64.powi(-24) * abs;
                }
            }
            // Random normals are not bf16 numbers: the inputs were rounded.
            assert!(
                rounded_anywhere || k < 2,
                "{kernel:?} [{m}, {k}]·[{k}, {n}] looks like an f32 gemm"
            );
        }
        eprintln!("worst error relative to Σ|a·b|: {worst:.2e} (bound 2.01·2⁻⁸ = 7.9e-3)");
    }
}
