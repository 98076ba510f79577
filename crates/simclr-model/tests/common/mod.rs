//! Comparisons of tensors the model's test binaries share.

use candle_core::{DType, Tensor};

/// A tensor's values in f64.
pub fn values_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// The largest difference between `a` and `b` relative to `b`'s largest magnitude.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (values_f64(a), values_f64(b));
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Cosine similarity of two tensors' values.
pub fn cosine(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (values_f64(a), values_f64(b));
    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(&a) * norm(&b)).max(1e-300)
}
