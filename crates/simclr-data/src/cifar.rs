//! The CIFAR-10 binary format (<https://www.cs.toronto.edu/~kriz/cifar.html>, "binary
//! version"): `data_batch_{1..5}.bin` (train) and `test_batch.bin` (test), found in the folder
//! given or in its `cifar-10-batches-bin/` subfolder (the tarball's layout). A single batch
//! file may also be given.
//!
//! Each record is one label byte (0..=9) followed by a 32×32 RGB image stored planar (1024
//! red, 1024 green, 1024 blue bytes, each row-major); we convert to interleaved `HWC`. Any
//! number of records per file is accepted. Class names come from `batches.meta.txt` when
//! present.
//!
//! candle-datasets has a CIFAR-10 reader, but we do not use it: it pulls in ~350 crates, wants
//! the exact unzipped file names, reads exactly 10,000 records per file, and reports no
//! file-level errors. This reader names the file that is short or holds a bad label.

use std::path::{Path, PathBuf};

use crate::{DataError, Image, InMemoryDataset, Split};

const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;
const RECORD: usize = 1 + 3 * PLANE;
const CLASSES: usize = 10;
/// The folder the CIFAR-10 binary tarball unpacks to.
const TARBALL_DIR: &str = "cifar-10-batches-bin";

fn is_batch(name: &str, split: Split) -> bool {
    match split {
        Split::Train => name.starts_with("data_batch") && name.ends_with(".bin"),
        Split::Test => name == "test_batch.bin",
    }
}

/// Whether a file name is a CIFAR-10 batch of either split.
pub(crate) fn is_batch_file(path: &Path) -> bool {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    is_batch(&name, Split::Train) || is_batch(&name, Split::Test)
}

fn batch_files(dir: &Path, split: Split) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        if is_batch(&entry.file_name().to_string_lossy(), split) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

fn dir_has_batches(dir: &Path) -> bool {
    [Split::Train, Split::Test]
        .iter()
        .any(|&s| batch_files(dir, s).is_ok_and(|f| !f.is_empty()))
}

/// The folder holding the batches: `dir` itself, or its `cifar-10-batches-bin/`.
fn batches_dir(dir: &Path) -> Option<PathBuf> {
    [dir.to_owned(), dir.join(TARBALL_DIR)]
        .into_iter()
        .find(|d| dir_has_batches(d))
}

/// Whether a folder holds CIFAR-10 batches of either split.
pub(crate) fn dir_has_cifar(dir: &Path) -> bool {
    batches_dir(dir).is_some()
}

/// Decodes one batch file's bytes, appending to `images` and `labels`.
fn decode(
    path: &Path,
    bytes: &[u8],
    images: &mut Vec<Image>,
    labels: &mut Vec<u32>,
) -> Result<(), DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::RecordLength {
            path: path.to_owned(),
            len: bytes.len() as u64,
            record: RECORD,
        });
    }
    for (index, rec) in bytes.chunks_exact(RECORD).enumerate() {
        let label = u32::from(rec[0]);
        if label as usize >= CLASSES {
            return Err(DataError::LabelOutOfRange {
                path: path.to_owned(),
                index,
                label,
                num_classes: CLASSES,
            });
        }
        // [3, 32, 32] planar → [32, 32, 3] interleaved.
        let (r, g, b) = (
            &rec[1..][..PLANE],
            &rec[1 + PLANE..][..PLANE],
            &rec[1 + 2 * PLANE..],
        );
        let hwc: Vec<u8> = (0..PLANE).flat_map(|p| [r[p], g[p], b[p]]).collect();
        images.push(Image::new(SIDE as u32, SIDE as u32, 3, hwc).expect("fixed 32x32x3 size"));
        labels.push(label);
    }
    Ok(())
}

/// Opens the batches of `split` in `path` (a folder, or its `cifar-10-batches-bin/`), or the
/// single batch file `path` (the split is then ignored: the file is the choice).
pub(crate) fn open(path: &Path, split: Split) -> Result<InMemoryDataset, DataError> {
    let (dir, files) = if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        (dir, vec![path.to_owned()])
    } else {
        let dir = batches_dir(path).unwrap_or_else(|| path.to_owned());
        let files = batch_files(&dir, split)?;
        (dir, files)
    };
    if files.is_empty() {
        return Err(DataError::MissingFile {
            path: path.to_owned(),
            what: match split {
                Split::Train => "CIFAR-10 batch (data_batch_*.bin)".into(),
                Split::Test => "CIFAR-10 batch (test_batch.bin)".into(),
            },
            split,
        });
    }
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| DataError::io(f, e))?;
        decode(f, &bytes, &mut images, &mut labels)?;
    }
    let mut ds = InMemoryDataset::new(images, Some(labels));
    ds.source = path.to_owned();
    ds.format = crate::Format::Cifar10;
    ds.num_classes = Some(CLASSES);
    // Optional: a missing or odd meta file only costs the names.
    if let Ok(text) = std::fs::read_to_string(dir.join("batches.meta.txt")) {
        let names: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if names.len() == CLASSES {
            ds.class_names = Some(names);
        }
    }
    Ok(ds)
}
