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

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::{DataError, Image, InMemoryDataset, Skipped, Split};

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

fn decode(path: &Path) -> Result<Image, String> {
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
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.decode())) {
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

/// Opens an image folder (see the module docs for the layout).
pub(crate) fn open(
    path: &Path,
    split: Split,
    skip_bad_images: bool,
) -> Result<InMemoryDataset, DataError> {
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

    let decoded: Vec<Result<Image, String>> = files.par_iter().map(|f| decode(f)).collect();
    let mut images = Vec::with_capacity(files.len());
    let mut kept_labels = Vec::with_capacity(files.len());
    let mut paths = Vec::with_capacity(files.len());
    let mut skipped = Vec::new();
    for (i, (file, result)) in files.into_iter().zip(decoded).enumerate() {
        match result {
            Ok(img) => {
                images.push(img);
                if let Some(l) = &labels {
                    kept_labels.push(l[i]);
                }
                paths.push(file);
            }
            Err(reason) if skip_bad_images => skipped.push(Skipped { path: file, reason }),
            Err(reason) => return Err(DataError::BadImage { path: file, reason }),
        }
    }
    if let Some(first) = skipped.first()
        && images.is_empty()
    {
        return Err(DataError::malformed(
            root,
            format!(
                "none of its {} image files could be decoded (first: `{}`: {}); nothing is left to read",
                skipped.len(),
                first.path.display(),
                first.reason
            ),
        ));
    }
    if images.iter().any(|i| i.channels() == 3) {
        images = images.iter().map(Image::to_rgb).collect();
    }
    let num_classes = class_names.as_ref().map(Vec::len);
    let mut ds = InMemoryDataset::new(images, labels.map(|_| kept_labels));
    ds.source = path.to_owned();
    ds.format = crate::Format::Folder;
    ds.num_classes = num_classes;
    ds.class_names = class_names;
    ds.paths = Some(paths);
    ds.skipped = skipped;
    Ok(ds)
}
