//! `simclr export`, `simclr inspect` and `simclr embed`: taking the weights elsewhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use clap::Args;
use simclr_data::Dataset;
use simclr_eval::Encoder;
use simclr_model::io::{self, SafetensorsFile};

use crate::DataArgs;
use crate::commands::pretrain::device;

/// Options of `simclr export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Training checkpoint (or run directory, for its last.safetensors).
    #[arg(long, value_name = "CKPT|DIR")]
    pub checkpoint: PathBuf,
    /// Where to write the encoder weights.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Keep the projection head (under `projector.`).
    #[arg(long)]
    pub with_head: bool,
    /// Write a randomly initialised encoder of the checkpoint's architecture and
    /// preprocessing instead: the baseline pretraining must beat, for any command that takes
    /// weights.
    #[arg(long)]
    pub random_init: bool,
    /// Seed of `--random-init`.
    #[arg(
        long,
        value_name = "SEED",
        default_value_t = 0,
        requires = "random_init"
    )]
    pub init_seed: u64,
}

/// A randomly initialised encoder (seeded) of `encoder`'s architecture and preprocessing: the
/// baseline pretraining must beat.
pub fn reinitialised(encoder: &Encoder, seed: u64, dev: &Device) -> anyhow::Result<Encoder> {
    let model = simclr_model::SimClr::new(encoder.config(), dev, seed)?;
    let p = encoder.preprocess();
    Ok(Encoder::new(model, p.height, p.mean.clone(), p.std.clone()))
}

/// `DIR` → `DIR/last.safetensors`; a file stays itself.
pub fn checkpoint_path(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("last.safetensors")
    } else {
        p.to_owned()
    }
}

/// Runs `simclr export`.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let ckpt = checkpoint_path(&args.checkpoint);
    let mut encoder = Encoder::from_safetensors(&ckpt, &Device::Cpu)?;
    if args.random_init {
        encoder = reinitialised(&encoder, args.init_seed, &Device::Cpu)?;
    }
    encoder
        .save(&args.out, args.with_head)
        .with_context(|| format!("while writing `{}`", args.out.display()))?;
    let c = encoder.config();
    eprintln!(
        "wrote {} ({}, {}-d features, {} encoder parameters{})",
        args.out.display(),
        c.describe(),
        c.feature_dim(),
        encoder.model().num_params(true),
        if args.with_head {
            ", with the projection head"
        } else {
            ""
        }
    );
    if args.random_init {
        eprintln!(
            "  randomly initialised (seed {}): a baseline, not trained weights",
            args.init_seed
        );
    }
    Ok(())
}

/// Options of `simclr inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A safetensors file: a checkpoint, exported weights, or any other.
    pub file: PathBuf,
}

/// The text `simclr inspect` prints.
pub fn inspect_text(path: &Path) -> anyhow::Result<String> {
    let f = SafetensorsFile::load(path, &Device::Cpu)?;
    let mut s = String::new();
    writeln!(s, "{}", path.display())?;
    if f.metadata.is_empty() {
        writeln!(s, "\nno metadata")?;
    } else {
        writeln!(s, "\nmetadata")?;
        let width = f.metadata.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in &f.metadata {
            writeln!(s, "  {k:width$}  {v}")?;
        }
    }
    let mut names: Vec<&String> = f.tensors.keys().collect();
    names.sort();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(4).max(4);
    writeln!(s, "\n  {:width$}  {:5}  shape", "name", "dtype")?;
    let mut total = 0usize;
    for name in names {
        let t = &f.tensors[name];
        total += t.elem_count();
        writeln!(
            s,
            "  {name:width$}  {:5}  {:?}",
            format!("{:?}", t.dtype()).to_lowercase(),
            t.dims()
        )?;
    }
    writeln!(s, "\n{} tensors, {} values", f.tensors.len(), total)?;
    Ok(s)
}

/// Runs `simclr inspect`.
pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    print!("{}", inspect_text(&args.file)?);
    Ok(())
}

/// The `format` of the `.safetensors` files `simclr embed` writes (`simclr neighbors
/// --gallery` reads them back).
pub const EMBEDDINGS_FORMAT: &str = "simclr-rs/embeddings/1";

/// A hash of the encoder's weights (FNV-1a, 64 bits, as hex, over its tensors by name; the
/// head left out): which encoder made some embeddings, the same for a checkpoint and the
/// weights exported from it.
pub fn encoder_hash(encoder: &Encoder) -> anyhow::Result<String> {
    let mut vars = encoder.model().named_vars();
    vars.retain(|(name, _)| !name.starts_with("projector."));
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for (name, var) in vars {
        eat(name.as_bytes());
        let values = var
            .as_tensor()
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?;
        for v in values.to_vec1::<f32>()? {
            eat(&v.to_le_bytes());
        }
    }
    Ok(format!("{h:016x}"))
}

/// Options of `simclr embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Encoder weights (`simclr export`) or a training checkpoint.
    #[arg(long, value_name = "FILE")]
    pub weights: PathBuf,
    /// The images.
    #[command(flatten)]
    pub data: DataArgs,
    /// Output: `.safetensors` (tensors `embeddings` and `labels`), `.npy` (with a
    /// `.index.csv` beside it) or `.csv` (one row per image).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Resize images to PX × PX instead of the encoder's training size (as `linear-probe
    /// --image-size`).
    #[arg(long, value_name = "PX", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub image_size: Option<u32>,
    /// Threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Device: cpu, or cuda / cuda:N when built with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs `simclr embed`.
pub fn embed(args: &EmbedArgs) -> anyhow::Result<()> {
    let dev = device(&args.device)?;
    let ext = args
        .out
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let Some(ext @ ("safetensors" | "npy" | "csv")) = ext.as_deref() else {
        bail!(
            "--out `{}`: the extension picks the format; use .safetensors, .npy or .csv",
            args.out.display()
        )
    };
    let weights = checkpoint_path(&args.weights);
    let mut encoder = Encoder::from_safetensors(&weights, &dev)?;
    if let Some(size) = args.image_size {
        encoder.set_image_size(size)?;
    }
    let ds = args.data.open()?;
    check_channels(&encoder, &ds)?;
    let bar = crate::progress_bar(ds.len() as u64, "embedding");
    let h = encoder.embed_dataset(&ds, &mut |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let dim = encoder.feature_dim();
    let source = BTreeMap::from([
        ("format".to_string(), EMBEDDINGS_FORMAT.to_string()),
        ("weights".into(), weights.display().to_string()),
        ("encoder_hash".into(), encoder_hash(&encoder)?),
        (
            "data".into(),
            args.data
                .data
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string()),
        ),
        ("split".into(), args.data.split.to_string()),
        ("image_size".into(), encoder.image_size().to_string()),
    ]);
    write_embeddings(&args.out, ext, &h, dim, &ds, source)?;
    eprintln!(
        "wrote {} embeddings of {} values to {}",
        ds.len(),
        dim,
        args.out.display()
    );
    Ok(())
}

/// A clear error when the encoder and the images disagree in channels.
pub fn check_channels(encoder: &Encoder, ds: &dyn Dataset) -> anyhow::Result<()> {
    let (want, got) = (encoder.config().in_channels, usize::from(ds.channels()));
    if want != got {
        bail!("the encoder takes {want}-channel images, the dataset has {got}-channel images")
    }
    Ok(())
}

fn write_embeddings(
    out: &Path,
    ext: &str,
    h: &[f32],
    dim: usize,
    ds: &dyn Dataset,
    source: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let n = ds.len();
    let labels: Vec<Option<u32>> = (0..n).map(|i| ds.label(i)).collect();
    let paths: Vec<Option<String>> = (0..n)
        .map(|i| ds.item_path(i).map(|p| p.display().to_string()))
        .collect();
    let index_csv = || {
        let mut s = String::from("index,label,path\n");
        for i in 0..n {
            let label = labels[i].map_or(String::new(), |l| l.to_string());
            let path = paths[i].as_deref().map_or(String::new(), csv_field);
            let _ = writeln!(s, "{i},{label},{path}");
        }
        s
    };
    let bytes = match ext {
        "safetensors" => {
            let mut tensors = vec![(
                "embeddings".to_string(),
                Tensor::from_slice(h, (n, dim), &Device::Cpu)?,
            )];
            if labels.iter().all(Option::is_some) {
                let l: Vec<u32> = labels.iter().map(|l| l.unwrap_or_default()).collect();
                tensors.push(("labels".into(), Tensor::from_vec(l, n, &Device::Cpu)?));
            }
            let mut meta = source;
            if paths.iter().all(Option::is_some) {
                meta.insert("paths".to_string(), serde_json::to_string(&paths)?);
            }
            io::to_bytes(out, &tensors, &meta)?
        }
        "npy" => {
            let index = out.with_extension("index.csv");
            io::write_atomic(&index, index_csv().as_bytes())?;
            npy_bytes(h, n, dim)
        }
        _ => {
            let mut s = String::from("index,label,path");
            for j in 0..dim {
                let _ = write!(s, ",h{j}");
            }
            s.push('\n');
            let index = index_csv();
            for (row, line) in h.chunks_exact(dim).zip(index.lines().skip(1)) {
                s.push_str(line);
                for v in row {
                    let _ = write!(s, ",{v}");
                }
                s.push('\n');
            }
            s.into_bytes()
        }
    };
    io::write_atomic(out, &bytes)?;
    Ok(())
}

/// A CSV field, quoted when it must be.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A NumPy `.npy` (format 1.0) of a `rows × cols` little-endian f32 matrix.
pub fn npy_bytes(values: &[f32], rows: usize, cols: usize) -> Vec<u8> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64,
    // ending in a newline.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.extend(std::iter::repeat_n(' ', total - 10 - header.len() - 1));
    header.push('\n');
    let mut out = Vec::with_capacity(total + values.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    let _ = out.write_all(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}
