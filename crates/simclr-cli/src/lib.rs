//! The `simclr` command line: clap types and the commands they run. The binary only calls
//! [`run`].

mod commands;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use simclr_data::{Format, InMemoryDataset, OpenOptions, Split};

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
    /// Opens the dataset, printing a warning for each skipped image.
    pub fn open(&self) -> anyhow::Result<InMemoryDataset> {
        let ds = match &self.data {
            None => simclr_data::sample::fashion_mnist(self.split)
                .context("while reading the bundled Fashion-MNIST sample")?,
            Some(path) => simclr_data::open(
                path,
                &OpenOptions {
                    format: self.format,
                    split: self.split,
                    skip_bad_images: self.skip_bad_images,
                },
            )
            .with_context(|| format!("while opening the dataset at `{}`", path.display()))?,
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

/// Parses the command line and runs it.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Pretrain(args) => commands::pretrain::run(&args),
        Command::AugmentPreview(args) => commands::augment_preview::run(&args),
    }
}
