//! The [`Dataset`] abstraction and the in-memory dataset every reader produces.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::{DataError, Format, Image};

/// One item of a dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The image (cheap to clone: pixels are shared).
    pub image: Image,
    /// The class index, when the dataset is labelled.
    pub label: Option<u32>,
}

/// A random-access collection of images with optional labels (burn's `Dataset { get, len }`).
///
/// Implementations are `Send + Sync` so that data-loading workers can read them from several
/// threads at once.
pub trait Dataset: Send + Sync {
    /// Number of items.
    fn len(&self) -> usize;

    /// Whether the dataset holds no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Item `index`.
    ///
    /// # Errors
    /// Datasets that read their files lazily ([`crate::FolderDataset`]) return the file's
    /// error when it can no longer be read or decoded; in-memory datasets never fail.
    ///
    /// # Panics
    /// If `index >= self.len()`, as slice indexing does.
    fn get(&self, index: usize) -> Result<Sample, DataError>;

    /// The label of item `index`, without reading its image.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    fn label(&self, index: usize) -> Option<u32>;

    /// Channel count shared by every image: 1 (grayscale) or 3 (RGB).
    fn channels(&self) -> u8;

    /// Number of classes, when labelled.
    fn num_classes(&self) -> Option<usize>;

    /// Human-readable class names, when the format stores them.
    fn class_names(&self) -> Option<&[String]> {
        None
    }

    /// The file item `index` was read from, for formats with one file per item (image
    /// folders): the dataset path joined with the file's place under it. `None` for formats
    /// that pack many items in one file. `simclr embed` writes it beside each embedding.
    ///
    /// # Panics
    /// May panic if `index >= self.len()`.
    fn item_path(&self, _index: usize) -> Option<&Path> {
        None
    }

    /// Files left out as undecodable (with `skip_bad_images`), for the caller to report.
    fn skipped(&self) -> &[Skipped] {
        &[]
    }
}

/// A shared dataset is a dataset (what [`crate::open_any`] returns can go wherever a
/// `&dyn Dataset` is wanted).
impl<T: Dataset + ?Sized> Dataset for std::sync::Arc<T> {
    fn len(&self) -> usize {
        (**self).len()
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        (**self).get(index)
    }

    fn label(&self, index: usize) -> Option<u32> {
        (**self).label(index)
    }

    fn channels(&self) -> u8 {
        (**self).channels()
    }

    fn num_classes(&self) -> Option<usize> {
        (**self).num_classes()
    }

    fn class_names(&self) -> Option<&[String]> {
        (**self).class_names()
    }

    fn item_path(&self, index: usize) -> Option<&Path> {
        (**self).item_path(index)
    }

    fn skipped(&self) -> &[Skipped] {
        (**self).skipped()
    }
}

/// A file of an image folder that was skipped because it could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it was skipped.
    pub reason: String,
}

/// A fully decoded dataset held in memory; what [`crate::open`] returns for every format.
#[derive(Clone, Debug)]
pub struct InMemoryDataset {
    pub(crate) source: PathBuf,
    pub(crate) format: Format,
    pub(crate) images: Vec<Image>,
    pub(crate) labels: Option<Vec<u32>>,
    pub(crate) num_classes: Option<usize>,
    pub(crate) class_names: Option<Vec<String>>,
    pub(crate) paths: Option<Vec<PathBuf>>,
    pub(crate) skipped: Vec<Skipped>,
    pub(crate) channels: u8,
}

impl InMemoryDataset {
    /// Builds a dataset from decoded images and optional labels (`num_classes` defaults to
    /// `max(label) + 1`). Images must share one channel count.
    ///
    /// # Panics
    /// If `labels` and `images` differ in length, `images` is empty, or channel counts differ:
    /// these are programming errors, not bad input (readers check files before calling this).
    pub fn new(images: Vec<Image>, labels: Option<Vec<u32>>) -> Self {
        assert!(!images.is_empty(), "a dataset needs at least one image");
        if let Some(labels) = &labels {
            assert_eq!(labels.len(), images.len(), "one label per image");
        }
        let channels = images[0].channels();
        assert!(
            images.iter().all(|i| i.channels() == channels),
            "images must share one channel count"
        );
        let num_classes = labels
            .as_ref()
            .map(|l| l.iter().copied().max().map_or(0, |m| m as usize + 1));
        Self {
            source: PathBuf::new(),
            format: Format::Folder,
            images,
            labels,
            num_classes,
            class_names: None,
            paths: None,
            skipped: Vec::new(),
            channels,
        }
    }

    /// The path the dataset was opened from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The format it was read as.
    pub fn format(&self) -> Format {
        self.format
    }

    /// All labels, when labelled.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// All images.
    pub fn images(&self) -> &[Image] {
        &self.images
    }

    /// Keeps the first `n` items (all when `n >= len`), e.g. for quick runs on a subset. At
    /// least one item is kept: a dataset is never empty.
    pub fn truncate(&mut self, n: usize) {
        let n = n.max(1);
        self.images.truncate(n);
        if let Some(l) = &mut self.labels {
            l.truncate(n);
        }
        if let Some(paths) = &mut self.paths {
            paths.truncate(n);
        }
    }
}

impl Dataset for InMemoryDataset {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        Ok(Sample {
            image: self.images[index].clone(),
            label: self.label(index),
        })
    }

    fn label(&self, index: usize) -> Option<u32> {
        self.labels.as_ref().map(|l| l[index])
    }

    fn channels(&self) -> u8 {
        self.channels
    }

    fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }

    fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }

    fn item_path(&self, index: usize) -> Option<&Path> {
        self.paths.as_ref().map(|p| p[index].as_path())
    }

    fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
}

/// Per-channel mean and standard deviation of a dataset's pixel values scaled to `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelStats {
    /// Mean of each channel.
    pub mean: Vec<f64>,
    /// Population standard deviation of each channel (divided by the pixel count, as
    /// torchvision-style normalisation constants are).
    pub std: Vec<f64>,
}

/// Per-channel mean and standard deviation over every pixel of every image, the trainer's
/// normalisation defaults (e.g. Fashion-MNIST's ≈ 0.286 / 0.353).
///
/// Sums are accumulated exactly in integers (`u8` values and their squares) and divided in
/// `f64` once at the end, so the result does not depend on dataset size or summation order;
/// images are read in parallel.
///
/// # Errors
/// The first item that cannot be read (lazily read datasets only).
///
/// # Panics
/// If the dataset is empty (what [`crate::open`] returns never is).
pub fn channel_stats<D: Dataset + ?Sized>(dataset: &D) -> Result<ChannelStats, DataError> {
    assert!(!dataset.is_empty(), "channel_stats of an empty dataset");
    let c = usize::from(dataset.channels());
    // Per channel: (sum of values, sum of squares); plus the pixel count.
    let zero = || (vec![(0u128, 0u128); c], 0u128);
    let (sums, n) = (0..dataset.len())
        .into_par_iter()
        .map(|i| {
            let img = dataset.get(i)?.image;
            let mut sums = vec![(0u64, 0u64); c];
            for px in img.data().chunks_exact(c) {
                for (s, &v) in sums.iter_mut().zip(px) {
                    let v = u64::from(v);
                    s.0 += v;
                    s.1 += v * v;
                }
            }
            let n = u128::from(img.width()) * u128::from(img.height());
            Ok((sums, n))
        })
        .try_fold(zero, |(mut acc, n), item: Result<_, DataError>| {
            let (sums, m) = item?;
            for (a, s) in acc.iter_mut().zip(sums) {
                a.0 += u128::from(s.0);
                a.1 += u128::from(s.1);
            }
            Ok((acc, n + m))
        })
        .try_reduce(zero, |(mut a, n), (b, m)| {
            for (x, y) in a.iter_mut().zip(b) {
                x.0 += y.0;
                x.1 += y.1;
            }
            Ok((a, n + m))
        })?;
    let nf = n as f64;
    let mean = sums.iter().map(|&(s, _)| s as f64 / nf / 255.0).collect();
    // n² · variance = n·Σv² − (Σv)², exact in integers (Cauchy–Schwarz: never negative).
    let std = sums
        .iter()
        .map(|&(s, q)| ((n * q - s * s) as f64).sqrt() / nf / 255.0)
        .collect();
    Ok(ChannelStats { mean, std })
}
