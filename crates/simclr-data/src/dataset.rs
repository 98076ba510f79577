//! The [`Dataset`] abstraction and the in-memory dataset every reader produces.

use std::path::{Path, PathBuf};

use crate::{Format, Image};

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
    /// # Panics
    /// If `index >= self.len()`, as slice indexing does.
    fn get(&self, index: usize) -> Sample;

    /// Channel count shared by every image: 1 (grayscale) or 3 (RGB).
    fn channels(&self) -> u8;

    /// Number of classes, when labelled.
    fn num_classes(&self) -> Option<usize>;

    /// Human-readable class names, when the format stores them.
    fn class_names(&self) -> Option<&[String]> {
        None
    }

    /// A name for item `index` (the file path relative to the dataset root for image folders).
    fn item_name(&self, _index: usize) -> Option<&str> {
        None
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
    pub(crate) names: Option<Vec<String>>,
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
            names: None,
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

    /// Files skipped as undecodable (only with `skip_bad_images`); the caller warns about them.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Keeps the first `n` items (all when `n >= len`), e.g. for quick runs on a subset.
    pub fn truncate(&mut self, n: usize) {
        let n = n.max(1);
        self.images.truncate(n);
        if let Some(l) = &mut self.labels {
            l.truncate(n);
        }
        if let Some(names) = &mut self.names {
            names.truncate(n);
        }
    }
}

impl Dataset for InMemoryDataset {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn get(&self, index: usize) -> Sample {
        Sample {
            image: self.images[index].clone(),
            label: self.labels.as_ref().map(|l| l[index]),
        }
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

    fn item_name(&self, index: usize) -> Option<&str> {
        self.names.as_ref().map(|n| n[index].as_str())
    }
}

/// Per-channel mean and standard deviation of pixel values scaled to `[0, 1]`, over the whole
/// dataset (f64 accumulation). The trainer uses them as normalisation defaults.
pub fn channel_stats(dataset: &dyn Dataset) -> (Vec<f64>, Vec<f64>) {
    let c = dataset.channels() as usize;
    let mut sum = vec![0f64; c];
    let mut sq = vec![0f64; c];
    let mut count = 0u64;
    for i in 0..dataset.len() {
        let img = dataset.get(i).image;
        for px in img.data().chunks_exact(c) {
            for (k, &v) in px.iter().enumerate() {
                let v = f64::from(v) / 255.0;
                sum[k] += v;
                sq[k] += v * v;
            }
        }
        count += u64::from(img.width()) * u64::from(img.height());
    }
    let n = count.max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let std = sq
        .iter()
        .zip(&mean)
        .map(|(q, m)| (q / n - m * m).max(0.0).sqrt())
        .collect();
    (mean, std)
}
