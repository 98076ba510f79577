//! The CIFAR-10 binary format: `data_batch_{1..5}.bin` (train) and `test_batch.bin` (test).
//!
//! Each record is one label byte followed by a 32×32 RGB image stored planar (1024 red, 1024
//! green, 1024 blue bytes); we convert to interleaved `HWC`. Class names come from
//! `batches.meta.txt` when present.
//!
//! candle-datasets has a reader, but it insists on exactly 10,000 records per file and pulls
//! in ~350 crates; this one accepts any whole number of records and names the file that is
//! not one.

use std::path::{Path, PathBuf};

use crate::{DataError, Image, InMemoryDataset, Split};

const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;
const RECORD: usize = 1 + 3 * PLANE;
const CLASSES: usize = 10;

fn batch_files(dir: &Path, split: Split) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = match split {
            Split::Train => name.starts_with("data_batch") && name.ends_with(".bin"),
            Split::Test => name == "test_batch.bin",
        };
        if wanted {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Whether a folder holds CIFAR-10 batches of either split.
pub(crate) fn dir_has_cifar(dir: &Path) -> bool {
    [Split::Train, Split::Test]
        .iter()
        .any(|&s| batch_files(dir, s).is_ok_and(|f| !f.is_empty()))
}

/// Decodes one batch file's bytes, appending to `images` and `labels`.
fn decode(
    path: &Path,
    bytes: &[u8],
    images: &mut Vec<Image>,
    labels: &mut Vec<u32>,
) -> Result<(), DataError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(DataError::malformed(
            path,
            format!(
                "length {} is not a whole number of {RECORD}-byte CIFAR-10 records (truncated?)",
                bytes.len()
            ),
        ));
    }
    for (r, rec) in bytes.chunks_exact(RECORD).enumerate() {
        let label = rec[0];
        if label as usize >= CLASSES {
            return Err(DataError::malformed(
                path,
                format!("record {r} has label {label}; CIFAR-10 labels are 0..=9"),
            ));
        }
        let planes = &rec[1..];
        let mut hwc = vec![0u8; 3 * PLANE];
        for p in 0..PLANE {
            for c in 0..3 {
                hwc[p * 3 + c] = planes[c * PLANE + p];
            }
        }
        images.push(Image::new(SIDE as u32, SIDE as u32, 3, hwc).expect("fixed 32x32x3 size"));
        labels.push(u32::from(label));
    }
    Ok(())
}

/// Opens the batches of `split` in `dir`.
pub fn open(dir: &Path, split: Split) -> Result<InMemoryDataset, DataError> {
    let files = batch_files(dir, split)?;
    if files.is_empty() {
        return Err(DataError::MissingFile {
            path: dir.to_owned(),
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
    ds.source = dir.to_owned();
    ds.format = crate::Format::Cifar10;
    ds.num_classes = Some(CLASSES);
    let meta = dir.join("batches.meta.txt");
    if let Ok(text) = std::fs::read_to_string(&meta) {
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
