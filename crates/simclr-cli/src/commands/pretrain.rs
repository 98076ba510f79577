//! `simclr pretrain`: the SimCLR training run.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use simclr_data::{Dataset, Format, Split};
use simclr_loss::{LossKind, Mining, Pairs};
use simclr_model::{Arch, Precision, Stem};
use simclr_train::{Event, LrScaling, OptimizerKind, Outcome, TrainConfig, Trainer};

use crate::DataArgs;
use crate::commands::knn_monitor::KnnMonitor;

/// Options of `simclr pretrain`. Each one overrides the `--config` file, which overrides the
/// defaults; the resolved configuration is saved as `<out>/config.json`.
#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// Dataset to pretrain on (labels are not used, except by `--loss supcon`). Defaults to
    /// the bundled Fashion-MNIST sample, with a small model that trains in a few minutes.
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Dataset format, when detection guesses wrong.
    #[arg(long, value_name = "idx|cifar10|folder")]
    pub format: Option<Format>,
    /// Split to train on, where the format has one [default: train].
    #[arg(long, value_name = "train|test")]
    pub split: Option<Split>,
    /// Skip undecodable images in an image folder instead of failing.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Decode an image folder once into a cache of its images at --image-size in DIR, and
    /// read epochs from it (no JPEG decoding); reused while the folder is unchanged. Without
    /// it, image folders are decoded a batch at a time, every epoch.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Run directory: config.json, metrics.jsonl and checkpoints go here [default:
    /// runs/pretrain, or the checkpoint's directory with --resume].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// TOML file of options (the keys of config.json); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Continue the run saved in this checkpoint (or run directory's last.safetensors),
    /// exactly where it stopped. Only --epochs, --max-steps, --out, --threads, --workers,
    /// --device, --precision, --log-every and the --knn-* options may be changed.
    #[arg(long, value_name = "CKPT|DIR")]
    pub resume: Option<PathBuf>,
    /// Encoder depth [default: resnet18].
    #[arg(long, value_name = "resnet18|resnet34|resnet50")]
    pub arch: Option<Arch>,
    /// Stem: cifar (3×3, no max-pool) for small images, imagenet (7×7/2 + max-pool)
    /// [default: cifar].
    #[arg(long, value_name = "cifar|imagenet")]
    pub stem: Option<Stem>,
    /// Width multiplier of the encoder [default: 1; 0.125 without --data].
    #[arg(long)]
    pub width: Option<f64>,
    /// Output width of the projection head [default: 128].
    #[arg(long)]
    pub proj_dim: Option<usize>,
    /// Side of the square training views in pixels [default: 32; 28 without --data].
    #[arg(long)]
    pub image_size: Option<u32>,
    /// Images per step; the step sees twice as many views [default: 256; 128 without --data].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Epochs; the learning-rate schedule spans them [default: 100; 1 without --data].
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Stop after this many steps in all (for smoke runs; the schedule still spans --epochs).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Optimiser [default: lars].
    #[arg(long, value_name = "lars|sgd|adamw")]
    pub optimizer: Option<OptimizerKind>,
    /// Base learning rate, scaled by --lr-scaling [default: 0.075].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Batch-size scaling of the learning rate: sqrt (lr·√batch, SimCLR's choice for small
    /// batches), linear (lr·batch/256, with --lr 0.3 for large batches) or none
    /// [default: sqrt].
    #[arg(long, value_name = "linear|sqrt|none")]
    pub lr_scaling: Option<LrScaling>,
    /// Weight decay; biases and BatchNorm parameters are exempt [default: 1e-6].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Momentum of LARS and SGD [default: 0.9].
    #[arg(long)]
    pub momentum: Option<f64>,
    /// LARS trust coefficient η: a weight's step is lr·η·‖w‖/‖g‖ times its gradient, while
    /// biases and BatchNorm parameters take the plain learning rate [default: 0.001, SimCLR's].
    #[arg(long, value_name = "ETA")]
    pub trust_coefficient: Option<f64>,
    /// Epochs of linear learning-rate warmup [default: 10; 0.5 without --data].
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// Objective [default: ntxent]: ntxent (SimCLR, no labels); dcl and dclw (decoupled
    /// contrastive: NT-Xent without the positive in the denominator, dclw also weighting the
    /// positives by --sigma; no labels); contrastive (siamese pairs with a margin) and triplet
    /// (with --mining), on views or --pairs labels; supcon and arcface (need labels).
    #[arg(
        long,
        value_name = "ntxent|dcl|dclw|contrastive|triplet|supcon|arcface"
    )]
    pub loss: Option<LossKind>,
    /// Positives of the contrastive and triplet losses: the two views of an image, or the
    /// images of a class (needs labels; pair with --classes-per-batch) [default: views].
    #[arg(long, value_name = "views|labels")]
    pub pairs: Option<Pairs>,
    /// Triplets of the triplet loss [default: batch-hard].
    #[arg(long, value_name = "batch-hard|batch-all|semi-hard")]
    pub mining: Option<Mining>,
    /// ArcFace's logit scale s [default: 64].
    #[arg(long)]
    pub scale: Option<f64>,
    /// DCLW's weighting temperature σ [default: 0.5].
    #[arg(long)]
    pub sigma: Option<f64>,
    /// Class-balanced batches of P classes × K images (needs labels; --batch-size becomes
    /// P·K): every image of a batch then has positives.
    #[arg(long, value_name = "P", requires = "images_per_class")]
    pub classes_per_batch: Option<usize>,
    /// Images of each class per balanced batch (K).
    #[arg(long, value_name = "K", requires = "classes_per_batch")]
    pub images_per_class: Option<usize>,
    /// Train a linear classifier on the detached representations alongside (needs labels):
    /// its accuracy on the progress line, in metrics.jsonl (`probe_acc`) and in curves.png.
    /// It never changes the encoder.
    #[arg(long)]
    pub online_probe: bool,
    /// Temperature of NT-Xent, DCL and SupCon [default: 0.5].
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Margin of the contrastive and triplet losses; ArcFace's angular margin in radians
    /// [default: 0.5].
    #[arg(long)]
    pub margin: Option<f64>,
    /// Colour-jitter strength s [default: 0.5].
    #[arg(long)]
    pub jitter_strength: Option<f64>,
    /// Smallest area share of the random resized crop [default: 0.08].
    #[arg(long)]
    pub min_crop_scale: Option<f64>,
    /// Gaussian blur [default: on above 32 px].
    #[arg(long, value_name = "true|false")]
    pub blur: Option<bool>,
    /// Seed of initialisation, shuffling and augmentation [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Threads of the training step [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Threads building augmented batches in the background [default: 1 on the CPU, where
    /// the step needs the cores; all cores with --device cuda].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Arithmetic of the step: f32, or bf16 (with --device cuda: bf16 activations,
    /// convolutions and matrix products, f32 weights, optimiser, loss and BatchNorm
    /// statistics; on a CPU with AVX-512 BF16: the convolutions' products in bf16, summed in
    /// f32, on AMX tiles where the CPU has them (SIMCLR_AMX=0: not), everything else f32;
    /// checkpoints stay f32) [default: f32].
    #[arg(long, value_name = "f32|bf16")]
    pub precision: Option<Precision>,
    /// Read the loss back from the device every this many steps (each step still gets its
    /// metrics.jsonl line; a NaN is still caught at the step it happened) [default: 1 on the
    /// CPU, 20 with --device cuda].
    #[arg(long, value_name = "STEPS")]
    pub log_every: Option<u64>,
    /// Save a numbered checkpoint every this many epochs [default: 1].
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Numbered checkpoints to keep [default: 3].
    #[arg(long)]
    pub keep_last: Option<usize>,
    /// Measure the weighted kNN accuracy (k 200, τ 0.1, as `simclr knn`) of the model being
    /// trained every this many epochs and after the last: the data's test split against its
    /// training images, at most --knn-images of each. Shown on the epoch line and written to
    /// metrics.jsonl (`knn_top1`). Needs a labelled dataset with a test split [default: off].
    #[arg(long, value_name = "EPOCHS")]
    pub knn_every: Option<u64>,
    /// Images of each split the kNN monitor uses, evenly spaced.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub knn_images: usize,
    /// Device: cpu, or cuda / cuda:N when built with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Global BatchNorm in a data-parallel run (`mpirun -np K simclr pretrain …`): normalise
    /// with the statistics of the whole global batch, as SimCLR's global_bn [default: true
    /// with more than one rank].
    #[arg(long, value_name = "true|false")]
    pub sync_bn: Option<bool>,
    /// No progress bar; one line per epoch.
    #[arg(long, short)]
    pub quiet: bool,
}

/// The ranks of this run: MPI's world when started by `mpirun` (with the `mpi` feature),
/// else this process alone.
fn communicator() -> anyhow::Result<simclr_dist::Comm> {
    #[cfg(feature = "mpi")]
    if simclr_dist::launched_by_mpirun() {
        return simclr_dist::mpi_world().context("cannot initialise MPI");
    }
    #[cfg(not(feature = "mpi"))]
    if ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|n| n != "1"))
    {
        bail!(
            "started by mpirun, but this build of simclr has no MPI support: every rank would \
             train alone. Rebuild with `cargo build --release --features mpi` (needs Open MPI)"
        );
    }
    Ok(simclr_dist::single())
}

/// The small setup used on the bundled sample when no dataset is given: an ⅛-width
/// ResNet-18 on 28 px views, one epoch (about 15 seconds on 2 cores).
fn sample_defaults(c: &mut TrainConfig) {
    c.width = 0.125;
    c.image_size = 28;
    c.batch_size = 128;
    c.epochs = 1;
    c.warmup_epochs = 0.5;
}

impl PretrainArgs {
    /// Defaults ← `--config` file ← flags.
    fn resolve(&self) -> anyhow::Result<TrainConfig> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("while reading `{}`", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("`{}` is not a valid config file", path.display()))?
            }
            None => TrainConfig::default(),
        };
        if self.config.is_none() && self.data.is_none() {
            sample_defaults(&mut c);
        }
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = &self.$field {
                    c.$field = v.clone();
                }
            )*};
        }
        set!(
            arch,
            stem,
            width,
            proj_dim,
            image_size,
            batch_size,
            epochs,
            optimizer,
            lr,
            lr_scaling,
            weight_decay,
            momentum,
            trust_coefficient,
            warmup_epochs,
            loss,
            temperature,
            margin,
            pairs,
            mining,
            scale,
            sigma,
            jitter_strength,
            min_crop_scale,
            seed,
            workers,
            save_every,
            keep_last,
            precision
        );
        if self.data.is_some() {
            c.data = self.data.clone();
        }
        if let Some(f) = self.format {
            c.format = Some(f.to_string());
        }
        if let Some(s) = self.split {
            c.split = s.to_string();
        }
        if self.max_steps.is_some() {
            c.max_steps = self.max_steps;
        }
        if self.blur.is_some() {
            c.blur = self.blur;
        }
        if self.online_probe {
            c.online_probe = true;
        }
        if let (Some(p), Some(k)) = (self.classes_per_batch, self.images_per_class) {
            (c.classes_per_batch, c.images_per_class) = (Some(p), Some(k));
            if self.batch_size.is_none() {
                c.batch_size = p * k;
            }
        }
        Ok(c)
    }

    /// The recipe options given with `--resume` whose values differ from the run's saved
    /// configuration, each as "--flag value (the run has saved)". Values equal to the saved
    /// ones are fine (the same command line may be run again with --resume); `--epochs`,
    /// `--max-steps`, `--workers`, `--precision`, `--save-every` and `--keep-last` may change.
    fn differences_on_resume(&self, saved: &TrainConfig) -> anyhow::Result<Vec<String>> {
        let mut v = Vec::new();
        macro_rules! check {
            ($($field:ident => $flag:literal),*) => {$(
                if let Some(value) = &self.$field
                    && *value != saved.$field
                {
                    v.push(format!("{} {} (the run has {})", $flag, value, saved.$field));
                }
            )*};
        }
        check!(arch => "--arch", stem => "--stem", width => "--width",
            proj_dim => "--proj-dim", image_size => "--image-size", batch_size => "--batch-size",
            optimizer => "--optimizer", lr => "--lr", lr_scaling => "--lr-scaling",
            weight_decay => "--weight-decay", momentum => "--momentum",
            trust_coefficient => "--trust-coefficient",
            warmup_epochs => "--warmup-epochs", loss => "--loss", temperature => "--temperature",
            margin => "--margin", pairs => "--pairs", mining => "--mining", scale => "--scale",
            sigma => "--sigma", jitter_strength => "--jitter-strength",
            min_crop_scale => "--min-crop-scale", seed => "--seed");
        let show = |p: &Option<PathBuf>| {
            p.as_ref().map_or_else(
                || "the bundled sample".into(),
                |p| format!("`{}`", p.display()),
            )
        };
        if self.data.is_some() && self.data != saved.data {
            v.push(format!(
                "--data {} (the run has {})",
                show(&self.data),
                show(&saved.data)
            ));
        }
        if let Some(f) = self.format
            && saved.format.as_deref() != Some(f.to_string().as_str())
        {
            v.push(format!(
                "--format {f} (the run has {})",
                saved.format.as_deref().unwrap_or("the detected one")
            ));
        }
        if let Some(split) = self.split
            && split.to_string() != saved.split
        {
            v.push(format!("--split {split} (the run has {})", saved.split));
        }
        if let Some(b) = self.blur
            && saved.blur != Some(b)
        {
            v.push(format!("--blur {b} (the run has {:?})", saved.blur));
        }
        if self.online_probe && !saved.online_probe {
            v.push("--online-probe (the run has none)".into());
        }
        if self.classes_per_batch.is_some()
            && (self.classes_per_batch, self.images_per_class)
                != (saved.classes_per_batch, saved.images_per_class)
        {
            v.push(format!(
                "--classes-per-batch {:?} --images-per-class {:?} (the run has {:?} and {:?})",
                self.classes_per_batch,
                self.images_per_class,
                saved.classes_per_batch,
                saved.images_per_class
            ));
        }
        if let Some(path) = &self.config {
            v.extend(config_file_differences(path, saved)?);
        }
        Ok(v)
    }
}

/// Options a `--resume` may change: they do not alter the recipe.
const RESUME_MAY_CHANGE: &[&str] = &[
    "epochs",
    "max_steps",
    "workers",
    "prefetch",
    "precision",
    "save_every",
    "keep_last",
];

/// The keys of the TOML file `path` whose values differ from `saved`'s, as
/// "`key` = value in FILE (the run has saved)".
fn config_file_differences(path: &Path, saved: &TrainConfig) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("while reading `{}`", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("`{}` is not a valid config file", path.display()))?;
    let file: TrainConfig = toml::from_str(&text)
        .with_context(|| format!("`{}` is not a valid config file", path.display()))?;
    let (file, saved) = (serde_json::to_value(file)?, serde_json::to_value(saved)?);
    Ok(table
        .keys()
        .filter(|k| !RESUME_MAY_CHANGE.contains(&k.as_str()))
        .filter(|k| file[k.as_str()] != saved[k.as_str()])
        .map(|k| {
            format!(
                "`{k}` = {} in `{}` (the run has {})",
                file[k.as_str()],
                path.display(),
                saved[k.as_str()]
            )
        })
        .collect())
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn device(spec: &str) -> anyhow::Result<candle_core::Device> {
    let spec = spec.trim().to_ascii_lowercase();
    if spec == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    let ordinal = match spec.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("bad device `{spec}`; expected cpu, cuda or cuda:N"))?,
        None => bail!("unknown device `{spec}`; expected cpu, cuda or cuda:N"),
    };
    if !candle_core::utils::cuda_is_available() {
        bail!(
            "--device {spec}: this build of simclr has no CUDA support; rebuild with \
             `cargo build --release --features cuda` (needs the CUDA toolkit), or use --device cpu"
        )
    }
    candle_core::Device::new_cuda(ordinal)
        .with_context(|| format!("--device {spec}: cannot open CUDA device {ordinal}"))
}

/// The run's `--format`, when given.
fn format_of(c: &TrainConfig) -> anyhow::Result<Option<Format>> {
    c.format
        .as_deref()
        .map(str::parse::<Format>)
        .transpose()
        .map_err(anyhow::Error::msg)
}

/// The run's dataset, or with `split` another split of it.
fn open_data(
    c: &TrainConfig,
    split: Option<Split>,
    args: &PretrainArgs,
) -> anyhow::Result<Arc<dyn Dataset>> {
    let skip_bad_images = args.skip_bad_images;
    let format = format_of(c)?;
    let split = match split {
        Some(s) => s,
        None => c.split.parse::<Split>().map_err(anyhow::Error::msg)?,
    };
    DataArgs {
        data: c.data.clone(),
        format,
        split,
        skip_bad_images,
    }
    .open_cached(args.cache.as_deref(), c.image_size)
}

/// The `--knn-every` monitor, when asked for: the run's test split against its training
/// images. Checked before the run directory is touched.
fn knn_monitor(
    args: &PretrainArgs,
    c: &TrainConfig,
    train: &Arc<dyn Dataset>,
) -> anyhow::Result<Option<(KnnMonitor, u64)>> {
    let Some(every) = args.knn_every else {
        return Ok(None);
    };
    if every == 0 {
        bail!("--knn-every must be at least 1 (leave it out to turn the monitor off)");
    }
    if args.knn_images == 0 {
        bail!("--knn-images must be at least 1");
    }
    if c.split.parse::<Split>().map_err(anyhow::Error::msg)? == Split::Test {
        bail!(
            "--knn-every measures on the test split, so it cannot monitor a run pretraining on it"
        );
    }
    if let Some(path) = &c.data
        && !simclr_data::has_separate_splits(path, format_of(c)?)?
    {
        bail!(
            "--knn-every needs the dataset's test split, and `{}` has none (an image folder \
             needs train/ and test/ subfolders)",
            path.display()
        );
    }
    let test = open_data(c, Some(Split::Test), args)
        .context("--knn-every needs the dataset's test split")?;
    let monitor = KnnMonitor::new(
        c.augment(train.channels()),
        train.clone(),
        test,
        args.knn_images,
    )?;
    let (bank, queries) = monitor.sizes();
    eprintln!(
        "kNN monitor every {every} epoch(s): {queries} test images against {bank} training images"
    );
    Ok(Some((monitor, every)))
}

/// Runs `simclr pretrain`; in a data-parallel run, a rank that fails ends the whole job
/// (`MPI_Abort`) after printing its error, so that no rank waits for it forever.
pub fn run(args: &PretrainArgs) -> anyhow::Result<()> {
    let comm = communicator()?;
    let result = run_on(args, &comm);
    simclr_model::batchnorm::set_sync_batch_norm(None);
    if comm.world() > 1 {
        match &result {
            Err(e) if !e.is::<crate::Interrupted>() => {
                let (rank, world) = (comm.rank(), comm.world());
                eprintln!("error on rank {rank} of {world}: {}", crate::error_chain(e));
                comm.abort(1);
            }
            _ => {
                #[cfg(feature = "mpi")]
                simclr_dist::finalize_mpi();
            }
        }
    }
    result
}

fn run_on(args: &PretrainArgs, comm: &simclr_dist::Comm) -> anyhow::Result<()> {
    let primary = comm.is_primary();
    let world = comm.world();
    // One GPU per rank: a bare `cuda` means the rank's own on its node.
    let spec = match std::env::var("OMPI_COMM_WORLD_LOCAL_RANK") {
        Ok(local) if world > 1 && args.device.trim() == "cuda" => format!("cuda:{local}"),
        _ => args.device.clone(),
    };
    let device = device(&spec)?;
    // Ranks on GPUs reduce device to device with NCCL when built with it (else through the
    // host, over MPI).
    #[cfg(feature = "nccl")]
    let comm = &if world > 1 && device.is_cuda() {
        simclr_dist::nccl_world(comm, &device).context("cannot start NCCL")?
    } else {
        comm.clone()
    };
    let sync_bn = args.sync_bn.unwrap_or(world > 1) && world > 1;
    if sync_bn && !device.is_cpu() {
        bail!(
            "--sync-bn runs on the CPU only for now; on GPUs pass --sync-bn false (each rank \
             then normalises with its own batch)"
        );
    }
    simclr_model::batchnorm::set_sync_batch_norm(sync_bn.then(|| comm.clone()));
    if args.precision == Some(Precision::Bf16)
        && device.is_cpu()
        && !simclr_model::conv::bf16_gemm_supported()
    {
        bail!(
            "--precision bf16 on the CPU needs AVX-512 BF16 (Intel Sapphire Rapids or later, \
             AMD Zen 4 or later), which this CPU lacks; use f32, or --device cuda"
        );
    }
    if args.log_every == Some(0) {
        bail!("--log-every must be at least 1");
    }
    let log_every = args
        .log_every
        .unwrap_or(if device.is_cpu() { 1 } else { 20 });
    // Augmentation workers: on the CPU the step needs the cores; a GPU step needs the data.
    let default_workers = |c: &mut TrainConfig| {
        if args.workers.is_none() && !device.is_cpu() {
            c.workers = std::thread::available_parallelism().map_or(1, usize::from);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond interrupt: exiting without saving");
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to abort)");
        })
        .context("cannot install the Ctrl-C handler")?;
    }
    let (mut trainer, monitor) = match &args.resume {
        Some(path) => {
            let ckpt = crate::commands::weights::checkpoint_path(path);
            let out = match &args.out {
                Some(o) => o.clone(),
                None => ckpt
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), Path::to_owned),
            };
            let header = simclr_model::io::SafetensorsFile::load_metadata(&ckpt)?;
            let format = header.meta("format")?;
            if format != simclr_model::io::CHECKPOINT_FORMAT {
                bail!(
                    "`{}` is a `{format}` file, not a training checkpoint; --resume takes the \
                     `last.safetensors` (or a numbered checkpoint) of a run directory",
                    ckpt.display()
                );
            }
            let saved: TrainConfig = serde_json::from_str(header.meta("config")?)
                .with_context(|| format!("`{}`: unreadable run config", ckpt.display()))?;
            let changed = args.differences_on_resume(&saved)?;
            if !changed.is_empty() {
                bail!(
                    "a resumed run continues with its saved configuration, and these options \
                     differ from it: {}. Leave them out (or give the saved values); only \
                     --epochs, --max-steps, --out, --threads, --workers, --device, \
                     --precision, --log-every and the --knn-* options may change",
                    changed.join("; ")
                )
            }
            let data = open_data(&saved, None, args)?;
            let monitor = if primary {
                knn_monitor(args, &saved, &data)?
            } else {
                None
            };
            let (epochs, max_steps, precision) = (args.epochs, args.max_steps, args.precision);
            let trainer = Trainer::resume_on(
                comm.clone(),
                &ckpt,
                |c| {
                    if let Some(e) = epochs {
                        c.epochs = e;
                    }
                    c.max_steps = max_steps;
                    if let Some(p) = precision {
                        c.precision = p;
                    }
                    if let Some(w) = args.workers {
                        c.workers = w;
                    }
                    default_workers(c);
                },
                data,
                &out,
                &device,
            )?;
            (trainer, monitor)
        }
        None => {
            let mut config = args.resolve()?;
            default_workers(&mut config);
            config.validate().map_err(anyhow::Error::msg)?;
            let out = args
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs/pretrain"));
            let data = open_data(&config, None, args)?;
            let monitor = if primary {
                knn_monitor(args, &config, &data)?
            } else {
                None
            };
            (
                Trainer::new_on(comm.clone(), config, data, &out, &device)?,
                monitor,
            )
        }
    };
    if let Some((monitor, every)) = monitor {
        trainer.set_monitor(Box::new(monitor), every);
    }
    trainer.set_log_every(log_every);
    let c = trainer.config().clone();
    let model = trainer.model();
    if !primary {
        // The other ranks train silently; rank 0 prints and writes.
        trainer.run(&stop, &mut |_| {})?;
        return Ok(());
    }
    if world > 1 {
        eprintln!(
            "data-parallel over {world} ranks: {} images each of the global batch of {}, \
             negatives from every rank, {} BatchNorm",
            c.batch_size / world,
            c.batch_size,
            if sync_bn { "global" } else { "per-rank" }
        );
    }
    eprintln!(
        "pretraining {} ({} encoder parameters) on {} ({} images, {} steps an epoch), {} epoch{}, \
         batch {}, {} lr {:.4}, {} τ={}, {}, {} threads",
        model.config().describe(),
        model.num_params(true),
        c.data.as_ref().map_or_else(
            || simclr_data::sample::NAME.to_string(),
            |p| format!("`{}`", p.display())
        ),
        trainer.steps_per_epoch() as usize * c.batch_size,
        trainer.steps_per_epoch(),
        c.epochs,
        if c.epochs == 1 { "" } else { "s" },
        c.batch_size,
        c.optimizer,
        trainer.schedule().peak,
        c.loss,
        c.temperature,
        describe_precision(c.precision, device.is_cpu()),
        candle_core::utils::get_num_threads(),
    );
    if args.resume.is_some() {
        let (step, per_epoch) = (trainer.global_step(), trainer.steps_per_epoch());
        eprintln!(
            "resuming at step {step} (epoch {}, step {} of {per_epoch}); writing to `{}`",
            step / per_epoch + 1,
            step % per_epoch,
            trainer.out_dir().display()
        );
        for note in trainer.resume_notes() {
            eprintln!("note: {note}");
        }
    }
    let interactive = !args.quiet && std::io::stderr().is_terminal();
    let total = c
        .max_steps
        .unwrap_or(u64::MAX)
        .min(trainer.steps_per_epoch() * c.epochs);
    let bar = if interactive {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        b.set_position(trainer.global_step());
        b.reset_eta();
        b
    } else {
        ProgressBar::hidden()
    };
    let summary = trainer.run(&stop, &mut |e| match e {
        Event::Step(m) => {
            bar.set_prefix(format!("epoch {}/{}", m.epoch, c.epochs));
            let mut active = m
                .active_triplets
                .map_or(String::new(), |a| format!(" active {:.0}%", 100.0 * a));
            if let Some(p) = m.probe_acc {
                active.push_str(&format!(" probe {:.1}%", 100.0 * p));
            }
            bar.set_message(format!(
                "loss {:.4} acc {:.3}{active} lr {:.4} {:.0} img/s",
                m.loss,
                m.acc,
                m.lr,
                m.views_per_s / 2.0
            ));
            bar.set_position(m.step);
        }
        Event::Epoch(m) => {
            let mut line = format!(
                "epoch {:>4}/{}  loss {:.4}  acc {:.3}  {:.1} img/s  data wait {:.1}%  {:.0} s",
                m.epoch,
                c.epochs,
                m.loss,
                m.acc,
                m.images_per_s,
                100.0 * m.data_wait_share,
                m.seconds
            );
            if let (Some(r), Some(g)) = (m.reduced_bytes_per_step, m.gathered_bytes_per_step) {
                line.push_str(&format!(
                    "  comm {:.2} MB/step ({:.2} all-reduced, {:.3} gathered)",
                    (r + g) / 1e6,
                    r / 1e6,
                    g / 1e6
                ));
            }
            if let Some(acc) = m.monitor.get("knn_top1") {
                let secs = m.monitor.get("knn_s").copied().unwrap_or(0.0);
                line.push_str(&format!("  kNN {:.2}% ({secs:.0} s)", 100.0 * acc));
            }
            bar.suspend(|| eprintln!("{line}"));
        }
        Event::Checkpoint(p) => {
            bar.suspend(|| eprintln!("saved {}", p.display()));
        }
    })?;
    bar.finish_and_clear();
    let global = trainer.global_step();
    if summary.steps == 0 && summary.outcome == Outcome::MaxSteps {
        eprintln!(
            "nothing to run: the run is at step {global} already, and --max-steps is {}",
            c.max_steps.unwrap_or(global)
        );
        return Ok(());
    }
    let how = match summary.outcome {
        Outcome::Finished => "finished",
        Outcome::MaxSteps => "stopped at --max-steps",
        Outcome::Interrupted => "interrupted",
    };
    let plural = if summary.steps == 1 { "" } else { "s" };
    let steps = if global == summary.steps {
        format!("after {global} step{plural}")
    } else {
        format!(
            "after {} step{plural} (step {global} of the run)",
            summary.steps
        )
    };
    eprintln!(
        "{how} {steps}: loss {} → {}, {:.1} img/s, {:.1}% of the time waiting for data",
        summary.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
        summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        summary.images_per_s,
        100.0 * summary.data_wait_share
    );
    match crate::commands::plot::plot_run(trainer.out_dir(), None) {
        Ok(p) => eprintln!("curves: {}", p.display()),
        Err(e) => eprintln!("warning: no plot: {e:#}"),
    }
    if let Some(p) = &summary.checkpoint {
        eprintln!("checkpoint: {}", p.display());
        if summary.outcome != Outcome::Finished {
            eprintln!("resume with: simclr pretrain --resume {}", p.display());
        }
    }
    if summary.outcome == Outcome::Interrupted {
        return Err(crate::Interrupted.into());
    }
    Ok(())
}

/// The step's arithmetic as the startup line names it: on the CPU, which instructions carry
/// the bf16 products.
fn describe_precision(precision: Precision, cpu: bool) -> &'static str {
    match precision {
        Precision::F32 => "f32",
        Precision::Bf16 if !cpu => "bf16",
        Precision::Bf16 if simclr_model::conv::bf16_gemm_amx() => "bf16 products on AMX tiles",
        Precision::Bf16 => "bf16 products with AVX-512 BF16",
    }
}
