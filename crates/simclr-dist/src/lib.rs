//! The data-parallel layer of simclr-rs: one place that knows about other processes.
//!
//! - [`Communicator`]: rank, world size and the three collectives training needs (sum
//!   all-reduce, all-gather, broadcast), implemented for one process ([`SingleProcess`]) and,
//!   with the `mpi` feature, for MPI ([`mpi_world`], Open MPI through the `mpi` crate).
//! - [`all_gather_with_grad`]: the differentiable all-gather of SimCLR's negatives: every
//!   rank's rows, concatenated in rank order; its backward **sums the gradient over ranks,
//!   then returns this rank's block**. Each rank's loss depends on every rank's keys, so the
//!   gradient reaching a rank's rows is the sum of every rank's loss gradient with respect to
//!   them; returning only the local block of the local gradient drops the other ranks'
//!   negative-pair terms (the bug lightly fixed in PR #1531 and solo-learn in #232).
//! - [`all_reduce_mean`]: the gradient average, flattened into one buffer and reduced in one
//!   call.
//!
//! With a loss that is the mean over ranks of each rank's mean over its anchors, and
//! gradients averaged over ranks, K ranks with n images each compute the gradient of one
//! process with K·n images (tested under `mpirun` in `tests/mpi.rs` of simclr-train).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, bail};

#[cfg(feature = "mpi")]
mod mpi_comm;
#[cfg(feature = "mpi")]
pub use mpi_comm::{MpiWorld, finalize_mpi, launched_by_mpirun, mpi_world};
#[cfg(feature = "nccl")]
mod nccl_comm;
#[cfg(feature = "nccl")]
pub use nccl_comm::{NcclWorld, nccl_world};

/// Why a collective failed.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// Buffers of different lengths on different ranks, or another misuse.
    #[error("{0}")]
    Usage(String),
}

/// Bytes this process has sent through each kind of collective (its own share: an
/// all-reduce of B bytes counts B, an all-gather counts its local part).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes all-reduced.
    pub reduced: u64,
    /// Bytes contributed to all-gathers.
    pub gathered: u64,
}

/// Counters behind [`Communicator::traffic`].
#[derive(Debug, Default)]
pub struct TrafficCounter {
    reduced: AtomicU64,
    gathered: AtomicU64,
}

impl TrafficCounter {
    /// Counts an all-reduce of `bytes`.
    pub fn reduce(&self, bytes: usize) {
        self.reduced.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts an all-gather contributing `bytes`.
    pub fn gather(&self, bytes: usize) {
        self.gathered.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The totals so far.
    pub fn get(&self) -> Traffic {
        Traffic {
            reduced: self.reduced.load(Ordering::Relaxed),
            gathered: self.gathered.load(Ordering::Relaxed),
        }
    }
}

/// A group of processes training one model. Every collective must be called by every rank,
/// in the same order, with buffers of the same length.
pub trait Communicator: Send + Sync {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn world(&self) -> usize;
    /// Element-wise sum over ranks, in place.
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> std::result::Result<(), DistError>;
    /// Element-wise sum over ranks, in place.
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> std::result::Result<(), DistError>;
    /// Every rank's `local` (of one length on all ranks), concatenated in rank order.
    fn all_gather_f32(&self, local: &[f32]) -> std::result::Result<Vec<f32>, DistError>;
    /// Every rank's `local` (of one length on all ranks), concatenated in rank order.
    fn all_gather_f64(&self, local: &[f64]) -> std::result::Result<Vec<f64>, DistError>;
    /// `buf` from rank `root` to every rank.
    fn broadcast_bytes(&self, root: usize, buf: &mut [u8]) -> std::result::Result<(), DistError>;
    /// Ends every process of the job with `code` (after a rank's unrecoverable error, so that
    /// the others do not wait for it in a collective forever).
    fn abort(&self, code: i32) -> !;
    /// What this process has sent so far.
    fn traffic(&self) -> Traffic;
    /// Element-wise sum over ranks of a tensor (of one shape on all ranks), on its device and
    /// in its dtype. By default through the host (f64 for f64 tensors, else f32); a
    /// communicator that can reduce device memory directly (NCCL) overrides it.
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if t.dtype() == DType::F64 {
            let mut v = host_f64(t)?;
            self.all_reduce_sum_f64(&mut v).map_err(dist_err)?;
            Tensor::from_vec(v, t.shape(), t.device())
        } else {
            let mut v = host_f32(t)?;
            self.all_reduce_sum_f32(&mut v).map_err(dist_err)?;
            Tensor::from_vec(v, t.shape(), t.device())?.to_dtype(t.dtype())
        }
    }
    /// Every rank's rows of `t` (`[n, D]`, the same on all ranks) in rank order, as a
    /// `[world · n, D]` tensor of `t`'s dtype on its device. By default through the host, as
    /// [`Communicator::all_reduce_sum_tensor`].
    fn all_gather_rows(&self, t: &Tensor) -> Result<Tensor> {
        let (n, d) = t.dims2()?;
        let shape = (self.world() * n, d);
        if t.dtype() == DType::F64 {
            let v = self.all_gather_f64(&host_f64(t)?).map_err(dist_err)?;
            Tensor::from_vec(v, shape, t.device())
        } else {
            let v = self.all_gather_f32(&host_f32(t)?).map_err(dist_err)?;
            Tensor::from_vec(v, shape, t.device())?.to_dtype(t.dtype())
        }
    }
    /// Whether this is rank 0, the one that writes files and prints progress.
    fn is_primary(&self) -> bool {
        self.rank() == 0
    }
}

/// One process: every collective is the identity.
#[derive(Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum_f64(&self, _: &mut [f64]) -> std::result::Result<(), DistError> {
        Ok(())
    }
    fn all_reduce_sum_f32(&self, _: &mut [f32]) -> std::result::Result<(), DistError> {
        Ok(())
    }
    fn all_gather_f32(&self, local: &[f32]) -> std::result::Result<Vec<f32>, DistError> {
        Ok(local.to_vec())
    }
    fn all_gather_f64(&self, local: &[f64]) -> std::result::Result<Vec<f64>, DistError> {
        Ok(local.to_vec())
    }
    fn broadcast_bytes(&self, _: usize, _: &mut [u8]) -> std::result::Result<(), DistError> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn traffic(&self) -> Traffic {
        Traffic::default()
    }
}

/// A shared communicator.
pub type Comm = Arc<dyn Communicator>;

/// The one-process communicator, shared.
pub fn single() -> Comm {
    Arc::new(SingleProcess)
}

fn dist_err(e: DistError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// A tensor's values as f32 on the host (contiguous, row-major).
fn host_f32(t: &Tensor) -> Result<Vec<f32>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()
}

/// A tensor's values as f64 on the host.
fn host_f64(t: &Tensor) -> Result<Vec<f64>> {
    t.to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()
}

/// Every rank's rows of `local`, concatenated in rank order, with the gradient rule of
/// SimCLR's gathered negatives: the backward sums the incoming gradient over ranks and
/// returns this rank's block. With one rank it is `local` itself.
///
/// The data travels through [`Communicator::all_gather_rows`] and, backwards,
/// [`Communicator::all_reduce_sum_tensor`]: device to device with NCCL, else through the
/// host, so it works on any device.
///
/// # Shapes
/// `local`: `[n, D]` (the same on every rank) → `[world · n, D]`.
pub fn all_gather_with_grad(comm: &Comm, local: &Tensor) -> Result<Tensor> {
    if comm.world() == 1 {
        return Ok(local.clone());
    }
    let (n, _) = local.dims2()?;
    let gathered = comm.all_gather_rows(local)?;
    if !local.track_op() {
        return Ok(gathered);
    }
    local.apply_op2(
        &gathered,
        GatherOp {
            comm: comm.clone(),
            rows: n,
        },
    )
}

/// Carries [`all_gather_with_grad`]'s backward; its forward hands back the gathered rows.
struct GatherOp {
    comm: Comm,
    rows: usize,
}

impl CustomOp2 for GatherOp {
    fn name(&self) -> &'static str {
        "simclr-all-gather"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        gathered: &CpuStorage,
        l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if !l.is_contiguous() || l.start_offset() != 0 {
            bail!("all-gather: the gathered rows are not contiguous")
        }
        Ok((gathered.try_clone(l)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        gathered: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if !l.is_contiguous() || l.start_offset() != 0 {
            bail!("all-gather: the gathered rows are not contiguous")
        }
        Ok((gathered.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(
        &self,
        local: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // Σ over ranks of each rank's gradient with respect to all keys, then our block.
        let summed = self.comm.all_reduce_sum_tensor(grad)?;
        let mine = summed.narrow(0, self.comm.rank() * self.rows, self.rows)?;
        Ok((Some(mine.to_dtype(local.dtype())?), None))
    }
}

/// The mean over ranks of each tensor, reduced in one flattened buffer (one collective for
/// all of them), on each tensor's device and in its dtype.
pub fn all_reduce_mean(comm: &Comm, tensors: &[Tensor]) -> Result<Vec<Tensor>> {
    if comm.world() == 1 || tensors.is_empty() {
        return Ok(tensors.to_vec());
    }
    // One flat f32 buffer on the first tensor's device (gradients are f32 master copies).
    let device = tensors[0].device();
    let flat = Tensor::cat(
        &tensors
            .iter()
            .map(|t| t.to_device(device)?.to_dtype(DType::F32)?.flatten_all())
            .collect::<Result<Vec<_>>>()?,
        0,
    )?;
    let mean = (comm.all_reduce_sum_tensor(&flat)? * (1.0 / comm.world() as f64))?;
    let mut out = Vec::with_capacity(tensors.len());
    let mut at = 0;
    for t in tensors {
        let len = t.elem_count();
        out.push(
            mean.narrow(0, at, len)?
                .reshape(t.shape())?
                .to_device(t.device())?
                .to_dtype(t.dtype())?,
        );
        at += len;
    }
    Ok(out)
}

/// Whether any rank says yes (a stop request seen by one rank stops all at the same step).
pub fn any(comm: &Comm, yes: bool) -> Result<bool> {
    if comm.world() == 1 {
        return Ok(yes);
    }
    let mut v = [f64::from(u8::from(yes))];
    comm.all_reduce_sum_f64(&mut v).map_err(dist_err)?;
    Ok(v[0] > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_collectives_are_the_identity() -> Result<()> {
        let comm = single();
        let x = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu)?;
        let g = all_gather_with_grad(&comm, &x)?;
        assert_eq!(g.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
        let r = all_reduce_mean(&comm, std::slice::from_ref(&x))?;
        assert_eq!(r[0].to_vec2::<f32>()?, x.to_vec2::<f32>()?);
        assert!(any(&comm, true)? && !any(&comm, false)?);
        assert_eq!(comm.traffic(), Traffic::default());
        Ok(())
    }
}
