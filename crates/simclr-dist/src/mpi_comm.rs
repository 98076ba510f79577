//! [`Communicator`] over MPI (Open MPI through the `mpi` crate).

use std::sync::{Arc, Mutex, OnceLock};

use mpi::Threading;
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::environment::Universe;
use mpi::topology::{Communicator as _, SimpleCommunicator};

use crate::{Comm, Communicator, DistError, Traffic, TrafficCounter};

/// `MPI_COMM_WORLD` of this process.
pub struct MpiWorld {
    world: SimpleCommunicator,
    traffic: TrafficCounter,
}

/// The MPI environment: dropping it finalises MPI ([`finalize_mpi`]).
struct Env {
    _universe: Universe,
}

// SAFETY: only moved out of its mutex to be dropped, by the thread that initialised MPI.
unsafe impl Send for Env {}

static ENV: Mutex<Option<Env>> = Mutex::new(None);

// SAFETY: MPI is initialised with `Threading::Funneled` and the handle is only used from the
// thread that initialised it: simclr-rs calls collectives from the training loop and from
// the custom ops it runs (the gather's and BatchNorm's forward and backward), all on the
// thread that runs the step; the data loader's threads never communicate. The bound is needed
// because the trait object is shared (`Arc`) with those ops.
unsafe impl Send for MpiWorld {}
// SAFETY: as above; no two threads call into MPI at once.
unsafe impl Sync for MpiWorld {}

/// Whether this process was started by `mpirun`/`mpiexec` (Open MPI or a PMI launcher).
pub fn launched_by_mpirun() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

static WORLD: OnceLock<Option<Arc<MpiWorld>>> = OnceLock::new();

/// The MPI world, initialised on first use (MPI starts once per process); `None` if MPI
/// could not be initialised.
pub fn mpi_world() -> Option<Comm> {
    WORLD
        .get_or_init(|| {
            let (universe, _) = mpi::initialize_with_threading(Threading::Funneled)?;
            let world = universe.world();
            *ENV.lock().unwrap_or_else(|e| e.into_inner()) = Some(Env {
                _universe: universe,
            });
            Some(Arc::new(MpiWorld {
                world,
                traffic: TrafficCounter::default(),
            }))
        })
        .clone()
        .map(|w| w as Comm)
}

/// Finalises MPI (`MPI_Finalize`), as every rank must before it exits normally; call it
/// last, once nothing uses the communicator any more. Does nothing if MPI was not started.
pub fn finalize_mpi() {
    drop(ENV.lock().unwrap_or_else(|e| e.into_inner()).take());
}

impl Communicator for MpiWorld {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn world(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> Result<(), DistError> {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        self.traffic.reduce(std::mem::size_of_val(buf));
        Ok(())
    }

    fn all_reduce_sum_f32(&self, buf: &mut [f32]) -> Result<(), DistError> {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        self.traffic.reduce(std::mem::size_of_val(buf));
        Ok(())
    }

    fn all_gather_f32(&self, local: &[f32]) -> Result<Vec<f32>, DistError> {
        let mut out = vec![0f32; local.len() * self.world()];
        self.world.all_gather_into(local, &mut out[..]);
        self.traffic.gather(std::mem::size_of_val(local));
        Ok(out)
    }

    fn all_gather_f64(&self, local: &[f64]) -> Result<Vec<f64>, DistError> {
        let mut out = vec![0f64; local.len() * self.world()];
        self.world.all_gather_into(local, &mut out[..]);
        self.traffic.gather(std::mem::size_of_val(local));
        Ok(out)
    }

    fn broadcast_bytes(&self, root: usize, buf: &mut [u8]) -> Result<(), DistError> {
        if root >= self.world() {
            return Err(DistError::Usage(format!(
                "broadcast from rank {root} of {}",
                self.world()
            )));
        }
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn traffic(&self) -> Traffic {
        self.traffic.get()
    }
}
