//! Image datasets for simclr-rs: the [`Image`] type, the [`Dataset`] abstraction, and readers
//! for IDX (MNIST / Fashion-MNIST), CIFAR-10 binary batches and image folders, opened from one
//! path with [`open`], which detects the format.
//!
//! Every reader checks its input and fails with a [`DataError`] that names the file and says
//! what is wrong (truncated file, wrong magic number, count mismatch, undecodable image…):
//! never a panic, never a silently wrong dataset.

mod cifar;
mod dataset;
mod error;
mod folder;
mod idx;
mod image;
pub mod sample;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

pub use crate::dataset::{Dataset, InMemoryDataset, Sample, Skipped, channel_stats};
pub use crate::error::DataError;
pub use crate::image::{Image, ImageError};

/// On-disk dataset formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// IDX files, raw or gzipped (MNIST, Fashion-MNIST).
    Idx,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// A folder of image files, optionally in class subfolders.
    Folder,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Idx => "idx",
            Self::Cifar10 => "cifar10",
            Self::Folder => "folder",
        })
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "idx" | "mnist" => Ok(Self::Idx),
            "cifar10" | "cifar-10" | "cifar" => Ok(Self::Cifar10),
            "folder" | "images" => Ok(Self::Folder),
            _ => Err(format!(
                "unknown format `{s}`; expected idx, cifar10 or folder"
            )),
        }
    }
}

/// Which part of a dataset to read, where the format has splits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training split.
    #[default]
    Train,
    /// The test split.
    Test,
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Train => "train",
            Self::Test => "test",
        })
    }
}

impl FromStr for Split {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Self::Train),
            "test" => Ok(Self::Test),
            _ => Err(format!("unknown split `{s}`; expected train or test")),
        }
    }
}

/// How [`open`] reads a dataset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// The format; detected from the path when `None`.
    pub format: Option<Format>,
    /// The split, where the format has one.
    pub split: Split,
    /// Image folders: skip undecodable files (listed in [`InMemoryDataset::skipped`]) instead
    /// of failing.
    pub skip_bad_images: bool,
}

/// Detects the format of the dataset at `path`.
pub fn detect(path: &Path) -> Result<Format, DataError> {
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_owned(),
        });
    }
    if path.is_file() {
        let bytes = idx::read_maybe_gz(path)?;
        if idx::looks_like_idx_images(&bytes) {
            return Ok(Format::Idx);
        }
    } else if idx::dir_has_idx(path) {
        return Ok(Format::Idx);
    } else if cifar::dir_has_cifar(path) {
        return Ok(Format::Cifar10);
    } else if folder::dir_has_images(path) {
        return Ok(Format::Folder);
    }
    Err(DataError::UnknownFormat {
        path: path.to_owned(),
        looked_for: format!(
            "IDX files (*-images-idx3-ubyte[.gz]), CIFAR-10 batches (data_batch_*.bin, test_batch.bin), or image files ({}) directly inside or in class subfolders",
            folder::EXTENSIONS.join(", ")
        ),
    })
}

/// Opens the dataset at `path`: a folder or file of IDX files, a folder of CIFAR-10 batches,
/// or an image folder.
pub fn open(path: &Path, options: &OpenOptions) -> Result<InMemoryDataset, DataError> {
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_owned(),
        });
    }
    let format = match options.format {
        Some(f) => f,
        None => detect(path)?,
    };
    match format {
        Format::Idx => idx::open(path, options.split),
        Format::Cifar10 => cifar::open(path, options.split),
        Format::Folder => folder::open(path, options.split, options.skip_bad_images),
    }
}
