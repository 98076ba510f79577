//! Data-parallel training under MPI, as `mpirun -np 2` runs it (MPI starts once per process,
//! so these checks share one binary with its own `main`, run in order on every rank):
//!
//! ```sh
//! cargo test --release -p simclr-train --features mpi --test mpi --no-run   # then:
//! mpirun -np 2 --oversubscribe target/release/deps/mpi-<hash>
//! ```
//! (`scripts/mpi-tests.sh` does both.) Started without `mpirun`, it says so and passes.
//!
//! - the differentiable all-gather against single-process NT-Xent on the whole batch (f64);
//! - 2 ranks × n images ≡ 1 process × 2n with global BatchNorm, through `Trainer`: per-step
//!   losses, every weight, BatchNorm running statistic and momentum buffer;
//! - without global BatchNorm the difference shows;
//! - only rank 0 writes; a 2-rank checkpoint resumed by 1 process continues as 2 ranks would.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor, Var};
use simclr_dist::Comm;
use simclr_model::batchnorm::set_sync_batch_norm;
use simclr_model::io::SafetensorsFile;
use simclr_train::{Event, OptimizerKind, TrainConfig, Trainer};

type Check = Result<(), String>;

/// Steps compared. Training this small model is chaotic: runs that differ only in the order
/// of float sums (one process on 1 thread against 2 threads, too) agree bit for bit for a
/// few steps, then their difference grows about tenfold a step (measured on the bundled
/// sample: 5e-7 at step 6, 1e-4 at step 10, 1e-2 at step 13, for 1 vs 2 threads alike).
/// Equality is checked where it can be seen, over the first steps.
const STEPS: u64 = 3;

mod common;
use common::subset;

fn tiny() -> TrainConfig {
    TrainConfig {
        width: 0.125,
        proj_dim: 16,
        image_size: 16,
        batch_size: 16,
        epochs: 2,
        // A gentle SGD (see STEPS).
        optimizer: OptimizerKind::Sgd,
        lr: 0.02,
        lr_scaling: simclr_train::LrScaling::None,
        warmup_epochs: 0.5,
        workers: 1,
        ..TrainConfig::default()
    }
}

/// Rank 0's temporary directory, the same path on every rank.
fn shared_dir(comm: &Comm, keep: &mut Vec<tempfile::TempDir>) -> PathBuf {
    let mut buf = [0u8; 512];
    if comm.is_primary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().to_str().unwrap().as_bytes();
        buf[..p.len()].copy_from_slice(p);
        keep.push(d);
    }
    comm.broadcast_bytes(0, &mut buf).unwrap();
    let len = buf.iter().position(|&b| b == 0).unwrap();
    PathBuf::from(std::str::from_utf8(&buf[..len]).unwrap())
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The largest |a − b| relative to the largest |b| of the tensor.
fn rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f64, f64::max)
        / scale
}

/// Every tensor of two checkpoints within `tol` (relative), and the worst name.
fn compare_checkpoints(a: &Path, b: &Path, tol: f64) -> Result<f64, String> {
    let (a, b) = (
        SafetensorsFile::load(a, &Device::Cpu).map_err(|e| e.to_string())?,
        SafetensorsFile::load(b, &Device::Cpu).map_err(|e| e.to_string())?,
    );
    let mut worst = (String::new(), 0f64);
    for (name, t) in &a.tensors {
        // The head's first Linear feeds BatchNorm: its bias has no gradient in exact
        // arithmetic, so it and its momentum hold rounding noise (about 1e-9) in both runs.
        if name.starts_with("projector.0.bias") || name.starts_with("optimizer.projector.0.bias") {
            continue;
        }
        let d = rel(&values(t), &values(&b.tensors[name]));
        if d > worst.1 {
            worst = (name.clone(), d);
        }
    }
    if worst.1 > tol {
        return Err(format!(
            "`{}` differs by {:.3e} (> {tol:e})",
            worst.0, worst.1
        ));
    }
    Ok(worst.1)
}

/// Trains `cfg` on `comm` into `out`; returns the per-step losses.
fn train(comm: &Comm, cfg: TrainConfig, out: &Path, sync_bn: bool) -> Vec<f32> {
    set_sync_batch_norm(sync_bn.then(|| comm.clone()));
    let mut t = Trainer::new_on(comm.clone(), cfg, subset(64), out, &Device::Cpu).unwrap();
    let mut losses = Vec::new();
    t.run(&AtomicBool::new(false), &mut |e| {
        if let Event::Step(m) = e {
            losses.push(m.loss)
        }
    })
    .unwrap();
    set_sync_batch_norm(None);
    losses
}

/// The same run in this process alone (rank 0 calls it while the others wait).
fn train_alone(cfg: TrainConfig, out: &Path) -> Vec<f32> {
    train(&simclr_dist::single(), cfg, out, false)
}

/// Waits until every rank gets here.
fn barrier(comm: &Comm) {
    simclr_dist::any(comm, false).unwrap();
}

/// A loss of the whole batch's views (`z1`, `z2`) and its gathered form (`local`, `keys`,
/// `rank`), at τ.
type Whole = fn(&Tensor, &Tensor, f64) -> candle_core::Result<Tensor>;
type Gathered = fn(&Tensor, &Tensor, usize, f64) -> candle_core::Result<Tensor>;

fn gather_matches_single_process_nt_xent(comm: &Comm) -> Check {
    gather_matches_single_process(comm, simclr_loss::nt_xent, simclr_loss::nt_xent_gathered)
}

fn gather_matches_single_process_dcl(comm: &Comm) -> Check {
    gather_matches_single_process(
        comm,
        |z1, z2, tau| simclr_loss::dcl(z1, z2, tau, None),
        |local, keys, rank, tau| simclr_loss::dcl_gathered(local, keys, rank, tau, None),
    )
}

fn gather_matches_single_process(comm: &Comm, whole_loss: Whole, gathered: Gathered) -> Check {
    // Rank r holds samples 3r..3r+3 (two views each) of a 6-sample batch every rank knows.
    let (n, d, tau) = (3usize, 5usize, 0.3);
    let all: Vec<f64> = (0..2 * 2 * n * d)
        .map(|i| ((i as f64 * 0.7548776662).fract() - 0.5) * 2.0)
        .collect();
    let dev = Device::Cpu;
    let views = Tensor::from_vec(all, (2, 2 * n, d), &dev).unwrap(); // [view, sample, D]
    // Single process: nt_xent(z1, z2) over all 6 samples, gradient of every row.
    let (z1, z2) = (
        Var::from_tensor(&views.get(0).unwrap()).unwrap(),
        Var::from_tensor(&views.get(1).unwrap()).unwrap(),
    );
    let whole = whole_loss(z1.as_tensor(), z2.as_tensor(), tau).unwrap();
    let g = whole.backward().unwrap();
    let (g1, g2) = (g.get(&z1).unwrap(), g.get(&z2).unwrap());
    // This rank: its samples' first views then second views.
    let r = comm.rank();
    let local = Var::from_tensor(
        &Tensor::cat(
            &[
                views.get(0).unwrap().narrow(0, r * n, n).unwrap(),
                views.get(1).unwrap().narrow(0, r * n, n).unwrap(),
            ],
            0,
        )
        .unwrap(),
    )
    .unwrap();
    let keys = simclr_dist::all_gather_with_grad(comm, local.as_tensor()).unwrap();
    let loss = gathered(local.as_tensor(), &keys, r, tau).unwrap();
    let mut mean = [loss.to_scalar::<f64>().unwrap()];
    comm.all_reduce_sum_f64(&mut mean).unwrap();
    let mean = mean[0] / comm.world() as f64;
    let want = whole.to_scalar::<f64>().unwrap();
    if (mean - want).abs() > 1e-10 {
        return Err(format!("mean of rank losses {mean}, single process {want}"));
    }
    // The gradient of the mean loss: this rank's backward over the world.
    let grad = (loss.backward().unwrap().get(&local).unwrap() / comm.world() as f64).unwrap();
    let want = Tensor::cat(
        &[
            g1.narrow(0, r * n, n).unwrap(),
            g2.narrow(0, r * n, n).unwrap(),
        ],
        0,
    )
    .unwrap();
    let diff = values(&grad)
        .iter()
        .zip(values(&want))
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    if diff > 1e-10 {
        return Err(format!("gradient differs by {diff}"));
    }
    // Without the all-reduce in the backward (this rank's block of its own gradient only),
    // the negatives' terms from the other rank would be missing: the check can fail.
    let dropped = (values(&want).iter().map(|v| v.abs()).sum::<f64>()) > 0.0;
    if !dropped {
        return Err("degenerate test data".into());
    }
    Ok(())
}

fn two_ranks_equal_one_process_with_global_bn(
    comm: &Comm,
    keep: &mut Vec<tempfile::TempDir>,
) -> Check {
    let cfg = TrainConfig {
        max_steps: Some(STEPS),
        ..tiny()
    };
    two_ranks_equal_one_process(comm, keep, cfg)
}

/// SupCon gathers labels with the keys: 2 ranks equal 1 process as for NT-Xent.
fn supcon_two_ranks_equal_one_process(comm: &Comm, keep: &mut Vec<tempfile::TempDir>) -> Check {
    let cfg = TrainConfig {
        max_steps: Some(STEPS),
        loss: simclr_loss::LossKind::SupCon,
        temperature: 0.2,
        ..tiny()
    };
    two_ranks_equal_one_process(comm, keep, cfg)
}

/// `cfg` on both ranks (global BatchNorm) against `cfg` in one process: per-step losses within
/// 1e-5 and every tensor of the final checkpoints within 1e-4 of its scale.
fn two_ranks_equal_one_process(
    comm: &Comm,
    keep: &mut Vec<tempfile::TempDir>,
    cfg: TrainConfig,
) -> Check {
    let dir = shared_dir(comm, keep);
    // Rank 1 writes nothing: give it a directory that must stay absent.
    let out = if comm.is_primary() {
        dir.join("two")
    } else {
        dir.join("rank1-never")
    };
    let two = train(comm, cfg.clone(), &out, true);
    barrier(comm);
    let mut result = Ok(());
    if comm.is_primary() {
        let one = train_alone(cfg.clone(), &dir.join("one"));
        let worst = one
            .iter()
            .zip(&two)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("  losses, 2 ranks: {two:?}\n  losses, 1 process: {one:?}");
        result = if two.len() != STEPS as usize || one.len() != STEPS as usize {
            Err(format!("{} and {} steps", two.len(), one.len()))
        } else if worst > 1e-5 {
            Err(format!("per-step losses differ by {worst}"))
        } else {
            compare_checkpoints(
                &dir.join("two/last.safetensors"),
                &dir.join("one/last.safetensors"),
                1e-4,
            )
            .map(|w| eprintln!("  loss diff {worst:.2e}, worst tensor {w:.2e}"))
        };
        let lines = std::fs::read_to_string(dir.join("two/metrics.jsonl"))
            .unwrap()
            .lines()
            .count();
        if result.is_ok() && lines != STEPS as usize {
            result = Err(format!("metrics.jsonl has {lines} lines for {STEPS} steps"));
        }
    }
    barrier(comm);
    if dir.join("rank1-never").exists() {
        return Err("rank 1 wrote into its run directory".into());
    }
    result
}

fn without_global_bn_the_difference_shows(comm: &Comm, keep: &mut Vec<tempfile::TempDir>) -> Check {
    let cfg = TrainConfig {
        max_steps: Some(3),
        ..tiny()
    };
    let dir = shared_dir(comm, keep);
    let two = train(comm, cfg.clone(), &dir.join("two"), false);
    barrier(comm);
    let mut result = Ok(());
    if comm.is_primary() {
        let one = train_alone(cfg, &dir.join("one"));
        let worst = one
            .iter()
            .zip(&two)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("  per-rank BatchNorm: losses differ by up to {worst:.2e}");
        if worst < 1e-3 {
            result = Err(format!(
                "per-rank BatchNorm should change the losses, they differ by {worst} only"
            ));
        }
    }
    barrier(comm);
    result
}

fn a_two_rank_checkpoint_resumes_in_one_process(
    comm: &Comm,
    keep: &mut Vec<tempfile::TempDir>,
) -> Check {
    let dir = shared_dir(comm, keep);
    let straight = TrainConfig {
        max_steps: Some(STEPS + 1),
        ..tiny()
    };
    let first = TrainConfig {
        max_steps: Some(2),
        ..tiny()
    };
    train(comm, straight, &dir.join("straight"), true);
    train(comm, first, &dir.join("split"), true);
    barrier(comm);
    let mut result = Ok(());
    if comm.is_primary() {
        let ckpt = dir.join("split/last.safetensors");
        let mut t = Trainer::resume(
            &ckpt,
            |c| c.max_steps = Some(STEPS + 1),
            subset(64),
            &dir.join("split"),
            &Device::Cpu,
        )
        .unwrap();
        let summary = t.run(&AtomicBool::new(false), &mut |_| {}).unwrap();
        drop(t);
        result = if summary.steps != STEPS - 1 {
            Err(format!(
                "resumed for {} steps, want {}",
                summary.steps,
                STEPS - 1
            ))
        } else {
            compare_checkpoints(
                &dir.join("split/last.safetensors"),
                &dir.join("straight/last.safetensors"),
                1e-4,
            )
            .map(|w| eprintln!("  worst tensor {w:.2e}"))
        };
    }
    barrier(comm);
    result
}

fn main() {
    if !simclr_dist::launched_by_mpirun() {
        println!("the MPI tests run under mpirun (scripts/mpi-tests.sh); skipped");
        println!("0 passed, 0 failed, 6 skipped");
        return;
    }
    let comm = simclr_dist::mpi_world().expect("MPI initialises");
    assert_eq!(comm.world(), 2, "run with mpirun -np 2");
    let mut keep = Vec::new();
    type Run<'a> = Box<dyn Fn(&mut Vec<tempfile::TempDir>) -> Check + 'a>;
    let checks: Vec<(&str, Run)> = vec![
        (
            "gather_matches_single_process_nt_xent",
            Box::new(|_| gather_matches_single_process_nt_xent(&comm)),
        ),
        (
            "gather_matches_single_process_dcl",
            Box::new(|_| gather_matches_single_process_dcl(&comm)),
        ),
        (
            "two_ranks_equal_one_process_with_global_bn",
            Box::new(|k| two_ranks_equal_one_process_with_global_bn(&comm, k)),
        ),
        (
            "supcon_two_ranks_equal_one_process",
            Box::new(|k| supcon_two_ranks_equal_one_process(&comm, k)),
        ),
        (
            "without_global_bn_the_difference_shows",
            Box::new(|k| without_global_bn_the_difference_shows(&comm, k)),
        ),
        (
            "a_two_rank_checkpoint_resumes_in_one_process",
            Box::new(|k| a_two_rank_checkpoint_resumes_in_one_process(&comm, k)),
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, check) in &checks {
        let r = check(&mut keep);
        // Rank 0 compares; every rank agrees on the verdict.
        let mut bad = [f64::from(u8::from(r.is_err()))];
        comm.all_reduce_sum_f64(&mut bad).unwrap();
        if comm.is_primary() {
            match &r {
                Ok(()) if bad[0] == 0.0 => println!("test {name} ... ok"),
                Ok(()) => println!("test {name} ... FAILED on another rank"),
                Err(e) => println!("test {name} ... FAILED: {e}"),
            }
        } else if let Err(e) = &r {
            eprintln!("rank {}: {name}: {e}", comm.rank());
        }
        if bad[0] == 0.0 {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    if comm.is_primary() {
        println!("\n{passed} passed, {failed} failed");
    }
    drop(keep);
    simclr_dist::finalize_mpi();
    std::process::exit(i32::from(failed > 0));
}
