//! The pretraining loop: batches from the background [`Loader`], forward in training mode,
//! the loss, backward, one gradient-reduction point, the optimiser step with the scheduled
//! learning rate; metrics to `metrics.jsonl` and checkpoints to the run directory.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use serde::Serialize;
use simclr_augment::AugmentConfig;
use simclr_data::Dataset;
use simclr_loss::{LossConfig, contrastive_accuracy_t};
use simclr_model::io::{self, SafetensorsFile};
use simclr_model::{ModelConfig, SimClr};

use crate::config::TrainConfig;
use crate::loader::{Loader, LoaderConfig, Sampler, steps_per_epoch};
use crate::optim::{self, StatefulOptimizer};
use crate::schedule::Schedule;

pub use simclr_model::io::CHECKPOINT_FORMAT;

/// What stops a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// An option out of range, or options that do not fit the data.
    #[error("{0}")]
    Config(String),
    /// The run directory or a checkpoint could not be written or read.
    #[error(transparent)]
    Io(#[from] io::IoError),
    /// A file in the run directory could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The loss became NaN or infinite.
    #[error(
        "the loss became {loss} at epoch {epoch}, step {step}; stopped without saving \
         (the last good checkpoint is {last}). Try a lower --lr or a larger --temperature"
    )]
    NonFinite {
        /// The loss.
        loss: f32,
        /// Epoch (1-based).
        epoch: u64,
        /// Global step (1-based).
        step: u64,
        /// The last checkpoint written, or a note that there is none.
        last: String,
    },
    /// The data loader could not deliver a batch (the last good checkpoint is kept).
    #[error("{source} (the last good checkpoint is {last})")]
    Loader {
        /// The cause.
        #[source]
        source: crate::loader::LoaderError,
        /// The last checkpoint written, or a note that there is none.
        last: String,
    },
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// An item of the dataset could not be read (lazily read image folders).
    #[error(transparent)]
    Data(#[from] simclr_data::DataError),
    /// A checkpoint's tensors do not fit the model or optimiser of its own configuration.
    #[error("`{}` does not fit the run it describes", path.display())]
    Checkpoint {
        /// The checkpoint.
        path: PathBuf,
        /// What did not fit.
        #[source]
        source: candle_core::Error,
    },
    /// Another run holds the run directory, or it cannot be locked.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// The epoch-end [`Monitor`] failed (the epoch's checkpoint was written first).
    #[error("measuring the model after epoch {epoch}")]
    Monitor {
        /// Epoch (1-based).
        epoch: u64,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Something measured on the model at epoch ends, such as an online kNN accuracy: the
/// values it returns join that epoch's line in `metrics.jsonl`.
pub trait Monitor {
    /// Measures `model` (call it with BatchNorm in eval mode) after `epoch` (1-based);
    /// returns named values.
    fn measure(
        &mut self,
        model: &SimClr,
        epoch: u64,
    ) -> std::result::Result<Vec<(String, f64)>, Box<dyn std::error::Error + Send + Sync>>;
}

type Result<T> = std::result::Result<T, TrainError>;

/// Metrics of one step, as written to `metrics.jsonl`.
#[derive(Clone, Debug, Serialize)]
pub struct StepMetrics {
    /// Epoch (1-based).
    pub epoch: u64,
    /// Global step (1-based).
    pub step: u64,
    /// Step within the epoch (1-based).
    pub step_in_epoch: u64,
    /// Steps per epoch.
    pub steps_per_epoch: u64,
    /// The loss.
    pub loss: f32,
    /// Contrastive top-1 accuracy: share of views whose partner is their most similar view.
    pub acc: f32,
    /// Learning rate used by this step.
    pub lr: f64,
    /// Views per second of this step (data wait included).
    pub views_per_s: f64,
    /// Seconds this step waited for its batch.
    pub data_wait_s: f64,
    /// Triplet loss: the share of triplets with a positive hinge (what mining keeps up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_triplets: Option<f32>,
    /// `--online-probe`: the linear classifier's top-1 accuracy on this batch's views, before
    /// its update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_acc: Option<f32>,
}

/// Metrics of one finished epoch.
#[derive(Clone, Debug, Serialize)]
pub struct EpochMetrics {
    /// Always `"epoch"`, to tell these lines apart in `metrics.jsonl`.
    pub event: &'static str,
    /// Epoch (1-based).
    pub epoch: u64,
    /// Global step at its end.
    pub step: u64,
    /// Mean loss over the epoch's steps run in this process.
    pub loss: f32,
    /// Mean contrastive accuracy.
    pub acc: f32,
    /// Images per second.
    pub images_per_s: f64,
    /// Share of the epoch's time spent waiting for batches.
    pub data_wait_share: f64,
    /// Seconds.
    pub seconds: f64,
    /// What the [`Monitor`] measured after this epoch (none on epochs it skips).
    #[serde(flatten)]
    pub monitor: BTreeMap<String, f64>,
    /// Data-parallel runs: bytes this rank all-reduced per step over the epoch (gradients,
    /// global BatchNorm's sums, the logged losses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reduced_bytes_per_step: Option<f64>,
    /// Data-parallel runs: bytes this rank contributed to all-gathers per step (the
    /// projections whose negatives every rank uses).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gathered_bytes_per_step: Option<f64>,
}

/// What the loop reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// A step finished.
    Step(&'a StepMetrics),
    /// An epoch finished.
    Epoch(&'a EpochMetrics),
    /// A checkpoint was written.
    Checkpoint(&'a Path),
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every epoch ran.
    Finished,
    /// `max_steps` was reached.
    MaxSteps,
    /// The stop flag was raised (Ctrl-C); a checkpoint was saved.
    Interrupted,
}

/// The summary of a [`Trainer::run`].
#[derive(Clone, Debug)]
pub struct Summary {
    /// How it ended.
    pub outcome: Outcome,
    /// Loss of the first step run.
    pub first_loss: Option<f32>,
    /// Loss of the last step run.
    pub last_loss: Option<f32>,
    /// Steps run in this call.
    pub steps: u64,
    /// Images per second over the call.
    pub images_per_s: f64,
    /// Share of the time spent waiting for batches.
    pub data_wait_share: f64,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
}

/// The optimiser slots a checkpoint saved under `prefix` (`optimizer.<param>.`), by slot name.
fn optimizer_slots(file: &SafetensorsFile, prefix: &str) -> Vec<(String, Tensor)> {
    file.tensors
        .iter()
        .filter_map(|(k, t)| {
            k.strip_prefix(prefix)
                .map(|slot| (slot.to_string(), t.clone()))
        })
        .collect()
}

/// A linear classifier trained on the detached representations during pretraining (the
/// online evaluation of solo-learn and the official SimCLR code): SGD with momentum 0.9 at
/// learning rate 0.1, no weight decay, on the cross-entropy of both views' labels. Its
/// gradient never reaches the encoder: the features are detached before it sees them.
struct OnlineProbe {
    weight: Var,
    bias: Var,
    optimizer: Box<dyn StatefulOptimizer + Send>,
}

impl OnlineProbe {
    const LR: f64 = 0.1;

    fn new(features: usize, classes: usize, device: &Device) -> Result<Self> {
        let weight = Var::zeros((classes, features), candle_core::DType::F32, device)?;
        let bias = Var::zeros(classes, candle_core::DType::F32, device)?;
        let optimizer = optim::build(
            crate::OptimizerKind::Sgd,
            vec![weight.clone(), bias.clone()],
            crate::OptimConfig {
                lr: Self::LR,
                weight_decay: 0.0,
                momentum: 0.9,
                ..crate::OptimConfig::default()
            },
        )?;
        Ok(Self {
            weight,
            bias,
            optimizer,
        })
    }

    /// One update on `h` (`[M, F]`, detached here) with `labels`; returns the batch's top-1
    /// accuracy before the update, as a scalar tensor.
    fn step(&mut self, h: &Tensor, labels: &[u32]) -> Result<Tensor> {
        let h = h.detach().to_dtype(candle_core::DType::F32)?;
        let logits = h
            .matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())?;
        let target = Tensor::from_slice(labels, labels.len(), h.device())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &target)?;
        let acc = logits
            .argmax(1)?
            .eq(&target)?
            .to_dtype(candle_core::DType::F32)?
            .mean_all()?;
        self.optimizer.step(&loss.backward()?)?;
        Ok(acc)
    }

    /// Its tensors for the checkpoint (`probe.*`, the optimiser's as `probe_optimizer.*`).
    fn tensors(&self) -> Vec<(String, Tensor)> {
        let mut t = vec![
            ("probe.weight".to_string(), self.weight.as_tensor().clone()),
            ("probe.bias".to_string(), self.bias.as_tensor().clone()),
        ];
        for (name, slots) in ["weight", "bias"].iter().zip(self.optimizer.state()) {
            for (slot, v) in slots {
                t.push((format!("probe_optimizer.{name}.{slot}"), v));
            }
        }
        t
    }

    /// Restores what [`tensors`](Self::tensors) saved, `steps` updates in.
    fn load(&mut self, file: &SafetensorsFile, steps: u64) -> Result<()> {
        for (name, var) in [("weight", &self.weight), ("bias", &self.bias)] {
            let t = file.tensor(&format!("probe.{name}"))?;
            if t.dims() != var.dims() {
                return Err(TrainError::Candle(candle_core::Error::Msg(format!(
                    "probe.{name} has shape {:?}, the run expects {:?}",
                    t.dims(),
                    var.dims()
                ))));
            }
            var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
        let state = ["weight", "bias"]
            .iter()
            .map(|name| optimizer_slots(file, &format!("probe_optimizer.{name}.")))
            .collect();
        self.optimizer.load_state(state, steps)?;
        Ok(())
    }
}

/// ArcFace's class weights, seeded: normal with standard deviation `1/√dim` (their scale
/// does not matter, the loss normalises each row).
fn arcface_init(classes: usize, dim: usize, seed: u64, device: &Device) -> Result<Var> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x4152_4346_4143_4521);
    let normal = rand_distr::Normal::new(0.0f32, 1.0 / (dim as f32).sqrt())
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let values: Vec<f32> = (0..classes * dim)
        .map(|_| normal.sample(&mut rng))
        .collect();
    Ok(Var::from_tensor(&Tensor::from_vec(
        values,
        (classes, dim),
        device,
    )?)?)
}

impl Summary {
    /// Counts one step and its loss.
    fn record(&mut self, loss: f32) {
        self.first_loss.get_or_insert(loss);
        self.last_loss = Some(loss);
        self.steps += 1;
    }
}

/// A pretraining run in progress.
pub struct Trainer {
    config: TrainConfig,
    model: SimClr,
    params: Vec<(String, Var)>,
    optimizer: Box<dyn StatefulOptimizer + Send>,
    schedule: Schedule,
    loss: LossConfig,
    augment: AugmentConfig,
    dataset: Arc<dyn Dataset>,
    out: PathBuf,
    device: Device,
    steps_per_epoch: u64,
    /// Epoch of the next batch (0-based).
    epoch: u64,
    /// Step within `epoch` of the next batch (0-based).
    step_in_epoch: u64,
    last_checkpoint: Option<PathBuf>,
    /// Measures the model every so many epochs (and after the last).
    monitor: Option<(Box<dyn Monitor + Send>, u64)>,
    /// Steps whose loss and accuracy are read back from the device together.
    log_every: u64,
    /// The run directory's lock, held while this trainer exists (rank 0).
    _lock: Option<crate::lock::RunLock>,
    /// The ranks of a data-parallel run (one, by default).
    comm: simclr_dist::Comm,
    /// ArcFace's class-weight matrix `[classes, proj_dim]` (also in `params`), checkpointed
    /// as `arcface.weight` but never exported: the encoder is what travels.
    class_weight: Option<Var>,
    /// How the loader draws batches.
    sampler: Sampler,
    /// `--online-probe`: the classifier on detached features and its own optimiser.
    probe: Option<OnlineProbe>,
    /// The dataset's fingerprint, recorded in checkpoints and checked on resume.
    fingerprint: crate::fingerprint::DataFingerprint,
    /// What a resume found worth saying (why it cannot be bit-exact, say).
    notes: Vec<String>,
}

/// A step run whose loss and accuracy are still on the device.
struct Pending {
    metrics: StepMetrics,
    loss: Tensor,
    acc: Tensor,
    /// The triplet loss's share of active triplets.
    active: Option<Tensor>,
    /// The online probe's accuracy.
    probe_acc: Option<Tensor>,
    views: usize,
}

impl Trainer {
    /// Prepares a fresh run in `out`: checks the options against the data, creates the
    /// directory and writes `config.json`, all before any training.
    pub fn new(
        config: TrainConfig,
        dataset: Arc<dyn Dataset>,
        out: &Path,
        device: &Device,
    ) -> Result<Self> {
        Self::new_on(simclr_dist::single(), config, dataset, out, device)
    }

    /// [`new`](Self::new) as one rank of a data-parallel run over `comm`: `batch_size` is the
    /// global batch, of which this rank builds and trains its `batch_size / world` images;
    /// negatives are gathered from every rank, gradients averaged; rank 0 alone writes the
    /// run directory. Every rank must call it with the same configuration.
    pub fn new_on(
        comm: simclr_dist::Comm,
        config: TrainConfig,
        dataset: Arc<dyn Dataset>,
        out: &Path,
        device: &Device,
    ) -> Result<Self> {
        let trainer = Self::build(comm, config, dataset, out, device)?;
        trainer.write_config()?;
        Ok(trainer)
    }

    /// Continues the run saved in `checkpoint`, writing to `out` (usually the checkpoint's
    /// directory). `overrides` may change `epochs` and `max_steps`; changing `epochs`
    /// changes the schedule, so only `max_steps` keeps the run identical to an
    /// uninterrupted one.
    pub fn resume(
        checkpoint: &Path,
        overrides: impl FnOnce(&mut TrainConfig),
        dataset: Arc<dyn Dataset>,
        out: &Path,
        device: &Device,
    ) -> Result<Self> {
        Self::resume_on(
            simclr_dist::single(),
            checkpoint,
            overrides,
            dataset,
            out,
            device,
        )
    }

    /// [`resume`](Self::resume) as one rank of a data-parallel run (see
    /// [`new_on`](Self::new_on)); the checkpoint may come from a run with another number of
    /// ranks (its global batch is the same).
    pub fn resume_on(
        comm: simclr_dist::Comm,
        checkpoint: &Path,
        overrides: impl FnOnce(&mut TrainConfig),
        dataset: Arc<dyn Dataset>,
        out: &Path,
        device: &Device,
    ) -> Result<Self> {
        let file = SafetensorsFile::load(checkpoint, device)?;
        let meta_err = |reason: String| {
            TrainError::Io(io::IoError::Metadata {
                path: checkpoint.to_owned(),
                reason,
            })
        };
        let format = file.meta("format")?;
        if format != CHECKPOINT_FORMAT {
            return Err(meta_err(format!(
                "this is a `{format}` file, not a training checkpoint ({CHECKPOINT_FORMAT})"
            )));
        }
        let mut config: TrainConfig = serde_json::from_str(file.meta("config")?)
            .map_err(|e| meta_err(format!("metadata `config` is not a valid run config: {e}")))?;
        overrides(&mut config);
        let number = |key: &str| -> Result<u64> {
            file.meta(key)?
                .parse()
                .map_err(|e| meta_err(format!("metadata `{key}`: {e}")))
        };
        let (epoch, step_in_epoch) = (number("epoch")?, number("step_in_epoch")?);
        let optimizer_steps = number("optimizer_steps")?;
        simclr_model::check_file_fits(&config.model(1), &file.tensors).map_err(meta_err)?;
        let mut trainer = Self::build(comm, config, dataset, out, device)?;
        let misfit = |source| TrainError::Checkpoint {
            path: checkpoint.to_owned(),
            source,
        };
        // Older checkpoints have no fingerprint: nothing to compare.
        if let Some(saved) = file.metadata.get("data_fingerprint") {
            let saved: crate::fingerprint::DataFingerprint = serde_json::from_str(saved)
                .map_err(|e| meta_err(format!("metadata `data_fingerprint`: {e}")))?;
            if let Some(d) = saved.difference(&trainer.fingerprint) {
                let data = trainer.config.data.as_ref().map_or_else(
                    || "the bundled sample".into(),
                    |p| format!("`{}`", p.display()),
                );
                return Err(TrainError::Config(format!(
                    "{data} is not the dataset this run was trained on ({d}); resume with \
                     the original data, or start a new run"
                )));
            }
        }
        if let Some(saved) = file.metadata.get("arithmetic")
            && let Ok(saved) = serde_json::from_str::<crate::fingerprint::Arithmetic>(saved)
            && let Some(d) = saved.difference(&crate::fingerprint::Arithmetic::current(
                trainer.comm.world(),
            ))
        {
            trainer.notes.push(format!(
                "the run continues, but not bit for bit as it would have: {d} (float sums \
                 are added in another order)"
            ));
        }
        trainer
            .model
            .load_tensors(&file.tensors, true)
            .map_err(misfit)?;
        if let Some(w) = &trainer.class_weight {
            let saved = file.tensor("arcface.weight")?;
            if saved.dims() != w.dims() {
                return Err(misfit(candle_core::Error::Msg(format!(
                    "arcface.weight has shape {:?}, the run expects {:?}",
                    saved.dims(),
                    w.dims()
                ))));
            }
            w.set(&saved.to_device(w.device())?.to_dtype(w.dtype())?)
                .map_err(misfit)?;
        }
        let state = trainer
            .params
            .iter()
            .map(|(name, _)| optimizer_slots(&file, &format!("optimizer.{name}.")))
            .collect();
        trainer
            .optimizer
            .load_state(state, optimizer_steps)
            .map_err(misfit)?;
        if let Some(p) = &mut trainer.probe {
            p.load(&file, optimizer_steps)?;
        }
        trainer.epoch = epoch;
        trainer.step_in_epoch = step_in_epoch;
        trainer.last_checkpoint = Some(checkpoint.to_owned());
        trainer.write_config()?;
        Ok(trainer)
    }

    /// Writes the resolved configuration to `<out>/config.json` (rank 0).
    fn write_config(&self) -> Result<()> {
        if !self.comm.is_primary() {
            return Ok(());
        }
        let json = serde_json::to_string_pretty(&self.config).expect("config serialises");
        io::write_atomic(
            &self.out.join("config.json"),
            format!("{json}\n").as_bytes(),
        )?;
        Ok(())
    }

    fn build(
        comm: simclr_dist::Comm,
        config: TrainConfig,
        dataset: Arc<dyn Dataset>,
        out: &Path,
        device: &Device,
    ) -> Result<Self> {
        config.validate().map_err(TrainError::Config)?;
        let world = comm.world();
        if !config.batch_size.is_multiple_of(world) || config.batch_size / world < 1 {
            return Err(TrainError::Config(format!(
                "--batch-size {} is the global batch and must divide by the {world} ranks",
                config.batch_size
            )));
        }
        if world > 1
            && !matches!(
                config.loss,
                simclr_loss::LossKind::NtXent
                    | simclr_loss::LossKind::Dcl
                    | simclr_loss::LossKind::Dclw
                    | simclr_loss::LossKind::SupCon
            )
        {
            return Err(TrainError::Config(format!(
                "--loss {} runs in one process only; data-parallel runs gather the negatives \
                 of ntxent, dcl, dclw and supcon",
                config.loss
            )));
        }
        let channels = dataset.channels();
        let spe = steps_per_epoch(dataset.len(), config.batch_size);
        if spe == 0 {
            return Err(TrainError::Config(format!(
                "the dataset has {} images, fewer than one batch of {}: lower --batch-size",
                dataset.len(),
                config.batch_size
            )));
        }
        let loss = config.loss();
        let needs_labels =
            loss.needs_labels() || config.classes_per_batch.is_some() || config.online_probe;
        let labels: Option<Arc<[u32]>> = if needs_labels {
            let labels: Option<Vec<u32>> = (0..dataset.len()).map(|i| dataset.label(i)).collect();
            let Some(labels) = labels else {
                let what = if loss.needs_labels() {
                    format!(
                        "--loss {}{}",
                        config.loss,
                        if config.loss.needs_labels() {
                            ""
                        } else {
                            " --pairs labels"
                        }
                    )
                } else if config.classes_per_batch.is_some() {
                    "--classes-per-batch".to_string()
                } else {
                    "--online-probe".to_string()
                };
                return Err(TrainError::Config(format!(
                    "{what} needs class labels, and this dataset has none (an unlabelled \
                     image folder?); use --loss ntxent or a labelled dataset"
                )));
            };
            Some(labels.into())
        } else {
            None
        };
        let classes = labels
            .as_ref()
            .map_or(0, |l| l.iter().max().map_or(0, |&m| m as usize + 1));
        if config.loss == simclr_loss::LossKind::ArcFace && classes < 2 {
            return Err(TrainError::Config(format!(
                "--loss arcface needs at least two classes; the dataset has {classes}"
            )));
        }
        let sampler = match (config.classes_per_batch, config.images_per_class, &labels) {
            (Some(p), Some(k), Some(labels)) => {
                let usable = crate::loader::classes_with(labels, k).len();
                if usable < p {
                    return Err(TrainError::Config(format!(
                        "--classes-per-batch {p} --images-per-class {k}: only {usable} classes of \
                         the dataset have at least {k} images"
                    )));
                }
                Sampler::Balanced {
                    labels: labels.clone(),
                    classes: p,
                    per_class: k,
                }
            }
            _ => Sampler::Shuffle,
        };
        // Rank 0 owns the run directory; the other ranks write nothing.
        let lock = if comm.is_primary() {
            std::fs::create_dir_all(out).map_err(|source| TrainError::File {
                path: out.to_owned(),
                source,
            })?;
            Some(crate::lock::RunLock::acquire(out)?)
        } else {
            None
        };
        let mut model = SimClr::new(&config.model(usize::from(channels)), device, config.seed)?;
        model.set_precision(config.precision)?;
        let mut params = model.trainable_vars();
        let class_weight = if config.loss == simclr_loss::LossKind::ArcFace {
            let w = arcface_init(classes, config.proj_dim, config.seed, device)?;
            params.push(("arcface.weight".to_string(), w.clone()));
            Some(w)
        } else {
            None
        };
        let probe = if config.online_probe {
            let features = config.model(usize::from(channels)).feature_dim();
            Some(OnlineProbe::new(features, classes.max(2), device)?)
        } else {
            None
        };
        let optimizer = optim::build(
            config.optimizer,
            params.iter().map(|(_, v)| v.clone()).collect(),
            config.optim(),
        )?;
        let total = spe * config.epochs;
        let warmup = (config.warmup_epochs * spe as f64).round() as u64;
        let schedule = Schedule::new(
            config.lr,
            config.lr_scaling,
            config.batch_size,
            warmup,
            total,
        );
        let fingerprint = crate::fingerprint::DataFingerprint::of(&*dataset)?;
        let augment = config.augment(channels);
        augment
            .validate()
            .map_err(|e| TrainError::Config(e.to_string()))?;
        Ok(Self {
            loss,
            class_weight,
            sampler,
            probe,
            model,
            params,
            optimizer,
            schedule,
            augment,
            dataset,
            out: out.to_owned(),
            device: device.clone(),
            steps_per_epoch: spe,
            epoch: 0,
            step_in_epoch: 0,
            last_checkpoint: None,
            monitor: None,
            log_every: 1,
            _lock: lock,
            comm,
            fingerprint,
            notes: Vec::new(),
            config,
        })
    }

    /// Reads the loss and accuracy back from the device once every `every` steps (at least 1;
    /// always at epoch ends and before a checkpoint), all of them in one copy. On a GPU, each
    /// read waits for the queued work to finish; reading every step keeps the device idle
    /// while the host prepares the next one. Each step still gets its `metrics.jsonl` line,
    /// and a NaN is still reported with the step it happened at (nothing is saved after it).
    pub fn set_log_every(&mut self, every: u64) {
        self.log_every = every.max(1);
    }

    /// The description of the last good checkpoint, for error messages.
    fn last_good(&self) -> String {
        self.last_checkpoint.as_ref().map_or_else(
            || "none: no checkpoint was written yet".into(),
            |p| p.display().to_string(),
        )
    }

    /// Has `monitor` measure the model after every `every` epochs (at least 1) and after the
    /// last; its time is not counted in the epoch's images per second.
    pub fn set_monitor(&mut self, monitor: Box<dyn Monitor + Send>, every: u64) {
        self.monitor = Some((monitor, every.max(1)));
    }

    /// The resolved configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The model being trained.
    pub fn model(&self) -> &SimClr {
        &self.model
    }

    /// The augmentation pipeline.
    pub fn augment(&self) -> &AugmentConfig {
        &self.augment
    }

    /// The run directory.
    pub fn out_dir(&self) -> &Path {
        &self.out
    }

    /// Full batches per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        self.steps_per_epoch
    }

    /// Steps taken so far (including those before a resume).
    pub fn global_step(&self) -> u64 {
        self.epoch * self.steps_per_epoch + self.step_in_epoch
    }

    /// Changes where the run stops (the schedule still spans `epochs`).
    pub fn set_max_steps(&mut self, max_steps: Option<u64>) {
        self.config.max_steps = max_steps;
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The one place gradients are combined across processes before the update: with more
    /// than one rank, every parameter's gradient is averaged over the ranks, all of them in
    /// one flattened all-reduce.
    fn reduce_gradients(&self, mut grads: GradStore) -> Result<GradStore> {
        if self.comm.world() == 1 {
            return Ok(grads);
        }
        let local = self
            .params
            .iter()
            .map(|(_, var)| match grads.remove(var.as_tensor()) {
                Some(g) => Ok(g.detach()),
                None => var.as_tensor().zeros_like(),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut reduced = GradStore::default();
        for ((_, var), g) in self
            .params
            .iter()
            .zip(simclr_dist::all_reduce_mean(&self.comm, &local)?)
        {
            reduced.insert(var.as_tensor(), g);
        }
        Ok(reduced)
    }

    /// The ranks this trainer runs on.
    pub fn communicator(&self) -> &simclr_dist::Comm {
        &self.comm
    }

    /// Trains until the last epoch, `max_steps`, or until `stop` is raised, reporting to
    /// `observe`.
    pub fn run(&mut self, stop: &AtomicBool, observe: &mut dyn FnMut(Event)) -> Result<Summary> {
        let mut metrics = self.open_metrics()?;
        let max_steps = self.config.max_steps.unwrap_or(u64::MAX);
        let mut loader = Loader::start(
            self.dataset.clone(),
            self.augment.clone(),
            LoaderConfig {
                batch_size: self.config.batch_size,
                seed: self.config.seed,
                prefetch: self.config.prefetch,
                workers: self.config.workers,
                device: self.device.clone(),
                rank: self.comm.rank(),
                world: self.comm.world(),
                sampler: self.sampler.clone(),
            },
            (self.epoch, self.step_in_epoch),
            self.config.epochs,
        );
        let started = Instant::now();
        let mut summary = Summary {
            outcome: Outcome::Finished,
            first_loss: None,
            last_loss: None,
            steps: 0,
            images_per_s: 0.0,
            data_wait_share: 0.0,
            checkpoint: None,
        };
        let mut epoch_acc = EpochAccumulator::new(loader.waited());
        let mut traffic_at = self.comm.traffic();
        let mut pending: Vec<Pending> = Vec::new();
        let mut window = Instant::now();
        while self.epoch < self.config.epochs {
            if self.global_step() >= max_steps {
                summary.outcome = Outcome::MaxSteps;
                break;
            }
            // Every rank stops at the same step, whichever saw the request.
            if simclr_dist::any(&self.comm, stop.load(Ordering::SeqCst))? {
                summary.outcome = Outcome::Interrupted;
                break;
            }
            let waited_before = loader.waited();
            let batch = match loader.next() {
                Some(Ok(batch)) => batch,
                Some(Err(source)) => {
                    return Err(TrainError::Loader {
                        source,
                        last: self.last_good(),
                    });
                }
                None => {
                    return Err(TrainError::Loader {
                        source: crate::loader::LoaderError::Stopped {
                            epoch: self.epoch + 1,
                            step: self.step_in_epoch + 1,
                        },
                        last: self.last_good(),
                    });
                }
            };
            debug_assert_eq!(
                (batch.epoch, batch.step_in_epoch),
                (self.epoch, self.step_in_epoch)
            );
            let wait = loader.waited() - waited_before;
            let lr = self.schedule.lr(self.global_step());
            // The step trains on the global batch: every rank's views.
            let views = batch.views.dim(0)? * self.comm.world();
            let (loss, acc, active, probe_acc) =
                self.step(&batch.views, batch.labels.as_deref(), lr)?;
            self.step_in_epoch += 1;
            pending.push(Pending {
                metrics: StepMetrics {
                    epoch: self.epoch + 1,
                    step: self.global_step(),
                    step_in_epoch: self.step_in_epoch,
                    steps_per_epoch: self.steps_per_epoch,
                    loss: f32::NAN,
                    acc: f32::NAN,
                    lr,
                    views_per_s: 0.0,
                    data_wait_s: wait.as_secs_f64(),
                    active_triplets: None,
                    probe_acc: None,
                },
                loss,
                acc,
                active,
                probe_acc,
                views,
            });
            let epoch_end = self.step_in_epoch == self.steps_per_epoch;
            if epoch_end || pending.len() as u64 >= self.log_every {
                for m in self.flush(&mut pending, &mut window, &mut metrics, observe)? {
                    summary.record(m.loss);
                    epoch_acc.add(m.loss, m.acc);
                }
            }
            if epoch_end {
                let mut em = epoch_acc.finish(
                    self.epoch + 1,
                    self.global_step(),
                    self.config.batch_size,
                    loader.waited(),
                );
                if self.comm.world() > 1 {
                    let (now, steps) = (self.comm.traffic(), epoch_acc.steps.max(1) as f64);
                    em.reduced_bytes_per_step =
                        Some((now.reduced - traffic_at.reduced) as f64 / steps);
                    em.gathered_bytes_per_step =
                        Some((now.gathered - traffic_at.gathered) as f64 / steps);
                    traffic_at = now;
                }
                self.epoch += 1;
                self.step_in_epoch = 0;
                let last = self.epoch == self.config.epochs;
                let numbered = last || self.epoch.is_multiple_of(self.config.save_every);
                // Checkpoint first: a failing measurement then loses nothing.
                if numbered {
                    let path = self.save_checkpoint(true)?;
                    observe(Event::Checkpoint(&path));
                }
                if let Some((monitor, every)) = &mut self.monitor
                    && (last || self.epoch.is_multiple_of(*every))
                {
                    match monitor.measure(&self.model, self.epoch) {
                        Ok(values) => em.monitor.extend(values),
                        Err(e) => {
                            if !numbered {
                                let path = self.save_checkpoint(false)?;
                                observe(Event::Checkpoint(&path));
                            }
                            return Err(TrainError::Monitor {
                                epoch: self.epoch,
                                source: e,
                            });
                        }
                    }
                }
                write_line(&mut metrics, &em, &self.out)?;
                observe(Event::Epoch(&em));
                epoch_acc = EpochAccumulator::new(loader.waited());
                window = Instant::now();
            }
        }
        // Steps not yet read back: checked (a NaN among them saves nothing) and logged.
        for m in self.flush(&mut pending, &mut window, &mut metrics, observe)? {
            summary.record(m.loss);
        }
        let total = started.elapsed();
        let waited = loader.waited();
        drop(loader);
        if summary.outcome != Outcome::Finished || self.step_in_epoch != 0 {
            // Stopped mid-run: save where we are so that --resume continues from here.
            if summary.steps > 0 || self.last_checkpoint.is_none() {
                let path = self.save_checkpoint(false)?;
                observe(Event::Checkpoint(&path));
            }
        }
        summary.images_per_s =
            (summary.steps as usize * self.config.batch_size) as f64 / total.as_secs_f64();
        summary.data_wait_share = waited.as_secs_f64() / total.as_secs_f64().max(1e-9);
        summary.checkpoint = self.last_checkpoint.clone();
        if let Some(m) = &mut metrics {
            m.flush().map_err(|source| TrainError::File {
                path: self.out.join("metrics.jsonl"),
                source,
            })?;
        }
        Ok(summary)
    }

    /// Reads the pending steps' losses and accuracies back in one copy, stops at the first
    /// non-finite loss, and writes and reports each step; returns their metrics.
    /// `views_per_s` of each step is the window's rate (on a GPU the host's clock only sees
    /// the window as a whole).
    fn flush(
        &self,
        pending: &mut Vec<Pending>,
        window: &mut Instant,
        metrics: &mut Option<BufWriter<File>>,
        observe: &mut dyn FnMut(Event),
    ) -> Result<Vec<StepMetrics>> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Tensor> = pending
            .iter()
            .flat_map(|p| {
                let or_acc = |t: &Option<Tensor>| t.clone().unwrap_or_else(|| p.acc.clone());
                [
                    p.loss.clone(),
                    p.acc.clone(),
                    or_acc(&p.active),
                    or_acc(&p.probe_acc),
                ]
            })
            .collect();
        let mut values: Vec<f32> = Tensor::stack(&values, 0)?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1()?;
        if self.comm.world() > 1 {
            // The run's loss is the mean over ranks of each rank's loss (the same on all).
            self.comm
                .all_reduce_sum_f32(&mut values)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let k = 1.0 / self.comm.world() as f32;
            values.iter_mut().for_each(|v| *v *= k);
        }
        let seconds = window.elapsed().as_secs_f64().max(1e-9);
        let views: usize = pending.iter().map(|p| p.views).sum();
        let mut flushed = Vec::with_capacity(pending.len());
        for (p, lv) in pending.drain(..).zip(values.chunks_exact(4)) {
            let mut m = p.metrics;
            (m.loss, m.acc) = (lv[0], lv[1]);
            m.active_triplets = p.active.is_some().then_some(lv[2]);
            m.probe_acc = p.probe_acc.is_some().then_some(lv[3]);
            if !m.loss.is_finite() {
                return Err(TrainError::NonFinite {
                    loss: m.loss,
                    epoch: m.epoch,
                    step: m.step,
                    last: self.last_good(),
                });
            }
            m.views_per_s = views as f64 / seconds;
            write_line(metrics, &m, &self.out)?;
            observe(Event::Step(&m));
            flushed.push(m);
        }
        *window = Instant::now();
        Ok(flushed)
    }

    /// One optimisation step on a `[2N, C, H, W]` view batch already on the device; returns
    /// the loss and the contrastive accuracy as scalar tensors there (nothing is read back).
    fn step(
        &mut self,
        x: &Tensor,
        labels: Option<&[u32]>,
        lr: f64,
    ) -> Result<(Tensor, Tensor, Option<Tensor>, Option<Tensor>)> {
        let (h, z) = self.model.forward_t(x, true)?;
        let n = x.dim(0)? / 2;
        let (z1, z2) = (z.narrow(0, 0, n)?, z.narrow(0, n, n)?);
        let (loss, active) = if self.comm.world() > 1 {
            // This rank's 2n views against the views of every rank.
            let keys = simclr_dist::all_gather_with_grad(&self.comm, &z)?;
            let (rank, tau) = (self.comm.rank(), self.loss.temperature);
            let loss = if self.loss.kind == simclr_loss::LossKind::SupCon {
                // Every rank's labels, in the keys' order (two views each).
                let Some(l) = labels else {
                    return Err(TrainError::Config(
                        "--loss supcon needs class labels".into(),
                    ));
                };
                let mine: Vec<f64> = l.iter().chain(l).map(|&v| f64::from(v)).collect();
                let all: Vec<u32> = self
                    .comm
                    .all_gather_f64(&mine)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?
                    .into_iter()
                    .map(|v| v as u32)
                    .collect();
                simclr_loss::supcon_gathered(&z, &keys, &all, rank, tau)?
            } else if matches!(
                self.loss.kind,
                simclr_loss::LossKind::Dcl | simclr_loss::LossKind::Dclw
            ) {
                simclr_loss::dcl_gathered(&z, &keys, rank, tau, self.loss.dclw_sigma())?
            } else {
                simclr_loss::nt_xent_gathered(&z, &keys, rank, tau)?
            };
            (loss, None)
        } else {
            let w = self.class_weight.as_ref().map(Var::as_tensor);
            let out = self.loss.compute(&z1, &z2, labels, w)?;
            (out.loss, out.active)
        };
        let acc = contrastive_accuracy_t(&z1.detach(), &z2.detach())?;
        let grads = self.reduce_gradients(loss.backward()?)?;
        self.optimizer.set_learning_rate(lr);
        self.optimizer.step(&grads)?;
        // The online probe learns from the detached features: the encoder's update above is
        // the same with or without it.
        let probe_acc = match (&mut self.probe, labels) {
            (Some(probe), Some(l)) => {
                let both: Vec<u32> = l.iter().chain(l).copied().collect();
                Some(probe.step(&h, &both)?)
            }
            _ => None,
        };
        Ok((loss.detach(), acc, active.map(|a| a.detach()), probe_acc))
    }

    /// `metrics.jsonl`, opened for appending (rank 0; the other ranks write none).
    fn open_metrics(&self) -> Result<Option<BufWriter<File>>> {
        if !self.comm.is_primary() {
            return Ok(None);
        }
        let path = self.out.join("metrics.jsonl");
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| TrainError::File { path, source })?;
        Ok(Some(BufWriter::new(f)))
    }

    /// The checkpoint's tensors: the model's (torchvision names, running statistics
    /// included) and the optimiser's state as `optimizer.<parameter>.<slot>`.
    fn checkpoint_tensors(&self) -> Vec<(String, Tensor)> {
        let mut tensors = self.model.tensors();
        if let Some(w) = &self.class_weight {
            tensors.push(("arcface.weight".into(), w.as_tensor().clone()));
        }
        if let Some(p) = &self.probe {
            tensors.extend(p.tensors());
        }
        for ((name, _), slots) in self.params.iter().zip(self.optimizer.state()) {
            for (slot, t) in slots {
                tensors.push((format!("optimizer.{name}.{slot}"), t));
            }
        }
        tensors
    }

    /// The checkpoint's metadata, with the dataset's fingerprint and the arithmetic it was
    /// trained with (threads, CPU kernels, ranks).
    pub fn checkpoint_metadata(&self) -> BTreeMap<String, String> {
        let mut m = checkpoint_metadata(
            &self.config,
            self.model.config(),
            &self.augment,
            [self.epoch, self.step_in_epoch, self.global_step()],
            self.optimizer.steps(),
        );
        m.insert("data_fingerprint".into(), json(&self.fingerprint));
        let arithmetic = crate::fingerprint::Arithmetic::current(self.comm.world());
        m.insert("arithmetic".into(), json(&arithmetic));
        m
    }

    /// What [`resume`](Self::resume) found worth telling the user: why the run cannot
    /// continue bit for bit as it would have (other threads, CPU kernels or ranks).
    pub fn resume_notes(&self) -> &[String] {
        &self.notes
    }

    /// Writes `last.safetensors` and, at epoch ends, `epoch-NNNN.safetensors`, deleting
    /// numbered checkpoints beyond `keep_last`. Returns the path of the last one written.
    pub fn save_checkpoint(&mut self, numbered: bool) -> Result<PathBuf> {
        let last = self.out.join("last.safetensors");
        let written = if numbered {
            self.out
                .join(format!("epoch-{:04}.safetensors", self.epoch))
        } else {
            last.clone()
        };
        // Rank 0 writes; the other ranks only keep track of what it wrote.
        if self.comm.is_primary() {
            let bytes = io::to_bytes(
                &last,
                &self.checkpoint_tensors(),
                &self.checkpoint_metadata(),
            )?;
            if numbered {
                io::write_atomic(&written, &bytes)?;
                self.prune();
            }
            io::write_atomic(&last, &bytes)?;
        }
        self.last_checkpoint = Some(last);
        Ok(written)
    }

    fn prune(&self) {
        let Ok(dir) = std::fs::read_dir(&self.out) else {
            return;
        };
        let mut numbered: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("epoch-") && n.ends_with(".safetensors"))
            })
            .collect();
        numbered.sort();
        let excess = numbered.len().saturating_sub(self.config.keep_last);
        for p in &numbered[..excess] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The metadata written into every training checkpoint: enough for `simclr inspect`,
/// `simclr export` and `--resume` to need nothing else.
pub fn checkpoint_metadata(
    config: &TrainConfig,
    model: &ModelConfig,
    augment: &AugmentConfig,
    [epoch, step_in_epoch, global_step]: [u64; 3],
    optimizer_steps: u64,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("format".into(), CHECKPOINT_FORMAT.into()),
        ("simclr_version".into(), env!("CARGO_PKG_VERSION").into()),
        ("config".into(), json(config)),
        ("model".into(), json(model)),
        ("image_size".into(), augment.height.to_string()),
        ("normalize_mean".into(), json(&augment.mean)),
        ("normalize_std".into(), json(&augment.std)),
        ("epoch".into(), epoch.to_string()),
        ("step_in_epoch".into(), step_in_epoch.to_string()),
        ("global_step".into(), global_step.to_string()),
        ("optimizer".into(), config.optimizer.to_string()),
        ("optimizer_steps".into(), optimizer_steps.to_string()),
        ("seed".into(), config.seed.to_string()),
    ])
}

/// JSON of a metadata value (the values here always serialise).
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("metadata serialises")
}

fn write_line(w: &mut Option<BufWriter<File>>, value: &impl Serialize, out: &Path) -> Result<()> {
    let Some(w) = w else {
        return Ok(());
    };
    let line = serde_json::to_string(value).expect("metrics serialise");
    writeln!(w, "{line}")
        .and_then(|()| w.flush())
        .map_err(|source| TrainError::File {
            path: out.join("metrics.jsonl"),
            source,
        })
}

struct EpochAccumulator {
    started: Instant,
    waited_at_start: Duration,
    loss: f64,
    acc: f64,
    steps: u64,
}

impl EpochAccumulator {
    fn new(waited: Duration) -> Self {
        Self {
            started: Instant::now(),
            waited_at_start: waited,
            loss: 0.0,
            acc: 0.0,
            steps: 0,
        }
    }

    fn add(&mut self, loss: f32, acc: f32) {
        self.loss += f64::from(loss);
        self.acc += f64::from(acc);
        self.steps += 1;
    }

    fn finish(&self, epoch: u64, step: u64, batch: usize, waited: Duration) -> EpochMetrics {
        let seconds = self.started.elapsed().as_secs_f64();
        let n = self.steps.max(1) as f64;
        EpochMetrics {
            event: "epoch",
            epoch,
            step,
            loss: (self.loss / n) as f32,
            acc: (self.acc / n) as f32,
            images_per_s: (self.steps as usize * batch) as f64 / seconds,
            data_wait_share: (waited - self.waited_at_start).as_secs_f64() / seconds,
            seconds,
            monitor: BTreeMap::new(),
            reduced_bytes_per_step: None,
            gathered_bytes_per_step: None,
        }
    }
}
