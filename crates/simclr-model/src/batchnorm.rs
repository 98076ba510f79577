//! BatchNorm with PyTorch's semantics, fused with what follows it (ReLU, or a residual add and
//! ReLU) in one CPU custom op, forward and backward.
//!
//! candle-nn's `BatchNorm::forward_train` is a chain of a dozen element-wise and reduction
//! ops (transpose, copy, mean, subtract, square, mean, divide, multiply, add, transpose back),
//! each allocating a tensor the size of the activation and each differentiated separately;
//! with the ReLU and the residual add after it, that was most of a ¼-width ResNet's step. Here
//! the forward reads the input twice (mean, then variance) and writes the output once, and
//! the backward reads the input and the output gradient twice and writes the input gradient
//! once, every pass spread over rayon's pool.
//!
//! The fused path runs on the CPU in f32; on other devices and dtypes the same module runs
//! candle-nn's BatchNorm followed by candle's add and ReLU, which is also the reference the
//! tests hold the fused op to.
//!
//! **Global BatchNorm** (SimCLR's `global_bn`, PyTorch's `SyncBatchNorm`): once
//! [`set_sync_batch_norm`] has installed a communicator, a training forward of the fused op
//! normalises with the statistics of the whole global batch — the per-channel sums, then the
//! sums of squared deviations from the global mean, each all-reduced — and its backward
//! all-reduces the two per-channel sums the input gradient needs (`Σ dy` and
//! `Σ dy·(x − mean)`). The parameter gradients stay this rank's own (the trainer averages
//! them), and the running statistics are updated from the global values, so they are the
//! same on every rank.

use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Layout, ModuleT, Result, Shape, Storage, Tensor, Var,
    bail,
};
use candle_nn::VarBuilder;
use rayon::prelude::*;
use simclr_dist::Comm;

/// The communicator global BatchNorm reduces over (none: per-process statistics).
static SYNC: std::sync::RwLock<Option<Comm>> = std::sync::RwLock::new(None);

/// Makes every training-mode BatchNorm of this process use the statistics of the global
/// batch across `comm`'s ranks (`None`, the default: this process's batch only). Every rank
/// must run the same BatchNorm layers in the same order, as data-parallel training does.
/// Only the fused CPU op synchronises; on other devices a world above one is refused.
pub fn set_sync_batch_norm(comm: Option<Comm>) {
    *SYNC.write().unwrap_or_else(|e| e.into_inner()) = comm.filter(|c| c.world() > 1);
}

/// The communicator of global BatchNorm, if one is installed.
pub fn sync_batch_norm() -> Option<Comm> {
    SYNC.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Sums `v` over the ranks of `comm`, if any.
fn all_reduce(comm: Option<&Comm>, v: &mut [f64]) -> Result<()> {
    if let Some(c) = comm {
        c.all_reduce_sum_f64(v)
            .map_err(|e| candle_core::Error::Msg(format!("global batch-norm: {e}")))?;
    }
    Ok(())
}

/// PyTorch's BatchNorm defaults.
const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// BatchNorm over dimension 1 of `[B, C, …]` input (2-D `[B, C]` for the projection head,
/// 4-D `[B, C, H, W]` in the encoder): eps 1e-5, momentum 0.1, running variance updated with
/// the unbiased batch variance, parameters named `weight`, `bias`, `running_mean`,
/// `running_var` as in `torch.nn.BatchNorm2d`.
pub struct BatchNorm {
    reference: candle_nn::BatchNorm,
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
}

/// What follows the normalisation inside the fused op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tail {
    /// Nothing: `bn(x)`.
    None,
    /// `relu(bn(x))`.
    Relu,
    /// `relu(bn(x) + residual)`.
    AddRelu,
}

impl BatchNorm {
    /// Gets (or creates: weight 1, bias 0, running mean 0, running variance 1) the parameters
    /// for `channels` features from `vb`.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        use candle_nn::Init::Const;
        let running_mean = vb.get_with_hints(channels, "running_mean", Const(0.))?;
        let running_var = vb.get_with_hints(channels, "running_var", Const(1.))?;
        let weight = vb.get_with_hints(channels, "weight", Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", Const(0.))?;
        let reference = candle_nn::BatchNorm::new(
            channels,
            running_mean.clone(),
            running_var.clone(),
            weight.clone(),
            bias.clone(),
            EPS,
        )?;
        Ok(Self {
            reference,
            weight,
            bias,
            // Shares the storage of the VarMap's variables, so updates land in the model.
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
        })
    }

    /// `bn(x)`; `train` normalises with the batch statistics and updates the running ones.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_fused(x, None, Tail::None, train)
    }

    /// `relu(bn(x))`.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_fused(x, None, Tail::Relu, train)
    }

    /// `relu(bn(x) + residual)`, the end of a residual block.
    pub fn forward_add_relu(&self, x: &Tensor, residual: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_fused(x, Some(residual), Tail::AddRelu, train)
    }

    /// The same computation through candle-nn's BatchNorm and candle's ops (the path for
    /// other devices and dtypes, and the reference the fused op is tested against).
    pub fn forward_reference(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
        train: bool,
    ) -> Result<Tensor> {
        let mut y = self.reference.forward_t(x, train)?;
        if let Some(r) = residual {
            y = (y + r)?;
        }
        if relu { y.relu() } else { Ok(y) }
    }

    fn forward_fused(
        &self,
        x: &Tensor,
        residual: Option<&Tensor>,
        tail: Tail,
        train: bool,
    ) -> Result<Tensor> {
        if x.dtype() != self.weight.dtype() {
            // bf16 activations: statistics, normalisation and the tail in f32, the result
            // back in the activations' dtype.
            let dtype = x.dtype();
            let x = x.to_dtype(self.weight.dtype())?;
            let r = residual
                .map(|r| r.to_dtype(self.weight.dtype()))
                .transpose()?;
            return self
                .forward_fused(&x, r.as_ref(), tail, train)?
                .to_dtype(dtype);
        }
        let fast = x.device().is_cpu()
            && x.dtype() == DType::F32
            && self.weight.dtype() == DType::F32
            && x.rank() >= 2
            && residual.is_none_or(|r| r.dtype() == DType::F32 && r.device().is_cpu());
        let sync = if train { sync_batch_norm() } else { None };
        if !fast {
            if sync.is_some() {
                bail!(
                    "global batch-norm runs in the CPU op only (f32, on the CPU); \
                     train this device without it"
                )
            }
            return self.forward_reference(x, residual, tail != Tail::None, train);
        }
        let channels = self.weight.dim(0)?;
        if x.dim(1)? != channels {
            bail!(
                "batch-norm: input {:?} does not have {channels} channels",
                x.shape()
            )
        }
        let stats = Arc::new(OnceLock::new());
        if !train {
            let mean = self.running_mean.as_tensor().to_vec1::<f32>()?;
            let var = self.running_var.as_tensor().to_vec1::<f32>()?;
            let invstd = var.iter().map(|&v| inv_std(v as f64)).collect();
            let _ = stats.set(Stats {
                mean,
                var: Vec::new(),
                invstd,
            });
        }
        let op = BatchNormOp {
            tail,
            train,
            stats: stats.clone(),
            sync: sync.clone(),
        };
        let affine = Tensor::stack(&[&self.weight, &self.bias], 0)?.contiguous()?;
        let x = x.contiguous()?;
        let y = match residual {
            Some(r) => x.apply_op3(&affine, &r.contiguous()?, op)?,
            None => x.apply_op2(&affine, op)?,
        };
        if train {
            let Some(s) = stats.get() else {
                bail!("batch-norm: the forward pass left no statistics")
            };
            let mut n = [(x.elem_count() / channels) as f64];
            all_reduce(sync.as_ref(), &mut n)?; // the global batch's count
            let n = n[0];
            let unbiased = n / (n - 1.0).max(1.0);
            let update = |running: &Var, batch: Vec<f32>| -> Result<()> {
                let old = running.as_tensor().to_vec1::<f32>()?;
                let new: Vec<f32> = old
                    .iter()
                    .zip(batch)
                    .map(|(&o, b)| ((1.0 - MOMENTUM) * o as f64 + MOMENTUM * b as f64) as f32)
                    .collect();
                running.set(&Tensor::from_vec(new, channels, x.device())?)
            };
            update(&self.running_mean, s.mean.clone())?;
            let var = s
                .var
                .iter()
                .map(|&v| (v as f64 * unbiased) as f32)
                .collect();
            update(&self.running_var, var)?;
        }
        Ok(y)
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        BatchNorm::forward_t(self, x, train)
    }
}

fn inv_std(var: f64) -> f32 {
    (1.0 / (var + EPS).sqrt()) as f32
}

/// Per-channel mean and 1/√(var + eps) the forward normalised with.
struct Stats {
    mean: Vec<f32>,
    /// The biased batch variance (training only).
    var: Vec<f32>,
    invstd: Vec<f32>,
}

/// `[B, C, S]`: batch, channels, and everything after the channels flattened.
#[derive(Clone, Copy, Debug)]
struct Dims {
    b: usize,
    c: usize,
    s: usize,
}

impl Dims {
    fn of(shape: &Shape) -> Result<Self> {
        let d = shape.dims();
        if d.len() < 2 {
            bail!("batch-norm: input must have at least two dimensions, got {shape:?}")
        }
        Ok(Self {
            b: d[0],
            c: d[1],
            s: d[2..].iter().product(),
        })
    }

    /// Elements per channel: B·S.
    fn per_channel(&self) -> usize {
        self.b * self.s
    }

    /// The rows (length S) of channel `ch`, one per batch item.
    fn rows<'a>(&self, v: &'a [f32], ch: usize) -> impl Iterator<Item = &'a [f32]> {
        let (c, s) = (self.c, self.s);
        (0..self.b).map(move |b| &v[(b * c + ch) * s..][..s])
    }
}

/// The fused op; `stats` is filled by a training forward (batch statistics) or before an
/// evaluation one (running statistics), and read back by the backward.
struct BatchNormOp {
    tail: Tail,
    train: bool,
    stats: Arc<OnceLock<Stats>>,
    /// Global BatchNorm's communicator (training only).
    sync: Option<Comm>,
}

/// The contiguous f32 data of a CPU storage.
fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("batch-norm: expected f32, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("batch-norm: input is not contiguous"),
    }
}

/// The same for a tensor (made contiguous by the caller).
fn with_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("batch-norm: expected a CPU tensor")
    };
    f(slice(cpu, layout)?)
}

/// Σ v, eight lanes wide so it vectorises.
fn sum(v: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for ch in chunks {
        for (a, &x) in acc.iter_mut().zip(ch) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Σ (v − m)².
fn sum_sq_dev(v: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().map(|&x| (x - m) * (x - m)).sum();
    for ch in chunks {
        for (a, &x) in acc.iter_mut().zip(ch) {
            *a += (x - m) * (x - m);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Per-channel mean and biased variance, two passes, rows summed in f32 and rows in f64;
/// with `sync`, of the global batch (each pass's per-channel sums, and the count,
/// all-reduced).
fn batch_stats(x: &[f32], d: Dims, sync: Option<&Comm>) -> Result<Stats> {
    let mut sums: Vec<f64> = (0..d.c)
        .into_par_iter()
        .map(|ch| d.rows(x, ch).map(|r| sum(r) as f64).sum::<f64>())
        .collect();
    sums.push(d.per_channel() as f64);
    all_reduce(sync, &mut sums)?;
    let n = sums.pop().unwrap_or(1.0);
    let mean: Vec<f64> = sums.iter().map(|s| s / n).collect();
    let mut dev: Vec<f64> = (0..d.c)
        .into_par_iter()
        .map(|ch| {
            d.rows(x, ch)
                .map(|r| sum_sq_dev(r, mean[ch] as f32) as f64)
                .sum::<f64>()
        })
        .collect();
    all_reduce(sync, &mut dev)?;
    let var: Vec<f64> = dev.iter().map(|s| s / n).collect();
    Ok(Stats {
        mean: mean.iter().map(|&m| m as f32).collect(),
        var: var.iter().map(|&v| v as f32).collect(),
        invstd: var.iter().map(|&v| inv_std(v)).collect(),
    })
}

/// A vector of `len` scalars whose chunks of `item` are written by `f(chunk index, chunk)`
/// in parallel, without zeroing the memory first.
///
/// # Safety
/// `f` must write every element of each chunk it is given: the vector's elements are taken
/// as initialised afterwards.
unsafe fn par_filled(
    len: usize,
    item: usize,
    f: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send,
) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    v.spare_capacity_mut()[..len]
        .par_chunks_mut(item.max(1))
        .enumerate()
        .for_each(|(i, c)| f(i, c));
    // SAFETY: the capacity is `len`, every chunk is handed to `f` exactly once, and `f`
    // writes each element of its chunk (this fn's contract): all `len` are initialised.
    unsafe { v.set_len(len) };
    v
}

/// `y = tail(scale·x + shift [+ r])`, one batch item per task.
fn normalise(
    x: &[f32],
    residual: Option<&[f32]>,
    scale: &[f32],
    shift: &[f32],
    relu: bool,
    d: Dims,
) -> Vec<f32> {
    let item = d.c * d.s;
    // SAFETY: the closure writes every element of its item: each channel's range of `yb`
    // (the `C` ranges of length `S` tile the item) in each of the three branches.
    unsafe {
        par_filled(x.len(), item, |b, yb| {
            let xb = &x[b * item..][..item];
            for ch in 0..d.c {
                let (k, m) = (scale[ch], shift[ch]);
                let range = ch * d.s..(ch + 1) * d.s;
                let (yr, xr) = (&mut yb[range.clone()], &xb[range.clone()]);
                match residual {
                    Some(r) => {
                        let rr = &r[b * item..][range];
                        for ((y, &x), &r) in yr.iter_mut().zip(xr).zip(rr) {
                            y.write((k * x + m + r).max(0.0));
                        }
                    }
                    None if relu => {
                        for (y, &x) in yr.iter_mut().zip(xr) {
                            y.write((k * x + m).max(0.0));
                        }
                    }
                    None => {
                        for (y, &x) in yr.iter_mut().zip(xr) {
                            y.write(k * x + m);
                        }
                    }
                }
            }
        })
    }
}

impl BatchNormOp {
    fn forward(
        &self,
        x: &[f32],
        affine: &[f32],
        residual: Option<&[f32]>,
        shape: &Shape,
    ) -> Result<(CpuStorage, Shape)> {
        let d = Dims::of(shape)?;
        if affine.len() != 2 * d.c {
            bail!(
                "batch-norm: {} affine values for {} channels",
                affine.len(),
                d.c
            )
        }
        if residual.is_some_and(|r| r.len() != x.len()) {
            bail!("batch-norm: the residual's shape differs from the input's {shape:?}")
        }
        if self.train && d.per_channel() < 2 {
            bail!("batch-norm: training needs more than one value per channel, got {shape:?}")
        }
        if self.train {
            let _ = self.stats.set(batch_stats(x, d, self.sync.as_ref())?);
        }
        let Some(st) = self.stats.get() else {
            bail!("batch-norm: no statistics to normalise with")
        };
        let (w, b) = affine.split_at(d.c);
        let scale: Vec<f32> = (0..d.c).map(|c| w[c] * st.invstd[c]).collect();
        let shift: Vec<f32> = (0..d.c).map(|c| b[c] - st.mean[c] * scale[c]).collect();
        let y = normalise(x, residual, &scale, &shift, self.tail != Tail::None, d);
        Ok((CpuStorage::F32(y), shape.clone()))
    }

    /// Gradients for `x`, the stacked `[weight; bias]` and (with [`Tail::AddRelu`]) the
    /// residual.
    fn backward(
        &self,
        x: &Tensor,
        affine: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let d = Dims::of(x.shape())?;
        let Some(st) = self.stats.get() else {
            bail!("batch-norm: backward without a forward")
        };
        let w = affine.get(0)?.to_vec1::<f32>()?;
        let dy = dy.contiguous()?;
        let relu = self.tail != Tail::None;
        let mut n = [d.per_channel() as f64];
        all_reduce(self.sync.as_ref(), &mut n)?;
        let n = n[0] as f32;
        // dy' = dy masked where the ReLU was off; Σ dy' and Σ dy'·(x − mean) per channel.
        let masked: Option<Vec<f32>> = if relu {
            with_slice(y, |yv| {
                with_slice(&dy, |g| {
                    Ok(g.par_iter()
                        .zip(yv)
                        .with_min_len(1 << 12)
                        .map(|(&g, &y)| if y > 0.0 { g } else { 0.0 })
                        .collect())
                })
            })
            .map(Some)?
        } else {
            None
        };
        let (dx, sums) = with_slice(x, |xv| {
            let run = |g: &[f32]| -> Result<_> {
                let sums: Vec<(f32, f32)> = (0..d.c)
                    .into_par_iter()
                    .map(|ch| {
                        let m = st.mean[ch];
                        let (mut s, mut sx) = (0f64, 0f64);
                        for (gr, xr) in d.rows(g, ch).zip(d.rows(xv, ch)) {
                            s += sum(gr) as f64;
                            sx += dot_dev(gr, xr, m) as f64;
                        }
                        (s as f32, sx as f32)
                    })
                    .collect();
                // Global BatchNorm: the input gradient needs the sums over the whole batch
                // (the parameter gradients keep this rank's own).
                let global: Vec<(f32, f32)> = if self.sync.is_some() && self.train {
                    let mut flat: Vec<f64> = sums
                        .iter()
                        .flat_map(|&(s, sx)| [f64::from(s), f64::from(sx)])
                        .collect();
                    all_reduce(self.sync.as_ref(), &mut flat)?;
                    flat.chunks_exact(2)
                        .map(|p| (p[0] as f32, p[1] as f32))
                        .collect()
                } else {
                    sums.clone()
                };
                // dx = k1·dy' + k2·x + k3 per channel.
                let k: Vec<(f32, f32, f32)> = (0..d.c)
                    .map(|ch| {
                        let (i, m) = (st.invstd[ch], st.mean[ch]);
                        let k1 = w[ch] * i;
                        if self.train {
                            let (s, sx) = global[ch];
                            let k2 = -k1 * i * i * sx / n;
                            (k1, k2, -k1 * s / n - k2 * m)
                        } else {
                            (k1, 0.0, 0.0)
                        }
                    })
                    .collect();
                let item = d.c * d.s;
                // SAFETY: the closure writes every element of its item: the channels'
                // ranges of length S tile it, each written in full.
                let dx = unsafe {
                    par_filled(xv.len(), item, |b, dxb| {
                        let (xb, gb) = (&xv[b * item..][..item], &g[b * item..][..item]);
                        for (ch, &(k1, k2, k3)) in k.iter().enumerate() {
                            let r = ch * d.s..(ch + 1) * d.s;
                            for ((o, &x), &g) in
                                dxb[r.clone()].iter_mut().zip(&xb[r.clone()]).zip(&gb[r])
                            {
                                o.write(k1 * g + k2 * x + k3);
                            }
                        }
                    })
                };
                Ok((dx, sums))
            };
            match &masked {
                Some(g) => run(g),
                None => with_slice(&dy, run),
            }
        })?;
        let dweight: Vec<f32> = (0..d.c).map(|ch| sums[ch].1 * st.invstd[ch]).collect();
        let dbias: Vec<f32> = sums.iter().map(|s| s.0).collect();
        let dev = x.device();
        let daffine = Tensor::from_vec([dweight, dbias].concat(), (2, d.c), dev)?;
        let dx = Tensor::from_vec(dx, x.shape(), dev)?;
        let dres = match (self.tail, masked) {
            (Tail::AddRelu, Some(g)) => Some(Tensor::from_vec(g, x.shape(), dev)?),
            _ => None,
        };
        Ok((dx, daffine, dres))
    }
}

/// Σ g·(x − m).
fn dot_dev(g: &[f32], x: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 8];
    let (gc, xc) = (g.chunks_exact(8), x.chunks_exact(8));
    let rest: f32 = gc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .map(|(&g, &x)| g * (x - m))
        .sum();
    for (gs, xs) in gc.zip(xc) {
        for ((a, &g), &x) in acc.iter_mut().zip(gs).zip(xs) {
            *a += g * (x - m);
        }
    }
    acc.iter().sum::<f32>() + rest
}

impl CustomOp2 for BatchNormOp {
    fn name(&self) -> &'static str {
        "simclr-batch-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(slice(s1, l1)?, slice(s2, l2)?, None, l1.shape())
    }

    fn bwd(
        &self,
        x: &Tensor,
        affine: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, da, _) = self.backward(x, affine, y, dy)?;
        Ok((Some(dx), Some(da)))
    }
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "simclr-batch-norm-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l3.shape() != l1.shape() {
            bail!(
                "batch-norm: residual {:?} does not match input {:?}",
                l3.shape(),
                l1.shape()
            )
        }
        let r = slice(s3, l3)?;
        self.forward(slice(s1, l1)?, slice(s2, l2)?, Some(r), l1.shape())
    }

    fn bwd(
        &self,
        x: &Tensor,
        affine: &Tensor,
        _residual: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, da, dr) = self.backward(x, affine, y, dy)?;
        Ok((Some(dx), Some(da), dr))
    }
}
