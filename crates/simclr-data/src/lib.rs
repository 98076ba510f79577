//! Image datasets for simclr-rs: the [`Image`] type, the [`Dataset`] abstraction, and readers
//! for IDX (MNIST / Fashion-MNIST), CIFAR-10 binary batches and image folders, opened from one
//! path with [`open`], which detects the format.
//!
//! Every reader checks its input and fails with a [`DataError`] that names the file and says
//! what is wrong (truncated file, wrong magic number, count mismatch, undecodable image…):
//! never a panic, never a silently wrong dataset.
//!
//! [`open`] decodes the whole dataset into an [`InMemoryDataset`]: MNIST and CIFAR-10 fit in
//! memory, and random access during training is then a cheap clone of reference-counted
//! pixels. [`open_any`] does the same for those formats but reads an image folder lazily
//! ([`FolderDataset`]: the file list in memory, each image decoded when a batch needs it),
//! optionally through a decoded cache ([`CacheOptions`]), so that a folder larger than memory
//! trains in constant memory.
//!
//! We do not use candle-datasets' MNIST and CIFAR-10 readers: they pull in ~350 crates, want
//! the exact unzipped file names and exactly 10,000 records per CIFAR file, and report no
//! file-level errors.

#![forbid(unsafe_code)]

use std::sync::Arc;

mod cache;
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

pub use crate::cache::CacheOptions;
pub use crate::dataset::{ChannelStats, Dataset, InMemoryDataset, Sample, Skipped, channel_stats};
pub use crate::error::DataError;
pub use crate::folder::FolderDataset;
pub use crate::folder::{decode_guarded, decode_limits};
pub use crate::image::{Image, ImageError};

/// 64-bit FNV-1a: a small, stable, dependency-free hash for cache keys and fingerprints (not
/// a checksum against tampering).
#[derive(Clone, Debug)]
pub struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Self::new()
    }
}

impl Fnv64 {
    /// The empty hash (the FNV offset basis).
    pub fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    /// Hashes `bytes` in.
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Hashes in a length-prefixed field, so that concatenations of fields cannot collide.
    pub fn field(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    /// The hash.
    pub fn finish(&self) -> u64 {
        self.0
    }
}

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

/// Detects the format of the dataset at `path`: a file that is (gzipped) IDX images or a
/// CIFAR-10 batch by name; a folder holding IDX images files, CIFAR-10 batches (directly or in
/// `cifar-10-batches-bin/`), or image files (directly, in class folders, or in `train/` and
/// `test/`), checked in that order.
pub fn detect(path: &Path) -> Result<Format, DataError> {
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_owned(),
        });
    }
    if path.is_file() {
        if idx::file_is_idx_images(path) {
            return Ok(Format::Idx);
        }
        if cifar::is_batch_file(path) {
            return Ok(Format::Cifar10);
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
            "IDX images (a file starting with magic 0x00000803, or *-images-idx3-ubyte[.gz] in a folder), CIFAR-10 batches (data_batch_*.bin, test_batch.bin), or image files ({}) directly inside, in class subfolders or in train/ and test/",
            folder::EXTENSIONS.join(", ")
        ),
    })
}

/// Whether `path` holds a test split apart from its training images: a folder of IDX files
/// or CIFAR-10 batches, or an image folder with both `train/` and `test/` subfolders. A single
/// file, or an image folder without split subfolders, is one set of images that [`open`]
/// returns for either split.
pub fn has_separate_splits(path: &Path, format: Option<Format>) -> Result<bool, DataError> {
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_owned(),
        });
    }
    if path.is_file() {
        return Ok(false);
    }
    Ok(match format.map_or_else(|| detect(path), Ok)? {
        Format::Idx | Format::Cifar10 => true,
        Format::Folder => path.join("train").is_dir() && path.join("test").is_dir(),
    })
}

/// Opens the dataset at `path` (format from `options`, or detected by [`detect`]) and decodes
/// it into memory.
///
/// - **IDX** (MNIST, Fashion-MNIST, EMNIST): a folder with `train-images-idx3-ubyte[.gz]` and
///   `train-labels-idx1-ubyte[.gz]` (test: `t10k-*` or `test-*`; `-`, `_` or `.` between the
///   parts), or one images file with its labels file beside it. Gzip is detected by magic
///   bytes. Without a labels file the set is unlabelled. IDX stores no class count:
///   `num_classes` is `max(10, largest label + 1)`.
/// - **CIFAR-10** binary: `data_batch_*.bin` (train) or `test_batch.bin` (test) in the folder
///   or its `cifar-10-batches-bin/`, or one batch file; any whole number of 3073-byte records;
///   class names from `batches.meta.txt`.
/// - **Folder**: `root/<class>/*.{png,jpg,jpeg,bmp,webp}` (labelled; class = index in the
///   sorted class-folder names, the same for `train/` and `test/`) or a flat folder
///   (unlabelled); `root/train/` or `root/test/` when both exist. Sorted order; all RGB if any
///   image is colour, else all grayscale; [`Dataset::item_path`] gives each file.
///
/// A single file is read as given, whatever the split.
pub fn open(path: &Path, options: &OpenOptions) -> Result<InMemoryDataset, DataError> {
    match format_at(path, options)? {
        Format::Idx => idx::open(path, options.split),
        Format::Cifar10 => cifar::open(path, options.split),
        Format::Folder => folder::open(path, options.split, options.skip_bad_images),
    }
}

/// The format of the dataset at `path`: `options.format`, or detected; an error if the path
/// does not exist.
fn format_at(path: &Path, options: &OpenOptions) -> Result<Format, DataError> {
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_owned(),
        });
    }
    match options.format {
        Some(f) => Ok(f),
        None => detect(path),
    }
}

/// Opens the image folder at `path` lazily ([`FolderDataset`]): only the file list and each
/// file's header are read now; with `cache`, images come from a decoded cache, built first
/// (every image decoded once, with progress reported) when the folder has none or changed.
pub fn open_folder(
    path: &Path,
    split: Split,
    skip_bad_images: bool,
    cache: Option<CacheOptions<'_>>,
) -> Result<FolderDataset, DataError> {
    if !path.exists() {
        return Err(DataError::NotFound {
            path: path.to_owned(),
        });
    }
    match cache {
        None => FolderDataset::open(path, split, skip_bad_images),
        Some(options) => cache::open(path, split, skip_bad_images, options),
    }
}

/// Opens the dataset at `path` as [`open`] does, except that an image folder is read lazily
/// ([`open_folder`], with `cache` when given); IDX and CIFAR-10 files are decoded into memory
/// (they have no per-image files to read lazily) and `cache` is not used for them.
pub fn open_any(
    path: &Path,
    options: &OpenOptions,
    cache: Option<CacheOptions<'_>>,
) -> Result<Arc<dyn Dataset>, DataError> {
    Ok(match format_at(path, options)? {
        Format::Folder => Arc::new(open_folder(
            path,
            options.split,
            options.skip_bad_images,
            cache,
        )?),
        _ => Arc::new(open(path, options)?),
    })
}
