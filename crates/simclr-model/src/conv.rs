//! A fast CPU 2-D convolution (no bias, dilation 1, one group, f32) with its backward pass, as
//! candle custom ops on the `gemm` crate.
//!
//! candle 0.11's CPU convolution backward is slow (the input gradient goes through a
//! dot-product `conv_transpose2d`) and fails on strided non-square inputs whose sides need
//! different output paddings (9×6, stride 2). Here every pass is an im2col/col2im around
//! sgemm:
//!
//! - forward: `Y[O, OH·OW] = W[O, C·K·K] · col[C·K·K, OH·OW]`;
//! - weight gradient: `dW[O, C·K·K] = Σₙ dY[O, OH·OW] · colᵀ`;
//! - input gradient: `dcol = Wᵀ · dY`, scatter-added back by col2im.
//!
//! Each gemm gets about 256 columns: a large image is cut into tiles of whole output
//! rows (so `col` stays in the L2 cache), small ones are stacked side by side
//! (`col[C·K·K, G·OH·OW]`). A 1×1 stride-1 unpadded convolution skips im2col/col2im (`col`
//! is the image itself); a stride-1 "same" convolution builds each row of `col` with one
//! shifted copy. Images are spread over rayon's pool, each gemm single-threaded
//! (`Parallelism::None`) with per-thread scratch buffers kept between calls; the weight
//! gradient sums one partial per thread, which measured faster than accumulating into one
//! buffer with gemm's own parallelism.
//!
//! A stride-1 3×3 "same" convolution with many channels and wide rows (at least 32 channels,
//! channels × width at least 1024: the full-width ResNets' stages) runs as Winograd
//! F(2×2, 3×3), 2.25× fewer multiplies in its gemms (module `winograd`); a narrower one at
//! least 24 columns wide skips im2col and col2im altogether: nine gemms per pass read shifted
//! views of the zero-padded image in place (module `shifted`).
//!
//! With [`set_bf16_gemm`] (`--precision bf16` on a CPU with AVX-512 BF16) every one of these
//! gemms rounds its operands to bf16 while packing them and adds the products in f32
//! (module `bf16`), about twice the multiply-adds per instruction, or on AMX tiles where the
//! CPU has them ([`bf16_gemm_amx`]).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};
use gemm::Parallelism;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod bf16;
mod winograd;

/// Whether the CPU convolutions' gemms take bf16 inputs (see [`set_bf16_gemm`]).
static BF16_GEMM: AtomicBool = AtomicBool::new(false);

/// Whether this CPU can run the convolutions' gemms in bf16 × bf16 → f32: AVX-512 BF16
/// (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later).
pub fn bf16_gemm_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        bf16::supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Turns the bf16 gemms of the CPU convolutions on or off, for the whole process: both
/// operands of every convolution gemm (forward and both gradients) rounded to bf16, products
/// added in f32 (PyTorch's CPU autocast to bf16 does the same for its convolutions); the
/// activations, weights, BatchNorm and the optimiser stay f32. About twice the gemm
/// throughput; each product's inputs carry bf16's relative rounding of at most 2⁻⁸.
///
/// # Errors
/// Turning it on where [`bf16_gemm_supported`] is false.
pub fn set_bf16_gemm(on: bool) -> Result<()> {
    if on && !bf16_gemm_supported() {
        bail!(
            "bf16 convolutions on the CPU need AVX-512 BF16 (Intel Sapphire Rapids or later, \
             AMD Zen 4 or later); this CPU lacks it"
        )
    }
    BF16_GEMM.store(on, Ordering::Relaxed);
    Ok(())
}

/// Whether the bf16 gemms run on AMX tiles (Intel Sapphire Rapids and later, on Linux), 16
/// × 16 × 32 multiply-adds an instruction, rather than AVX-512 BF16. On by default where the
/// CPU and kernel allow; `SIMCLR_AMX=0` in the environment keeps AVX-512 BF16.
pub fn bf16_gemm_amx() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        bf16::amx()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU convolutions' gemms are bf16 ([`set_bf16_gemm`]).
pub fn bf16_gemm() -> bool {
    BF16_GEMM.load(Ordering::Relaxed)
}

/// Columns (output pixels) each gemm should have: stacked images when one has fewer, tiles of
/// whole output rows when it has more. Below a few hundred, packing the left operand
/// dominates; above, `col` outgrows the L2 cache.
const GEMM_COLS: usize = 256;

/// A 2-D convolution without bias (dilation 1, one group), with a fast CPU path.
///
/// `x` is `[N, C, H, W]`, `w` is `[O, C, K, K]`; the result is `[N, O, OH, OW]` with
/// `OH = (H + 2·padding − K) / stride + 1` (likewise `OW`), as `Tensor::conv2d` computes.
/// On the CPU in f32 with a square kernel it runs the gemm-based custom op of this module,
/// forward and backward (the gradients it returns are constants: no second derivative);
/// otherwise (other devices or dtypes, a non-square kernel) it is candle's `conv2d`.
///
/// # Errors
/// Shape mismatches (`w`'s `C` against `x`'s, a kernel larger than the padded input, a zero
/// stride) and candle's own errors.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, k, kw) = w.dims4()?;
    let fast = x.device().is_cpu()
        && w.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && k == kw;
    if !fast {
        if k == kw && padding < k {
            return conv2d_im2col(x, w, stride, padding);
        }
        return x.conv2d(w, padding, stride, 1, 1);
    }
    let op = Conv2dOp {
        stride,
        padding,
        in_hw: (h, wd),
        kernel: k,
    };
    x.contiguous()?.apply_op2(&w.contiguous()?, op)
}

/// The convolution on any device and dtype with both gradients as im2col + gemm
/// convolutions (cuBLAS on CUDA), instead of candle's own backward, whose input gradient is a
/// direct `conv_transpose2d` kernel (one thread per input element looping over the kernel and
/// the output channels: on CUDA, slower than the rest of the step together).
///
/// The forward is candle's `conv2d` (im2col + gemm on CUDA and the CPU), wrapped in an op
/// whose backward computes
/// - the input gradient as a stride-1 convolution of `dY` (zeros inserted between its pixels
///   for a strided convolution) with the kernel flipped and its channel axes swapped,
///   padding `K − 1 − padding` (so `padding < K` is needed);
/// - the weight gradient as the convolution of `Xᵀ` (`[C, N, H, W]`) with `dYᵀ` as the
///   kernel, dilated by the stride, as candle's backward does.
///
/// Both are plain convolutions, so the gradients are differentiable again.
///
/// # Shapes
/// `x`: `[N, C, H, W]`, `w`: `[O, C, K, K]` → `[N, O, OH, OW]`.
pub fn conv2d_im2col(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (_, wc, k, kw) = w.dims4()?;
    if k != kw || c != wc || padding >= k {
        bail!(
            "conv2d_im2col: needs a square kernel, matching channels and padding < kernel; \
             input {:?}, weight {:?}, padding {padding}",
            x.dims(),
            w.dims()
        )
    }
    Geom::new(x.dims4()?, (w.dim(0)?, k), stride, padding)?;
    let y = x
        .detach()
        .conv2d(&w.detach(), padding, stride, 1, 1)?
        .contiguous()?;
    if !(x.track_op() || w.track_op()) {
        return Ok(y);
    }
    x.apply_op3(
        w,
        &y,
        Im2ColGrad {
            stride,
            padding,
            in_hw: (h, wd),
        },
    )
}

/// The op that carries [`conv2d_im2col`]'s backward: its forward hands back the
/// convolution computed beside it (the third argument).
struct Im2ColGrad {
    stride: usize,
    padding: usize,
    in_hw: (usize, usize),
}

/// `dX` of a convolution from `dY`, as a stride-1 convolution (see [`conv2d_im2col`]).
///
/// # Shapes
/// `dy`: `[N, O, OH, OW]`, `w`: `[O, C, K, K]` → `[N, C, H, W]`.
pub fn conv2d_input_grad(
    dy: &Tensor,
    w: &Tensor,
    (h, wd): (usize, usize),
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (n, o, oh, ow) = dy.dims4()?;
    let k = w.dim(2)?;
    // Rows and columns the forward never reached ((H + 2p − K) mod stride) get zeros.
    let extra_h = (h + 2 * padding - k) % stride;
    let extra_w = (wd + 2 * padding - k) % stride;
    let (hd, wdd) = (
        (oh - 1) * stride + 1 + extra_h,
        (ow - 1) * stride + 1 + extra_w,
    );
    let dilated = if stride == 1 {
        dy.pad_with_zeros(2, 0, extra_h)?
            .pad_with_zeros(3, 0, extra_w)?
    } else {
        let zeros = |shape: (usize, usize, usize, usize, usize)| {
            Tensor::zeros(shape, dy.dtype(), dy.device())
        };
        // Each pixel followed by stride − 1 zeros, along the columns then the rows.
        let cols = Tensor::cat(&[&dy.unsqueeze(4)?, &zeros((n, o, oh, ow, stride - 1))?], 4)?
            .reshape((n, o, oh, ow * stride))?
            .narrow(3, 0, wdd)?;
        Tensor::cat(
            &[&cols.unsqueeze(3)?, &zeros((n, o, oh, stride - 1, wdd))?],
            3,
        )?
        .reshape((n, o, oh * stride, wdd))?
        .narrow(2, 0, hd)?
    };
    let rev = Tensor::from_vec((0..k as u32).rev().collect::<Vec<_>>(), k, w.device())?;
    let flipped = w
        .index_select(&rev, 2)?
        .index_select(&rev, 3)?
        .transpose(0, 1)?
        .contiguous()?; // [C, O, K, K]
    dilated
        .contiguous()?
        .conv2d(&flipped, k - 1 - padding, 1, 1, 1)
}

/// `dW` of a convolution from its input and `dY` (see [`conv2d_im2col`]).
///
/// # Shapes
/// `x`: `[N, C, H, W]`, `dy`: `[N, O, OH, OW]` → `[O, C, K, K]`.
pub fn conv2d_weight_grad(
    x: &Tensor,
    dy: &Tensor,
    k: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let g = x.transpose(0, 1)?.contiguous()?.conv2d(
        &dy.transpose(0, 1)?.contiguous()?,
        padding,
        1,
        stride,
        1,
    )?; // [C, O, ≥K, ≥K]
    g.narrow(2, 0, k)?
        .narrow(3, 0, k)?
        .transpose(0, 1)?
        .contiguous()
}

impl CustomOp3 for Im2ColGrad {
    fn name(&self) -> &'static str {
        "simclr-conv2d-im2col"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        y: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        check_whole(l)?;
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        y: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        check_whole(l)?;
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = x
            .track_op()
            .then(|| conv2d_input_grad(&dy, w, self.in_hw, self.stride, self.padding))
            .transpose()?;
        let dw = w
            .track_op()
            .then(|| conv2d_weight_grad(x, &dy, w.dim(2)?, self.stride, self.padding))
            .transpose()?;
        Ok((dx, dw, None))
    }
}

/// The forward's result is handed on whole: it must be contiguous from offset 0.
fn check_whole(l: &Layout) -> Result<()> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        bail!("conv2d_im2col: the forward's result is not contiguous")
    }
    Ok(())
}

/// The convolution's geometry.
#[derive(Clone, Copy, Debug)]
struct Geom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geom {
    fn new(
        (n, c, h, w): (usize, usize, usize, usize),
        (o, k): (usize, usize),
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        if stride == 0 {
            bail!("conv2d: stride must be positive")
        }
        if k == 0 || h + 2 * pad < k || w + 2 * pad < k {
            bail!("conv2d: kernel {k}x{k} larger than the padded input {h}x{w} (padding {pad})")
        }
        Ok(Self {
            n,
            c,
            h,
            w,
            o,
            k,
            stride,
            pad,
            oh: (h + 2 * pad - k) / stride + 1,
            ow: (w + 2 * pad - k) / stride + 1,
        })
    }

    /// Rows of `col`: `C·K·K`.
    fn ckk(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Output pixels per image.
    fn ohw(&self) -> usize {
        self.oh * self.ow
    }

    /// Input scalars per image.
    fn chw(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Output scalars per image.
    fn out_len(&self) -> usize {
        self.o * self.ohw()
    }

    /// A stride-1 3×3 "same" convolution wide enough for [`shifted`].
    fn shifted(&self) -> bool {
        self.k == 3 && self.stride == 1 && self.pad == 1 && self.ow >= SHIFTED_MIN_WIDTH
    }

    /// A stride-1 3×3 "same" convolution large enough for [`winograd`]: at least
    /// [`WINOGRAD_MIN_CHANNELS`] channels in and out, and as many times the output width.
    fn winograd(&self) -> bool {
        let ch = self.c.min(self.o);
        self.k == 3
            && self.stride == 1
            && self.pad == 1
            && ch >= WINOGRAD_MIN_CHANNELS
            && ch * self.ow >= WINOGRAD_MIN_WORK
    }

    /// A 1×1 stride-1 unpadded convolution: `col` is the image itself.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }

    /// Images per task, stacked into one gemm: enough for [`GEMM_COLS`] columns, but no more
    /// than leaves every thread a task.
    fn group(&self) -> usize {
        let threads = rayon::current_num_threads().max(1);
        let per_thread = self.n.div_ceil(threads).max(1);
        GEMM_COLS.div_ceil(self.ohw().max(1)).clamp(1, per_thread)
    }

    /// The gemms of a task of `gn` images, as ranges of output rows: all rows when images are
    /// stacked, else tiles of about [`GEMM_COLS`] columns.
    fn row_tiles(&self, gn: usize) -> impl Iterator<Item = (usize, usize)> + use<> {
        let rows = if gn > 1 {
            self.oh
        } else {
            (GEMM_COLS / self.ow.max(1)).clamp(1, self.oh.max(1))
        };
        let oh = self.oh;
        (0..oh)
            .step_by(rows)
            .map(move |r0| (r0, (r0 + rows).min(oh)))
    }

    /// The output positions `[lo, hi)` along one axis (input length `len`, output length
    /// `out`) whose kernel tap `t` lands inside the input.
    fn valid(&self, t: usize, len: usize, out: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.pad);
        let lo = if t >= p { 0 } else { (p - t).div_ceil(s) };
        let hi = if len + p <= t {
            0
        } else {
            ((len + p - 1 - t) / s + 1).min(out)
        };
        (lo.min(hi), hi)
    }
}

/// A strided read-only matrix view.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// Row-major rows `ld` scalars apart.
    fn strided(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: ld,
            cs: 1,
        }
    }

    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// One past the last scalar the view reads.
    fn end(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs + 1
        }
    }
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` when `accumulate`), `dst` row-major
/// `[lhs.rows, rhs.cols]` with rows `dst_rs` scalars apart; single-threaded.
fn matmul(dst: &mut [f32], dst_rs: usize, lhs: View, rhs: View, accumulate: bool) {
    // SAFETY: `&mut [f32]` and `&mut [MaybeUninit<f32>]` have the same layout, and `dst`
    // is initialised, as `gemm_into` reads it (with `accumulate`) and leaves it.
    let dst = unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) };
    // SAFETY: `dst` is initialised (it was a `&mut [f32]`).
    unsafe { gemm_into(dst, dst_rs, lhs, rhs, accumulate) }
}

/// `dst = lhs · rhs` into memory that need not be initialised: every element of the
/// `[lhs.rows, rhs.cols]` block (rows `dst_rs` scalars apart) is written, none read.
fn matmul_uninit(dst: &mut [MaybeUninit<f32>], dst_rs: usize, lhs: View, rhs: View) {
    // SAFETY: without `accumulate`, nothing of `dst` is read.
    unsafe { gemm_into(dst, dst_rs, lhs, rhs, false) }
}

/// The gemm behind [`matmul`] and [`matmul_uninit`]: writes `lhs · rhs` (added to what is
/// there with `accumulate`) as initialised floats into the block of `dst`.
///
/// # Safety
/// With `accumulate`, the block of `dst` must be initialised: it is read.
unsafe fn gemm_into(
    dst: &mut [MaybeUninit<f32>],
    dst_rs: usize,
    lhs: View,
    rhs: View,
    accumulate: bool,
) {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    assert_eq!(rhs.rows, k, "matmul: inner dimensions differ");
    assert!(lhs.end() <= lhs.data.len() && rhs.end() <= rhs.data.len());
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst_rs >= n && (m - 1) * dst_rs + n <= dst.len(),
        "matmul: destination too small"
    );
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_rs).take(m) {
                row[..n].fill(MaybeUninit::new(0.0));
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if bf16_gemm() {
        // SAFETY: `set_bf16_gemm` turned it on only where supported; the asserts above keep
        // the views inside their slices and the block inside `dst`, initialised where
        // `accumulate` reads it (this fn's contract).
        unsafe { bf16::gemm(dst, dst_rs, lhs, rhs, accumulate) };
        return;
    }
    // SAFETY: the asserts above keep every index gemm touches, `(m−1)·rs + (n−1)·cs` for each
    // operand, inside its slice; `dst` is exclusively borrowed and the operands are shared
    // borrows, so they cannot alias it. gemm computes `dst = alpha·dst + beta·lhs·rhs`,
    // reading `dst` only when `read_dst` (`accumulate`: initialised, by this fn's contract)
    // and writing every element of the block; `MaybeUninit<f32>` has the layout of `f32`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

thread_local! {
    /// Per-thread scratch (`col` and the stacked output/gradient), grown as needed and kept
    /// between calls.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` on this thread's scratch buffers of `a` and `b` scalars (contents unspecified).
fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => {
            let (x, y) = &mut *s;
            if x.len() < a {
                x.resize(a, 0.0);
            }
            if y.len() < b {
                y.resize(b, 0.0);
            }
            f(&mut x[..a], &mut y[..b])
        }
        // Re-entered on this thread (cannot happen with single-threaded gemm, kept safe).
        Err(_) => f(&mut vec![0.0; a], &mut vec![0.0; b]),
    })
}

/// The sum of `tasks` partials of `len` scalars, partial `t` computed by `f(t, partial)` on
/// zeroed memory, all in parallel: the weight gradients' one partial per thread.
fn sum_of_partials(
    tasks: usize,
    len: usize,
    f: impl Fn(usize, &mut [f32]) + Send + Sync,
) -> Vec<f32> {
    if len == 0 {
        return Vec::new();
    }
    let mut parts = vec![0f32; tasks.max(1) * len];
    parts
        .par_chunks_mut(len)
        .enumerate()
        .for_each(|(t, part)| f(t, part));
    let (sum, rest) = parts.split_at_mut(len);
    for part in rest.chunks_exact(len) {
        for (a, b) in sum.iter_mut().zip(part) {
            *a += b;
        }
    }
    parts.truncate(len);
    parts.shrink_to_fit();
    parts
}

/// Zeroes `s`, one of im2col/col2im's padding fills: empty or a single tap for a padding of 1
/// (a `memset` call per image row costs more than the row's copy at these sizes), longer
/// only at the top and bottom rows.
#[inline(always)]
fn zero(s: &mut [f32]) {
    match s {
        [] => {}
        [x] => *x = 0.0,
        _ => s.fill(0.0),
    }
}

/// Writes output rows `[r0, r1)` of image `x` (`[C, H, W]`) as `col[C·K·K, (r1−r0)·OW]`,
/// rows `ld` scalars apart.
fn im2col(x: &[f32], g: &Geom, (r0, r1): (usize, usize), col: &mut [f32], ld: usize) {
    let (h, w, ow, s, p) = (g.h, g.w, g.ow, g.stride, g.pad);
    let same = s == 1 && ow == w;
    for c in 0..g.c {
        let xc = &x[c * h * w..(c + 1) * h * w];
        for ki in 0..g.k {
            let (oh_lo, oh_hi) = g.valid(ki, h, g.oh);
            let (lo, hi) = (oh_lo.clamp(r0, r1), oh_hi.clamp(r0, r1));
            for kj in 0..g.k {
                let (ow_lo, ow_hi) = g.valid(kj, w, ow);
                let r = (c * g.k + ki) * g.k + kj;
                let row = &mut col[r * ld..r * ld + (r1 - r0) * ow];
                zero(&mut row[..(lo - r0) * ow]);
                zero(&mut row[(hi.max(lo) - r0) * ow..]);
                if lo >= hi {
                    continue;
                }
                if same {
                    // Rows of `x` and of `col` are equally long: the valid rows are one shifted
                    // copy, then the taps that wrapped past a row's edge are zeroed.
                    let (d0, d1) = ((lo - r0) * w + ow_lo, (hi - 1 - r0) * w + ow_hi);
                    let s0 = (lo + ki - p) * w + ow_lo + kj - p;
                    row[d0..d1].copy_from_slice(&xc[s0..s0 + d1 - d0]);
                    if ow_lo > 0 || ow_hi < w {
                        for dst in row[(lo - r0) * w..(hi - r0) * w].chunks_exact_mut(w) {
                            zero(&mut dst[..ow_lo]);
                            zero(&mut dst[ow_hi..]);
                        }
                    }
                    continue;
                }
                for (oh, dst) in (lo..hi).zip(row[(lo - r0) * ow..].chunks_exact_mut(ow)) {
                    let src = &xc[(oh * s + ki - p) * w..][..w];
                    zero(&mut dst[..ow_lo]);
                    zero(&mut dst[ow_hi..]);
                    gather(&mut dst[ow_lo..ow_hi], &src[ow_lo * s + kj - p..], s);
                }
            }
        }
    }
}

/// `dst[i] = src[i·s]`. Stride 2 (the downsampling convolutions) goes through pairs, which
/// the compiler vectorises as interleaved loads; `step_by` stays scalar.
#[inline(always)]
fn gather(dst: &mut [f32], src: &[f32], s: usize) {
    if s == 2 {
        let pairs = src.chunks_exact(2);
        let n = pairs.len().min(dst.len());
        for (d, pair) in dst[..n].iter_mut().zip(pairs) {
            *d = pair[0];
        }
        if let (Some(d), Some(v)) = (dst.get_mut(n), src.get(2 * n)) {
            *d = *v;
        }
        return;
    }
    for (d, v) in dst.iter_mut().zip(src.iter().step_by(s)) {
        *d = *v;
    }
}

/// `dst[i·s] += src[i]`: the adjoint of [`gather`].
#[inline(always)]
fn scatter_add(dst: &mut [f32], src: &[f32], s: usize) {
    if s == 2 {
        let n = (dst.len() / 2).min(src.len());
        for (pair, v) in dst.chunks_exact_mut(2).zip(&src[..n]) {
            pair[0] += v;
        }
        if let (Some(d), Some(v)) = (dst.get_mut(2 * n), src.get(n)) {
            *d += v;
        }
        return;
    }
    for (d, v) in dst.iter_mut().step_by(s).zip(src) {
        *d += v;
    }
}

/// Scatter-adds `col[C·K·K, (r1−r0)·OW]` (rows `ld` scalars apart), output rows `[r0, r1)`,
/// into image `dx` (`[C, H, W]`): the adjoint of [`im2col`]. Zeroes the entries of `col` that
/// fall in the padding.
fn col2im(col: &mut [f32], ld: usize, g: &Geom, (r0, r1): (usize, usize), dx: &mut [f32]) {
    let (h, w, ow, s, p) = (g.h, g.w, g.ow, g.stride, g.pad);
    let same = s == 1 && ow == w;
    for c in 0..g.c {
        let xc = &mut dx[c * h * w..(c + 1) * h * w];
        for ki in 0..g.k {
            let (oh_lo, oh_hi) = g.valid(ki, h, g.oh);
            let (lo, hi) = (oh_lo.clamp(r0, r1), oh_hi.clamp(r0, r1));
            if lo >= hi {
                continue;
            }
            for kj in 0..g.k {
                let (ow_lo, ow_hi) = g.valid(kj, w, ow);
                let r = (c * g.k + ki) * g.k + kj;
                let row = &mut col[r * ld + (lo - r0) * ow..r * ld + (hi - r0) * ow];
                if same {
                    // The mirror of im2col's shifted copy: drop the padding taps, then add the
                    // valid rows as one block.
                    if ow_lo > 0 || ow_hi < w {
                        for src in row.chunks_exact_mut(w) {
                            zero(&mut src[..ow_lo]);
                            zero(&mut src[ow_hi..]);
                        }
                    }
                    let (d0, d1) = (ow_lo, (hi - 1 - lo) * w + ow_hi);
                    let s0 = (lo + ki - p) * w + ow_lo + kj - p;
                    for (d, v) in xc[s0..s0 + d1 - d0].iter_mut().zip(&row[d0..d1]) {
                        *d += v;
                    }
                    continue;
                }
                for (oh, src) in (lo..hi).zip(row.chunks_exact(ow)) {
                    let dst = &mut xc[(oh * s + ki - p) * w..][..w];
                    scatter_add(&mut dst[ow_lo * s + kj - p..], &src[ow_lo..ow_hi], s);
                }
            }
        }
    }
}

/// Stacks `gn` images' `[rows, per]` blocks (`src`, image-major) side by side into
/// `dst[rows, gn·per]`.
fn stack(src: &[f32], rows: usize, per: usize, gn: usize, dst: &mut [f32]) {
    for i in 0..gn {
        for r in 0..rows {
            let at = r * gn * per + i * per;
            dst[at..at + per].copy_from_slice(&src[(i * rows + r) * per..][..per]);
        }
    }
}

/// The inverse of [`stack`]: `src[rows, gn·per]` back to image-major `[gn, rows, per]`,
/// every element of `dst`'s first `gn·rows·per` written.
fn unstack(src: &[f32], rows: usize, per: usize, gn: usize, dst: &mut [MaybeUninit<f32>]) {
    for i in 0..gn {
        for r in 0..rows {
            let at = r * gn * per + i * per;
            dst[(i * rows + r) * per..][..per].write_copy_of_slice(&src[at..at + per]);
        }
    }
}

/// The forward pass: `[N, C, H, W]` ⊛ `[O, C, K, K]` → `[N, O, OH, OW]`.
fn forward(x: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    if g.winograd() {
        return winograd::forward(x, wt, g);
    }
    if g.shifted() {
        return shifted::forward(x, wt, g);
    }
    let (o, ckk, ohw, chw, ow) = (g.o, g.ckk(), g.ohw(), g.chw(), g.ow);
    let len = g.n * g.out_len();
    let mut y: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return y;
    }
    let grp = g.group();
    let w_m = View::row_major(wt, o, ckk);
    y.spare_capacity_mut()[..len]
        .par_chunks_mut(grp * g.out_len())
        .enumerate()
        .for_each(|(i, yc)| {
            // Not zeroed: the gemms (or `unstack`) write every element of the chunk.
            let gn = yc.len() / g.out_len();
            let xs = &x[i * grp * chw..(i * grp + gn) * chw];
            if gn == 1 && g.pointwise() {
                matmul_uninit(yc, ohw, w_m, View::row_major(xs, g.c, ohw));
                return;
            }
            for (r0, r1) in g.row_tiles(gn) {
                let per = (r1 - r0) * ow;
                let cols = gn * per;
                with_scratch(ckk * cols, if gn > 1 { o * cols } else { 0 }, |col, tmp| {
                    for j in 0..gn {
                        im2col(&xs[j * chw..], g, (r0, r1), &mut col[j * per..], cols);
                    }
                    let col = View::row_major(col, ckk, cols);
                    if gn == 1 {
                        // Output rows `r0..r1` of every channel: the tiles cover them all.
                        matmul_uninit(&mut yc[r0 * ow..], ohw, w_m, col);
                    } else {
                        matmul(tmp, cols, w_m, col, false);
                        unstack(tmp, o, ohw, gn, yc);
                    }
                })
            }
        });
    // SAFETY: the chunks cover the first `len` elements and each task wrote all of its chunk:
    // a pointwise gemm or, per tile of output rows, a gemm or `unstack` writing those rows of
    // every channel, the tiles covering all rows.
    unsafe { y.set_len(len) };
    y
}

/// The input gradient: `dY` `[N, O, OH, OW]` and `W` → `dX` `[N, C, H, W]`.
fn input_grad(dy: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
    if g.winograd() {
        return winograd::input_grad(dy, wt, g);
    }
    if g.shifted() {
        return shifted::input_grad(dy, wt, g);
    }
    let (o, ckk, ohw, chw, ow) = (g.o, g.ckk(), g.ohw(), g.chw(), g.ow);
    let len = g.n * chw;
    let mut dx: Vec<f32> = Vec::with_capacity(len);
    if len == 0 {
        return dx;
    }
    let grp = g.group();
    let wt_m = View::row_major(wt, o, ckk).t(); // [C·K·K, O]
    dx.spare_capacity_mut()[..len]
        .par_chunks_mut(grp * chw)
        .enumerate()
        .for_each(|(i, dxc)| {
            let gn = dxc.len() / chw;
            let dys = &dy[i * grp * g.out_len()..(i * grp + gn) * g.out_len()];
            if gn == 1 && g.pointwise() {
                matmul_uninit(dxc, ohw, wt_m, View::row_major(dys, o, ohw));
                return;
            }
            // Zeroed by the thread that fills it, before col2im adds into it: one pass over
            // fresh memory, one page fault per page, whatever the allocator.
            dxc.fill(MaybeUninit::new(0.0));
            // SAFETY: every element was just initialised, and `MaybeUninit<f32>` has the
            // layout of `f32`.
            let dxc = unsafe { &mut *(dxc as *mut [MaybeUninit<f32>] as *mut [f32]) };
            for (r0, r1) in g.row_tiles(gn) {
                let per = (r1 - r0) * ow;
                let cols = gn * per;
                with_scratch(
                    ckk * cols,
                    if gn > 1 { o * cols } else { 0 },
                    |dcol, tmp| {
                        let rhs = if gn == 1 {
                            View::strided(&dys[r0 * ow..], o, cols, ohw)
                        } else {
                            stack(dys, o, ohw, gn, tmp);
                            View::row_major(tmp, o, cols)
                        };
                        matmul(dcol, cols, wt_m, rhs, false);
                        for j in 0..gn {
                            col2im(
                                &mut dcol[j * per..],
                                cols,
                                g,
                                (r0, r1),
                                &mut dxc[j * chw..][..chw],
                            );
                        }
                    },
                )
            }
        });
    // SAFETY: the chunks cover the first `len` elements and each task initialised its chunk.
    unsafe { dx.set_len(len) };
    dx
}

/// The weight gradient: `X` `[N, C, H, W]` and `dY` `[N, O, OH, OW]` → `dW` `[O, C, K, K]`:
/// one partial sum per thread, then their sum.
fn weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
    if g.winograd() {
        return winograd::weight_grad(x, dy, g);
    }
    if g.shifted() {
        return shifted::weight_grad(x, dy, g);
    }
    let (o, ckk, ohw, chw, ow) = (g.o, g.ckk(), g.ohw(), g.chw(), g.ow);
    let len = o * ckk;
    let grp = g.group();
    let groups = g.n.div_ceil(grp);
    let tasks = rayon::current_num_threads().clamp(1, groups.max(1));
    sum_of_partials(tasks, len, |t, acc| {
        let mut first = true;
        for gi in groups * t / tasks..groups * (t + 1) / tasks {
            let n0 = gi * grp;
            let gn = grp.min(g.n - n0);
            let xs = &x[n0 * chw..(n0 + gn) * chw];
            let dys = &dy[n0 * g.out_len()..(n0 + gn) * g.out_len()];
            if gn == 1 && g.pointwise() {
                let xt = View::row_major(xs, g.c, ohw).t();
                matmul(acc, ckk, View::row_major(dys, o, ohw), xt, !first);
                first = false;
                continue;
            }
            for (r0, r1) in g.row_tiles(gn) {
                let per = (r1 - r0) * ow;
                let cols = gn * per;
                with_scratch(ckk * cols, if gn > 1 { o * cols } else { 0 }, |col, tmp| {
                    for j in 0..gn {
                        im2col(&xs[j * chw..], g, (r0, r1), &mut col[j * per..], cols);
                    }
                    let lhs = if gn == 1 {
                        View::strided(&dys[r0 * ow..], o, cols, ohw)
                    } else {
                        stack(dys, o, ohw, gn, tmp);
                        View::row_major(tmp, o, cols)
                    };
                    let col_t = View::row_major(col, ckk, cols).t();
                    matmul(acc, ckk, lhs, col_t, !first);
                });
                first = false;
            }
        }
    })
}

/// Channels (the fewer of input and output) from which a stride-1 3×3 "same" convolution
/// may run as Winograd F(2×2, 3×3) ([`Geom::winograd`]), and the least product of those
/// channels and the output width. The transforms cost per pixel and channel, and their loops
/// run along a tile row, so Winograd pays on many channels and wide rows. Measured with
/// `bench_conv` (256 images, 2 threads, forward + backward, best of 3–4 interleaved runs,
/// Winograd against the direct path): channels × width 32 × 32 277 vs 307 ms, 64 × 16 196
/// vs 210, 128 × 8 186 vs 198, 256 × 4 203 vs 261, 64 × 32 709 vs 884, 128 × 16 523 vs 707,
/// 32 images of 32 × 64 129 vs 159; but 48 × 14 134 vs 116, and every ¼-width ResNet shape
/// (16 × 28, 32 × 14, 64 × 7, 128 × 4) 1.2–1.6× slower; 16 channels × 64 (32 images) 58 vs
/// 47.
const WINOGRAD_MIN_CHANNELS: usize = 32;

/// See [`WINOGRAD_MIN_CHANNELS`].
const WINOGRAD_MIN_WORK: usize = 1024;

/// Output width from which a stride-1 3×3 "same" convolution runs on shifted views
/// ([`Geom::shifted`]) instead of im2col/col2im. The shifted gemms compute one extra column
/// per row and have a ninth of im2col's inner dimension each; measured with `bench_conv`
/// (256 images, 2 threads, forward / backward against im2col): 28×28, 16 channels 6.9 vs
/// 8.8 ms / 24 vs 26 ms; 32×32, 64 channels 98 vs 102 ms / 242–260 vs 267 ms; but 14×14,
/// 32 channels 6.3 vs 5.8 ms and 16×16, 128 channels 91 vs 77 ms forward.
const SHIFTED_MIN_WIDTH: usize = 24;

/// Scalars of the destination tile of one shifted-view gemm (accumulated over the nine
/// taps, so kept in the L2 cache).
const SHIFTED_TILE: usize = 1 << 16;

/// Kernel taps of a 3×3 convolution.
const TAPS: usize = 9;

/// The stride-1 3×3 "same" convolution as nine gemms on shifted views of a zero-padded
/// image, with no im2col and no col2im.
///
/// The image is padded to planes of `H+2` rows of `W+1` columns (one zero column serves as
/// the right padding of a row and the left padding of the next) after one leading zero, and
/// flattened: tap `(ki, kj)` of output pixel `p = i·(W+1) + j` then reads `p + ki·(W+1) +
/// kj`. For every tap the operand is the padded image itself, shifted, as a `[C, pixels]`
/// view (rows one padded plane apart, columns contiguous), which gemm reads in place.
/// Outputs are computed on the "wide" grid of `W+1` columns per row and the extra column
/// dropped. The input gradient is the
/// same construction on the padded output gradient with the kernel flipped and transposed;
/// the weight gradient reads the image's shifted views against the output gradient laid on
/// the wide grid with zeros in the extra columns.
mod shifted {
    use super::{Geom, SHIFTED_TILE, TAPS, View, matmul, with_scratch};
    use rayon::prelude::*;
    use std::mem::MaybeUninit;

    /// The padded plane's geometry and the output tiles, for one convolution.
    struct Wide {
        /// Padded row length, `W+1`.
        pw: usize,
        /// Padded plane length, `(H+2)·(W+1)`.
        plane: usize,
        /// Output rows per tile.
        tile_rows: usize,
    }

    impl Wide {
        fn new(g: &Geom, out_channels: usize) -> Self {
            let pw = g.w + 1;
            let rows = (SHIFTED_TILE / (out_channels.max(1) * pw)).clamp(1, g.h.max(1));
            Self {
                pw,
                plane: (g.h + 2) * pw,
                tile_rows: rows,
            }
        }

        /// Scalars of a padded buffer of `channels` planes after the leading zero, with room
        /// for the widest tile's last shifted read past the last plane.
        fn padded_len(&self, channels: usize) -> usize {
            1 + channels * self.plane + self.slack()
        }

        /// What a tile's shifted reads can run past the end of the last plane: the
        /// largest shift (`2·(W+1) + 2`) and the rounding of the tile's columns.
        fn slack(&self) -> usize {
            2 * self.pw + 2 + 16
        }

        /// Output row tiles `[r0, r1)` with their wide column count, rounded up to a
        /// multiple of 16 (gemm reads an operand in place only then).
        fn tiles(&self, h: usize) -> impl Iterator<Item = (usize, usize, usize)> + use<> {
            let (rows, pw) = (self.tile_rows, self.pw);
            (0..h).step_by(rows).map(move |r0| {
                let r1 = (r0 + rows).min(h);
                (r0, r1, ((r1 - r0) * pw).next_multiple_of(16))
            })
        }

        /// The padded buffer `buf` of `channels` planes shifted by tap `t` for the tile from
        /// output row `r0`: `[channels, cols]`, rows one plane apart.
        fn tap<'a>(
            &self,
            buf: &'a [f32],
            channels: usize,
            r0: usize,
            t: usize,
            cols: usize,
        ) -> View<'a> {
            View {
                data: &buf[(r0 + t / 3) * self.pw + t % 3..],
                rows: channels,
                cols,
                rs: self.plane,
                cs: 1,
            }
        }

        /// Largest rounded tile.
        fn max_cols(&self) -> usize {
            (self.tile_rows * self.pw).next_multiple_of(16)
        }
    }

    /// Writes `channels` planes `[H, W]` of `src` into `dst` as a leading zero and
    /// zero-padded planes `[H+2, W+1]`, and zeroes the slack after them.
    fn pad(src: &[f32], channels: usize, h: usize, w: usize, wide: &Wide, dst: &mut [f32]) {
        let pw = wide.pw;
        dst[0] = 0.0;
        for c in 0..channels {
            let s = &src[c * h * w..][..h * w];
            let d = &mut dst[1 + c * wide.plane..][..wide.plane];
            d[..pw].fill(0.0);
            for i in 0..h {
                let row = &mut d[(i + 1) * pw..][..pw];
                row[..w].copy_from_slice(&s[i * w..][..w]);
                row[w] = 0.0;
            }
            d[(h + 1) * pw..].fill(0.0);
        }
        dst[1 + channels * wide.plane..].fill(0.0);
    }

    /// `[rows, cols]` of the weight's tap `t` (`w` is `[O, C, 3, 3]`): `[O, C]`, or its
    /// transpose with `transpose`.
    fn tap_view(w: &[f32], o: usize, c: usize, t: usize, transpose: bool) -> View<'_> {
        let v = View {
            data: &w[t..],
            rows: o,
            cols: c,
            rs: c * TAPS,
            cs: TAPS,
        };
        if transpose { v.t() } else { v }
    }

    /// Copies the wide tile `src` (`[rows, ld]`, output rows `r0..r1` of `W+1` columns)
    /// into the planes `dst` (`[rows, H, W]`), dropping the extra columns.
    fn narrow(
        src: &[f32],
        ld: usize,
        rows: usize,
        (r0, r1): (usize, usize),
        (h, w): (usize, usize),
        pw: usize,
        dst: &mut [MaybeUninit<f32>],
    ) {
        for r in 0..rows {
            let (s, d) = (&src[r * ld..], &mut dst[r * h * w..][..h * w]);
            for i in r0..r1 {
                d[i * w..][..w].write_copy_of_slice(&s[(i - r0) * pw..][..w]);
            }
        }
    }

    /// The forward pass: `[N, C, H, W]` ⊛ `[O, C, 3, 3]` → `[N, O, H, W]`.
    pub(super) fn forward(x: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
        let (o, c) = (g.o, g.c);
        same_conv(x, c, o, g, |t| tap_view(wt, o, c, t, false))
    }

    /// The input gradient: `dY` `[N, O, H, W]` and `W` → `dX` `[N, C, H, W]`, the
    /// stride-1 convolution of the padded `dY` with the flipped, transposed kernel: the
    /// view at shift `(ki, kj)` meets tap `(2 − ki, 2 − kj)`.
    pub(super) fn input_grad(dy: &[f32], wt: &[f32], g: &Geom) -> Vec<f32> {
        let (o, c) = (g.o, g.c);
        same_conv(dy, o, c, g, |t| tap_view(wt, o, c, TAPS - 1 - t, true))
    }

    /// `[N, cin, H, W]` → `[N, cout, H, W]`: per image and tile of output rows,
    /// `Σₜ lhs(t) · (the padded image shifted by tap t)`, `lhs(t)` being `[cout, cin]`.
    fn same_conv<'w>(
        src: &[f32],
        cin: usize,
        cout: usize,
        g: &Geom,
        lhs: impl Fn(usize) -> View<'w> + Sync,
    ) -> Vec<f32> {
        let (h, w) = (g.h, g.w);
        let wide = Wide::new(g, cout);
        let (per_in, per_out) = (cin * h * w, cout * h * w);
        let len = g.n * per_out;
        let mut dst: Vec<f32> = Vec::with_capacity(len);
        dst.spare_capacity_mut()[..len]
            .par_chunks_mut(per_out.max(1))
            .enumerate()
            .for_each(|(n, dn)| {
                let sn = &src[n * per_in..][..per_in];
                with_scratch(wide.padded_len(cin), cout * wide.max_cols(), |sp, acc| {
                    pad(sn, cin, h, w, &wide, sp);
                    for (r0, r1, cols) in wide.tiles(h) {
                        let acc = &mut acc[..cout * cols];
                        for t in 0..TAPS {
                            let rhs = wide.tap(sp, cin, r0, t, cols);
                            matmul(acc, cols, lhs(t), rhs, t > 0);
                        }
                        narrow(acc, cols, cout, (r0, r1), (h, w), wide.pw, dn);
                    }
                })
            });
        // SAFETY: `narrow` wrote every element of each image's chunk: the tiles cover its
        // rows, each written in full for every channel.
        unsafe { dst.set_len(len) };
        dst
    }

    /// The weight gradient: `X` `[N, C, H, W]` and `dY` `[N, O, H, W]` → `dW`
    /// `[O, C, 3, 3]`; one tap-major partial `[9, O, C]` per thread, then their sum.
    pub(super) fn weight_grad(x: &[f32], dy: &[f32], g: &Geom) -> Vec<f32> {
        let (o, c, h, w) = (g.o, g.c, g.h, g.w);
        let wide = Wide::new(g, o);
        let (chw, out, oc) = (g.chw(), g.out_len(), o * c);
        let tasks = rayon::current_num_threads().clamp(1, g.n.max(1));
        let sum = super::sum_of_partials(tasks, TAPS * oc, |task, part| {
            let mut first = true;
            for n in g.n * task / tasks..g.n * (task + 1) / tasks {
                let (xn, dyn_) = (&x[n * chw..][..chw], &dy[n * out..][..out]);
                let (padded, wide_dy) = (wide.padded_len(c), o * wide.max_cols());
                with_scratch(padded, wide_dy, |xp, dyw| {
                    pad(xn, c, h, w, &wide, xp);
                    for (r0, r1, cols) in wide.tiles(h) {
                        // dY on the wide grid, zero in the extra and rounding columns.
                        let dyw = &mut dyw[..o * cols];
                        for (r, row) in dyw.chunks_exact_mut(cols).enumerate() {
                            row.fill(0.0);
                            for i in r0..r1 {
                                row[(i - r0) * wide.pw..][..w]
                                    .copy_from_slice(&dyn_[(r * h + i) * w..][..w]);
                            }
                        }
                        let lhs = View::row_major(dyw, o, cols);
                        for t in 0..TAPS {
                            let xt = wide.tap(xp, c, r0, t, cols).t();
                            matmul(&mut part[t * oc..][..oc], c, lhs, xt, !first);
                        }
                        first = false;
                    }
                })
            }
        });
        // [9, O, C] → [O, C, 3, 3].
        let mut dw = vec![0f32; TAPS * oc];
        for t in 0..TAPS {
            for (i, &v) in sum[t * oc..][..oc].iter().enumerate() {
                dw[i * TAPS + t] = v;
            }
        }
        dw
    }
}

/// The f32 contents of a contiguous CPU operand.
fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        bail!("conv2d: {what} must be f32, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("conv2d: {what} must be contiguous"),
    }
}

/// Dimensions of a rank-4 layout.
fn dims4(l: &Layout, what: &str) -> Result<(usize, usize, usize, usize)> {
    match *l.dims() {
        [a, b, c, d] => Ok((a, b, c, d)),
        ref dims => bail!("conv2d: {what} must be rank 4, got shape {dims:?}"),
    }
}

/// The forward op: `x` ⊛ `w`.
struct Conv2dOp {
    stride: usize,
    padding: usize,
    /// The input's `(H, W)`, for the input gradient (strided convolutions lose it).
    in_hw: (usize, usize),
    kernel: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "simclr-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "input")?;
        let w = contiguous_f32(s2, l2, "weight")?;
        let xd = dims4(l1, "input")?;
        let (o, c, k, kw) = dims4(l2, "weight")?;
        if c != xd.1 || k != kw {
            bail!(
                "conv2d: weight {:?} does not fit input {:?}",
                l2.dims(),
                l1.dims()
            )
        }
        let g = Geom::new(xd, (o, k), self.stride, self.padding)?;
        let y = forward(x, w, &g);
        Ok((CpuStorage::F32(y), Shape::from((g.n, o, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = if x.track_op() {
            let op = Conv2dInputGrad {
                stride: self.stride,
                padding: self.padding,
                in_hw: self.in_hw,
            };
            Some(dy.apply_op2_no_bwd(&w.contiguous()?, &op)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let op = Conv2dWeightGrad {
                stride: self.stride,
                padding: self.padding,
                kernel: self.kernel,
            };
            Some(x.contiguous()?.apply_op2_no_bwd(&dy, &op)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// The input gradient op: `(dY, W)` → `dX`.
struct Conv2dInputGrad {
    stride: usize,
    padding: usize,
    in_hw: (usize, usize),
}

impl CustomOp2 for Conv2dInputGrad {
    fn name(&self) -> &'static str {
        "simclr-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dy = contiguous_f32(s1, l1, "output gradient")?;
        let w = contiguous_f32(s2, l2, "weight")?;
        let (n, o, oh, ow) = dims4(l1, "output gradient")?;
        let (o_w, c, k, _) = dims4(l2, "weight")?;
        let (h, wd) = self.in_hw;
        let g = Geom::new((n, c, h, wd), (o, k), self.stride, self.padding)?;
        if o != o_w || (oh, ow) != (g.oh, g.ow) {
            bail!(
                "conv2d backward: output gradient {:?} does not fit weight {:?} and input {h}x{wd}",
                l1.dims(),
                l2.dims()
            )
        }
        Ok((
            CpuStorage::F32(input_grad(dy, w, &g)),
            Shape::from((n, c, h, wd)),
        ))
    }
}

/// The weight gradient op: `(X, dY)` → `dW`.
struct Conv2dWeightGrad {
    stride: usize,
    padding: usize,
    kernel: usize,
}

impl CustomOp2 for Conv2dWeightGrad {
    fn name(&self) -> &'static str {
        "simclr-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "input")?;
        let dy = contiguous_f32(s2, l2, "output gradient")?;
        let xd = dims4(l1, "input")?;
        let (n, o, oh, ow) = dims4(l2, "output gradient")?;
        let k = self.kernel;
        let g = Geom::new(xd, (o, k), self.stride, self.padding)?;
        if n != g.n || (oh, ow) != (g.oh, g.ow) {
            bail!(
                "conv2d backward: output gradient {:?} does not fit input {:?}",
                l2.dims(),
                l1.dims()
            )
        }
        let dw = weight_grad(x, dy, &g);
        Ok((CpuStorage::F32(dw), Shape::from((o, g.c, k, k))))
    }
}
