//! `simclr linear-probe` and `simclr knn`: what a frozen encoder's features are worth.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use clap::Args;
use simclr_data::{Dataset, Format, Split};
use simclr_eval::{Encoder, Features, ProbeConfig};
use simclr_model::io::{self, SafetensorsFile};

use crate::DataArgs;
use crate::commands::pretrain::device;
use crate::commands::weights::{check_channels, checkpoint_path};

/// What both evaluations take.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Training checkpoint, run directory, or exported encoder weights.
    #[arg(long, value_name = "CKPT|DIR")]
    pub checkpoint: PathBuf,
    /// Labelled dataset with a train and a test split. Defaults to the bundled Fashion-MNIST
    /// sample.
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,
    /// Dataset format, when detection guesses wrong.
    #[arg(long, value_name = "idx|cifar10|folder")]
    pub format: Option<Format>,
    /// Skip undecodable images in an image folder instead of failing.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Evaluate a randomly initialised encoder of the checkpoint's architecture instead (the
    /// baseline that pretraining must beat).
    #[arg(long)]
    pub random_init: bool,
    /// Seed of the random initialisation of `--random-init`.
    #[arg(
        long,
        value_name = "SEED",
        default_value_t = 0,
        requires = "random_init"
    )]
    pub init_seed: u64,
    /// Resize images to PX × PX instead of the encoder's training size. Encoders pretrained
    /// on random resized crops often give better features a little above that size
    /// (Touvron et al. 2019, FixRes): the crops showed objects larger than whole images do.
    /// `linear-probe` takes a list (`28,34,40`) and picks the size on the held-out slice.
    #[arg(
        long,
        value_name = "PX",
        value_delimiter = ',',
        value_parser = clap::value_parser!(u32).range(1..=4096)
    )]
    pub image_size: Vec<u32>,
    /// Keep the extracted features here and reuse them while the weights and data are
    /// unchanged.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Device: cpu, or cuda / cuda:N when built with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Options of `simclr linear-probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Encoder, data and output.
    #[command(flatten)]
    pub eval: EvalArgs,
    /// L-BFGS iterations per fit.
    #[arg(long, default_value_t = 300)]
    pub max_iter: usize,
    /// Share of the train split held out to pick the L2 strength.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
}

/// Options of `simclr knn`.
#[derive(Debug, Args)]
pub struct KnnArgs {
    /// Encoder, data and output.
    #[command(flatten)]
    pub eval: EvalArgs,
    /// Neighbours that vote.
    #[arg(long, default_value_t = simclr_eval::DEFAULT_K)]
    pub k: usize,
    /// Temperature of the vote weights exp(similarity / τ).
    #[arg(long, default_value_t = simclr_eval::DEFAULT_TEMPERATURE)]
    pub temperature: f64,
}

/// Features and labels of one split.
struct SplitFeatures {
    features: Vec<f32>,
    labels: Vec<u32>,
}

struct Extracted {
    encoder: Encoder,
    dim: usize,
    classes: usize,
    train: SplitFeatures,
    test: SplitFeatures,
    weights: PathBuf,
}

impl Extracted {
    fn train(&self) -> Features<'_> {
        Features {
            data: &self.train.features,
            dim: self.dim,
        }
    }

    fn test(&self) -> Features<'_> {
        Features {
            data: &self.test.features,
            dim: self.dim,
        }
    }

    /// The `--json` line: `fields` and what every evaluation reports about its inputs.
    fn json(&self, args: &EvalArgs, fields: serde_json::Value) -> serde_json::Value {
        let mut v = fields;
        v["checkpoint"] = self.weights.display().to_string().into();
        v["random_init"] = args.random_init.into();
        if args.random_init {
            v["init_seed"] = args.init_seed.into();
        }
        v["data"] = data_name(args).into();
        v["train_images"] = self.train.labels.len().into();
        v["test_images"] = self.test.labels.len().into();
        v["feature_dim"] = self.dim.into();
        v["image_size"] = self.encoder.image_size().into();
        v
    }
}

fn load_encoder(
    args: &EvalArgs,
    size: Option<u32>,
    dev: &Device,
) -> anyhow::Result<(Encoder, PathBuf)> {
    let path = checkpoint_path(&args.checkpoint);
    let mut encoder = Encoder::from_safetensors(&path, dev)?;
    if args.random_init {
        encoder = crate::commands::weights::reinitialised(&encoder, args.init_seed, dev)?;
    }
    if let Some(size) = size {
        encoder.set_image_size(size)?;
    }
    Ok((encoder, path))
}

/// The features of both splits, images resized to `size` (the training size if `None`).
fn extract(args: &EvalArgs, size: Option<u32>) -> anyhow::Result<Extracted> {
    let dev = device(&args.device)?;
    let (encoder, weights) = load_encoder(args, size, &dev)?;
    let open = |split| {
        DataArgs {
            data: args.data.clone(),
            format: args.format,
            split,
            skip_bad_images: args.skip_bad_images,
        }
        .open()
    };
    let mut splits = Vec::new();
    let mut classes = 0;
    for split in [Split::Train, Split::Test] {
        let ds = open(split)?;
        let Some(c) = ds.num_classes() else {
            bail!("the {split} split has no labels; the evaluations need a labelled dataset")
        };
        classes = classes.max(c);
        check_channels(&encoder, &*ds)?;
        let labels: Vec<u32> = (0..ds.len()).map(|i| ds.label(i).unwrap_or(0)).collect();
        let features = cached_features(args, &weights, &encoder, &*ds, split)?;
        splits.push(SplitFeatures { features, labels });
    }
    let test = splits.pop().expect("two splits");
    let train = splits.pop().expect("two splits");
    Ok(Extracted {
        dim: encoder.feature_dim(),
        encoder,
        classes,
        train,
        test,
        weights,
    })
}

/// FNV-1a, for naming cache files.
fn fnv(s: &str) -> u64 {
    let mut h = simclr_data::Fnv64::new();
    h.write(s.as_bytes());
    h.finish()
}

fn cached_features(
    args: &EvalArgs,
    weights: &Path,
    encoder: &Encoder,
    ds: &dyn Dataset,
    split: Split,
) -> anyhow::Result<Vec<f32>> {
    let compute = || -> anyhow::Result<Vec<f32>> {
        let bar = crate::progress_bar(ds.len() as u64, &format!("features ({split})"));
        let f = encoder.embed_dataset(ds, &mut |done| bar.set_position(done as u64))?;
        bar.finish_and_clear();
        Ok(f)
    };
    let Some(dir) = &args.cache_dir else {
        return compute();
    };
    let stat = std::fs::metadata(weights)?;
    let key = serde_json::json!({
        "weights": std::fs::canonicalize(weights)?.display().to_string(),
        "size": stat.len(),
        "modified": stat.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos().to_string()),
        "random_init": args.random_init.then_some(args.init_seed),
        "data": args.data.as_ref().map(|p| p.display().to_string()),
        "format": args.format.map(|f| f.to_string()),
        "split": split.to_string(),
        "images": ds.len(),
        "image_size": encoder.image_size(),
    })
    .to_string();
    let path = dir.join(format!("features-{split}-{:016x}.safetensors", fnv(&key)));
    if let Ok(f) = SafetensorsFile::load(&path, &Device::Cpu)
        && f.metadata.get("key") == Some(&key)
        && let Ok(t) = f.tensor("features")
    {
        return Ok(t.flatten_all()?.to_vec1::<f32>()?);
    }
    let features = compute()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;
    let t = Tensor::from_slice(&features, (ds.len(), encoder.feature_dim()), &Device::Cpu)?;
    io::save(
        &path,
        &[("features".into(), t)],
        &BTreeMap::from([("key".to_string(), key)]),
    )?;
    Ok(features)
}

fn describe(e: &Extracted, args: &EvalArgs) -> String {
    format!(
        "{}{} ({}; {}-d features of {} px images)",
        e.weights.display(),
        if args.random_init {
            ", randomly re-initialised"
        } else {
            ""
        },
        e.encoder.config().describe(),
        e.dim,
        e.encoder.image_size()
    )
}

fn data_name(args: &EvalArgs) -> String {
    args.data.as_ref().map_or_else(
        || simclr_data::sample::NAME.to_string(),
        |p| p.display().to_string(),
    )
}

/// Runs `simclr linear-probe`.
pub fn linear_probe(args: &ProbeArgs) -> anyhow::Result<()> {
    let config = ProbeConfig {
        max_iter: args.max_iter,
        val_fraction: args.val_fraction,
        ..ProbeConfig::default()
    };
    if !(0.0..1.0).contains(&config.val_fraction) || config.val_fraction == 0.0 {
        bail!(
            "--val-fraction must be in (0, 1), got {}",
            config.val_fraction
        );
    }
    let sizes: Vec<Option<u32>> = if args.eval.image_size.is_empty() {
        vec![None]
    } else {
        args.eval.image_size.iter().copied().map(Some).collect()
    };
    // Each size's held-out top-1 (at its own best L2), and the best size's features and fit:
    // the first of equals, so a list in increasing order prefers the smaller, cheaper size.
    let mut held_out = Vec::new();
    let mut best: Option<(Extracted, simclr_eval::ProbeReport, f64)> = None;
    for size in sizes {
        let e = extract(&args.eval, size)?;
        if !args.eval.json {
            eprintln!(
                "fitting the linear probe on {} px images (L-BFGS, {} L2 strengths)…",
                e.encoder.image_size(),
                config.l2_grid.len()
            );
        }
        let r = simclr_eval::linear_probe(
            e.train(),
            &e.train.labels,
            e.test(),
            &e.test.labels,
            e.classes,
            &config,
        )?;
        let val = r.val_top1.iter().map(|&(_, a)| a).fold(f64::MIN, f64::max);
        held_out.push((e.encoder.image_size(), val));
        if best.as_ref().is_none_or(|(_, _, v)| val > *v) {
            best = Some((e, r, val));
        }
    }
    let (e, r, _) = best.expect("at least one size");
    if args.eval.json {
        let fields = serde_json::json!({
            "top1": r.top1,
            "top5": r.top5,
            "l2": r.l2,
            "train_top1": r.train_top1,
            "val_top1": r.val_top1,
            "val_top1_by_image_size": held_out,
        });
        println!("{}", e.json(&args.eval, fields));
        return Ok(());
    }
    println!("linear probe");
    println!("  encoder      {}", describe(&e, &args.eval));
    println!(
        "  data         {}: {} train, {} test images, {} classes",
        data_name(&args.eval),
        e.train.labels.len(),
        e.test.labels.len(),
        e.classes
    );
    println!("  top-1        {:.2}%", 100.0 * r.top1);
    if let Some(t5) = r.top5 {
        println!("  top-5        {:.2}%", 100.0 * t5);
    }
    println!("  train top-1  {:.2}%", 100.0 * r.train_top1);
    let grid: Vec<String> = r
        .val_top1
        .iter()
        .map(|(l2, a)| format!("{l2:e}: {:.2}%", 100.0 * a))
        .collect();
    println!(
        "  L2           {:e} (held-out top-1 on {:.0}% of train: {})",
        r.l2,
        100.0 * config.val_fraction,
        grid.join(", ")
    );
    if held_out.len() > 1 {
        let sizes: Vec<String> = held_out
            .iter()
            .map(|(px, a)| format!("{px} px: {:.2}%", 100.0 * a))
            .collect();
        println!(
            "  image size   {} px (held-out top-1: {})",
            e.encoder.image_size(),
            sizes.join(", ")
        );
    }
    Ok(())
}

/// Runs `simclr knn`.
pub fn knn(args: &KnnArgs) -> anyhow::Result<()> {
    let size = match args.eval.image_size[..] {
        [] => None,
        [px] => Some(px),
        _ => bail!(
            "knn takes one --image-size (it has no held-out slice to choose one on); \
             `linear-probe --image-size` picks from a list"
        ),
    };
    let e = extract(&args.eval, size)?;
    let acc = simclr_eval::knn(
        e.train(),
        &e.train.labels,
        e.test(),
        &e.test.labels,
        e.classes,
        args.k,
        args.temperature,
    )?;
    if args.eval.json {
        let fields = serde_json::json!({
            "knn_top1": acc,
            "k": args.k,
            "temperature": args.temperature,
        });
        println!("{}", e.json(&args.eval, fields));
        return Ok(());
    }
    println!(
        "weighted kNN (k = {}, τ = {}, cosine)",
        args.k, args.temperature
    );
    println!("  encoder  {}", describe(&e, &args.eval));
    println!(
        "  data     {}: {} train, {} test images",
        data_name(&args.eval),
        e.train.labels.len(),
        e.test.labels.len()
    );
    println!("  top-1    {:.2}%", 100.0 * acc);
    Ok(())
}
