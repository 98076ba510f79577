//! The stride-1 3×3 "same" convolution by Winograd's minimal filtering F(2×2, 3×3): 16
//! multiplies per 2×2 output tile and channel pair where the direct convolution has 36, so the
//! gemms do 2.25× fewer flops.
//!
//! With the 4×4 input tile `d` (rows and columns `2·ty − 1 … 2·ty + 2`, zero outside the
//! image) and the filter `g`, the output tile is `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` (Lavin and
//! Gray, 2016):
//!
//! ```text
//! Bᵀ = | 1  0 -1  0 |    G = | 1    0    0   |    Aᵀ = | 1  1  1  0 |
//!      | 0  1  1  0 |        | 1/2  1/2  1/2 |         | 0  1 -1 -1 |
//!      | 0 -1  1  0 |        | 1/2 -1/2  1/2 |
//!      | 0  1  0 -1 |        | 0    0    1   |
//! ```
//!
//! Summed over input channels, each of the 16 positions ξ of the transformed tile is one gemm:
//! `M[ξ] (O × T) = U[ξ] (O × C) · V[ξ] (C × T)` over `T` tiles, `U = G g Gᵀ`, `V = Bᵀ d B`.
//! The input gradient is the same convolution of the output gradient with the flipped,
//! transposed kernel. The weight gradient is the adjoint of the forward: `∂L/∂M = A dY Aᵀ` per
//! tile, `∂L/∂U[ξ] = Σₜ ∂L/∂M[ξ] · V[ξ]ᵀ` (16 gemms), `∂L/∂g = Gᵀ (∂L/∂U) G`.
//!
//! The transforms' coefficients are 0, ±1 and ±½, so the rounding error is that of a direct
//! f32 convolution: against an f64 convolution by definition, 2.5–5.7e-7 of the result's
//! scale on the conv tests' cases (candle's direct convolution: 4.3–7.0e-7), asserted below
//! 1e-6 for the forward and both gradients (`winograd_error_is_that_of_a_direct_convolution`).

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{Geom, View, matmul, sum_of_partials, with_scratch};

/// The rows of `A` (4 × 2), the output transform's transpose.
const A: [[f32; 2]; 4] = [[1.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, -1.0]];

/// Positions of a transformed 4×4 tile.
const XI: usize = 16;

/// Scalars of a task's transformed input or output (`[16, channels, T]`), which sets the
/// tiles `T` per gemm: 128 tiles at 64 channels, 64 from 128 channels up. Measured with
/// `bench_conv` and `bench_step` (2 threads): a quarter of this, or a fixed 64 tiles, was no
/// faster on any shape of the full-width ResNet-18 and slower at 64 channels; twice it slower
/// from 128 channels up.
const TRANSFORMED: usize = 1 << 17;

/// Fewest and most tiles per gemm.
const TILES: (usize, usize) = (64, 1024);

/// The tiling of one convolution.
#[derive(Clone, Copy)]
struct Plan {
    h: usize,
    w: usize,
    /// Tile rows and columns: `⌈H/2⌉`, `⌈W/2⌉`.
    th: usize,
    tw: usize,
    /// Images per task.
    group: usize,
    /// Tile rows per gemm when a task has one image.
    band: usize,
}

impl Plan {
    fn new(g: &Geom, cin: usize, cout: usize) -> Self {
        let (th, tw) = (g.h.div_ceil(2), g.w.div_ceil(2));
        let per_img = (th * tw).max(1);
        let tiles = (TRANSFORMED / (XI * cin.max(cout).max(1))).clamp(TILES.0, TILES.1);
        let threads = rayon::current_num_threads().max(1);
        let per_thread = g.n.div_ceil(threads).max(1);
        Self {
            h: g.h,
            w: g.w,
            th,
            tw,
            group: tiles.div_ceil(per_img).clamp(1, per_thread),
            band: (tiles / tw.max(1)).clamp(1, th.max(1)),
        }
    }

    /// The gemms of a task of `gn` images, as ranges of tile rows: all of them when images
    /// are grouped, else bands of about the target tile count.
    fn bands(&self, gn: usize) -> impl Iterator<Item = (usize, usize)> + use<> {
        let rows = if gn > 1 { self.th } else { self.band };
        let th = self.th;
        (0..th)
            .step_by(rows.max(1))
            .map(move |r0| (r0, (r0 + rows).min(th)))
    }

    /// Scalars of the row scratch the transforms need (the most [`input`] needs: its padded,
    /// split rows of the largest band and two combined rows; the others need `6·TW`).
    fn rows_len(&self) -> usize {
        let rows = 2 * self.th + 2;
        (2 * rows + 2) * (self.tw + 1) + 6 * self.tw
    }
}

/// `U = G g Gᵀ` of every filter of `w` (`[O, C, 3, 3]`) as `[16, O, C]`; with `flip`, of the
/// flipped, transposed kernel (`g'[c, o] = g[o, c]` rotated by 180°) as `[16, C, O]`.
fn filters(w: &[f32], o: usize, c: usize, flip: bool) -> Vec<f32> {
    let (rows, cols) = if flip { (c, o) } else { (o, c) };
    let mut u = vec![0f32; XI * o * c];
    for oi in 0..o {
        for ci in 0..c {
            let f = &w[(oi * c + ci) * 9..][..9];
            let g = |i: usize, j: usize| {
                if flip {
                    f[(2 - i) * 3 + 2 - j]
                } else {
                    f[i * 3 + j]
                }
            };
            // G g: 4 × 3, column by column.
            let gg: [[f32; 3]; 4] = [
                std::array::from_fn(|j| g(0, j)),
                std::array::from_fn(|j| 0.5 * (g(0, j) + g(1, j) + g(2, j))),
                std::array::from_fn(|j| 0.5 * (g(0, j) - g(1, j) + g(2, j))),
                std::array::from_fn(|j| g(2, j)),
            ];
            let (r, col) = if flip { (ci, oi) } else { (oi, ci) };
            for (i, row) in gg.iter().enumerate() {
                let [a, b, d] = *row;
                let t = [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
                for (j, &v) in t.iter().enumerate() {
                    u[((i * 4 + j) * rows + r) * cols + col] = v;
                }
            }
        }
    }
    u
}

/// `∂L/∂g = Gᵀ (∂L/∂U) G` of every filter: `[16, O, C]` → `[O, C, 3, 3]`.
fn filter_grads(du: &[f32], o: usize, c: usize) -> Vec<f32> {
    let oc = o * c;
    let mut dw = vec![0f32; 9 * oc];
    for (k, out) in dw.chunks_exact_mut(9).enumerate() {
        let x = |i: usize, j: usize| du[(i * 4 + j) * oc + k];
        // Gᵀ X: 3 × 4, column by column.
        let gx: [[f32; 4]; 3] = [
            std::array::from_fn(|j| x(0, j) + 0.5 * (x(1, j) + x(2, j))),
            std::array::from_fn(|j| 0.5 * (x(1, j) - x(2, j))),
            std::array::from_fn(|j| 0.5 * (x(1, j) + x(2, j)) + x(3, j)),
        ];
        for (i, [a, b, d, e]) in gx.into_iter().enumerate() {
            out[i * 3] = a + 0.5 * (b + d);
            out[i * 3 + 1] = 0.5 * (b - d);
            out[i * 3 + 2] = 0.5 * (b + d) + e;
        }
    }
    dw
}

/// Splits `src` into its even- and odd-indexed elements (`src` has `2·even.len()`).
fn deinterleave(src: &[f32], even: &mut [f32], odd: &mut [f32]) {
    for ((pair, e), o) in src.chunks_exact(2).zip(even.iter_mut()).zip(odd.iter_mut()) {
        *e = pair[0];
        *o = pair[1];
    }
}

/// `V = Bᵀ d B` of the tiles in tile rows `[ty0, ty1)` of image `x` (`[C, H, W]`) into `v`
/// (`[16, C, ld]`), tile `(ty, tx)` at column `t0 + (ty − ty0)·TW + tx`. `rows` is scratch
/// of [`Plan::rows_len`] scalars.
#[allow(clippy::too_many_arguments)]
fn input(
    x: &[f32],
    c: usize,
    p: &Plan,
    (ty0, ty1): (usize, usize),
    v: &mut [f32],
    ld: usize,
    t0: usize,
    rows: &mut [f32],
) {
    let (h, w, tw) = (p.h, p.w, p.tw);
    // The image's rows 2·ty0 − 1 … 2·ty1 (zero outside it), each padded to the columns
    // −1 … 2·TW and split into its TW + 1 even and TW + 1 odd columns: tile `tx` reads
    // columns 2·tx … 2·tx + 3 of a padded row, even[tx], odd[tx], even[tx + 1], odd[tx + 1].
    let n = tw + 1;
    let prows = 2 * (ty1 - ty0) + 2;
    let (ev, rest) = rows.split_at_mut(prows * n);
    let (od, rest) = rest.split_at_mut(prows * n);
    let (re, ro) = rest.split_at_mut(n);
    let ro = &mut ro[..n];
    for ch in 0..c {
        let plane = &x[ch * h * w..][..h * w];
        for (k, (e, o)) in ev
            .chunks_exact_mut(n)
            .zip(od.chunks_exact_mut(n))
            .enumerate()
        {
            let y = (2 * ty0 + k).wrapping_sub(1);
            if y >= h {
                e.fill(0.0);
                o.fill(0.0);
                continue;
            }
            let row = &plane[y * w..][..w];
            // Padded column 2i is image column 2i − 1, padded column 2i + 1 image column 2i.
            e[0] = 0.0;
            for (i, pair) in row.chunks_exact(2).enumerate() {
                o[i] = pair[0];
                e[i + 1] = pair[1];
            }
            let full = w / 2;
            if w % 2 == 1 {
                o[full] = row[w - 1];
                e[full + 1..].fill(0.0);
                o[full + 1..].fill(0.0);
            } else {
                e[full + 1..].fill(0.0);
                o[full..].fill(0.0);
            }
        }
        for ty in ty0..ty1 {
            let at = |k: usize| 2 * (ty - ty0) + k;
            let col0 = t0 + (ty - ty0) * tw;
            for k in 0..4 {
                // Row k of Bᵀ d: d₀ − d₂, d₁ + d₂, d₂ − d₁, d₁ − d₃.
                let (a, b, sign) = match k {
                    0 => (at(0), at(2), -1.0),
                    1 => (at(1), at(2), 1.0),
                    2 => (at(2), at(1), -1.0),
                    _ => (at(1), at(3), -1.0),
                };
                for (dst, src) in [(&mut *re, &*ev), (&mut *ro, &*od)] {
                    let (ra, rb) = (&src[a * n..][..n], &src[b * n..][..n]);
                    for ((y, &a), &b) in dst.iter_mut().zip(ra).zip(rb) {
                        *y = a + sign * b;
                    }
                }
                // Times B, tile by tile: [e₀ − e₁, o₀ + e₁, e₁ − o₀, o₀ − o₁].
                let (e0, e1, o0, o1) = (&re[..tw], &re[1..], &ro[..tw], &ro[1..]);
                let base = |j: usize| ((k * 4 + j) * c + ch) * ld + col0;
                let pairs: [(&[f32], &[f32], f32); 4] = [
                    (e0, e1, -1.0),
                    (o0, e1, 1.0),
                    (e1, o0, -1.0),
                    (o0, o1, -1.0),
                ];
                for (j, (a, b, sign)) in pairs.into_iter().enumerate() {
                    let out = &mut v[base(j)..][..tw];
                    for ((y, &a), &b) in out.iter_mut().zip(a).zip(b) {
                        *y = a + sign * b;
                    }
                }
            }
        }
    }
}

/// `Y = Aᵀ M A` of the tiles in tile rows `[ty0, ty1)` from `m` (`[16, O, ld]`, tile
/// `(ty, tx)` at column `t0 + (ty − ty0)·TW + tx`) into image `y` (`[O, H, W]`): every output
/// pixel of those rows, written once (a pixel belongs to one tile). `rows` is scratch of
/// [`Plan::rows_len`] scalars.
#[allow(clippy::too_many_arguments)]
fn output(
    m: &[f32],
    o: usize,
    p: &Plan,
    (ty0, ty1): (usize, usize),
    ld: usize,
    t0: usize,
    y: &mut [MaybeUninit<f32>],
    rows: &mut [f32],
) {
    let (h, w, tw) = (p.h, p.w, p.tw);
    let (pair, rest) = rows.split_at_mut(2 * tw);
    let s: &mut [f32] = &mut rest[..4 * tw];
    for oc in 0..o {
        let plane = &mut y[oc * h * w..][..h * w];
        for ty in ty0..ty1 {
            let col0 = t0 + (ty - ty0) * tw;
            let e = |xi: usize| &m[(xi * o + oc) * ld + col0..][..tw];
            // Output row 2·ty from s = M₀ + M₁ + M₂ (rows of the tile), 2·ty + 1 from
            // s = M₁ − M₂ − M₃; then per tile [s₀ + s₁ + s₂, s₁ − s₂ − s₃].
            for half in 0..2 {
                let i = 2 * ty + half;
                if i >= h {
                    break;
                }
                for j in 0..4 {
                    let sj = &mut s[j * tw..][..tw];
                    let (a, b, d) = if half == 0 {
                        (e(j), e(4 + j), e(8 + j))
                    } else {
                        (e(4 + j), e(8 + j), e(12 + j))
                    };
                    let sign = if half == 0 { 1.0 } else { -1.0 };
                    for (((v, &a), &b), &d) in sj.iter_mut().zip(a).zip(b).zip(d) {
                        *v = a + sign * (b + d);
                    }
                }
                let (s0, rest) = s.split_at(tw);
                let (s1, rest) = rest.split_at(tw);
                let (s2, s3) = rest.split_at(tw);
                for ((((out, &a), &b), &c), &d) in
                    pair.chunks_exact_mut(2).zip(s0).zip(s1).zip(s2).zip(s3)
                {
                    out[0] = a + b + c;
                    out[1] = b - c - d;
                }
                plane[i * w..][..w].write_copy_of_slice(&pair[..w]);
            }
        }
    }
}

/// `∂L/∂M = A dY Aᵀ` of the 2×2 output-gradient tiles in tile rows `[ty0, ty1)` of image
/// `dy` (`[O, H, W]`, zero past its edges) into `dm` (`[16, O, ld]`), laid out as [`input`]
/// lays out `V`. `rows` is scratch of [`Plan::rows_len`] scalars.
#[allow(clippy::too_many_arguments)]
fn output_grad(
    dy: &[f32],
    o: usize,
    p: &Plan,
    (ty0, ty1): (usize, usize),
    dm: &mut [f32],
    ld: usize,
    t0: usize,
    rows: &mut [f32],
) {
    let (h, w, tw) = (p.h, p.w, p.tw);
    let (row, rest) = rows.split_at_mut(2 * tw);
    let (q, _) = rest.split_at_mut(4 * tw);
    for oc in 0..o {
        let plane = &dy[oc * h * w..][..h * w];
        for ty in ty0..ty1 {
            let col0 = t0 + (ty - ty0) * tw;
            // a, b: the tile's top row (even and odd columns); c, d: its bottom row.
            for half in 0..2 {
                let i = 2 * ty + half;
                let (e, od) = q[2 * half * tw..][..2 * tw].split_at_mut(tw);
                if i < h {
                    row[..w].copy_from_slice(&plane[i * w..][..w]);
                    row[w..].fill(0.0);
                    deinterleave(row, e, od);
                } else {
                    e.fill(0.0);
                    od.fill(0.0);
                }
            }
            let (a, rest) = q.split_at(tw);
            let (b, rest) = rest.split_at(tw);
            let (c, d) = rest.split_at(tw);
            // A dY: rows [a, b], [a + c, b + d], [a − c, b − d], [−c, −d]; each row [p, q]
            // times Aᵀ: [p, p + q, p − q, −q].
            for (i, [top, bottom]) in A.into_iter().enumerate() {
                let out = |j: usize| ((i * 4 + j) * o + oc) * ld + col0;
                let at = [out(0), out(1), out(2), out(3)];
                for t in 0..tw {
                    let p = top * a[t] + bottom * c[t];
                    let qv = top * b[t] + bottom * d[t];
                    dm[at[0] + t] = p;
                    dm[at[1] + t] = p + qv;
                    dm[at[2] + t] = p - qv;
                    dm[at[3] + t] = -qv;
                }
            }
        }
    }
}

/// The forward pass: `[N, C, H, W]` ⊛ `[O, C, 3, 3]` → `[N, O, H, W]`.
pub(super) fn forward(x: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    let u = filters(wt, g.o, g.c, false);
    same_conv(x, g.c, g.o, g, &u)
}

/// The input gradient: `dY` `[N, O, H, W]` and `W` → `dX` `[N, C, H, W]`.
pub(super) fn input_grad(dy: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    let u = filters(wt, g.o, g.c, true);
    same_conv(dy, g.o, g.c, g, &u)
}

/// `[N, cin, H, W]` → `[N, cout, H, W]` with the transformed filters `u` (`[16, cout, cin]`).
fn same_conv(src: &[f32], cin: usize, cout: usize, g: &Geom, u: &[f32]) -> Vec<f32> {
    let p = Plan::new(g, cin, cout);
    let (per_in, per_out) = (cin * g.h * g.w, cout * g.h * g.w);
    let len = g.n * per_out;
    let mut dst: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return dst;
    }
    dst.spare_capacity_mut()[..len]
        .par_chunks_mut(p.group * per_out)
        .enumerate()
        .for_each(|(i, dc)| {
            let gn = dc.len() / per_out;
            for band in p.bands(gn) {
                let per = (band.1 - band.0) * p.tw;
                let t = gn * per;
                with_scratch(XI * cin * t + p.rows_len(), XI * cout * t, |v, m| {
                    let (v, rows) = v.split_at_mut(XI * cin * t);
                    for j in 0..gn {
                        let img = &src[(i * p.group + j) * per_in..][..per_in];
                        input(img, cin, &p, band, v, t, j * per, rows);
                    }
                    for xi in 0..XI {
                        let lhs = View::row_major(&u[xi * cout * cin..], cout, cin);
                        let rhs = View::row_major(&v[xi * cin * t..], cin, t);
                        matmul(&mut m[xi * cout * t..], t, lhs, rhs, false);
                    }
                    for j in 0..gn {
                        output(
                            m,
                            cout,
                            &p,
                            band,
                            t,
                            j * per,
                            &mut dc[j * per_out..][..per_out],
                            rows,
                        );
                    }
                })
            }
        });
    // SAFETY: `output` wrote every pixel of every channel of each image of each chunk: the
    // bands cover all tile rows and the tiles of a row all pixels of its two image rows.
    unsafe { dst.set_len(len) };
    dst
}

/// The weight gradient: `X` `[N, C, H, W]` and `dY` `[N, O, H, W]` → `dW` `[O, C, 3, 3]`;
/// one transformed partial `[16, O, C]` per thread, then their sum.
pub(super) fn weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    let (o, c) = (g.o, g.c);
    let p = Plan::new(g, c, o);
    let (chw, out, oc) = (g.chw(), g.out_len(), o * c);
    let groups = g.n.div_ceil(p.group);
    let tasks = rayon::current_num_threads().clamp(1, groups.max(1));
    let du = sum_of_partials(tasks, XI * oc, |task, part| {
        let mut first = true;
        for gi in groups * task / tasks..groups * (task + 1) / tasks {
            let n0 = gi * p.group;
            let gn = p.group.min(g.n - n0);
            for band in p.bands(gn) {
                let per = (band.1 - band.0) * p.tw;
                let t = gn * per;
                with_scratch(XI * c * t + p.rows_len(), XI * o * t, |v, dm| {
                    let (v, rows) = v.split_at_mut(XI * c * t);
                    for j in 0..gn {
                        let n = n0 + j;
                        input(&x[n * chw..][..chw], c, &p, band, v, t, j * per, rows);
                        output_grad(&dy[n * out..][..out], o, &p, band, dm, t, j * per, rows);
                    }
                    for xi in 0..XI {
                        let lhs = View::row_major(&dm[xi * o * t..], o, t);
                        let rhs = View::row_major(&v[xi * c * t..], c, t).t();
                        matmul(&mut part[xi * oc..][..oc], c, lhs, rhs, !first);
                    }
                });
                first = false;
            }
        }
    });
    filter_grads(&du, o, c)
}
