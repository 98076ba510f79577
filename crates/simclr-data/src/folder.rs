//! Image folders: `root/<class>/*.{png,jpg,jpeg,bmp,webp}` (labelled, ImageNet-style) or a flat
//! folder of images (unlabelled, for pretraining). When `root` has `train/` and `test/`
//! subfolders, the split picks one.
//!
//! Order is deterministic (sorted paths); classes are numbered in sorted folder-name order.
//! Images are decoded in parallel at open. If any image is in colour the whole set becomes RGB
//! (grayscale images get their channel replicated), so every item has the same channel count.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::{DataError, Image, InMemoryDataset, Skipped, Split};

/// Extensions read, compared case-insensitively.
pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "webp"];

fn is_image(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        out.push(entry.map_err(|e| DataError::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

/// Whether a folder holds images directly, in class subfolders, or in `train/` and `test/`
/// split folders laid out either way.
pub(crate) fn dir_has_images(dir: &Path) -> bool {
    fn within(dir: &Path, depth: u32) -> bool {
        sorted_entries(dir).is_ok_and(|entries| {
            entries
                .iter()
                .any(|p| is_image(p) || (depth > 0 && p.is_dir() && within(p, depth - 1)))
        })
    }
    within(dir, 2)
}

fn decode(path: &Path) -> Result<Image, String> {
    let img = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?;
    Image::from_dynamic(&img).map_err(|e| e.to_string())
}

fn to_rgb(img: Image) -> Image {
    if img.channels() == 3 {
        return img;
    }
    let rgb: Vec<u8> = img.data().iter().flat_map(|&v| [v, v, v]).collect();
    Image::new(img.width(), img.height(), 3, rgb).expect("same size, three channels")
}

/// Opens an image folder.
pub fn open(
    path: &Path,
    split: Split,
    skip_bad_images: bool,
) -> Result<InMemoryDataset, DataError> {
    let split_dir = path.join(split.to_string());
    let root = if path.join("train").is_dir() && path.join("test").is_dir() {
        split_dir
    } else {
        path.to_owned()
    };
    let entries = sorted_entries(&root)?;
    let class_dirs: Vec<PathBuf> = entries
        .iter()
        .filter(|p| p.is_dir() && sorted_entries(p).is_ok_and(|e| e.iter().any(|q| is_image(q))))
        .cloned()
        .collect();
    let flat: Vec<PathBuf> = entries.iter().filter(|p| is_image(p)).cloned().collect();
    if !class_dirs.is_empty() && !flat.is_empty() {
        return Err(DataError::malformed(
            &root,
            format!(
                "mixes {} images at the top level with {} class folders; use either root/<class>/*.png (labelled) or a flat folder of images (unlabelled)",
                flat.len(),
                class_dirs.len()
            ),
        ));
    }
    let (files, labels, class_names) = if class_dirs.is_empty() {
        (flat, None, None)
    } else {
        let mut files = Vec::new();
        let mut labels = Vec::new();
        for (k, dir) in class_dirs.iter().enumerate() {
            for f in sorted_entries(dir)?.into_iter().filter(|p| is_image(p)) {
                files.push(f);
                labels.push(k as u32);
            }
        }
        let names = class_dirs
            .iter()
            .map(|d| {
                d.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect::<Vec<_>>();
        (files, Some(labels), Some(names))
    };
    if files.is_empty() {
        return Err(DataError::UnknownFormat {
            path: root,
            looked_for: format!(
                "image files ({}) directly inside or in class subfolders",
                EXTENSIONS.join(", ")
            ),
        });
    }

    let decoded: Vec<Result<Image, String>> = files.par_iter().map(|f| decode(f)).collect();
    let mut images = Vec::with_capacity(files.len());
    let mut kept_labels = Vec::with_capacity(files.len());
    let mut names = Vec::with_capacity(files.len());
    let mut skipped = Vec::new();
    for (i, (file, result)) in files.iter().zip(decoded).enumerate() {
        match result {
            Ok(img) => {
                images.push(img);
                if let Some(l) = &labels {
                    kept_labels.push(l[i]);
                }
                let rel = file.strip_prefix(&root).unwrap_or(file);
                names.push(rel.to_string_lossy().into_owned());
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
    if images.is_empty() {
        return Err(DataError::Empty { path: root });
    }
    if images.iter().any(|i| i.channels() == 3) {
        images = images.into_iter().map(to_rgb).collect();
    }
    let num_classes = class_names.as_ref().map(Vec::len);
    let mut ds = InMemoryDataset::new(images, labels.map(|_| kept_labels));
    ds.source = path.to_owned();
    ds.format = crate::Format::Folder;
    ds.num_classes = num_classes;
    ds.class_names = class_names;
    ds.names = Some(names);
    ds.skipped = skipped;
    Ok(ds)
}
