//! The online kNN monitor of `simclr pretrain --knn-every`: the weighted kNN accuracy of the
//! model being trained, measured at epoch ends on a labelled test split with (part of) the
//! training split as the bank — the cheap curve that tells whether a run is learning.

use std::sync::Arc;
use std::time::Instant;

use anyhow::bail;
use simclr_augment::AugmentConfig;
use simclr_data::Dataset;
use simclr_eval::{DEFAULT_K, DEFAULT_TEMPERATURE, EvalError, Features, embed_items, knn};
use simclr_model::SimClr;
use simclr_train::Monitor;

/// Evenly spaced images of a labelled dataset.
struct Subset {
    data: Arc<dyn Dataset>,
    indices: Vec<usize>,
    labels: Vec<u32>,
}

impl Subset {
    /// At most `limit` images of `data`, evenly spaced; `what` names it in errors.
    fn new(data: Arc<dyn Dataset>, limit: usize, what: &str) -> anyhow::Result<Self> {
        let n = data.len();
        let take = limit.min(n);
        if take == 0 {
            bail!("the kNN monitor's {what} has no images");
        }
        let indices: Vec<usize> = (0..take).map(|i| i * n / take).collect();
        let labels = indices
            .iter()
            .map(|&i| data.label(i))
            .collect::<Option<Vec<u32>>>();
        let Some(labels) = labels else {
            bail!("the kNN monitor needs labels, and its {what} has none")
        };
        Ok(Self {
            data,
            indices,
            labels,
        })
    }

    fn embed(&self, model: &SimClr, preprocess: &AugmentConfig) -> Result<Vec<f32>, EvalError> {
        embed_items(model, preprocess, &*self.data, &self.indices, &mut |_| {})
    }
}

/// Weighted kNN accuracy of the model's representations `h`: queries from a test split,
/// the bank from a training split.
pub struct KnnMonitor {
    preprocess: AugmentConfig,
    bank: Subset,
    queries: Subset,
    classes: usize,
}

impl KnnMonitor {
    /// Up to `limit` images of each of `bank` and `queries`, evenly spaced, preprocessed with
    /// `preprocess`'s evaluation transform (resize, normalise). Both must be labelled and
    /// match the model's channels.
    pub fn new(
        preprocess: AugmentConfig,
        bank: Arc<dyn Dataset>,
        queries: Arc<dyn Dataset>,
        limit: usize,
    ) -> anyhow::Result<Self> {
        if bank.channels() != queries.channels() {
            bail!(
                "the kNN monitor's test split has {} channels, the training images {}",
                queries.channels(),
                bank.channels()
            );
        }
        let classes = match (bank.num_classes(), queries.num_classes()) {
            (Some(a), Some(b)) => a.max(b),
            _ => bail!("the kNN monitor needs a labelled dataset (both the train and test split)"),
        };
        Ok(Self {
            preprocess,
            bank: Subset::new(bank, limit, "training split")?,
            queries: Subset::new(queries, limit, "test split")?,
            classes,
        })
    }

    /// Images in the bank and among the queries.
    pub fn sizes(&self) -> (usize, usize) {
        (self.bank.indices.len(), self.queries.indices.len())
    }

    /// Top-1 accuracy of `model`'s representations.
    pub fn accuracy(&self, model: &SimClr) -> Result<f64, EvalError> {
        let dim = model.config().feature_dim();
        let bank = self.bank.embed(model, &self.preprocess)?;
        let queries = self.queries.embed(model, &self.preprocess)?;
        knn(
            Features { data: &bank, dim },
            &self.bank.labels,
            Features {
                data: &queries,
                dim,
            },
            &self.queries.labels,
            self.classes,
            DEFAULT_K,
            DEFAULT_TEMPERATURE,
        )
    }
}

impl Monitor for KnnMonitor {
    fn measure(
        &mut self,
        model: &SimClr,
        _epoch: u64,
    ) -> Result<Vec<(String, f64)>, Box<dyn std::error::Error + Send + Sync>> {
        let started = Instant::now();
        let acc = self.accuracy(model)?;
        Ok(vec![
            ("knn_top1".into(), acc),
            ("knn_s".into(), started.elapsed().as_secs_f64()),
        ])
    }
}
