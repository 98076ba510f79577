//! The `simclr` command line: clap types and the commands they run. The binary parses
//! [`Cli`], prepares the process from it (threads, allocator) and calls [`run`].

mod commands;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

impl Cli {
    /// The `--threads` of the command, where it has one: the binary sets the thread count
    /// from it before any thread starts.
    pub fn threads(&self) -> Option<usize> {
        match &self.command {
            Command::Pretrain(a) => a.threads,
            Command::LinearProbe(a) => a.eval.threads,
            Command::Knn(a) => a.eval.threads,
            Command::Embed(a) => a.threads,
            Command::Neighbors(a) => a.threads,
            _ => None,
        }
    }
}
use simclr_data::{CacheOptions, Dataset, Format, Image, OpenOptions, Split};

/// The error [`run`] returns when `simclr pretrain` stopped at Ctrl-C, after saving its
/// checkpoint and printing how to resume: the binary exits with status 130 (128 + SIGINT, as
/// a shell reports an interrupted command) and prints nothing more, so that a script stops
/// there instead of going on with a half-trained encoder.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// SimCLR self-supervised pretraining of image encoders, on the CPU, with no Python.
#[derive(Debug, Parser)]
#[command(name = "simclr", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pretrain an encoder with SimCLR on a dataset (no labels needed). With no options, a
    /// small model on the bundled Fashion-MNIST sample.
    Pretrain(Box<commands::pretrain::PretrainArgs>),
    /// Linear-evaluation protocol: fit a logistic regression on frozen features of the train
    /// split, report top-1/top-5 accuracy on the test split.
    LinearProbe(commands::evaluate::ProbeArgs),
    /// Weighted k-nearest-neighbour accuracy of frozen features (the cheap monitor).
    Knn(commands::evaluate::KnnArgs),
    /// Write encoder-only weights under torchvision's names, with metadata, from a checkpoint.
    Export(commands::weights::ExportArgs),
    /// Representations of every image of a dataset or folder, in order, to .safetensors,
    /// .npy or .csv.
    Embed(commands::weights::EmbedArgs),
    /// Image retrieval: every query's nearest gallery images by cosine similarity of their
    /// representations, as JSONL/CSV, a PNG grid of the hits, and recall@k / mAP@R.
    Neighbors(Box<commands::neighbors::NeighborsArgs>),
    /// Draw the loss and accuracy curves of a run (from its metrics.jsonl) as a PNG.
    Plot(commands::plot::PlotArgs),
    /// Metadata and tensor table of a safetensors file (checkpoint or exported weights).
    Inspect(commands::weights::InspectArgs),
    /// Write a PNG grid of images beside their two augmented views, to see what the
    /// augmentation pipeline does before training for hours.
    AugmentPreview(commands::augment_preview::AugmentPreviewArgs),
}

/// Where the data comes from; shared by every command that reads a dataset.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Dataset path: a folder (or images file) of IDX files, a folder of CIFAR-10 `.bin`
    /// batches, or an image folder (`root/<class>/*.png` or flat). Defaults to the bundled
    /// Fashion-MNIST sample (4,000 train / 1,000 test images).
    #[arg(long, value_name = "PATH")]
    pub data: Option<PathBuf>,

    /// Dataset format, when detection guesses wrong.
    #[arg(long, value_name = "idx|cifar10|folder")]
    pub format: Option<Format>,

    /// Which split to read, where the format has one.
    #[arg(long, default_value = "train", value_name = "train|test")]
    pub split: Split,

    /// Skip undecodable images in an image folder (with a warning) instead of failing.
    #[arg(long)]
    pub skip_bad_images: bool,
}

impl DataArgs {
    /// Opens the dataset (an image folder lazily: see [`simclr_data::FolderDataset`]),
    /// printing a warning for each skipped image.
    pub fn open(&self) -> anyhow::Result<Arc<dyn Dataset>> {
        self.open_cached(None, 0)
    }

    /// [`Self::open`], with an image folder read through a decoded cache in `cache` of its
    /// images resized to `image_size` (built first, with a progress bar, when the folder has
    /// none or changed).
    pub fn open_cached(
        &self,
        cache: Option<&Path>,
        image_size: u32,
    ) -> anyhow::Result<Arc<dyn Dataset>> {
        let ds: Arc<dyn Dataset> = match &self.data {
            None if cache.is_some() => {
                eprintln!(
                    "note: --cache applies to image folders; the bundled sample is in memory"
                );
                Arc::new(
                    simclr_data::sample::fashion_mnist(self.split)
                        .context("while reading the bundled Fashion-MNIST sample")?,
                )
            }
            None => Arc::new(
                simclr_data::sample::fashion_mnist(self.split)
                    .context("while reading the bundled Fashion-MNIST sample")?,
            ),
            Some(path) => {
                let options = OpenOptions {
                    format: self.format,
                    split: self.split,
                    skip_bad_images: self.skip_bad_images,
                };
                let resizer = simclr_augment::AugmentConfig::simclr(image_size.max(1), 1);
                let resize = |img: &Image| resizer.eval_image(img);
                let mut bar = None;
                let mut progress = |done: usize, total: usize| {
                    bar.get_or_insert_with(|| {
                        if let Some(dir) = cache {
                            eprintln!(
                                "building the decoded cache of {total} images in `{}` (once; \
                                 reused while the folder is unchanged)",
                                dir.display()
                            );
                        }
                        progress_bar(total as u64, "decoding images into the cache")
                    })
                    .set_position(done as u64);
                };
                let cache = cache.map(|dir| CacheOptions {
                    dir,
                    height: image_size,
                    width: image_size,
                    resize: &resize,
                    resize_name: "simclr-augment eval_image (whole image, bilinear) 1",
                    progress: &mut progress,
                });
                if cache.is_some()
                    && self
                        .format
                        .map_or_else(|| simclr_data::detect(path), Ok)
                        .ok()
                        != Some(Format::Folder)
                {
                    eprintln!(
                        "note: --cache applies to image folders; `{}` is read into memory as it is",
                        path.display()
                    );
                }
                let ds = simclr_data::open_any(path, &options, cache).with_context(|| {
                    format!("while opening the dataset at `{}`", path.display())
                })?;
                if let Some(b) = bar {
                    b.finish_and_clear();
                }
                ds
            }
        };
        for s in ds.skipped() {
            eprintln!("warning: skipped `{}`: {}", s.path.display(), s.reason);
        }
        Ok(ds)
    }

    /// A short description of the source for messages.
    pub fn describe(&self) -> String {
        match &self.data {
            None => simclr_data::sample::NAME.to_string(),
            Some(p) => format!("`{}`", p.display()),
        }
    }
}

/// Encodes `img` as `format` in memory, then writes it atomically (temporary file, fsync,
/// rename): an interrupted write leaves the previous file, or none, never a truncated image.
pub(crate) fn write_image_atomic(
    path: &Path,
    img: &image::RgbImage,
    format: image::ImageFormat,
) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .with_context(|| format!("while encoding `{}`", path.display()))?;
    simclr_model::io::write_atomic(path, &bytes)?;
    Ok(())
}

/// A progress bar on an interactive stderr, hidden otherwise.
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} ({elapsed} < {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Parses the command line and runs it.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Pretrain(args) => commands::pretrain::run(&args),
        Command::LinearProbe(args) => commands::evaluate::linear_probe(&args),
        Command::Knn(args) => commands::evaluate::knn(&args),
        Command::Export(args) => commands::weights::export(&args),
        Command::Embed(args) => commands::weights::embed(&args),
        Command::Inspect(args) => commands::weights::inspect(&args),
        Command::Neighbors(args) => commands::neighbors::run(&args),
        Command::Plot(args) => commands::plot::run(&args),
        Command::AugmentPreview(args) => commands::augment_preview::run(&args),
    }
}

/// `err` and its causes as one line, "outer: cause: root cause", as `{err:#}` prints them but
/// without a cause that its parent's message already ends with (some library errors, the
/// safetensors crate's among them, print their source themselves).
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_chain_drops_a_cause_its_parent_already_printed() {
        let root = anyhow::anyhow!("expected a string");
        let err = root
            .context("invalid JSON: expected a string")
            .context("`f` is corrupt");
        assert_eq!(
            super::error_chain(&err),
            "`f` is corrupt: invalid JSON: expected a string"
        );
        let plain = anyhow::anyhow!("b").context("a");
        assert_eq!(super::error_chain(&plain), format!("{plain:#}"));
    }
}
