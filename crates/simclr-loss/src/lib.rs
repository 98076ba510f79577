//! Contrastive objectives for simclr-rs, on candle, differentiable end to end.
//!
//! - [`nt_xent`]: SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020,
//!   <https://arxiv.org/abs/2002.05709>, Algorithm 1), the default; [`nt_xent_gathered`] is the
//!   same loss with candidates gathered from every data-parallel rank.
//! - [`dcl`]: decoupled contrastive loss (Yeh et al. 2022, <https://arxiv.org/abs/2110.06848>):
//!   NT-Xent without the positive in the denominator, optionally with DCLW's weighting of the
//!   positive term; [`dcl_gathered`] for data-parallel runs.
//! - [`supcon`]: supervised contrastive loss (Khosla et al. 2020, `L_out`).
//! - [`margin_contrastive`]: pairwise contrastive loss with a margin (Hadsell, Chopra, LeCun 2006).
//! - [`triplet_batch_hard`]: triplet loss with batch-hard mining (Hermans, Beyer, Leibe 2017).
//!
//! Every loss L2-normalises its embeddings first and returns a scalar tensor. Bad arguments
//! (τ ≤ 0, mismatched shapes, empty batches, rank ≠ 2) fail with `candle_core::bail!`
//! naming the offending values.

#![forbid(unsafe_code)]

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

mod masks;
mod metric;

pub use masks::clear_mask_cache;
use masks::{MaskKind, cached};
pub use metric::{Mining, arcface, triplet};

/// The additive self-pair mask of `rows` anchors against `cols` keys: `MASKED` at
/// `(i, offset + i)`, 0 elsewhere. Built on `like`'s device from index ranges and kept for
/// the next batch of the same shape (no host matrix per step).
fn self_pair_mask(rows: usize, cols: usize, offset: usize, like: &Tensor) -> Result<Tensor> {
    cached(MaskKind::SelfPair, rows, cols, offset, like, || {
        let dev = like.device();
        let r = Tensor::arange(offset as u32, (offset + rows) as u32, dev)?.reshape((rows, 1))?;
        let c = Tensor::arange(0u32, cols as u32, dev)?.reshape((1, cols))?;
        r.broadcast_eq(&c)?
            .to_dtype(like.dtype())?
            .affine(MASKED, 0.0)
    })
}

/// Key index of each local anchor's partner, `offset + (i + n) mod 2n` for `i < 2n`, as a
/// `[2n, 1]` u32 tensor on `like`'s device (cached like the masks).
fn partner_index(m: usize, offset: usize, like: &Tensor) -> Result<Tensor> {
    cached(MaskKind::Partner, m, 1, offset, like, || {
        let dev = like.device();
        let n = m / 2;
        let (o, n32, m32) = (offset as u32, n as u32, m as u32);
        let second = Tensor::arange(o + n32, o + m32, dev)?; // partners of the first views
        let first = Tensor::arange(o, o + n32, dev)?; // partners of the second views
        Tensor::cat(&[second, first], 0)?.reshape((m, 1))
    })
}

/// `[m, m]` indicator of `i < j` (`upper`) or `i != j` (else), in `like`'s dtype, cached.
fn pair_indicator(m: usize, upper: bool, like: &Tensor) -> Result<Tensor> {
    let kind = if upper {
        MaskKind::Upper
    } else {
        MaskKind::OffDiagonal
    };
    cached(kind, m, m, 0, like, || {
        let dev = like.device();
        let r = Tensor::arange(0u32, m as u32, dev)?.reshape((m, 1))?;
        let c = Tensor::arange(0u32, m as u32, dev)?.reshape((1, m))?;
        let ind = if upper {
            r.broadcast_lt(&c)?
        } else {
            r.broadcast_ne(&c)?
        };
        ind.to_dtype(like.dtype())
    })
}

/// `[m, m]` indicator of `labels[i] == labels[j]` in `like`'s dtype, built on the device from
/// the `m` labels (only they travel).
fn same_label(labels: &[u32], like: &Tensor) -> Result<Tensor> {
    let m = labels.len();
    let l = Tensor::from_slice(labels, m, like.device())?;
    l.reshape((m, 1))?
        .broadcast_eq(&l.reshape((1, m))?)?
        .to_dtype(like.dtype())
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
    let local = both_views(z1, z2)?;
    nt_xent_gathered(&local, &local, 0, temperature)
}

/// `[z1; z2]`, the `[2N, D]` layout of the two-view losses (views 1 then views 2), after
/// checking that both are `[N, D]` alike.
fn both_views(z1: &Tensor, z2: &Tensor) -> Result<Tensor> {
    let (n1, d1) = check_rank2(z1, "z1")?;
    let (n2, d2) = check_rank2(z2, "z2")?;
    if (n1, d1) != (n2, d2) {
        bail!(
            "z1 and z2 must have the same shape, got {:?} and {:?}",
            z1.dims(),
            z2.dims()
        )
    }
    Tensor::cat(&[z1, z2], 0)
}

/// The checked shapes and the `[2n, K]` cosine-similarity logits (÷ τ) of the gathered losses:
/// `local`'s `2n` views (two per sample) against the `K = world · 2n` gathered keys, of which
/// this rank's block is `rank`. Returns the logits, `2n` and `K`.
fn gathered_logits(
    local: &Tensor,
    keys: &Tensor,
    rank: usize,
    temperature: f64,
) -> Result<(Tensor, usize, usize)> {
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
    let q = l2_normalize(local)?; // [2n, D]
    let kk = l2_normalize(keys)?; // [K, D]
    Ok(((q.matmul(&kk.t()?)? / temperature)?, m, k))
}

/// NT-Xent with the candidates gathered from every rank of a data-parallel run.
///
/// `local` holds this rank's `2n` views, its `n` first views then its `n` second views (the
/// layout of [`nt_xent`]'s concatenation). `keys` holds every rank's `local`, concatenated in
/// rank order (`[world · 2n, D]`). Anchors are the local rows; the candidates are all keys but
/// the anchor itself (key row `rank · 2n + i`); the positive of local row `i` is key row
/// `rank · 2n + (i + n) mod 2n`. With one rank (`keys == local`, `rank == 0`) this is
/// [`nt_xent`].
///
/// Gradients flow into both `local` (as anchors) and `keys` (as candidates). Every rank's
/// loss depends on every rank's keys, so the gather that builds `keys` must, in its backward,
/// **sum the key gradient over all ranks and then return this rank's block**; returning only
/// this rank's block of its own key gradient drops the other ranks' negative-pair terms
/// (lightly fixed exactly this in PR #1531, solo-learn in #232).
/// `simclr_dist::all_gather_with_grad` is that gather.
///
/// # Shapes
/// `local`: `[2n, D]`, `keys`: `[world · 2n, D]` → scalar (mean over the `2n` local anchors).
pub fn nt_xent_gathered(
    local: &Tensor,
    keys: &Tensor,
    rank: usize,
    temperature: f64,
) -> Result<Tensor> {
    let (logits, m, k) = gathered_logits(local, keys, rank, temperature)?;
    let offset = rank * m;
    let mask = self_pair_mask(m, k, offset, &logits)?; // self-pairs out
    let logp = candle_nn::ops::log_softmax(&(logits + mask)?, D::Minus1)?; // [2n, K]
    let idx = partner_index(m, offset, &logp)?; // [2n, 1]
    logp.gather(&idx, 1)?.mean_all()?.neg() // mean over anchors of −log p(partner)
}

/// The additive mask of DCL's negatives: `MASKED` at each anchor's own key (`offset + i`) and
/// at its partner's (`offset + (i + n) mod 2n`), 0 elsewhere. Cached like the self-pair mask.
fn self_and_partner_mask(rows: usize, cols: usize, offset: usize, like: &Tensor) -> Result<Tensor> {
    cached(MaskKind::SelfAndPartner, rows, cols, offset, like, || {
        let dev = like.device();
        let c = Tensor::arange(0u32, cols as u32, dev)?.reshape((1, cols))?;
        let own = Tensor::arange(offset as u32, (offset + rows) as u32, dev)?.reshape((rows, 1))?;
        let partner = partner_index(rows, offset, like)?; // [rows, 1]
        let hit = (own.broadcast_eq(&c)?.to_dtype(like.dtype())?
            + partner.broadcast_eq(&c)?.to_dtype(like.dtype())?)?;
        hit.affine(MASKED, 0.0)
    })
}

/// Decoupled contrastive loss (DCL, Yeh et al. 2022, eq. 6) over the 2N views of a batch:
/// for each view `i` with partner `p`, `−s_ip / τ + log Σ_{k ∉ {i, p}} exp(s_ik / τ)` with
/// `s` the cosine similarity, averaged over the 2N views. It is NT-Xent with the positive
/// taken out of the denominator, which removes NT-Xent's negative-positive coupling: the
/// gradient no longer shrinks when the positive is already easy, which the paper found to
/// matter most at small batches and short schedules.
///
/// `sigma`: `None` for DCL; `Some(σ)` for DCLW, whose positive term of pair `i` is weighted by
/// `w_i = 2 − N · softmax_i(s_ii′ / σ)` (the softmax over the N pairs of the batch, the weights
/// held constant in the backward pass; they average to 1 and favour the pairs whose views are
/// far apart). lightly's `DCLLoss` splits the denominator into two log-sum-exps (same-view and
/// other-view negatives); this is the paper's single one.
///
/// # Shapes
/// `z1`, `z2`: `[N, D]` → scalar.
pub fn dcl(z1: &Tensor, z2: &Tensor, temperature: f64, sigma: Option<f64>) -> Result<Tensor> {
    let local = both_views(z1, z2)?;
    dcl_gathered(&local, &local, 0, temperature, sigma)
}

/// [`dcl`] with the negatives gathered from every rank of a data-parallel run: the layout,
/// the gather and its gradient rule are [`nt_xent_gathered`]'s. DCLW's weights are normalised
/// over this rank's own pairs (as lightly's), so with DCLW the mean over ranks is not exactly
/// the loss of the whole batch; DCL's is.
///
/// # Shapes
/// `local`: `[2n, D]`, `keys`: `[world · 2n, D]` → scalar (mean over the `2n` local anchors).
pub fn dcl_gathered(
    local: &Tensor,
    keys: &Tensor,
    rank: usize,
    temperature: f64,
    sigma: Option<f64>,
) -> Result<Tensor> {
    if let Some(s) = sigma
        && !(s.is_finite() && s > 0.0)
    {
        bail!("DCLW's sigma must be a finite number > 0, got {s}")
    }
    let (logits, m, k) = gathered_logits(local, keys, rank, temperature)?;
    if k < 3 {
        bail!("DCL needs at least one negative: two samples or more in the (global) batch")
    }
    let offset = rank * m;
    let idx = partner_index(m, offset, &logits)?; // [2n, 1]
    let positive = logits.gather(&idx, 1)?.squeeze(1)?; // [2n]: s_ip / τ
    let negatives = (&logits + self_and_partner_mask(m, k, offset, &logits)?)?.log_sum_exp(1)?;
    let positive = match sigma {
        None => positive,
        Some(s) => {
            // cos of each local pair, from the anchors' positive logits (constant weights).
            let n = m / 2;
            let cos = positive
                .narrow(0, 0, n)?
                .detach()
                .affine(temperature / s, 0.0)?;
            let w = candle_nn::ops::softmax(&cos, 0)?.affine(-(n as f64), 2.0)?; // [n]
            (positive * Tensor::cat(&[&w, &w], 0)?)?
        }
    };
    (negatives - positive)?.mean_all()
}

/// Share of the 2N views whose most similar other view is their partner: SimCLR's contrastive
/// top-1 accuracy, a training metric.
///
/// # Shapes
/// `z1`, `z2`: `[N, D]`.
pub fn contrastive_accuracy(z1: &Tensor, z2: &Tensor) -> Result<f32> {
    contrastive_accuracy_t(z1, z2)?.to_scalar::<f32>()
}

/// [`contrastive_accuracy`] as an f32 scalar tensor on the embeddings' device, computed
/// there: the training loop reads it back only when it logs.
///
/// # Shapes
/// `z1`, `z2`: `[N, D]` → scalar.
pub fn contrastive_accuracy_t(z1: &Tensor, z2: &Tensor) -> Result<Tensor> {
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
    let sim = (&sim + self_pair_mask(2 * n, 2 * n, 0, &sim)?)?;
    let best = sim.argmax_keepdim(D::Minus1)?; // [2N, 1]
    let partner = partner_index(2 * n, 0, &sim)?; // [2N, 1]
    best.eq(&partner)?.to_dtype(DType::F32)?.mean_all()
}

/// How many rows carry each label: `counts[i]` is the number of rows (itself included) with
/// row `i`'s label. O(M), on the host, where the labels are.
fn label_counts(labels: &[u32]) -> Vec<usize> {
    let mut per: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for &l in labels {
        *per.entry(l).or_default() += 1;
    }
    labels.iter().map(|l| per[l]).collect()
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
    let logp =
        candle_nn::ops::log_softmax(&(&logits + self_pair_mask(m, m, 0, &logits)?)?, D::Minus1)?;
    let pos = (same_label(labels, &z)? * pair_indicator(m, false, &z)?)?; // [M, M]
    let counts: Vec<f64> = label_counts(labels)
        .iter()
        .map(|&c| (c - 1) as f64)
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

/// [`supcon`] for one rank of a data-parallel run: this rank's `local` rows as anchors
/// against the `keys` gathered from every rank (rank order; `local` is block `rank`), with
/// `labels` the labels of all the keys. Positives are the other keys sharing the anchor's
/// label, on any rank. The loss is this rank's share of the global mean: the sum over its
/// anchors divided by the number of anchors with a positive in the whole global batch, times
/// the world size, so that the mean over ranks (what averaging gradients computes) is
/// [`supcon`] of the whole batch. The gather needs the gradient rule of
/// [`nt_xent_gathered`]'s.
///
/// # Shapes
/// `local`: `[m, D]`, `keys`: `[world · m, D]`, `labels`: `world · m` → scalar.
pub fn supcon_gathered(
    local: &Tensor,
    keys: &Tensor,
    labels: &[u32],
    rank: usize,
    temperature: f64,
) -> Result<Tensor> {
    check_temperature(temperature)?;
    let (m, d) = check_rank2(local, "local views")?;
    let k = check_labels(keys, labels)?;
    if keys.dim(1)? != d || m == 0 || k % m != 0 || rank >= k / m {
        bail!(
            "gathered keys {:?} must be world × {m} rows of dimension {d} with rank {rank} < world",
            keys.dims()
        )
    }
    let world = k / m;
    let offset = rank * m;
    let counts: Vec<usize> = label_counts(labels).iter().map(|&c| c - 1).collect();
    let anchors = counts.iter().filter(|&&c| c > 0).count();
    if anchors == 0 {
        bail!("supcon needs at least two rows sharing a label; every label is unique")
    }
    let q = l2_normalize(local)?;
    let kk = l2_normalize(keys)?;
    let logits = (q.matmul(&kk.t()?)? / temperature)?; // [m, K]
    let mask = self_pair_mask(m, k, offset, &logits)?;
    let not_self = mask.affine(-1.0 / MASKED, 1.0)?; // 0 at the self-pair, 1 elsewhere
    let logp = candle_nn::ops::log_softmax(&(logits + mask)?, D::Minus1)?;
    let mine = &labels[offset..offset + m];
    let l_all = Tensor::from_slice(labels, (1, k), q.device())?;
    let l_mine = Tensor::from_slice(mine, (m, 1), q.device())?;
    let pos = (l_mine.broadcast_eq(&l_all)?.to_dtype(q.dtype())? * not_self)?;
    let inv: Vec<f64> = counts[offset..offset + m]
        .iter()
        .map(|&c| if c > 0 { 1.0 / c as f64 } else { 0.0 })
        .collect();
    let inv = Tensor::from_vec(inv, m, q.device())?.to_dtype(q.dtype())?;
    let per_anchor = (logp * pos)?.sum(1)?.mul(&inv)?; // [m]
    (per_anchor.sum_all()? * (world as f64 / anchors as f64))?.neg()
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
    let upper = pair_indicator(m, true, &z)?; // i < j
    let pos = (same_label(labels, &z)? * &upper)?;
    let neg = (upper - &pos)?;
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

/// Unordered pairs `i < j` that share a label, and those that do not.
fn pos_neg_counts(labels: &[u32]) -> (usize, usize) {
    let m = labels.len();
    let mut per: std::collections::HashMap<u32, usize> = std::collections::HashMap::new();
    for &l in labels {
        *per.entry(l).or_default() += 1;
    }
    let np: usize = per.values().map(|&c| c * (c - 1) / 2).sum();
    (np, m * m.saturating_sub(1) / 2 - np)
}

/// Triplet loss with batch-hard mining (Hermans, Beyer, Leibe 2017) on L2-normalised
/// embeddings: each anchor takes its farthest positive (same label, not itself) and its
/// nearest negative; the loss is `mean max(0, d_ap − d_an + margin)` over anchors that have
/// both.
///
/// # Shapes
/// `embeddings`: `[M, D]`, `labels`: `M` → scalar.
pub fn triplet_batch_hard(embeddings: &Tensor, labels: &[u32], margin: f64) -> Result<Tensor> {
    triplet(embeddings, labels, margin, Mining::BatchHard).map(|(loss, _)| loss)
}

/// The objective `simclr pretrain` optimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossKind {
    /// [`nt_xent`] (SimCLR's; the default).
    NtXent,
    /// [`margin_contrastive`]: similar pairs from [`Pairs`].
    Contrastive,
    /// [`triplet`] with a [`Mining`] rule: positives from [`Pairs`].
    Triplet,
    /// [`supcon`] with the dataset's class labels defining positives (needs labels).
    SupCon,
    /// [`arcface`] over a learned class-weight matrix (needs labels).
    ArcFace,
    /// [`dcl`]: NT-Xent without the positive in the denominator.
    Dcl,
    /// [`dcl`] with DCLW's weighting of the positive term (σ from [`LossConfig::sigma`]).
    Dclw,
}

impl LossKind {
    /// Whether the loss needs class labels whatever [`Pairs`] says.
    pub fn needs_labels(self) -> bool {
        matches!(self, Self::SupCon | Self::ArcFace)
    }
}

impl fmt::Display for LossKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NtXent => "ntxent",
            Self::Contrastive => "contrastive",
            Self::Triplet => "triplet",
            Self::SupCon => "supcon",
            Self::ArcFace => "arcface",
            Self::Dcl => "dcl",
            Self::Dclw => "dclw",
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
            "arcface" => Ok(Self::ArcFace),
            "dcl" => Ok(Self::Dcl),
            "dclw" => Ok(Self::Dclw),
            _ => Err(format!(
                "unknown loss `{s}`; expected ntxent, dcl, dclw, contrastive, triplet, supcon or arcface"
            )),
        }
    }
}

/// Where the pair and triplet losses take their positives from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pairs {
    /// The two views of an image are the only positive pair (self-supervised).
    #[default]
    Views,
    /// Images of one class are positives, of different classes negatives (needs labels;
    /// a class-balanced batch gives every anchor positives).
    Labels,
}

impl fmt::Display for Pairs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Views => "views",
            Self::Labels => "labels",
        })
    }
}

impl FromStr for Pairs {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "views" => Ok(Self::Views),
            "labels" => Ok(Self::Labels),
            _ => Err(format!("unknown pairs `{s}`; expected views or labels")),
        }
    }
}

/// A loss with its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// Which objective.
    pub kind: LossKind,
    /// Temperature of NT-Xent, DCL and SupCon (SimCLR: 0.5 for CIFAR-10 at batch 512, 0.1–0.2
    /// for large batches).
    pub temperature: f64,
    /// Margin of the contrastive and triplet losses; ArcFace's angular margin (radians).
    pub margin: f64,
    /// Positives of the contrastive and triplet losses.
    #[serde(default)]
    pub pairs: Pairs,
    /// Triplet mining.
    #[serde(default)]
    pub mining: Mining,
    /// ArcFace's logit scale.
    #[serde(default = "default_scale")]
    pub scale: f64,
    /// DCLW's weighting temperature σ.
    #[serde(default = "default_sigma")]
    pub sigma: f64,
}

fn default_scale() -> f64 {
    64.0
}

/// DCLW's σ in the paper and in lightly.
pub const DEFAULT_SIGMA: f64 = 0.5;

fn default_sigma() -> f64 {
    DEFAULT_SIGMA
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            kind: LossKind::NtXent,
            temperature: 0.5,
            margin: 0.5,
            pairs: Pairs::Views,
            mining: Mining::BatchHard,
            scale: default_scale(),
            sigma: DEFAULT_SIGMA,
        }
    }
}

/// A loss value and, for the triplet loss, the share of its triplets that are active.
#[derive(Clone, Debug)]
pub struct LossOutput {
    /// The scalar loss.
    pub loss: Tensor,
    /// Triplet loss: the share of triplets with a positive hinge (a scalar tensor).
    pub active: Option<Tensor>,
}

impl LossConfig {
    /// Whether this configuration needs class labels.
    pub fn needs_labels(&self) -> bool {
        self.kind.needs_labels()
            || (self.pairs == Pairs::Labels
                && matches!(self.kind, LossKind::Contrastive | LossKind::Triplet))
    }

    /// The `sigma` argument of [`dcl`] for this objective: DCLW's σ for `dclw`, `None`
    /// otherwise (plain DCL).
    pub fn dclw_sigma(&self) -> Option<f64> {
        (self.kind == LossKind::Dclw).then_some(self.sigma)
    }

    /// The loss of a batch whose views are `z1[i]`, `z2[i]`; `class_labels` (one per sample)
    /// are needed by SupCon, ArcFace and labelled pairs, `class_weight` (`[C, D]`) by
    /// ArcFace.
    ///
    /// # Shapes
    /// `z1`, `z2`: `[N, D]` → scalar.
    pub fn compute(
        &self,
        z1: &Tensor,
        z2: &Tensor,
        class_labels: Option<&[u32]>,
        class_weight: Option<&Tensor>,
    ) -> Result<LossOutput> {
        let plain = |loss| LossOutput { loss, active: None };
        if self.kind == LossKind::NtXent {
            return nt_xent(z1, z2, self.temperature).map(plain);
        }
        if matches!(self.kind, LossKind::Dcl | LossKind::Dclw) {
            return dcl(z1, z2, self.temperature, self.dclw_sigma()).map(plain);
        }
        let both = both_views(z1, z2)?;
        let n = z1.dim(0)?;
        let labels = if self.needs_labels() {
            let Some(labels) = class_labels else {
                bail!(
                    "the {} loss{} needs class labels; use a labelled dataset",
                    self.kind,
                    if self.kind.needs_labels() {
                        ""
                    } else {
                        " with --pairs labels"
                    }
                )
            };
            if labels.len() != n {
                bail!("{} class labels for {n} samples", labels.len())
            }
            labels.iter().chain(labels).copied().collect()
        } else {
            view_labels(n)
        };
        match self.kind {
            LossKind::SupCon => supcon(&both, &labels, self.temperature).map(plain),
            LossKind::Contrastive => margin_contrastive(&both, &labels, self.margin).map(plain),
            LossKind::Triplet => {
                let (loss, active) = triplet(&both, &labels, self.margin, self.mining)?;
                Ok(LossOutput {
                    loss,
                    active: Some(active),
                })
            }
            LossKind::ArcFace => {
                let Some(w) = class_weight else {
                    bail!("the arcface loss needs its class-weight matrix")
                };
                arcface(&both, w, &labels, self.margin, self.scale).map(plain)
            }
            LossKind::NtXent | LossKind::Dcl | LossKind::Dclw => unreachable!("handled above"),
        }
    }
}

/// Casts to f32 for reporting.
pub fn scalar(t: &Tensor) -> Result<f32> {
    t.to_dtype(DType::F32)?.to_scalar::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn host(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f64) -> Vec<Vec<f64>> {
        (0..rows)
            .map(|i| (0..cols).map(|j| f(i, j)).collect())
            .collect()
    }

    #[test]
    fn device_built_masks_equal_host_built_ones_and_are_cached() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            clear_mask_cache();
            let like = Tensor::zeros(1, dtype, &Device::Cpu)?;
            let (m, k, offset) = (6, 18, 6);
            let mask = self_pair_mask(m, k, offset, &like)?;
            assert_eq!(mask.dtype(), dtype);
            let want = host(m, k, |i, j| if j == offset + i { MASKED } else { 0.0 });
            assert_eq!(mask.to_dtype(DType::F64)?.to_vec2::<f64>()?, want);
            let partner: Vec<u32> = partner_index(m, offset, &like)?.flatten_all()?.to_vec1()?;
            let want: Vec<u32> = (0..m).map(|i| (offset + (i + m / 2) % m) as u32).collect();
            assert_eq!(partner, want);
            for upper in [true, false] {
                let got = pair_indicator(5, upper, &like)?.to_dtype(DType::F64)?;
                let want = host(5, 5, |i, j| {
                    f64::from(u8::from(if upper { i < j } else { i != j }))
                });
                assert_eq!(got.to_vec2::<f64>()?, want);
            }
            let labels = [3, 1, 3, 0, 1];
            let got = same_label(&labels, &like)?.to_dtype(DType::F64)?;
            let want = host(5, 5, |i, j| f64::from(u8::from(labels[i] == labels[j])));
            assert_eq!(got.to_vec2::<f64>()?, want);
            // Four shapes built; asking again builds nothing: the same tensor comes back.
            assert_eq!(masks::mask_cache_len(), 4);
            let again = self_pair_mask(m, k, offset, &like)?;
            assert_eq!(masks::mask_cache_len(), 4);
            assert_eq!(again.id(), mask.id());
        }
        // Many shapes: the cache stays bounded.
        let like = Tensor::zeros(1, DType::F32, &Device::Cpu)?;
        for m in 1..40 {
            self_pair_mask(m, m, 0, &like)?;
        }
        assert!(masks::mask_cache_len() <= 16);
        Ok(())
    }

    #[test]
    fn pair_counts_match_a_double_loop() {
        let labels = [0, 1, 0, 2, 1, 0, 5];
        let (mut np, mut nn) = (0, 0);
        for i in 0..labels.len() {
            for j in i + 1..labels.len() {
                if labels[i] == labels[j] {
                    np += 1;
                } else {
                    nn += 1;
                }
            }
        }
        assert_eq!(pos_neg_counts(&labels), (np, nn));
        assert_eq!(label_counts(&labels), vec![3, 2, 3, 1, 2, 3, 1]);
    }
}
