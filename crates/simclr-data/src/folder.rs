//! Image folders: `root/<class>/*.{png,jpg,jpeg,bmp,webp}` (labelled, ImageNet-style, as
//! torchvision's `ImageFolder`) or a flat folder of images (unlabelled, for pretraining). When
//! `root` has both `train/` and `test/` subfolders, the split picks one.
//!
//! - Extensions are matched case-insensitively; the decoder then trusts the file's contents,
//!   not its extension. Hidden entries (names starting with `.`, e.g. macOS `._x.png`) are
//!   ignored, and so are files deeper than one class folder.
//! - Order is deterministic: sorted paths. Class `k` is the `k`-th class-folder name in sorted
//!   order, counting empty class folders, and with split folders the names of both splits, so
//!   `train/` and `test/` number their classes alike even when one lacks a class.
//! - Images are decoded in parallel at open. If any image is in colour the whole set becomes
//!   RGB (grayscale images get their value replicated), so every item has the same channel
//!   count. Sizes may differ: augmentation crops to a fixed size.
//! - An undecodable file is an error naming it, or, with `skip_bad_images`, is left out and
//!   listed in [`InMemoryDataset::skipped`] for the caller to report.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Once;

use rayon::prelude::*;

use crate::{DataError, Dataset, Image, InMemoryDataset, Sample, Skipped, Split};

/// Extensions read, compared case-insensitively.
pub(crate) const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "webp"];

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn is_image(path: &Path) -> bool {
    !is_hidden(path)
        && path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn is_subdir(path: &Path) -> bool {
    !is_hidden(path) && path.is_dir()
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        out.push(entry.map_err(|e| DataError::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

fn images_in(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| is_image(p))
        .collect())
}

fn has_images(dir: &Path) -> bool {
    images_in(dir).is_ok_and(|f| !f.is_empty())
}

/// The class-folder names of `dir` when it is laid out `dir/<class>/*.png` (some subfolder
/// holds images), including empty class folders; `None` otherwise.
fn class_names(dir: &Path) -> Result<Option<BTreeSet<String>>, DataError> {
    let subdirs: Vec<PathBuf> = sorted_entries(dir)?
        .into_iter()
        .filter(|p| is_subdir(p))
        .collect();
    if !subdirs.iter().any(|d| has_images(d)) {
        return Ok(None);
    }
    Ok(Some(
        subdirs
            .iter()
            .map(|d| d.file_name().unwrap_or_default().to_string_lossy().into())
            .collect(),
    ))
}

/// Whether a folder holds images directly, in class subfolders, or in `train/` and `test/`
/// split folders laid out either way.
pub(crate) fn dir_has_images(dir: &Path) -> bool {
    fn within(dir: &Path, depth: u32) -> bool {
        sorted_entries(dir).is_ok_and(|entries| {
            entries
                .iter()
                .any(|p| is_image(p) || (depth > 0 && is_subdir(p) && within(p, depth - 1)))
        })
    }
    within(dir, 2)
}

/// The largest image a folder may hold: 16384 pixels a side and 256 MB decoded. A few
/// kilobytes of PNG can declare a huge, uniform image; these bounds keep what one crafted
/// file makes the reader allocate to a few hundred megabytes (the decoder's buffer and one
/// converted copy), while a 48-megapixel photograph still loads.
pub fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(16384);
    limits.max_image_height = Some(16384);
    limits.max_alloc = Some(256 << 20);
    limits
}

pub(crate) fn decode(path: &Path) -> Result<Image, String> {
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    reader.limits(decode_limits());
    let img = decode_guarded(reader)?;
    Image::from_dynamic(&img).map_err(|e| e.to_string())
}

/// Decodes with `reader`, turning a panic inside the decoder into an error: a crafted file
/// can make a third-party decoder panic (fuzzing found an index out of bounds in zune-jpeg's
/// progressive decoder), and one bad file must not end the program.
pub fn decode_guarded<R: std::io::BufRead + std::io::Seek>(
    reader: image::ImageReader<R>,
) -> Result<image::DynamicImage, String> {
    match catch_decoder_panic(|| reader.decode()) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(format!("the image decoder crashed on this file ({what})"))
        }
    }
}

thread_local! {
    /// Whether this thread is inside [`catch_decoder_panic`].
    static IN_DECODER: Cell<bool> = const { Cell::new(false) };
}

/// Runs the decoder call `f`, catching a panic in it. The panic is the caller's to report
/// (as an error naming the file), so the panic hook stays quiet for it: the first call
/// wraps the process's hook in one that skips panics raised inside this function on the
/// calling thread and hands every other panic to the hook it replaced.
fn catch_decoder_panic<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static QUIET_HOOK: Once = Once::new();
    QUIET_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_DECODER.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = IN_DECODER.with(|d| d.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_DECODER.with(|d| d.set(outer));
    result
}

/// The files of an image folder in dataset order, with their labels and class names.
pub(crate) struct FolderIndex {
    /// The folder read (the split's folder with a split layout).
    pub(crate) root: PathBuf,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) labels: Option<Vec<u32>>,
    pub(crate) class_names: Option<Vec<String>>,
}

impl FolderIndex {
    /// The files and labels at `positions` (the items kept).
    fn select(&self, positions: &[usize]) -> (Vec<PathBuf>, Option<Vec<u32>>) {
        let files = positions.iter().map(|&i| self.files[i].clone()).collect();
        let labels = self
            .labels
            .as_ref()
            .map(|l| positions.iter().map(|&i| l[i]).collect());
        (files, labels)
    }
}

/// Lists the images of an image folder (see the module docs for the layout) without reading
/// them.
pub(crate) fn index(path: &Path, split: Split) -> Result<FolderIndex, DataError> {
    if !path.is_dir() {
        return Err(DataError::malformed(
            path,
            "an image folder dataset must be a folder (root/<class>/*.png or a flat folder of images), found a file; pass its folder",
        ));
    }
    let split_layout = path.join("train").is_dir() && path.join("test").is_dir();
    let root = if split_layout {
        path.join(split.to_string())
    } else {
        path.to_owned()
    };
    let flat = images_in(&root)?;
    let classes = class_names(&root)?;
    if let Some(classes) = &classes
        && !flat.is_empty()
    {
        return Err(DataError::malformed(
            &root,
            format!(
                "mixes {} images at the top level with {} class folders; use either root/<class>/*.png (labelled) or a flat folder of images (unlabelled)",
                flat.len(),
                classes.len()
            ),
        ));
    }
    let (files, labels, class_names) = match classes {
        None => (flat, None, None),
        Some(mut names) => {
            if split_layout {
                let other = match split {
                    Split::Train => Split::Test,
                    Split::Test => Split::Train,
                };
                if let Some(more) = class_names(&path.join(other.to_string()))? {
                    names.extend(more);
                }
            }
            let names: Vec<String> = names.into_iter().collect();
            let (mut files, mut labels) = (Vec::new(), Vec::new());
            for (k, name) in names.iter().enumerate() {
                let dir = root.join(name);
                if dir.is_dir() {
                    for f in images_in(&dir)? {
                        files.push(f);
                        labels.push(k as u32);
                    }
                }
            }
            (files, Some(labels), Some(names))
        }
    };
    if files.is_empty() {
        return Err(DataError::NoImages {
            path: root,
            extensions: EXTENSIONS.join(", "),
        });
    }
    Ok(FolderIndex {
        root,
        files,
        labels,
        class_names,
    })
}

/// What [`keep_good`] keeps.
pub(crate) struct Kept<T> {
    /// The kept items' positions in the index's files.
    pub(crate) positions: Vec<usize>,
    /// Their values.
    pub(crate) values: Vec<T>,
    /// The files left out.
    pub(crate) skipped: Vec<Skipped>,
}

/// Keeps the items of `index` for which `results` holds `Ok`, or fails on the first `Err`
/// unless `skip_bad_images`.
pub(crate) fn keep_good<T>(
    index: &FolderIndex,
    results: Vec<Result<T, String>>,
    skip_bad_images: bool,
) -> Result<Kept<T>, DataError> {
    let mut kept = Vec::with_capacity(results.len());
    let mut values = Vec::with_capacity(results.len());
    let mut skipped = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        let file = &index.files[i];
        match result {
            Ok(v) => {
                kept.push(i);
                values.push(v);
            }
            Err(reason) if skip_bad_images => skipped.push(Skipped {
                path: file.clone(),
                reason,
            }),
            Err(reason) => {
                return Err(DataError::BadImage {
                    path: file.clone(),
                    reason,
                });
            }
        }
    }
    if let Some(first) = skipped.first()
        && kept.is_empty()
    {
        return Err(DataError::malformed(
            &index.root,
            format!(
                "none of its {} image files could be decoded (first: `{}`: {}); nothing is left to read",
                skipped.len(),
                first.path.display(),
                first.reason
            ),
        ));
    }
    Ok(Kept {
        positions: kept,
        values,
        skipped,
    })
}

/// Opens an image folder (see the module docs for the layout), decoding every image.
pub(crate) fn open(
    path: &Path,
    split: Split,
    skip_bad_images: bool,
) -> Result<InMemoryDataset, DataError> {
    let index = index(path, split)?;
    let decoded: Vec<Result<Image, String>> = index.files.par_iter().map(|f| decode(f)).collect();
    let Kept {
        positions: kept,
        values: mut images,
        skipped,
    } = keep_good(&index, decoded, skip_bad_images)?;
    if images.iter().any(|i| i.channels() == 3) {
        images = images.iter().map(Image::to_rgb).collect();
    }
    let (paths, labels) = index.select(&kept);
    let num_classes = index.class_names.as_ref().map(Vec::len);
    let mut ds = InMemoryDataset::new(images, labels);
    ds.source = path.to_owned();
    ds.format = crate::Format::Folder;
    ds.num_classes = num_classes;
    ds.class_names = index.class_names;
    ds.paths = Some(paths);
    ds.skipped = skipped;
    Ok(ds)
}

/// The channel count of an image file from its header (1 for grayscale, 3 otherwise, as
/// [`Image::from_dynamic`] converts it), checking its size against [`decode_limits`]; the
/// pixels are not decoded.
pub(crate) fn probe(path: &Path) -> Result<u8, String> {
    use image::ImageDecoder;
    let mut reader = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    reader.limits(decode_limits());
    let header = catch_decoder_panic(|| {
        let decoder = reader.into_decoder().map_err(|e| e.to_string())?;
        let (w, h) = decoder.dimensions();
        if w == 0 || h == 0 {
            return Err(format!("the image is {w}x{h} pixels"));
        }
        Ok(if decoder.color_type().has_color() {
            3
        } else {
            1
        })
    });
    header.unwrap_or_else(|_| Err("the image decoder crashed on this file's header".into()))
}

/// An image folder read lazily: the file list and labels in memory, each image decoded when
/// it is asked for (by the loader's workers, a batch at a time), so memory does not grow with
/// the folder. Opening reads every file's header (size and colour type, not pixels) to fix
/// the channel count and to report unreadable files before training starts; with a decoded
/// cache ([`crate::open_folder`] with [`crate::CacheOptions`]) items come from the cache file
/// instead and opening reads no image at all.
///
/// A file that passes the header check but fails to decode later (its body is corrupt, or it
/// changed since opening) is a [`DataError::BadImage`] from [`Dataset::get`]; with
/// `skip_bad_images` the next decodable item takes its place and a warning names the file
/// once.
pub struct FolderDataset {
    pub(crate) source: PathBuf,
    pub(crate) files: Vec<PathBuf>,
    pub(crate) labels: Option<Vec<u32>>,
    pub(crate) class_names: Option<Vec<String>>,
    pub(crate) channels: u8,
    pub(crate) skipped: Vec<Skipped>,
    pub(crate) skip_bad_images: bool,
    pub(crate) store: Store,
    pub(crate) late_skips: std::sync::Mutex<BTreeSet<PathBuf>>,
}

/// Where a [`FolderDataset`]'s pixels come from.
pub(crate) enum Store {
    /// Decoded from each file when asked for.
    Files,
    /// Read from the decoded cache.
    Cache(crate::cache::CacheFile),
}

impl std::fmt::Debug for FolderDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderDataset")
            .field("source", &self.source)
            .field("len", &self.files.len())
            .field("channels", &self.channels)
            .field("cached", &matches!(self.store, Store::Cache(_)))
            .finish_non_exhaustive()
    }
}

impl FolderDataset {
    /// Opens an image folder lazily (see the type's docs); only headers are read.
    pub(crate) fn open(
        path: &Path,
        split: Split,
        skip_bad_images: bool,
    ) -> Result<Self, DataError> {
        let index = index(path, split)?;
        let probed: Vec<Result<u8, String>> = index.files.par_iter().map(|f| probe(f)).collect();
        let Kept {
            positions: kept,
            values: channels,
            skipped,
        } = keep_good(&index, probed, skip_bad_images)?;
        let channels = if channels.contains(&3) { 3 } else { 1 };
        Ok(Self::from_index(
            index,
            &kept,
            channels,
            skipped,
            skip_bad_images,
            Store::Files,
            path,
        ))
    }

    pub(crate) fn from_index(
        index: FolderIndex,
        kept: &[usize],
        channels: u8,
        skipped: Vec<Skipped>,
        skip_bad_images: bool,
        store: Store,
        source: &Path,
    ) -> Self {
        let (files, labels) = index.select(kept);
        Self {
            source: source.to_owned(),
            files,
            labels,
            class_names: index.class_names,
            channels,
            skipped,
            skip_bad_images,
            store,
            late_skips: std::sync::Mutex::new(BTreeSet::new()),
        }
    }

    /// The path the dataset was opened from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Whether items come from a decoded cache.
    pub fn is_cached(&self) -> bool {
        matches!(self.store, Store::Cache(_))
    }

    /// Item `index`'s image, read from its file or the cache.
    fn image(&self, index: usize) -> Result<Image, DataError> {
        let path = &self.files[index];
        let img = match &self.store {
            Store::Cache(cache) => return cache.image(index),
            Store::Files => decode(path).map_err(|reason| DataError::BadImage {
                path: path.clone(),
                reason,
            })?,
        };
        match (img.channels(), self.channels) {
            (a, b) if a == b => Ok(img),
            (1, 3) => Ok(img.to_rgb()),
            _ => Err(DataError::BadImage {
                path: path.clone(),
                reason: "the file is in colour now but was grayscale when the folder was opened; \
                         it changed during the run"
                    .into(),
            }),
        }
    }
}

impl Dataset for FolderDataset {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn get(&self, index: usize) -> Result<Sample, DataError> {
        let mut first = None;
        // Item `index`, or with skip_bad_images the next one that reads.
        for k in 0..self.files.len() {
            let j = (index + k) % self.files.len();
            match self.image(j) {
                Ok(image) => {
                    return Ok(Sample {
                        image,
                        label: self.label(j),
                    });
                }
                Err(e) if !self.skip_bad_images => return Err(e),
                Err(e) => {
                    self.note_late_skip(j, &e);
                    first.get_or_insert(e);
                }
            }
        }
        Err(first.expect("a dataset is never empty"))
    }

    fn label(&self, index: usize) -> Option<u32> {
        self.labels.as_ref().map(|l| l[index])
    }

    fn channels(&self) -> u8 {
        self.channels
    }

    fn num_classes(&self) -> Option<usize> {
        self.class_names.as_ref().map(Vec::len)
    }

    fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }

    fn item_path(&self, index: usize) -> Option<&Path> {
        Some(self.files[index].as_path())
    }

    fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
}

impl FolderDataset {
    /// Warns once per file that failed to decode after opening and was replaced.
    fn note_late_skip(&self, index: usize, err: &DataError) {
        let path = &self.files[index];
        let mut seen = self
            .late_skips
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.insert(path.clone()) {
            // The decoder's reason alone: the error's own hint to pass --skip-bad-images
            // would be advice already taken.
            let why = match err {
                DataError::BadImage { reason, .. } => reason.clone(),
                other => other.to_string(),
            };
            eprintln!(
                "warning: skipped `{}` during the run: {why}",
                path.display()
            );
        }
    }
}
