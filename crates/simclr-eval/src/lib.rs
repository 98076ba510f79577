//! Evaluation of frozen representations, the two standard ways, and retrieval:
//!
//! - [`linear_probe`]: the linear-evaluation protocol of SimCLR (Chen et al. 2020, §B.6):
//!   a multinomial logistic regression on frozen features, fitted with L-BFGS, its L2 strength
//!   picked on a held-out slice of the training set (never on the test set).
//! - [`knn`]: weighted k-nearest-neighbour accuracy (Wu et al. 2018, as lightly and solo-learn
//!   compute it): cosine similarity, the `k` most similar training features vote with weight
//!   `exp(sim / τ)`.
//! - [`Index`]: exact cosine top-k search over a gallery of embeddings, streamed in blocks,
//!   and [`retrieval_metrics`] (recall@k, mAP@R) on labelled queries.
//!
//! Features are row-major `f32` matrices ([`Features`]); the heavy products run on candle's
//! `gemm`.

#![forbid(unsafe_code)]

mod encoder;
mod index;
mod knn;
mod logreg;

pub use crate::encoder::{Encoder, embed_items, embed_with};
pub use crate::index::{Hit, Index, RetrievalReport, retrieval_metrics};
pub use crate::knn::{DEFAULT_K, DEFAULT_TEMPERATURE, knn};
pub use crate::logreg::{LinearProbe, ProbeConfig, ProbeReport, linear_probe};

/// Why an evaluation could not run.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Inputs disagree in shape.
    #[error("{0}")]
    Shape(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// A weights file could not be read or written.
    #[error(transparent)]
    Weights(#[from] simclr_model::io::IoError),
    /// A weights file's tensors do not fit the model its metadata names.
    #[error("`{}` does not fit the model its metadata names", path.display())]
    Misfit {
        /// The file.
        path: std::path::PathBuf,
        /// What did not fit (a missing tensor, a shape).
        #[source]
        source: Box<candle_core::Error>,
    },
    /// Images could not be preprocessed.
    #[error(transparent)]
    Augment(#[from] simclr_augment::AugmentError),
    /// An image of a lazily read dataset could not be read.
    #[error(transparent)]
    Data(#[from] simclr_data::DataError),
}

/// A row-major `rows × dim` matrix of features.
#[derive(Clone, Copy, Debug)]
pub struct Features<'a> {
    /// `rows * dim` values.
    pub data: &'a [f32],
    /// Values per row.
    pub dim: usize,
}

impl Features<'_> {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }

    fn check(&self, labels: &[u32], what: &str) -> Result<(), EvalError> {
        if self.dim == 0 || !self.data.len().is_multiple_of(self.dim) {
            return Err(EvalError::Shape(format!(
                "{what} features: {} values is not a whole number of rows of {}",
                self.data.len(),
                self.dim
            )));
        }
        if self.rows() != labels.len() || labels.is_empty() {
            return Err(EvalError::Shape(format!(
                "{what} set: {} feature rows but {} labels (need one label per row, at least one row)",
                self.rows(),
                labels.len()
            )));
        }
        Ok(())
    }
}

/// Share of rows whose true label is among the `k` highest of their `classes` scores.
pub fn top_k_accuracy(scores: &[f32], classes: usize, labels: &[u32], k: usize) -> f64 {
    let hits = scores
        .chunks_exact(classes)
        .zip(labels)
        .filter(|&(row, &y)| {
            let sy = row[y as usize];
            // Rank = number of classes scoring strictly higher (ties go to the true class).
            row.iter().filter(|&&s| s > sy).count() < k
        })
        .count();
    hits as f64 / labels.len() as f64
}
