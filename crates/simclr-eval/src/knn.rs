//! Weighted kNN accuracy.

use candle_core::{Device, Tensor};

use crate::{EvalError, Features};

/// Neighbours that vote, by default (Wu et al. 2018; lightly's `knn_predict`).
pub const DEFAULT_K: usize = 200;
/// Temperature of the vote weights, by default (Wu et al. 2018; lightly's `knn_predict`).
pub const DEFAULT_TEMPERATURE: f64 = 0.1;

/// Rows of the test set compared at once (bounds the `chunk × train` similarity matrix).
const CHUNK: usize = 512;

fn normalised(f: Features<'_>, device: &Device) -> Result<Tensor, EvalError> {
    let t = Tensor::from_slice(f.data, (f.rows(), f.dim), device)?;
    let norm = t.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    Ok(t.broadcast_div(&norm)?)
}

/// Top-1 accuracy of weighted kNN: for each test row, the `k` training rows of highest
/// cosine similarity vote for their labels with weight `exp(sim / temperature)`; the class
/// with the largest total wins. The defaults, k = 200 and τ = 0.1, are Wu et al.'s and lightly's
/// `knn_predict`'s; solo-learn's `WeightedKNNClassifier` computes the same vote with k = 20 and
/// τ = 0.07 by default.
pub fn knn(
    train: Features<'_>,
    train_labels: &[u32],
    test: Features<'_>,
    test_labels: &[u32],
    num_classes: usize,
    k: usize,
    temperature: f64,
) -> Result<f64, EvalError> {
    train.check(train_labels, "train")?;
    test.check(test_labels, "test")?;
    if train.dim != test.dim {
        return Err(EvalError::Shape(format!(
            "train features have {} dimensions, test features {}",
            train.dim, test.dim
        )));
    }
    if k == 0 || temperature <= 0.0 {
        return Err(EvalError::Shape(format!(
            "k = {k} and temperature = {temperature} must both be positive"
        )));
    }
    if let Some(&bad) = train_labels
        .iter()
        .chain(test_labels)
        .find(|&&l| l as usize >= num_classes)
    {
        return Err(EvalError::Shape(format!(
            "label {bad} is not below the {num_classes} classes"
        )));
    }
    let device = Device::Cpu;
    let k = k.min(train.rows());
    let train_t = normalised(train, &device)?.t()?.contiguous()?; // [dim, n_train]
    let mut correct = 0usize;
    for start in (0..test.rows()).step_by(CHUNK) {
        let rows = CHUNK.min(test.rows() - start);
        let part = Features {
            data: &test.data[start * test.dim..(start + rows) * test.dim],
            dim: test.dim,
        };
        let sim = normalised(part, &device)?.matmul(&train_t)?; // [rows, n_train]
        let sim: Vec<Vec<f32>> = sim.to_vec2()?;
        for (r, row) in sim.iter().enumerate() {
            let mut idx: Vec<usize> = (0..row.len()).collect();
            idx.select_nth_unstable_by(k - 1, |&a, &b| row[b].total_cmp(&row[a]));
            let mut votes = vec![0f64; num_classes];
            for &j in &idx[..k] {
                votes[train_labels[j] as usize] += (f64::from(row[j]) / temperature).exp();
            }
            let pred = votes
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(c, _)| c)
                .unwrap_or(0);
            correct += usize::from(pred == test_labels[start + r] as usize);
        }
    }
    Ok(correct as f64 / test.rows() as f64)
}
