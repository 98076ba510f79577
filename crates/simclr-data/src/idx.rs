//! IDX files (MNIST, Fashion-MNIST), raw or gzipped.
//!
//! Format (LeCun's MNIST page): a 4-byte magic `0x00 0x00 TYPE NDIM`, NDIM big-endian `u32`
//! dimensions, then the data row-major. Images are `0x00000803` (`u8`, 3 dims: count, rows,
//! cols), labels `0x00000801` (`u8`, 1 dim: count). Gzip is detected by its magic bytes
//! (`1f 8b`), not by the file name.
//!
//! candle-datasets has an MNIST reader, but it wants the exact unzipped file names, pulls in
//! ~350 crates (hf-hub, tokio, parquet) and reports no file-level errors; these ~100 lines
//! read gzip directly and say which file is wrong and how.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{DataError, Image, InMemoryDataset, Split};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Magic of an IDX file of `u8` images with 3 dimensions.
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of an IDX file of `u8` labels with 1 dimension.
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Reads a whole file, gunzipping it when it starts with the gzip magic.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    gunzip_if_needed(path, raw)
}

fn gunzip_if_needed(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 2);
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_end(&mut out)
        .map_err(|source| DataError::Gzip {
            path: path.to_owned(),
            source,
        })?;
    Ok(out)
}

/// Whether `bytes` (already gunzipped) start like an IDX images file.
pub(crate) fn looks_like_idx_images(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == IMAGES_MAGIC
}

/// Parses an IDX payload with the expected magic; returns its dimensions and data.
fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    if bytes.len() < 4 {
        return Err(DataError::malformed(
            path,
            format!(
                "file is {} bytes long, too short for an IDX header",
                bytes.len()
            ),
        ));
    }
    let found = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if found != magic {
        return Err(DataError::malformed(
            path,
            format!(
                "magic number is {found:#010x}, expected {magic:#010x} ({})",
                if magic == IMAGES_MAGIC {
                    "IDX u8 images"
                } else {
                    "IDX u8 labels"
                }
            ),
        ));
    }
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(DataError::malformed(
            path,
            format!("header needs {header} bytes, file has {}", bytes.len()),
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let expected: usize = dims.iter().product();
    let data = &bytes[header..];
    if data.len() < expected {
        return Err(DataError::malformed(
            path,
            format!(
                "truncated: header declares dimensions {dims:?} ({expected} bytes of data) but only {} bytes follow",
                data.len()
            ),
        ));
    }
    if data.len() > expected {
        return Err(DataError::malformed(
            path,
            format!(
                "header declares dimensions {dims:?} ({expected} bytes of data) but {} bytes follow",
                data.len()
            ),
        ));
    }
    Ok((dims, data))
}

/// Decodes an IDX images payload into images.
pub(crate) fn decode_images(path: &Path, bytes: &[u8]) -> Result<Vec<Image>, DataError> {
    let (dims, data) = parse(path, bytes, IMAGES_MAGIC)?;
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(DataError::Image {
            path: path.to_owned(),
            source: crate::ImageError::ZeroSize {
                width: cols as u32,
                height: rows as u32,
            },
        });
    }
    let size = rows * cols;
    (0..count)
        .map(|i| {
            Image::new(cols as u32, rows as u32, 1, &data[i * size..(i + 1) * size]).map_err(
                |source| DataError::Image {
                    path: path.to_owned(),
                    source,
                },
            )
        })
        .collect()
}

/// Decodes an IDX labels payload.
pub(crate) fn decode_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u32>, DataError> {
    let (_, data) = parse(path, bytes, LABELS_MAGIC)?;
    Ok(data.iter().map(|&b| u32::from(b)).collect())
}

/// Builds a dataset from the bytes of an images file and, optionally, a labels file (each raw
/// or gzipped). The paths only name the sources in error messages.
pub fn from_bytes(
    images_path: &Path,
    images: Vec<u8>,
    labels: Option<(&Path, Vec<u8>)>,
) -> Result<InMemoryDataset, DataError> {
    let images_bytes = gunzip_if_needed(images_path, images)?;
    let imgs = decode_images(images_path, &images_bytes)?;
    if imgs.is_empty() {
        return Err(DataError::Empty {
            path: images_path.to_owned(),
        });
    }
    let labels = match labels {
        Some((labels_path, bytes)) => {
            let bytes = gunzip_if_needed(labels_path, bytes)?;
            let labels = decode_labels(labels_path, &bytes)?;
            if labels.len() != imgs.len() {
                return Err(DataError::CountMismatch {
                    images_path: images_path.to_owned(),
                    labels_path: labels_path.to_owned(),
                    images: imgs.len(),
                    labels: labels.len(),
                });
            }
            Some(labels)
        }
        None => None,
    };
    let mut ds = InMemoryDataset::new(imgs, labels);
    ds.source = images_path.to_owned();
    ds.format = crate::Format::Idx;
    Ok(ds)
}

/// File-name prefixes of a split (MNIST names the test split `t10k`).
fn prefixes(split: Split) -> &'static [&'static str] {
    match split {
        Split::Train => &["train"],
        Split::Test => &["t10k", "test"],
    }
}

/// Finds `{prefix}-{kind}-ubyte` or `{prefix}-{kind}.ubyte`-style names, gzipped or not.
fn find(dir: &Path, split: Split, kind: &str) -> Result<Option<PathBuf>, DataError> {
    let mut found: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().to_lowercase();
        let ok_prefix = prefixes(split)
            .iter()
            .any(|p| name.starts_with(&format!("{p}-")) || name.starts_with(&format!("{p}_")));
        if ok_prefix && name.contains(kind) && entry.path().is_file() {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found.into_iter().next())
}

/// Whether a folder contains IDX files (of any split).
pub(crate) fn dir_has_idx(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.file_name().to_string_lossy().contains("idx3-ubyte"))
    })
}

/// Opens the images (and labels, when present) of `split` from a folder, or from one images
/// file whose labels file sits beside it (`*-images-idx3-ubyte*` → `*-labels-idx1-ubyte*`).
pub fn open(path: &Path, split: Split) -> Result<InMemoryDataset, DataError> {
    let (images_path, labels_path) = if path.is_dir() {
        let images = find(path, split, "images-idx3")?.ok_or_else(|| DataError::MissingFile {
            path: path.to_owned(),
            what: format!(
                "IDX images file ({}-images-idx3-ubyte[.gz])",
                prefixes(split)[0]
            ),
            split,
        })?;
        (images, find(path, split, "labels-idx1")?)
    } else {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let labels = name
            .contains("images-idx3")
            .then(|| path.with_file_name(name.replace("images-idx3", "labels-idx1")))
            .filter(|p| p.is_file());
        (path.to_owned(), labels)
    };
    let images = std::fs::read(&images_path).map_err(|e| DataError::io(&images_path, e))?;
    let labels = match &labels_path {
        Some(p) => Some((
            p.as_path(),
            std::fs::read(p).map_err(|e| DataError::io(p, e))?,
        )),
        None => None,
    };
    let mut ds = from_bytes(&images_path, images, labels)?;
    ds.source = path.to_owned();
    if ds.labels.is_some() {
        // IDX stores no class count: MNIST-style sets have ten.
        ds.num_classes = ds.num_classes.map(|n| n.max(10));
    }
    Ok(ds)
}
