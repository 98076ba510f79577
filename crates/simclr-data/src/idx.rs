//! IDX files (MNIST, Fashion-MNIST, EMNIST), raw or gzipped.
//!
//! Format (LeCun's MNIST page, <http://yann.lecun.com/exdb/mnist/>): a 4-byte magic
//! `0x00 0x00 TYPE NDIM`, NDIM big-endian `u32` dimensions, then the data row-major. Images are
//! `0x00000803` (`u8`, 3 dims: count, rows, cols), labels `0x00000801` (`u8`, 1 dim: count).
//! Gzip is detected by its magic bytes (`1f 8b`), not by the file name, so a file that was
//! gunzipped but kept its `.gz` name (or the reverse) still reads.
//!
//! Files are found by name: the split is a `train` / `t10k` / `test` word in the name and the
//! kind is `images-idx3-ubyte` or `labels-idx1-ubyte`, with `-`, `_` or `.` between the parts
//! (MNIST's `train-images-idx3-ubyte.gz`, Kaggle's `train-images.idx3-ubyte`, EMNIST's
//! `emnist-letters-train-images-idx3-ubyte.gz` all match).
//!
//! IDX stores no class count, so a labelled set reports `max(10, largest label + 1)` classes:
//! ten for MNIST-style sets even when a small subset lacks a class, more for EMNIST.
//!
//! candle-datasets has an MNIST reader, but we do not use it: it pulls in ~350 crates
//! (hf-hub, tokio, parquet…), wants the exact unzipped file names, and reports no file-level
//! errors. This reader reads gzip directly and says which file is wrong and how.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::{DataError, Image, InMemoryDataset, Split};

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Magic of an IDX file of `u8` images with 3 dimensions.
pub(crate) const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic of an IDX file of `u8` labels with 1 dimension.
pub(crate) const LABELS_MAGIC: u32 = 0x0000_0801;

/// Gunzips `raw` when it starts with the gzip magic (all members of a multi-member stream).
fn gunzip_if_needed(path: &Path, raw: Vec<u8>) -> Result<Vec<u8>, DataError> {
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    let gzip_err = |source| DataError::Gzip {
        path: path.to_owned(),
        source,
    };
    // The header first: it says how many bytes a well-formed file holds, and only that many
    // (and the count of any beyond) are decompressed into memory, so that a small crafted
    // file cannot expand into all of memory. A malformed header is kept as read: the parser
    // reports it.
    let mut dec = flate2::read::MultiGzDecoder::new(raw.as_slice());
    let mut out = Vec::new();
    (&mut dec).take(4).read_to_end(&mut out).map_err(gzip_err)?;
    if out.len() < 4 {
        return Ok(out);
    }
    let ndim = u64::from(out[3]);
    (&mut dec)
        .take(4 * ndim)
        .read_to_end(&mut out)
        .map_err(gzip_err)?;
    let header = 4 + 4 * ndim as usize;
    if out.len() < header {
        return Ok(out);
    }
    let dims: Vec<u64> = out[4..header]
        .chunks_exact(4)
        .map(|c| u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
        .collect();
    let expected = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let Some(expected) = expected.filter(|&n| usize::try_from(n).is_ok()) else {
        return Ok(out);
    };
    (&mut dec)
        .take(expected)
        .read_to_end(&mut out)
        .map_err(gzip_err)?;
    // Bytes past the declared data make the file malformed: count them without keeping them.
    let extra = std::io::copy(&mut dec, &mut std::io::sink()).map_err(gzip_err)?;
    if extra > 0 {
        return Err(DataError::TrailingData {
            path: path.to_owned(),
            declared: describe(&dims),
            expected,
            found: expected.saturating_add(extra),
        });
    }
    Ok(out)
}

/// Whether the file starts (after gunzipping, if gzipped) with the IDX images magic. Reads
/// only the first few bytes, so detection does not decompress the whole file twice.
pub(crate) fn file_is_idx_images(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut reader = BufReader::new(file);
    let gz = reader.fill_buf().is_ok_and(|b| b.starts_with(&GZIP_MAGIC));
    let mut magic = [0u8; 4];
    let read = if gz {
        flate2::read::MultiGzDecoder::new(reader).read_exact(&mut magic)
    } else {
        reader.read_exact(&mut magic)
    };
    read.is_ok() && u32::from_be_bytes(magic) == IMAGES_MAGIC
}

/// "60000 images of 28x28" / "60000 labels": what a header declares, for messages.
fn describe(dims: &[u64]) -> String {
    match dims {
        [n] => format!("{n} labels"),
        [n, rows, cols] => format!("{n} images of {rows}x{cols}"),
        _ => format!("dimensions {dims:?}"),
    }
}

/// Parses an IDX payload with the expected magic; returns its dimensions and exactly the data
/// they declare (a short or long file is an error, never silently cut or padded).
fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let what = if magic == IMAGES_MAGIC {
        "IDX u8 images, 3 dimensions"
    } else {
        "IDX u8 labels, 1 dimension"
    };
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    let be32 = |o: usize| u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
    if bytes.len() < 4 {
        return Err(DataError::malformed(
            path,
            format!(
                "file is {} bytes long, too short for an IDX header ({header} bytes for {what}); download it again",
                bytes.len()
            ),
        ));
    }
    let found = be32(0);
    if found != magic {
        return Err(DataError::BadMagic {
            path: path.to_owned(),
            found,
            expected: magic,
            what,
        });
    }
    if bytes.len() < header {
        return Err(DataError::malformed(
            path,
            format!(
                "file is {} bytes long, too short for the {header}-byte IDX header of {what}; download it again",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<u64> = (0..ndim).map(|i| u64::from(be32(4 + 4 * i))).collect();
    let declared = describe(&dims);
    let data = &bytes[header..];
    let found = data.len() as u64;
    // Three u32 dimensions can overflow even u64: a corrupt header must not panic.
    let expected = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    let Some(expected) = expected.filter(|&e| usize::try_from(e).is_ok()) else {
        return Err(DataError::malformed(
            path,
            format!(
                "its header declares {declared}, more bytes than can be addressed: the header is corrupt; download it again"
            ),
        ));
    };
    if found < expected {
        return Err(DataError::Truncated {
            path: path.to_owned(),
            declared,
            expected,
            found,
        });
    }
    if found > expected {
        return Err(DataError::TrailingData {
            path: path.to_owned(),
            declared,
            expected,
            found,
        });
    }
    // Every dimension divides `expected`, which fits in usize.
    Ok((dims.iter().map(|&d| d as usize).collect(), data))
}

/// Decodes an IDX images payload into images.
fn decode_images(path: &Path, bytes: &[u8]) -> Result<Vec<Image>, DataError> {
    let (dims, data) = parse(path, bytes, IMAGES_MAGIC)?;
    let (rows, cols) = (dims[1], dims[2]);
    if rows == 0 || cols == 0 {
        return Err(DataError::Image {
            path: path.to_owned(),
            source: crate::ImageError::ZeroSize {
                width: cols as u32,
                height: rows as u32,
            },
        });
    }
    data.chunks_exact(rows * cols)
        .map(|pixels| {
            Image::new(cols as u32, rows as u32, 1, pixels).map_err(|source| DataError::Image {
                path: path.to_owned(),
                source,
            })
        })
        .collect()
}

/// Decodes an IDX labels payload.
fn decode_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u32>, DataError> {
    let (_, data) = parse(path, bytes, LABELS_MAGIC)?;
    Ok(data.iter().map(|&b| u32::from(b)).collect())
}

/// Builds a dataset from the bytes of an images file and, optionally, a labels file (each raw
/// or gzipped). The paths only name the sources in error messages.
pub(crate) fn from_bytes(
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
    ds.num_classes = ds.num_classes.map(|n| n.max(10));
    Ok(ds)
}

/// A file name reduced for matching: lower case, `.gz` dropped, `_` and `.` read as `-`.
fn key(name: &str) -> String {
    let lower = name.to_lowercase();
    lower
        .strip_suffix(".gz")
        .unwrap_or(&lower)
        .replace(['_', '.'], "-")
}

/// Words naming a split in file names (MNIST names the test split `t10k`).
fn split_words(split: Split) -> &'static [&'static str] {
    match split {
        Split::Train => &["train"],
        Split::Test => &["t10k", "test"],
    }
}

fn sorted_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn file_key(path: &Path) -> String {
    key(&path.file_name().unwrap_or_default().to_string_lossy())
}

/// The first (sorted) file in `dir` of `split` whose name ends in `kind` (e.g.
/// `images-idx3-ubyte`); a raw file sorts before its `.gz`.
fn find(dir: &Path, split: Split, kind: &str) -> Result<Option<PathBuf>, DataError> {
    Ok(sorted_files(dir)?.into_iter().find(|p| {
        let k = file_key(p);
        k.ends_with(kind) && k.split('-').any(|w| split_words(split).contains(&w))
    }))
}

/// Whether a folder contains an IDX images file (of any split).
pub(crate) fn dir_has_idx(dir: &Path) -> bool {
    sorted_files(dir).is_ok_and(|files| {
        files
            .iter()
            .any(|p| file_key(p).ends_with("images-idx3-ubyte"))
    })
}

/// The labels file beside an images file: same name with `images-idx3` → `labels-idx1`,
/// gzipped or not.
fn labels_beside(images: &Path) -> Result<Option<PathBuf>, DataError> {
    let wanted = file_key(images).replace("images-idx3", "labels-idx1");
    if wanted == file_key(images) {
        return Ok(None);
    }
    let dir = match images.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Ok(sorted_files(dir)?
        .into_iter()
        .find(|p| file_key(p) == wanted))
}

/// Opens the images (and labels, when present) of `split` from a folder, or from one images
/// file, with the labels file beside it when there is one (the split is then ignored: the
/// file is the choice).
pub(crate) fn open(path: &Path, split: Split) -> Result<InMemoryDataset, DataError> {
    let (images_path, labels_path) = if path.is_dir() {
        let images =
            find(path, split, "images-idx3-ubyte")?.ok_or_else(|| DataError::MissingFile {
                path: path.to_owned(),
                what: format!(
                    "IDX images file ({}-images-idx3-ubyte[.gz])",
                    split_words(split).join("|")
                ),
                split,
            })?;
        (images, find(path, split, "labels-idx1-ubyte")?)
    } else {
        (path.to_owned(), labels_beside(path)?)
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
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_name_keys_match_common_spellings() {
        for name in [
            "train-images-idx3-ubyte.gz",
            "train-images.idx3-ubyte",
            "TRAIN_IMAGES_IDX3_UBYTE",
        ] {
            assert_eq!(key(name), "train-images-idx3-ubyte", "{name}");
        }
        assert_eq!(
            key("emnist-letters-test-labels-idx1-ubyte.gz"),
            "emnist-letters-test-labels-idx1-ubyte"
        );
    }

    #[test]
    fn overflowing_header_is_an_error_not_a_panic() {
        let mut b = vec![0, 0, 8, 3];
        for _ in 0..3 {
            b.extend(u32::MAX.to_be_bytes());
        }
        let err = parse(Path::new("x"), &b, IMAGES_MAGIC).unwrap_err();
        assert!(err.to_string().contains("header is corrupt"), "{err}");
    }

    #[test]
    fn short_header_is_an_error() {
        let err = parse(Path::new("x"), &[0, 0, 8, 3, 0, 0], IMAGES_MAGIC).unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
        let err = parse(Path::new("x"), &[0, 0], IMAGES_MAGIC).unwrap_err();
        assert!(err.to_string().contains("too short"), "{err}");
    }
}
