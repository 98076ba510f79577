//! The one error type of the crate: every variant names the file and says what was wrong.

use std::path::PathBuf;

/// Why a dataset could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The path does not exist.
    #[error("dataset path `{}` does not exist", path.display())]
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
    #[error("`{}` is not a valid gzip stream (truncated or corrupt download?)", path.display())]
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
    #[error("no {what} found in `{}` for the {split} split", path.display())]
    MissingFile {
        /// The folder searched.
        path: PathBuf,
        /// Which file (e.g. "IDX images file (train-images-idx3-ubyte[.gz])").
        what: String,
        /// The split asked for.
        split: crate::Split,
    },
    /// A file's contents do not follow its format.
    #[error("`{}` is malformed: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was expected and what was found.
        reason: String,
    },
    /// Images and labels disagree in number.
    #[error(
        "`{}` holds {labels} labels but its images file `{}` holds {images} images; they must match",
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
    #[error("cannot decode image `{}`: {reason} (pass --skip-bad-images to skip such files with a warning)", path.display())]
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
    /// The dataset holds no images.
    #[error("dataset at `{}` holds no images", path.display())]
    Empty {
        /// The path given.
        path: PathBuf,
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
