//! Contrastive objectives for simclr-rs, on candle, differentiable end to end.
//!
//! - [`nt_xent`]: SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020,
//!   <https://arxiv.org/abs/2002.05709>, Algorithm 1), the default; [`nt_xent_gathered`] is the
//!   same loss with candidates gathered from every data-parallel rank.
//! - [`supcon`]: supervised contrastive loss (Khosla et al. 2020, `L_out`).
//! - [`margin_contrastive`]: pairwise contrastive loss with a margin (Hadsell, Chopra, LeCun 2006).
//! - [`triplet_batch_hard`]: triplet loss with batch-hard mining (Hermans, Beyer, Leibe 2017).
//!
//! Every loss L2-normalises its embeddings first and returns a scalar tensor. Bad arguments
//! (τ ≤ 0, mismatched shapes, empty batches, rank ≠ 2) fail with `candle_core::bail!`
//! naming the offending values.

use std::fmt;
use std::str::FromStr;

use candle_core::{D, DType, Result, Tensor, bail};
use serde::{Deserialize, Serialize};

/// Added to masked logits: `exp` of it is exactly 0 in f32 and f64, and unlike −∞ it never
/// produces `0 · ∞ = NaN` when multiplied by a zero mask.
const MASKED: f64 = -1e9;

fn check_rank2(t: &Tensor, what: &str) -> Result<(usize, usize)> {
    if t.rank() != 2 {
        bail!(
            "{what} must have rank 2 ([batch, dim]), got shape {:?}",
            t.dims()
        )
    }
    let (n, d) = t.dims2()?;
    if n == 0 || d == 0 {
        bail!("{what} is empty (shape {:?})", t.dims())
    }
    Ok((n, d))
}

fn check_temperature(t: f64) -> Result<()> {
    // lightly errors on a temperature near zero: 1/τ overflows the logits.
    if !(t.is_finite() && t >= 1e-8) {
        bail!("temperature must be a finite number > 1e-8, got {t}")
    }
    Ok(())
}

/// Rows scaled to unit L2 norm (`F.normalize`: norms clamped below at 1e-12).
///
/// # Shapes
/// `[M, D]` → `[M, D]`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?; // [M, 1]
    x.broadcast_div(&norm)
}

/// A `[rows, cols]` mask tensor: `MASKED` where `f(i, j)`, else 0.
fn additive_mask(
    rows: usize,
    cols: usize,
    like: &Tensor,
    f: impl Fn(usize, usize) -> bool,
) -> Result<Tensor> {
    let v: Vec<f64> = (0..rows * cols)
        .map(|k| if f(k / cols, k % cols) { MASKED } else { 0.0 })
        .collect();
    Tensor::from_vec(v, (rows, cols), like.device())?.to_dtype(like.dtype())
}

/// A `[rows, cols]` 0/1 indicator tensor of `f(i, j)`.
fn indicator(
    rows: usize,
    cols: usize,
    like: &Tensor,
    f: impl Fn(usize, usize) -> bool,
) -> Result<Tensor> {
    let v: Vec<f64> = (0..rows * cols)
        .map(|k| f64::from(u8::from(f(k / cols, k % cols))))
        .collect();
    Tensor::from_vec(v, (rows, cols), like.device())?.to_dtype(like.dtype())
}

/// NT-Xent over the 2N views of a batch: `z1[i]` and `z2[i]` are the two views of sample `i`.
///
/// Each of the 2N views is an anchor; its partner is the positive and the other 2N − 2 views
/// are negatives; cosine similarities are divided by `temperature`, self-pairs are masked out,
/// and the loss is the cross-entropy of picking the partner, averaged over all 2N anchors
/// (computed through log-softmax, stable for τ down to 0.05 and thousands of views).
///
/// # Shapes
/// `z1`, `z2`: `[N, D]` → scalar.
pub fn nt_xent(z1: &Tensor, z2: &Tensor, temperature: f64) -> Result<Tensor> {
    let (n1, d1) = check_rank2(z1, "z1")?;
    let (n2, d2) = check_rank2(z2, "z2")?;
    if (n1, d1) != (n2, d2) {
        bail!(
            "z1 and z2 must have the same shape, got {:?} and {:?}",
            z1.dims(),
            z2.dims()
        )
    }
    let local = Tensor::cat(&[z1, z2], 0)?; // [2N, D]: views 1 then views 2
    nt_xent_gathered(&local, &local, 0, temperature)
}

/// NT-Xent with the candidates gathered from every rank of a data-parallel run.
///
/// `local` holds this rank's `2n` views, its `n` first views then its `n` second views (the
/// layout of [`nt_xent`]'s concatenation). `keys` holds every rank's `local`, concatenated in
/// rank order (`[world · 2n, D]`). Anchors are the local rows; the candidates are all keys but
/// the anchor itself (key row `rank · 2n + i`); the positive of local row `i` is key row
/// `rank · 2n + (i + n) mod 2n`. With one rank (`keys == local`, `rank == 0`) this is
/// [`nt_xent`]. Gradients flow into both `local` and `keys`, so a gather whose backward
/// returns each rank its slice makes every negative count.
///
/// # Shapes
/// `local`: `[2n, D]`, `keys`: `[world · 2n, D]` → scalar (mean over the `2n` local anchors).
pub fn nt_xent_gathered(
    local: &Tensor,
    keys: &Tensor,
    rank: usize,
    temperature: f64,
) -> Result<Tensor> {
    check_temperature(temperature)?;
    let (m, d) = check_rank2(local, "local views")?;
    let (k, dk) = check_rank2(keys, "gathered keys")?;
    if m % 2 != 0 {
        bail!("local views must hold two views per sample (an even count), got {m}")
    }
    if d != dk || k % m != 0 || rank >= k / m {
        bail!(
            "gathered keys {:?} must be world × {m} rows of dimension {d} with rank {rank} < world",
            keys.dims()
        )
    }
    let n = m / 2;
    let q = l2_normalize(local)?; // [2n, D]
    let kk = l2_normalize(keys)?; // [K, D]
    let logits = (q.matmul(&kk.t()?)? / temperature)?; // [2n, K] cosine similarity / τ
    let offset = rank * m;
    let mask = additive_mask(m, k, &logits, |i, j| j == offset + i)?; // self-pairs out
    let logp = candle_nn::ops::log_softmax(&(logits + mask)?, D::Minus1)?; // [2n, K]
    let positives: Vec<u32> = (0..m).map(|i| (offset + (i + n) % m) as u32).collect();
    let idx = Tensor::from_vec(positives, (m, 1), logp.device())?;
    logp.gather(&idx, 1)?.mean_all()?.neg() // mean over anchors of −log p(partner)
}

/// Share of the 2N views whose most similar other view is their partner: SimCLR's contrastive
/// top-1 accuracy, a training metric.
///
/// # Shapes
/// `z1`, `z2`: `[N, D]`.
pub fn contrastive_accuracy(z1: &Tensor, z2: &Tensor) -> Result<f32> {
    let (n, _) = check_rank2(z1, "z1")?;
    if z1.dims() != z2.dims() {
        bail!(
            "z1 and z2 must have the same shape, got {:?} and {:?}",
            z1.dims(),
            z2.dims()
        )
    }
    let q = l2_normalize(&Tensor::cat(&[z1, z2], 0)?.detach())?; // [2N, D]
    let sim = q.matmul(&q.t()?)?; // [2N, 2N]
    let sim = (sim + additive_mask(2 * n, 2 * n, &q, |i, j| i == j)?)?;
    let best: Vec<u32> = sim.argmax(D::Minus1)?.to_vec1()?;
    let hits = best
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b as usize == (i + n) % (2 * n))
        .count();
    Ok(hits as f32 / (2 * n) as f32)
}

/// Labels of a SimCLR batch as identities: `[0, 1, …, N−1, 0, 1, …, N−1]`, so the label-based
/// losses treat the two views of a sample as the only positive pair.
pub fn view_labels(n: usize) -> Vec<u32> {
    (0..2 * n).map(|i| (i % n) as u32).collect()
}

fn check_labels(emb: &Tensor, labels: &[u32]) -> Result<usize> {
    let (m, _) = check_rank2(emb, "embeddings")?;
    if labels.len() != m {
        bail!(
            "{} labels for {m} embeddings; need one label per row",
            labels.len()
        )
    }
    Ok(m)
}

/// Supervised contrastive loss (Khosla et al. 2020, `L_out`): for each anchor, the mean over
/// its positives (other rows with its label) of `−log softmax` over all other rows of the
/// cosine similarity / τ; averaged over anchors that have a positive. With
/// [`view_labels`] it equals [`nt_xent`].
///
/// # Shapes
/// `embeddings`: `[M, D]`, `labels`: `M` → scalar.
pub fn supcon(embeddings: &Tensor, labels: &[u32], temperature: f64) -> Result<Tensor> {
    check_temperature(temperature)?;
    let m = check_labels(embeddings, labels)?;
    let z = l2_normalize(embeddings)?;
    let logits = (z.matmul(&z.t()?)? / temperature)?; // [M, M]
    let logp = candle_nn::ops::log_softmax(
        &(logits + additive_mask(m, m, &z, |i, j| i == j)?)?,
        D::Minus1,
    )?;
    let pos = indicator(m, m, &z, |i, j| i != j && labels[i] == labels[j])?; // [M, M]
    let counts: Vec<f64> = (0..m)
        .map(|i| (0..m).filter(|&j| j != i && labels[j] == labels[i]).count() as f64)
        .collect();
    let anchors = counts.iter().filter(|&&c| c > 0.0).count();
    if anchors == 0 {
        bail!("supcon needs at least two rows sharing a label; every label is unique")
    }
    let inv: Vec<f64> = counts
        .iter()
        .map(|&c| if c > 0.0 { 1.0 / c } else { 0.0 })
        .collect();
    let inv = Tensor::from_vec(inv, m, z.device())?.to_dtype(z.dtype())?;
    let per_anchor = (logp * pos)?.sum(1)?.mul(&inv)?; // mean log-prob of positives, [M]
    (per_anchor.sum_all()? / anchors as f64)?.neg()
}

/// Squared euclidean distances between L2-normalised rows: `2 − 2 cos`, clamped at 0.
fn sq_distances(z: &Tensor) -> Result<Tensor> {
    let s = z.matmul(&z.t()?)?;
    (s.affine(-2.0, 2.0))?.relu()
}

/// Pairwise contrastive loss with a margin (Hadsell, Chopra, LeCun 2006) on L2-normalised
/// embeddings, over all unordered pairs `i < j`: similar pairs (same label) cost `d²`,
/// dissimilar ones `max(0, margin − d)²`. Returns `½ (mean over similar pairs + mean over
/// dissimilar pairs)`, each mean 0 when there are no such pairs — balanced, since a batch has
/// far more dissimilar pairs than similar ones.
///
/// # Shapes
/// `embeddings`: `[M, D]`, `labels`: `M` → scalar.
pub fn margin_contrastive(embeddings: &Tensor, labels: &[u32], margin: f64) -> Result<Tensor> {
    if !(margin.is_finite() && margin > 0.0) {
        bail!("margin must be a finite number > 0, got {margin}")
    }
    let m = check_labels(embeddings, labels)?;
    let z = l2_normalize(embeddings)?;
    let d2 = sq_distances(&z)?; // [M, M]
    let d = d2.maximum(1e-12)?.sqrt()?; // sqrt is not differentiable at 0
    let pos = indicator(m, m, &z, |i, j| i < j && labels[i] == labels[j])?;
    let neg = indicator(m, m, &z, |i, j| i < j && labels[i] != labels[j])?;
    let (np, nn) = pos_neg_counts(labels);
    let pos_term = if np > 0 {
        ((&d2 * pos)?.sum_all()? / np as f64)?
    } else {
        d2.zeros_like()?.sum_all()?
    };
    let hinge = d.affine(-1.0, margin)?.relu()?.sqr()?; // max(0, m − d)²
    let neg_term = if nn > 0 {
        ((hinge * neg)?.sum_all()? / nn as f64)?
    } else {
        d2.zeros_like()?.sum_all()?
    };
    (pos_term + neg_term)? * 0.5
}

fn pos_neg_counts(labels: &[u32]) -> (usize, usize) {
    let mut np = 0;
    let mut nn = 0;
    for i in 0..labels.len() {
        for j in i + 1..labels.len() {
            if labels[i] == labels[j] {
                np += 1;
            } else {
                nn += 1;
            }
        }
    }
    (np, nn)
}

/// Triplet loss with batch-hard mining (Hermans, Beyer, Leibe 2017) on L2-normalised
/// embeddings: each anchor takes its farthest positive (same label, not itself) and its
/// nearest negative; the loss is `mean max(0, d_ap − d_an + margin)` over anchors that have
/// both.
///
/// # Shapes
/// `embeddings`: `[M, D]`, `labels`: `M` → scalar.
pub fn triplet_batch_hard(embeddings: &Tensor, labels: &[u32], margin: f64) -> Result<Tensor> {
    if !(margin.is_finite() && margin >= 0.0) {
        bail!("margin must be a finite number >= 0, got {margin}")
    }
    let m = check_labels(embeddings, labels)?;
    let z = l2_normalize(embeddings)?;
    let d = sq_distances(&z)?.maximum(1e-12)?.sqrt()?; // [M, M]
    let not_pos = additive_mask(m, m, &z, |i, j| i == j || labels[i] != labels[j])?;
    let not_neg = additive_mask(m, m, &z, |i, j| labels[i] == labels[j])?.neg()?;
    let hardest_pos = (&d + not_pos)?.max(1)?; // [M]
    let hardest_neg = (&d + not_neg)?.min(1)?; // [M]
    let valid: Vec<bool> = (0..m)
        .map(|i| {
            (0..m).any(|j| j != i && labels[j] == labels[i])
                && (0..m).any(|j| labels[j] != labels[i])
        })
        .collect();
    let count = valid.iter().filter(|&&v| v).count();
    if count == 0 {
        bail!("triplet loss needs an anchor with both a positive and a negative in the batch")
    }
    let keep = Tensor::from_vec(
        valid
            .iter()
            .map(|&v| f64::from(u8::from(v)))
            .collect::<Vec<_>>(),
        m,
        z.device(),
    )?
    .to_dtype(z.dtype())?;
    let per = (hardest_pos - hardest_neg)?.affine(1.0, margin)?.relu()?; // [M]
    (per * keep)?.sum_all()? / count as f64
}

/// The objective `simclr pretrain` optimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// [`nt_xent`] (SimCLR's; the default).
    NtXent,
    /// [`margin_contrastive`] with the two views of a sample as the similar pair.
    Contrastive,
    /// [`triplet_batch_hard`] with the two views of a sample as the positive pair.
    Triplet,
    /// [`supcon`] with the dataset's class labels defining positives (needs labels).
    SupCon,
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NtXent => "ntxent",
            Self::Contrastive => "contrastive",
            Self::Triplet => "triplet",
            Self::SupCon => "supcon",
        })
    }
}

impl FromStr for LossKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "ntxent" | "infonce" => Ok(Self::NtXent),
            "contrastive" => Ok(Self::Contrastive),
            "triplet" => Ok(Self::Triplet),
            "supcon" => Ok(Self::SupCon),
            _ => Err(format!(
                "unknown loss `{s}`; expected ntxent, contrastive, triplet or supcon"
            )),
        }
    }
}

/// A loss with its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// Which objective.
    pub kind: LossKind,
    /// Temperature of NT-Xent and SupCon (SimCLR: 0.5 for CIFAR-10 at batch 512, 0.1–0.2
    /// for large batches).
    pub temperature: f64,
    /// Margin of the contrastive and triplet losses.
    pub margin: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            kind: LossKind::NtXent,
            temperature: 0.5,
            margin: 0.5,
        }
    }
}

impl LossConfig {
    /// The loss of a batch whose views are `z1[i]`, `z2[i]`; `class_labels` (one per sample)
    /// are needed by SupCon only.
    ///
    /// # Shapes
    /// `z1`, `z2`: `[N, D]` → scalar.
    pub fn compute(
        &self,
        z1: &Tensor,
        z2: &Tensor,
        class_labels: Option<&[u32]>,
    ) -> Result<Tensor> {
        match self.kind {
            LossKind::NtXent => nt_xent(z1, z2, self.temperature),
            kind => {
                let n = z1.dim(0)?;
                if z1.dims() != z2.dims() {
                    bail!(
                        "z1 and z2 must have the same shape, got {:?} and {:?}",
                        z1.dims(),
                        z2.dims()
                    )
                }
                let both = Tensor::cat(&[z1, z2], 0)?;
                match kind {
                    LossKind::SupCon => {
                        let Some(labels) = class_labels else {
                            bail!(
                                "the supcon loss needs class labels; use a labelled dataset or --loss ntxent"
                            )
                        };
                        if labels.len() != n {
                            bail!("{} class labels for {n} samples", labels.len())
                        }
                        let l: Vec<u32> = labels.iter().chain(labels).copied().collect();
                        supcon(&both, &l, self.temperature)
                    }
                    LossKind::Contrastive => {
                        margin_contrastive(&both, &view_labels(n), self.margin)
                    }
                    _ => triplet_batch_hard(&both, &view_labels(n), self.margin),
                }
            }
        }
    }
}

/// Casts to f32 for reporting.
pub fn scalar(t: &Tensor) -> Result<f32> {
    t.to_dtype(DType::F32)?.to_scalar::<f32>()
}
