//! safetensors files: atomic writes and loads with errors that say what is wrong.
//!
//! A write goes to a temporary file beside the target, is flushed to disk (`fsync`), and is
//! renamed over the target only once complete, so a crash or a full disk mid-write leaves the
//! previous file as it was.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::safetensors::Load;
use candle_core::{Device, Tensor};

/// The `format` metadata value of a training checkpoint (`simclr pretrain`).
pub const CHECKPOINT_FORMAT: &str = "simclr-rs/checkpoint/1";

/// The `format` metadata value of exported encoder weights (`simclr export`).
pub const ENCODER_FORMAT: &str = "simclr-rs/encoder/1";

/// What can go wrong reading or writing a weights file.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The file system refused.
    #[error("cannot read or write `{}`", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid safetensors file (truncated, corrupt, another format).
    #[error("`{}` is not a valid safetensors file; it may be truncated or corrupt", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said, or what is inconsistent.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A tensor the caller needs is not in the file.
    #[error("`{}`: tensor `{name}` is missing", path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
    },
    /// A metadata field the caller needs is absent or malformed.
    #[error("{path}: {reason}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor could not be read or written.
    #[error("a tensor of `{}` could not be read or written", path.display())]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: candle_core::Error,
    },
}

/// A safetensors file in memory: tensors by name and the string metadata.
#[derive(Debug)]
pub struct SafetensorsFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// The tensors.
    pub tensors: HashMap<String, Tensor>,
    /// The metadata (`__metadata__`), sorted by key.
    pub metadata: BTreeMap<String, String>,
}

impl SafetensorsFile {
    /// Reads `path` onto `device`.
    pub fn load(path: &Path, device: &Device) -> Result<Self, IoError> {
        let bytes = std::fs::read(path).map_err(|source| IoError::Io {
            path: path.to_owned(),
            source,
        })?;
        let corrupt = |e: safetensors::SafeTensorError| IoError::Corrupt {
            path: path.to_owned(),
            source: Box::new(e),
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(corrupt)?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let t = view.load(device).map_err(|source| IoError::Tensor {
                path: path.to_owned(),
                source,
            })?;
            tensors.insert(name, t);
        }
        let metadata = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        Ok(Self {
            path: path.to_owned(),
            tensors,
            metadata,
        })
    }

    /// Reads only the header of `path`: the metadata, no tensors (`tensors` is empty).
    pub fn load_metadata(path: &Path) -> Result<Self, IoError> {
        use std::io::Read;
        let io_err = |source| IoError::Io {
            path: path.to_owned(),
            source,
        };
        let corrupt = |reason: String| IoError::Corrupt {
            path: path.to_owned(),
            source: reason.into(),
        };
        let mut f = File::open(path).map_err(io_err)?;
        let file_len = f.metadata().map_err(io_err)?.len();
        let mut len = [0u8; 8];
        f.read_exact(&mut len)
            .map_err(|e| corrupt(format!("no header length: {e}")))?;
        let n = u64::from_le_bytes(len);
        if n > file_len.saturating_sub(8) {
            return Err(corrupt(format!(
                "header of {n} bytes in a file of {file_len}"
            )));
        }
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header).map_err(io_err)?;
        // The header is a JSON object: tensor entries, and the string map `__metadata__`.
        #[derive(serde::Deserialize)]
        struct Header {
            #[serde(rename = "__metadata__", default)]
            metadata: BTreeMap<String, String>,
        }
        let h: Header = serde_json::from_slice(&header)
            .map_err(|e| corrupt(format!("unreadable header: {e}")))?;
        Ok(Self {
            path: path.to_owned(),
            tensors: HashMap::new(),
            metadata: h.metadata,
        })
    }

    /// The metadata field `key`, or an error naming it.
    pub fn meta(&self, key: &str) -> Result<&str, IoError> {
        self.metadata
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| IoError::Metadata {
                path: self.path.clone(),
                reason: format!("metadata field `{key}` is missing; is this a simclr-rs file?"),
            })
    }

    /// The tensor `name`, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<&Tensor, IoError> {
        self.tensors
            .get(name)
            .ok_or_else(|| IoError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })
    }
}

/// Serialises `tensors` with `metadata` to safetensors bytes.
pub fn to_bytes(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, IoError> {
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.contiguous()?)))
        .collect::<candle_core::Result<_>>()
        .map_err(|source| IoError::Tensor {
            path: path.to_owned(),
            source,
        })?;
    safetensors::serialize(contiguous, Some(meta)).map_err(|e| IoError::Corrupt {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

/// Writes `tensors` and `metadata` to `path` atomically.
pub fn save(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<(), IoError> {
    let bytes = to_bytes(path, tensors, metadata)?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] with the writing done by `write` (so tests can make it fail midway).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), IoError> {
    let err = |source| IoError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "weights".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    fn sample() -> Vec<(String, Tensor)> {
        let dev = Device::Cpu;
        vec![
            (
                "a.weight".into(),
                Tensor::arange(0f32, 6.0, &dev)
                    .unwrap()
                    .reshape((2, 3))
                    .unwrap(),
            ),
            ("b".into(), Tensor::ones(4, DType::F32, &dev).unwrap()),
        ]
    }

    #[test]
    fn round_trip_keeps_every_tensor_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let meta = BTreeMap::from([("k".to_string(), "v".to_string())]);
        save(&path, &sample(), &meta).unwrap();
        let f = SafetensorsFile::load(&path, &Device::Cpu).unwrap();
        assert_eq!(f.metadata, meta);
        for (name, t) in sample() {
            let got = f.tensor(&name).unwrap();
            assert_eq!(got.dims(), t.dims());
            assert_eq!(
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            );
        }
        assert!(
            f.meta("missing")
                .unwrap_err()
                .to_string()
                .contains("`missing`")
        );
        let header = SafetensorsFile::load_metadata(&path).unwrap();
        assert_eq!(
            header.metadata, meta,
            "the header alone gives the same metadata"
        );
        assert!(header.tensors.is_empty());
        // Nothing but the file itself is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_the_previous_file_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        save(&path, &sample(), &BTreeMap::new()).unwrap();
        let bytes = to_bytes(&path, &sample(), &BTreeMap::new()).unwrap();
        let err = write_atomic_with(&path, |f| {
            f.write_all(&bytes[..bytes.len() / 2])?;
            Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device",
            ))
        })
        .unwrap_err();
        assert!(err.to_string().contains("w.safetensors"), "{err}");
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(
            cause.as_deref(),
            Some("no space left on device"),
            "the cause is kept"
        );
        let f = SafetensorsFile::load(&path, &Device::Cpu).unwrap();
        assert_eq!(f.tensors.len(), 2);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temporary file removed"
        );
    }

    #[test]
    fn truncated_and_garbage_files_get_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        save(&path, &sample(), &BTreeMap::new()).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let err = SafetensorsFile::load(&path, &Device::Cpu).unwrap_err();
        assert!(matches!(err, IoError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("truncated or corrupt"), "{err}");
        std::fs::write(&path, &bytes[..20]).unwrap();
        let err = SafetensorsFile::load_metadata(&path).unwrap_err();
        assert!(
            matches!(err, IoError::Corrupt { .. }),
            "header cut short: {err}"
        );
        std::fs::write(&path, b"this is not a weights file").unwrap();
        assert!(matches!(
            SafetensorsFile::load_metadata(&path).unwrap_err(),
            IoError::Corrupt { .. }
        ));
        assert!(matches!(
            SafetensorsFile::load(&path, &Device::Cpu).unwrap_err(),
            IoError::Corrupt { .. }
        ));
        let err = SafetensorsFile::load(&dir.path().join("nope"), &Device::Cpu).unwrap_err();
        assert!(matches!(err, IoError::Io { .. }), "{err}");
    }
}
