//! The one error type of the crate: every variant names the file, says what was expected and
//! what was found, and what to do about it.
//!
//! The cases a user meets with real downloads (truncated file, wrong file, count mismatch…)
//! have their own variants, so callers and tests can match on them; [`DataError::Malformed`]
//! covers the rarer ones.

use std::path::PathBuf;

/// Why a dataset could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The path does not exist.
    #[error("dataset path `{}` does not exist; check the path", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// Reading a file or listing a folder failed.
    #[error("failed to read `{}`", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// A gzip stream is truncated or corrupt.
    #[error(
        "`{}` starts like gzip (bytes 1f 8b) but does not decompress: truncated or corrupt download? Download it again",
        path.display()
    )]
    Gzip {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
    /// No known dataset layout was found at the path.
    #[error(
        "could not recognise a dataset at `{}`: looked for {looked_for}; pass --format idx|cifar10|folder to choose one",
        path.display()
    )]
    UnknownFormat {
        /// The path given.
        path: PathBuf,
        /// What detection looked for.
        looked_for: String,
    },
    /// The layout was recognised but a file the split needs is missing.
    #[error(
        "no {what} found in `{}` for the {split} split; add it, choose the other split, or pass the file itself",
        path.display()
    )]
    MissingFile {
        /// The folder searched.
        path: PathBuf,
        /// Which file (e.g. "IDX images file (train-images-idx3-ubyte[.gz])").
        what: String,
        /// The split asked for.
        split: crate::Split,
    },
    /// An IDX file starts with the wrong magic number (e.g. a labels file given as images).
    #[error(
        "`{}` has IDX magic number {found:#010x}, expected {expected:#010x} ({what}); is this the right file?",
        path.display()
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic number read.
        found: u32,
        /// The magic number wanted.
        expected: u32,
        /// What the expected magic stands for ("IDX u8 images, 3 dimensions").
        what: &'static str,
    },
    /// A file holds fewer bytes than its header declares.
    #[error(
        "`{}` is truncated: its header declares {declared} ({expected} bytes of data) but only {found} bytes follow; download it again",
        path.display()
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What the header declares, e.g. "60000 images of 28x28".
        declared: String,
        /// Bytes of data the header implies.
        expected: u64,
        /// Bytes of data present.
        found: u64,
    },
    /// A file holds more bytes than its header declares.
    #[error(
        "`{}` has {found} bytes of data but its header declares {declared} ({expected} bytes); the header and data disagree, so the file is not what it claims to be",
        path.display()
    )]
    TrailingData {
        /// The file.
        path: PathBuf,
        /// What the header declares.
        declared: String,
        /// Bytes of data the header implies.
        expected: u64,
        /// Bytes of data present.
        found: u64,
    },
    /// A CIFAR-10 batch is not a whole number of records.
    #[error(
        "`{}` is {len} bytes long, not a whole number of {record}-byte CIFAR-10 records (1 label byte + 3072 pixel bytes): truncated, or not the binary version of CIFAR-10 (the Python pickle version is not supported)",
        path.display()
    )]
    RecordLength {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
        /// The record size it should be a multiple of.
        record: usize,
    },
    /// A label is not below the number of classes.
    #[error(
        "`{}`: record {index} has label {label}, expected a class index below {num_classes}; is this the right dataset?",
        path.display()
    )]
    LabelOutOfRange {
        /// The file.
        path: PathBuf,
        /// The record's position in the file (from 0).
        index: usize,
        /// The label found.
        label: u32,
        /// The number of classes of the format.
        num_classes: usize,
    },
    /// Images and labels disagree in number.
    #[error(
        "`{}` holds {labels} labels but its images file `{}` holds {images} images; they must match: are they from the same split and download?",
        labels_path.display(),
        images_path.display()
    )]
    CountMismatch {
        /// The images file.
        images_path: PathBuf,
        /// The labels file.
        labels_path: PathBuf,
        /// Images found.
        images: usize,
        /// Labels found.
        labels: usize,
    },
    /// An image file could not be decoded.
    #[error(
        "cannot decode image `{}`: {reason} (pass --skip-bad-images to skip such files with a warning)",
        path.display()
    )]
    BadImage {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// A decoded image is unusable (zero size, unsupported channels).
    #[error("image in `{}` is unusable", path.display())]
    Image {
        /// The file holding the image.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: crate::ImageError,
    },
    /// An image folder holds no image files.
    #[error(
        "found no image files ({extensions}; any case) in `{}`; an image folder holds root/<class>/*.png (labelled) or root/*.png (unlabelled)",
        path.display()
    )]
    NoImages {
        /// The folder searched.
        path: PathBuf,
        /// The extensions looked for.
        extensions: String,
    },
    /// The dataset holds no images.
    #[error("dataset at `{}` holds no images; a dataset needs at least one", path.display())]
    Empty {
        /// The path given.
        path: PathBuf,
    },
    /// A file's contents or a folder's layout do not follow the format (rarer cases).
    #[error("`{}` is malformed: {reason}", path.display())]
    Malformed {
        /// The file or folder.
        path: PathBuf,
        /// What was expected, what was found, and what to do.
        reason: String,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
