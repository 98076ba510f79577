//! The bf16 gemm on Intel AMX tiles (Sapphire Rapids and later): one `tdpbf16ps` multiplies a
//! 16 × 32 bf16 tile by a 32 × 16 one into a 16 × 16 f32 tile (8192 multiply-adds, against
//! 32 for `vdpbf16ps`). Same arithmetic as the AVX-512 kernel (bf16 inputs rounded to nearest
//! even while packing, exact products, f32 sums), so the same error bound holds; only the
//! order of the f32 additions differs.
//!
//! Blocking: `k` in blocks of [`KCP`] pairs, padded with zeros to a multiple of 16 pairs; the
//! right operand packed as the AVX-512 kernel packs it (`[pairs][32]` words per panel: AMX's
//! "VNNI" layout of a `B` tile, 16 pairs of 16 columns, rows 128 bytes apart); the left in
//! panels of 32 rows, each row its `kcp` pairs (`A` tiles: 16 rows of 16 pairs). A 32 × 32
//! block of `C` is four tiles (`tmm0`–`tmm3`), `A` and `B` take `tmm4`–`tmm7`.
//!
//! Linux lends the tile registers to a process that asks (`arch_prctl(ARCH_REQ_XCOMP_PERM)`);
//! [`enabled`] asks once. `SIMCLR_AMX=0` keeps the AVX-512 kernel (for comparisons).

use std::arch::asm;
use std::arch::x86_64::*;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::{Blocking, NR, PACKS, View, blocked, pack, store_rows, transpose16};

/// Rows of `C` per block (two tiles).
const MR: usize = 32;
/// Pairs of `k` per block: a packed panel of `B` is `KCP · 32 · 4` bytes (32 KiB).
const KCP: usize = 256;
/// Pairs per tile step.
const TK: usize = 16;

/// Whether the CPU has AMX-TILE and AMX-BF16, the kernel lends this process the tile
/// registers, and `SIMCLR_AMX` is not `0`; checked (and asked) once.
pub(in crate::conv) fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| {
        std::env::var("SIMCLR_AMX").map_or(true, |v| v != "0") && super::supported() && request()
    })
}

/// CPUID says AMX-TILE and AMX-BF16, and Linux grants the tile data state.
fn request() -> bool {
    if __cpuid(0).eax < 7 {
        return false;
    }
    let leaf7 = __cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
    if !(amx_bf16 && amx_tile) {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it fails cleanly on kernels without
    // AMX support.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// The tile configuration: palette 1, all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    TileConfig(c)
};

/// One 32 × 32 block of `C` as the tiles store it, rows 128 bytes apart.
#[repr(C, align(64))]
struct Block([f32; MR * NR]);

/// `dst = lhs · rhs` (`dst += lhs · rhs` with `accumulate`) in bf16 × bf16 → f32 on AMX.
///
/// # Safety
/// [`enabled`] must be true; `dst` must hold the block (`(m−1)·dst_rs + n` scalars) and,
/// with `accumulate`, be initialised there. The views must lie inside their slices.
pub(in crate::conv) unsafe fn gemm(
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    lhs: View,
    rhs: View,
    accumulate: bool,
) {
    let blocking = Blocking {
        mr: MR,
        kcp: KCP,
        pad: TK,
    };
    let mut block = Block([0.0; MR * NR]);
    PACKS.with(|cell| {
        let (pa, pb, pt) = &mut *cell.borrow_mut();
        // SAFETY: `enabled()`: the CPU has AMX and this process may use the tiles.
        unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
        // SAFETY: this fn's contract (`enabled()` implies `supported()`; the views lie inside
        // their slices; `dst` holds the block); `blocked` pads `kcp` to a multiple of `TK`
        // and hands `tiles` whole panels and `store` the block's part of `dst`.
        unsafe {
            blocked(
                (dst, dst_rs),
                lhs,
                rhs,
                accumulate,
                &blocking,
                (pa, pb),
                |pa, (k0, k1, kcp)| {
                    if lhs.cs == 1 {
                        pack_rows(pa, lhs.data, lhs.rs, lhs.rows, k0, k1, kcp);
                    } else {
                        pt.resize(pa.len(), 0);
                        pack(pt, lhs.data, (lhs.rows, lhs.rs, lhs.cs), k0, k1, kcp, MR);
                        to_rows(pt, pa, kcp);
                    }
                },
                |a, b, kcp, (c, rows, cols), acc| {
                    tiles(a, b, kcp, rows > 16, &mut block);
                    store(&block, c, dst_rs, rows, cols, acc);
                },
            )
        }
        // SAFETY: AMX is enabled; releasing the tiles returns them to their initial state.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    });
}

/// Packs the rows of a matrix with contiguous rows (element `(l, k)` at `data[l·rs + k]`,
/// `l < rows`) straight into the row layout, `[rows / MR][MR][kcp]` words each holding the
/// pair `(x[l][k], x[l][k+1])`, `k = k0 + 2p`: 32 scalars converted by one `vcvtne2ps2bf16`.
/// Zero beyond `rows` and `k1`.
///
/// # Safety
/// [`super::supported`]; `kcp` is a multiple of 16, `out` holds whole panels, and every
/// element `(l, k)`, `l < rows`, `k < k1`, lies inside `data`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_rows(
    out: &mut [u32],
    data: &[f32],
    rs: usize,
    rows: usize,
    k0: usize,
    k1: usize,
    kcp: usize,
) {
    assert!(kcp.is_multiple_of(TK) && out.len().is_multiple_of(MR * kcp));
    for (l, row) in out.chunks_exact_mut(kcp).enumerate() {
        for p1 in (0..kcp).step_by(16) {
            let k = k0 + 2 * p1;
            let count = if l < rows {
                k1.saturating_sub(k).min(32)
            } else {
                0
            };
            let v = if count == 0 {
                _mm512_setzero_si512()
            } else {
                let m_lo = ((1u64 << count.min(16)) - 1) as __mmask16;
                let m_hi = ((1u64 << count.saturating_sub(16)) - 1) as __mmask16;
                let at = data[l * rs + k..].as_ptr();
                // SAFETY: the first `count` scalars from `at` are elements `(l, k..)` with
                // `k < k1`, inside `data` (this fn's contract, and the slice above is in
                // bounds); masked-off lanes are not read. `__m512bh` and `__m512i` are the
                // same 512 bits.
                unsafe {
                    std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(
                        _mm512_maskz_loadu_ps(m_hi, at.add(16)),
                        _mm512_maskz_loadu_ps(m_lo, at),
                    ))
                }
            };
            // SAFETY: `p1 + 16 ≤ kcp`, the row's length.
            unsafe { _mm512_storeu_si512(row[p1..].as_mut_ptr().cast(), v) };
        }
    }
}

/// Rewrites panels packed `[kcp][MR]` (pairs outer) as `[MR][kcp]` (rows outer), 16 × 16
/// words at a time.
///
/// # Safety
/// [`super::supported`]; `kcp` is a multiple of 16 and both slices hold whole panels.
#[target_feature(enable = "avx512f")]
unsafe fn to_rows(src: &[u32], dst: &mut [u32], kcp: usize) {
    assert!(kcp.is_multiple_of(TK) && src.len() == dst.len() && src.len().is_multiple_of(MR * kcp));
    for (s, d) in src
        .chunks_exact(MR * kcp)
        .zip(dst.chunks_exact_mut(MR * kcp))
    {
        for p0 in (0..kcp).step_by(16) {
            for r0 in (0..MR).step_by(16) {
                let mut t = [_mm512_setzero_si512(); 16];
                for (i, row) in t.iter_mut().enumerate() {
                    // SAFETY: `(p0 + i)·MR + r0 + 16 ≤ kcp·MR`, the panel's length.
                    *row = unsafe { _mm512_loadu_si512(s[(p0 + i) * MR + r0..].as_ptr().cast()) };
                }
                transpose16(&mut t);
                for (i, row) in t.iter().enumerate() {
                    // SAFETY: `(r0 + i)·kcp + p0 + 16 ≤ MR·kcp`, the panel's length.
                    unsafe {
                        _mm512_storeu_si512(d[(r0 + i) * kcp + p0..].as_mut_ptr().cast(), *row)
                    };
                }
            }
        }
    }
}

/// `block = a · b` for one panel of each (`kcp` pairs): the upper 16 rows only unless `both`.
///
/// # Safety
/// [`enabled`], with the tiles configured ([`CONFIG`]); `a` holds `MR · kcp` words, `b`
/// `kcp · NR`, `kcp` a positive multiple of 16.
unsafe fn tiles(a: &[u32], b: &[u32], kcp: usize, both: bool, block: &mut Block) {
    assert!(kcp > 0 && kcp.is_multiple_of(TK) && a.len() >= MR * kcp && b.len() >= kcp * NR);
    let (a0, b0, c0) = (a.as_ptr(), b.as_ptr(), block.0.as_mut_ptr());
    let a_stride = kcp * 4;
    let steps = kcp / TK;
    if both {
        // SAFETY: every tile load reads 16 rows of 64 bytes inside `a` (rows `kcp · 4` bytes
        // apart, 64 bytes further each step) or `b` (rows 128 bytes apart, `16 · 128` bytes
        // further each step); the stores write the 32 × 32 floats of `block`.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a} + {sa}*1]",
                "tileloadd tmm6, [{b} + {sb}*1]",
                "tileloadd tmm7, [{b} + {sb}*1 + 64]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a}, 64",
                "add {a1}, 64",
                "add {b}, 2048",
                "dec {n}",
                "jnz 2b",
                "tilestored [{c} + {sb}*1], tmm0",
                "tilestored [{c} + {sb}*1 + 64], tmm1",
                "tilestored [{c1} + {sb}*1], tmm2",
                "tilestored [{c1} + {sb}*1 + 64], tmm3",
                a = inout(reg) a0 => _,
                a1 = inout(reg) a0.add(16 * kcp) => _,
                b = inout(reg) b0 => _,
                n = inout(reg) steps => _,
                sa = in(reg) a_stride,
                sb = in(reg) NR * 4,
                c = in(reg) c0,
                c1 = in(reg) c0.add(16 * NR),
                options(nostack),
            );
        }
    } else {
        // SAFETY: as above, with the upper 16 rows of `a` and of `block` only.
        unsafe {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "2:",
                "tileloadd tmm4, [{a} + {sa}*1]",
                "tileloadd tmm6, [{b} + {sb}*1]",
                "tileloadd tmm7, [{b} + {sb}*1 + 64]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "add {a}, 64",
                "add {b}, 2048",
                "dec {n}",
                "jnz 2b",
                "tilestored [{c} + {sb}*1], tmm0",
                "tilestored [{c} + {sb}*1 + 64], tmm1",
                a = inout(reg) a0 => _,
                b = inout(reg) b0 => _,
                n = inout(reg) steps => _,
                sa = in(reg) a_stride,
                sb = in(reg) NR * 4,
                c = in(reg) c0,
                options(nostack),
            );
        }
    }
}

/// `c[..rows, ..cols] (+)= block`.
///
/// # Safety
/// [`super::supported`]; `c` holds `rows` rows of `cols` scalars `c_rs` apart, initialised
/// where `accumulate` reads them.
#[target_feature(enable = "avx512f")]
unsafe fn store(
    block: &Block,
    c: &mut [MaybeUninit<f32>],
    c_rs: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    assert!(rows <= MR);
    // SAFETY: `supported()` and `c` as `store_rows` needs it (this fn's contract); `block`
    // holds row `r < MR` from `r · NR`, 32 scalars.
    unsafe {
        store_rows(c, c_rs, rows, cols, accumulate, |r| {
            let at = block.0[r * NR..][..NR].as_ptr();
            (_mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16)))
        })
    }
}
