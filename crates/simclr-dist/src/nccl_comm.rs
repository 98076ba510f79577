//! [`Communicator`] over NCCL for ranks that train on CUDA devices, one GPU per rank.
//!
//! MPI starts the job, gives each process its rank and carries NCCL's unique id from rank 0 to
//! the others; from then on the tensors of training (the gathered keys, their gradient and the
//! flattened parameter gradients) are reduced and gathered by NCCL, device to device, on the
//! stream candle computes on. The host-slice collectives (BatchNorm's statistics on the CPU,
//! the stop flag, the metrics) stay on MPI.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::cudarc::nccl::{Comm as RawNccl, Id, NcclType, ReduceOp};
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor, bail};

use crate::{Comm, Communicator, DistError, Traffic, TrafficCounter};

/// NCCL for device tensors, MPI (the world it was built from) for everything else.
pub struct NcclWorld {
    mpi: Comm,
    nccl: Arc<Nccl>,
    device: Device,
    traffic: TrafficCounter,
}

/// The NCCL communicator.
struct Nccl(RawNccl);

// SAFETY: NCCL communicators must not be used by two threads at once. simclr-rs calls
// collectives only from the thread that runs the training step (the loop and the custom ops
// of that step), never from the loader's threads, as for MPI (`mpi_comm.rs`); the bounds are
// needed because the communicator is shared (`Arc`) with those ops.
unsafe impl Send for Nccl {}
// SAFETY: as above; no two threads call into NCCL at once.
unsafe impl Sync for Nccl {}

/// An NCCL communicator over the ranks of `mpi`, one per rank, on `device` (this rank's GPU):
/// rank 0 makes NCCL's unique id and MPI broadcasts it. Every rank must call it together.
pub fn nccl_world(mpi: &Comm, device: &Device) -> Result<Comm> {
    let cuda = device.as_cuda_device()?;
    let mut id_bytes = [0u8; 128];
    if mpi.is_primary() {
        let id = Id::new().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
        for (b, c) in id_bytes.iter_mut().zip(id.internal()) {
            *b = *c as u8;
        }
    }
    mpi.broadcast_bytes(0, &mut id_bytes)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let internal = id_bytes.map(|b| b as core::ffi::c_char);
    let raw = RawNccl::from_rank(
        cuda.cuda_stream(),
        mpi.rank(),
        mpi.world(),
        Id::uninit(internal),
    )
    .map_err(|e| nccl_err("ncclCommInitRank", e))?;
    Ok(Arc::new(NcclWorld {
        mpi: mpi.clone(),
        nccl: Arc::new(Nccl(raw)),
        device: device.clone(),
        traffic: TrafficCounter::default(),
    }))
}

fn nccl_err(call: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("{call} failed: {e:?}"))
}

impl NcclWorld {
    /// Whether NCCL can take `t` directly: on this rank's GPU, in a type both sides reduce.
    fn takes(&self, t: &Tensor) -> bool {
        t.device().same_device(&self.device) && matches!(t.dtype(), DType::F32 | DType::F64)
    }
}

impl Communicator for NcclWorld {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn world(&self) -> usize {
        self.mpi.world()
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> std::result::Result<(), DistError> {
        self.mpi.all_reduce_sum_f64(buf)
    }
    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> std::result::Result<(), DistError> {
        self.mpi.all_reduce_sum_f32(buf)
    }
    fn all_gather_f32(&self, local: &[f32]) -> std::result::Result<Vec<f32>, DistError> {
        self.mpi.all_gather_f32(local)
    }
    fn all_gather_f64(&self, local: &[f64]) -> std::result::Result<Vec<f64>, DistError> {
        self.mpi.all_gather_f64(local)
    }
    fn broadcast_bytes(&self, root: usize, buf: &mut [u8]) -> std::result::Result<(), DistError> {
        self.mpi.broadcast_bytes(root, buf)
    }
    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }
    fn traffic(&self) -> Traffic {
        let (a, b) = (self.mpi.traffic(), self.traffic.get());
        Traffic {
            reduced: a.reduced + b.reduced,
            gathered: a.gathered + b.gathered,
        }
    }

    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if !self.takes(t) {
            return self.mpi.all_reduce_sum_tensor(t);
        }
        self.traffic
            .reduce(t.elem_count() * t.dtype().size_in_bytes());
        t.contiguous()?.apply_op1_no_bwd(&NcclOp {
            nccl: self.nccl.clone(),
            kind: Kind::Sum,
        })
    }

    fn all_gather_rows(&self, t: &Tensor) -> Result<Tensor> {
        if !self.takes(t) {
            return self.mpi.all_gather_rows(t);
        }
        t.dims2()?;
        self.traffic
            .gather(t.elem_count() * t.dtype().size_in_bytes());
        t.contiguous()?.apply_op1_no_bwd(&NcclOp {
            nccl: self.nccl.clone(),
            kind: Kind::GatherRows(self.world()),
        })
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// Element-wise sum, same shape.
    Sum,
    /// Rows of every rank in rank order: `[n, D]` → `[world · n, D]`.
    GatherRows(usize),
}

/// One NCCL collective on a contiguous device tensor, queued on candle's stream.
struct NcclOp {
    nccl: Arc<Nccl>,
    kind: Kind,
}

impl NcclOp {
    fn run<T: CudaDType + NcclType + DeviceRepr + ValidAsZeroBits>(
        &self,
        s: &CudaStorage,
        l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (start, end) = match l.contiguous_offsets() {
            Some(o) => o,
            None => bail!("NCCL collective on a non-contiguous tensor"),
        };
        let src = s.as_cuda_slice::<T>()?.slice(start..end);
        let dev = s.device().clone();
        let (out_len, shape) = match self.kind {
            Kind::Sum => (end - start, l.shape().clone()),
            Kind::GatherRows(world) => {
                let (n, d) = l.shape().dims2()?;
                (world * (end - start), Shape::from((world * n, d)))
            }
        };
        let mut dst = dev.alloc_zeros::<T>(out_len)?;
        match self.kind {
            Kind::Sum => self.nccl.0.all_reduce(&src, &mut dst, &ReduceOp::Sum),
            Kind::GatherRows(_) => self.nccl.0.all_gather(&src, &mut dst),
        }
        .map_err(|e| nccl_err("NCCL collective", e))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), shape))
    }
}

impl CustomOp1 for NcclOp {
    fn name(&self) -> &'static str {
        "simclr-nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("NCCL collectives take CUDA tensors only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        match s.dtype() {
            DType::F32 => self.run::<f32>(s, l),
            DType::F64 => self.run::<f64>(s, l),
            other => bail!("NCCL collective on {other:?}"),
        }
    }
}
