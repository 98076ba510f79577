//! Metric-learning losses on labels: triplets with three mining rules, and ArcFace.
//!
//! Every loss works on L2-normalised embeddings and takes one label per row, so positives
//! can come from class labels (a class-balanced batch) or from the two views of an image
//! ([`crate::view_labels`]).

use std::fmt;
use std::str::FromStr;

use candle_core::{D, DType, Result, Tensor, bail};
use serde::{Deserialize, Serialize};

use crate::{MASKED, check_labels, l2_normalize, label_counts, pair_indicator, same_label};

/// How the triplets of a batch are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mining {
    /// Each anchor's farthest positive and nearest negative (Hermans et al. 2017).
    #[default]
    BatchHard,
    /// Every valid triplet, the loss averaged over those with a non-zero hinge (Hermans et
    /// al. 2017's batch-all).
    BatchAll,
    /// Each positive pair with its semi-hard negative: the nearest negative farther than the
    /// positive, or the farthest negative when none is (Schroff et al. 2015, as TensorFlow
    /// Addons' `triplet_semihard_loss`).
    SemiHard,
}

impl fmt::Display for Mining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BatchHard => "batch-hard",
            Self::BatchAll => "batch-all",
            Self::SemiHard => "semi-hard",
        })
    }
}

impl FromStr for Mining {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "batch-hard" | "hard" => Ok(Self::BatchHard),
            "batch-all" | "all" => Ok(Self::BatchAll),
            "semi-hard" | "semihard" => Ok(Self::SemiHard),
            _ => Err(format!(
                "unknown mining `{s}`; expected batch-hard, batch-all or semi-hard"
            )),
        }
    }
}

/// Euclidean distances between L2-normalised rows, `sqrt(max(2 − 2 cos, 1e-12))`.
fn distances(z: &Tensor) -> Result<Tensor> {
    z.matmul(&z.t()?)?.affine(-2.0, 2.0)?.maximum(1e-12)?.sqrt()
}

/// A scalar tensor of `v` in `like`'s dtype and device.
fn scalar_like(v: f64, like: &Tensor) -> Result<Tensor> {
    Tensor::new(v, like.device())?.to_dtype(like.dtype())
}

/// Anchors per block of the `[B, M, M]` triplet tensors (at most 2²² values a block).
fn block(m: usize) -> usize {
    ((1 << 22) / (m * m).max(1)).clamp(1, m.max(1))
}

/// The triplet loss of `embeddings` (`[M, D]`) with `labels` (one per row) under `mining`,
/// and the share of its triplets (batch-all, semi-hard: of all candidates; batch-hard: of
/// anchors) whose hinge `d_ap − d_an + margin` is positive: the triplets still teaching
/// anything, the quantity mining exists to keep up.
///
/// # Errors
/// A negative or non-finite margin, a label count that does not match, or a batch with no
/// anchor that has both a positive and a negative.
pub fn triplet(
    embeddings: &Tensor,
    labels: &[u32],
    margin: f64,
    mining: Mining,
) -> Result<(Tensor, Tensor)> {
    if !(margin.is_finite() && margin >= 0.0) {
        bail!("margin must be a finite number >= 0, got {margin}")
    }
    let m = check_labels(embeddings, labels)?;
    let counts = label_counts(labels);
    if !counts.iter().any(|&c| c >= 2 && c < m) {
        bail!(
            "the triplet loss needs an anchor with both a positive and a negative in the batch: \
             at least two rows of one label and one of another"
        )
    }
    let z = l2_normalize(embeddings)?;
    let d = distances(&z)?; // [M, M]
    let same = same_label(labels, &z)?;
    let positive = (&same * pair_indicator(m, false, &z)?)?; // same label, not itself
    let negative = same.affine(-1.0, 1.0)?;
    match mining {
        Mining::BatchHard => {
            let hardest_pos = (&d + positive.affine(-MASKED, MASKED)?)?.max(1)?;
            let hardest_neg = (&d + same.affine(-MASKED, 0.0)?)?.min(1)?;
            let valid: Vec<f64> = counts
                .iter()
                .map(|&c| f64::from(u8::from(c >= 2 && c < m)))
                .collect();
            let n_valid = valid.iter().sum::<f64>();
            let keep = Tensor::from_vec(valid, m, z.device())?.to_dtype(z.dtype())?;
            let per = ((hardest_pos - hardest_neg)?.affine(1.0, margin)?.relu()? * &keep)?;
            let active = per.gt(0.0)?.to_dtype(z.dtype())?.sum_all()? / n_valid;
            Ok(((per.sum_all()? / n_valid)?, active?))
        }
        Mining::BatchAll => {
            // hinge[a, p, n] = d[a, p] − d[a, n] + margin over valid (a, p, n), by blocks.
            let (mut total, mut active, mut candidates) = (None::<Tensor>, None::<Tensor>, 0.0);
            let b = block(m);
            for a0 in (0..m).step_by(b) {
                let bn = b.min(m - a0);
                let da = d.narrow(0, a0, bn)?; // [B, M]
                let hinge = da
                    .unsqueeze(2)?
                    .broadcast_sub(&da.unsqueeze(1)?)?
                    .affine(1.0, margin)?
                    .relu()?; // [B, M(p), M(n)]
                let valid = positive
                    .narrow(0, a0, bn)?
                    .unsqueeze(2)?
                    .broadcast_mul(&negative.narrow(0, a0, bn)?.unsqueeze(1)?)?;
                let h = (hinge * &valid)?;
                let s = h.sum_all()?;
                let n = h.gt(0.0)?.to_dtype(z.dtype())?.sum_all()?;
                candidates += valid.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
                total = Some(match total {
                    Some(t) => (t + s)?,
                    None => s,
                });
                active = Some(match active {
                    Some(t) => (t + n)?,
                    None => n,
                });
            }
            let (total, active) = (total.expect("m ≥ 2"), active.expect("m ≥ 2"));
            // Mean over the active triplets (1 when none: the loss is then 0).
            let loss = (&total / active.maximum(1.0)?)?;
            Ok((loss, (active / candidates)?))
        }
        Mining::SemiHard => {
            let (mut total, mut active) = (None::<Tensor>, None::<Tensor>);
            let pairs = positive
                .to_dtype(DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
            let big = scalar_like(-MASKED, &z)?;
            let b = block(m);
            for a0 in (0..m).step_by(b) {
                let bn = b.min(m - a0);
                let da = d.narrow(0, a0, bn)?; // [B, M]
                let neg = negative.narrow(0, a0, bn)?; // [B, M]
                let dp = da.unsqueeze(2)?; // [B, M(p), 1]
                let dn = da.unsqueeze(1)?; // [B, 1, M(n)]
                // Negatives farther than the positive: the nearest of them.
                let outside = dn
                    .broadcast_gt(&dp)?
                    .to_dtype(z.dtype())?
                    .broadcast_mul(&neg.unsqueeze(1)?)?; // [B, M, M]
                let masked = (dn.broadcast_mul(&outside)?
                    + outside.affine(-1.0, 1.0)?.broadcast_mul(&big)?)?;
                let nearest_outside = masked.min(2)?; // [B, M(p)]
                let has_outside = outside.max(2)?; // 1 where one exists
                // Otherwise the farthest negative.
                let farthest = (da.broadcast_mul(&neg)? + neg.affine(-MASKED, MASKED)?)?
                    .max(1)?
                    .unsqueeze(1)?; // [B, 1]
                let chosen = (nearest_outside.broadcast_mul(&has_outside)?
                    + has_outside.affine(-1.0, 1.0)?.broadcast_mul(&farthest)?)?;
                let per = (da - chosen)?.affine(1.0, margin)?.relu()?; // [B, M(p)]
                let per = (per * positive.narrow(0, a0, bn)?)?;
                let s = per.sum_all()?;
                let n = per.gt(0.0)?.to_dtype(z.dtype())?.sum_all()?;
                total = Some(match total {
                    Some(t) => (t + s)?,
                    None => s,
                });
                active = Some(match active {
                    Some(t) => (t + n)?,
                    None => n,
                });
            }
            let loss = (total.expect("m ≥ 2") / pairs)?;
            Ok((loss, (active.expect("m ≥ 2") / pairs)?))
        }
    }
}

/// ArcFace (Deng et al. 2019): an additive angular margin softmax. With `z` the normalised
/// embeddings and `w` the normalised rows of the class-weight matrix, the logit of row `i`
/// for class `c` is `scale · cos θ_ic`, except the target class's, `scale · cos(θ + margin)`
/// (and `scale · (cos θ − margin · sin margin)` past `θ = π − margin`, where `cos(θ + m)`
/// would turn back up; insightface's rule). Returns the mean cross-entropy.
///
/// # Shapes
/// `embeddings`: `[M, D]`, `weight`: `[C, D]`, `labels`: `M` values below `C` → scalar.
pub fn arcface(
    embeddings: &Tensor,
    weight: &Tensor,
    labels: &[u32],
    margin: f64,
    scale: f64,
) -> Result<Tensor> {
    if !(margin.is_finite() && (0.0..std::f64::consts::FRAC_PI_2).contains(&margin)) {
        bail!("the ArcFace margin must be in [0, π/2) radians, got {margin}")
    }
    if !(scale.is_finite() && scale > 0.0) {
        bail!("the ArcFace scale must be a finite number > 0, got {scale}")
    }
    let m = check_labels(embeddings, labels)?;
    let (c, dw) = weight.dims2()?;
    if dw != embeddings.dim(1)? {
        bail!(
            "the class weights have {dw} columns, the embeddings {}",
            embeddings.dim(1)?
        )
    }
    if let Some(&bad) = labels.iter().find(|&&l| l as usize >= c) {
        bail!("label {bad} is not below the {c} classes of the ArcFace weights")
    }
    let z = l2_normalize(embeddings)?;
    let w = l2_normalize(weight)?;
    let cos = z.matmul(&w.t()?)?.clamp(-1.0, 1.0)?; // [M, C]
    let l = Tensor::from_slice(labels, (m, 1), z.device())?;
    let target_cos = cos.gather(&l, 1)?; // [M, 1]
    let sin = target_cos
        .sqr()?
        .affine(-1.0, 1.0)?
        .maximum(1e-12)?
        .sqrt()?;
    let phi = (target_cos.affine(margin.cos(), 0.0)? - sin.affine(margin.sin(), 0.0)?)?;
    // Past θ = π − m, the linear continuation keeps the logit decreasing in θ.
    let threshold = (std::f64::consts::PI - margin).cos();
    let fallback = target_cos.affine(1.0, -margin * margin.sin())?;
    let phi = target_cos.gt(threshold)?.where_cond(&phi, &fallback)?;
    // Replace the target column of cos with phi.
    let classes = Tensor::arange(0u32, c as u32, z.device())?.reshape((1, c))?;
    let onehot = l.broadcast_eq(&classes)?.to_dtype(z.dtype())?; // [M, C]
    let logits =
        ((cos.broadcast_mul(&onehot.affine(-1.0, 1.0)?)? + onehot.broadcast_mul(&phi)?)? * scale)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    (logp * onehot)?.sum_all()?.affine(-1.0 / m as f64, 0.0)
}
