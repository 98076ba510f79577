//! Exact cosine search over embeddings, and the retrieval metrics of metric learning.
//!
//! [`Index`] holds a gallery's embeddings L2-normalised; [`Index::search`] scores queries
//! against it in blocks of [`Index::CHUNK`] gallery rows × [`Index::QUERY_BLOCK`] queries (one
//! matrix product each), keeping each query's best `k` as it goes, so the memory beyond the
//! gallery itself is bounded by the block, not the gallery's size.
//!
//! [`retrieval_metrics`] gives recall@k (the share of queries with a same-label hit among
//! their first k) and mAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check": for a
//! query with R same-label gallery items, the mean over the first R hits of the precision at
//! each same-label hit, divided by R).
//!
//! ```
//! use simclr_eval::{Features, Index};
//!
//! // Three gallery embeddings and one query, two dimensions each.
//! let gallery = [1.0, 0.0, 0.0, 1.0, 0.7, 0.7];
//! let index = Index::new(Features { data: &gallery, dim: 2 }).unwrap();
//! let hits = index.search(Features { data: &[0.9, 0.1], dim: 2 }, 2).unwrap();
//! assert_eq!(hits[0][0].index, 0); // (1, 0) is nearest
//! assert_eq!(hits[0][1].index, 2); // then (0.7, 0.7)
//! assert!((hits[0][0].similarity - 0.9939).abs() < 1e-4);
//! ```

use candle_core::{Device, Tensor};

use crate::{EvalError, Features};

/// A gallery item found for a query.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// Row of the gallery.
    pub index: usize,
    /// Cosine similarity to the query.
    pub similarity: f32,
}

/// A gallery of L2-normalised embeddings, searched exactly by cosine similarity.
#[derive(Clone, Debug)]
pub struct Index {
    rows: Vec<f32>,
    dim: usize,
}

/// `x` with each row scaled to unit length (a zero row stays zero).
fn normalised(x: Features<'_>) -> Vec<f32> {
    let mut out = x.data.to_vec();
    for row in out.chunks_exact_mut(x.dim.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    out
}

fn check(x: Features<'_>, what: &str) -> Result<(), EvalError> {
    if x.dim == 0 || !x.data.len().is_multiple_of(x.dim) {
        return Err(EvalError::Shape(format!(
            "{what}: {} values do not make rows of {}",
            x.data.len(),
            x.dim
        )));
    }
    if let Some(i) = x.data.iter().position(|v| !v.is_finite()) {
        return Err(EvalError::Shape(format!(
            "{what}: value {i} (row {}) is not finite",
            i / x.dim
        )));
    }
    Ok(())
}

impl Index {
    /// Gallery rows scored per block.
    pub const CHUNK: usize = 8192;
    /// Queries scored per block.
    pub const QUERY_BLOCK: usize = 256;

    /// An index of `gallery`'s rows (normalised here).
    ///
    /// # Errors
    /// A ragged matrix or a value that is not finite.
    pub fn new(gallery: Features<'_>) -> Result<Self, EvalError> {
        check(gallery, "gallery")?;
        Ok(Self {
            rows: normalised(gallery),
            dim: gallery.dim,
        })
    }

    /// Number of gallery rows.
    pub fn len(&self) -> usize {
        self.rows.len() / self.dim
    }

    /// Whether the gallery is empty.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Values per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The `k` most similar gallery rows of every query, most similar first (ties by gallery
    /// row); fewer when the gallery is smaller.
    pub fn search(&self, queries: Features<'_>, k: usize) -> Result<Vec<Vec<Hit>>, EvalError> {
        self.search_excluding(queries, k, |_| None)
    }

    /// [`search`](Self::search) leaving out, for query `q`, the gallery row `exclude(q)` (the
    /// query itself, when queries and gallery are one set).
    pub fn search_excluding(
        &self,
        queries: Features<'_>,
        k: usize,
        exclude: impl Fn(usize) -> Option<usize>,
    ) -> Result<Vec<Vec<Hit>>, EvalError> {
        check(queries, "queries")?;
        if queries.dim != self.dim {
            return Err(EvalError::Shape(format!(
                "queries have {} dimensions, the gallery {}",
                queries.dim, self.dim
            )));
        }
        let q = normalised(queries);
        let n_q = q.len() / self.dim;
        let k = k.min(self.len());
        let mut best: Vec<Vec<Hit>> = vec![Vec::with_capacity(2 * k + 1); n_q];
        if k == 0 {
            return Ok(best);
        }
        let dev = Device::Cpu;
        // The gallery's blocks, transposed once for every query block.
        let chunks: Vec<(usize, Tensor)> = (0..self.len())
            .step_by(Self::CHUNK)
            .map(|g0| {
                let gn = Self::CHUNK.min(self.len() - g0);
                let g = Tensor::from_slice(
                    &self.rows[g0 * self.dim..(g0 + gn) * self.dim],
                    (gn, self.dim),
                    &dev,
                )?;
                Ok((g0, g.t()?.contiguous()?))
            })
            .collect::<Result<_, EvalError>>()?;
        // Each query's k-th best similarity so far: a candidate must beat it (on a tie the
        // earlier gallery row, already kept, wins).
        let mut floor = vec![f32::NEG_INFINITY; n_q];
        for q0 in (0..n_q).step_by(Self::QUERY_BLOCK) {
            let qn = Self::QUERY_BLOCK.min(n_q - q0);
            let qt = Tensor::from_slice(
                &q[q0 * self.dim..(q0 + qn) * self.dim],
                (qn, self.dim),
                &dev,
            )?;
            for (g0, gt) in &chunks {
                let gn = gt.dim(1)?;
                let sims: Vec<f32> = qt.matmul(gt)?.flatten_all()?.to_vec1()?;
                for (i, row) in sims.chunks_exact(gn).enumerate() {
                    let skip = exclude(q0 + i);
                    let (keep, floor) = (&mut best[q0 + i], &mut floor[q0 + i]);
                    for (j, &s) in row.iter().enumerate() {
                        let index = g0 + j;
                        if s > *floor && skip != Some(index) {
                            keep.push(Hit {
                                index,
                                similarity: s,
                            });
                            if keep.len() >= 2 * k {
                                truncate_best(keep, k);
                                *floor = keep[k - 1].similarity;
                            }
                        }
                    }
                }
            }
        }
        for keep in &mut best {
            truncate_best(keep, k);
        }
        Ok(best)
    }
}

/// Keeps the `k` best hits, sorted most similar first (ties: lower gallery row first).
fn truncate_best(hits: &mut Vec<Hit>, k: usize) {
    let order = |a: &Hit, b: &Hit| {
        b.similarity
            .total_cmp(&a.similarity)
            .then(a.index.cmp(&b.index))
    };
    if hits.len() > k && k > 0 {
        hits.select_nth_unstable_by(k - 1, order);
    }
    hits.truncate(k);
    hits.sort_unstable_by(order);
}

/// What [`retrieval_metrics`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct RetrievalReport {
    /// `(k, recall@k)`: the share of queries with a same-label item among their first k hits.
    pub recall: Vec<(usize, f64)>,
    /// Mean average precision at R (R: the query's same-label gallery items).
    pub map_at_r: f64,
    /// Queries measured (those with at least one same-label gallery item).
    pub queries: usize,
    /// Queries left out: no gallery item shares their label.
    pub without_match: usize,
}

/// Recall@k for every `k` in `ks` and mAP@R of `queries` against `index`. With `same_set`
/// (query `q` is gallery row `q`: one set, or its first rows), each query's own row is
/// excluded.
///
/// # Errors
/// Labels that do not match the rows, shapes that disagree, or no query with a same-label
/// gallery item.
pub fn retrieval_metrics(
    index: &Index,
    gallery_labels: &[u32],
    queries: Features<'_>,
    query_labels: &[u32],
    ks: &[usize],
    same_set: bool,
) -> Result<RetrievalReport, EvalError> {
    if gallery_labels.len() != index.len() {
        return Err(EvalError::Shape(format!(
            "{} gallery labels for {} gallery rows",
            gallery_labels.len(),
            index.len()
        )));
    }
    if query_labels.len() * queries.dim != queries.data.len() {
        return Err(EvalError::Shape(format!(
            "{} query labels for {} query rows",
            query_labels.len(),
            queries.data.len() / queries.dim.max(1)
        )));
    }
    if same_set && query_labels.len() > index.len() {
        return Err(EvalError::Shape(
            "queries and gallery are one set, but there are more queries than gallery rows".into(),
        ));
    }
    let classes = gallery_labels.iter().max().map_or(0, |&m| m as usize + 1);
    let mut per_class = vec![0usize; classes];
    for &l in gallery_labels {
        per_class[l as usize] += 1;
    }
    // R for each query: its label's gallery count, less itself when the sets are one.
    let r: Vec<usize> = query_labels
        .iter()
        .map(|&l| per_class.get(l as usize).copied().unwrap_or(0) - usize::from(same_set))
        .collect();
    let depth = r
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .max(ks.iter().copied().max().unwrap_or(0));
    let (mut found, mut ap_sum, mut measured) = (vec![0usize; ks.len()], 0.0, 0usize);
    // By blocks of queries: the depth searched is R, thousands of hits a query on a large
    // labelled gallery, so all queries' hits at once would not be bounded.
    let dim = queries.dim;
    let n_q = query_labels.len();
    for q0 in (0..n_q).step_by(Index::QUERY_BLOCK) {
        let qn = Index::QUERY_BLOCK.min(n_q - q0);
        let block = Features {
            data: &queries.data[q0 * dim..(q0 + qn) * dim],
            dim,
        };
        let hits = index.search_excluding(block, depth, |q| same_set.then_some(q0 + q))?;
        for (i, hits) in hits.iter().enumerate() {
            let q = q0 + i;
            let (label, r) = (query_labels[q], r[q]);
            if r == 0 {
                continue;
            }
            measured += 1;
            let relevant: Vec<bool> = hits
                .iter()
                .map(|h| gallery_labels[h.index] == label)
                .collect();
            for (slot, &k) in ks.iter().enumerate() {
                if relevant.iter().take(k).any(|&x| x) {
                    found[slot] += 1;
                }
            }
            let (mut so_far, mut ap) = (0usize, 0.0);
            for (i, &rel) in relevant.iter().take(r).enumerate() {
                if rel {
                    so_far += 1;
                    ap += so_far as f64 / (i + 1) as f64;
                }
            }
            ap_sum += ap / r as f64;
        }
    }
    if measured == 0 {
        return Err(EvalError::Shape(
            "no query has a gallery item of its label: nothing to measure".into(),
        ));
    }
    Ok(RetrievalReport {
        recall: ks
            .iter()
            .zip(&found)
            .map(|(&k, &f)| (k, f as f64 / measured as f64))
            .collect(),
        map_at_r: ap_sum / measured as f64,
        queries: measured,
        without_match: query_labels.len() - measured,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_the_full_sort_across_chunks() {
        // More gallery rows than one chunk, with the best ones in the last chunk.
        let n = Index::CHUNK + 100;
        let dim = 3;
        let mut g = Vec::with_capacity(n * dim);
        for i in 0..n {
            let a = i as f32 * 0.37;
            g.extend([a.cos(), a.sin(), (i % 7) as f32 * 0.1]);
        }
        let index = Index::new(Features { data: &g, dim }).unwrap();
        let q = [1.0, 0.2, 0.3, -0.5, 1.0, 0.0];
        let hits = index.search(Features { data: &q, dim }, 17).unwrap();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        for (qi, qrow) in q.chunks_exact(dim).enumerate() {
            let mut all: Vec<(f32, usize)> = g
                .chunks_exact(dim)
                .enumerate()
                .map(|(i, r)| {
                    let dot: f32 = r.iter().zip(qrow).map(|(a, b)| a * b).sum();
                    (dot / (norm(r) * norm(qrow)), i)
                })
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let got: Vec<usize> = hits[qi].iter().map(|h| h.index).collect();
            let want: Vec<usize> = all[..17].iter().map(|x| x.1).collect();
            assert_eq!(got, want);
            for (h, w) in hits[qi].iter().zip(&all) {
                assert!((h.similarity - w.0).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn metrics_match_a_hand_computed_case() {
        // Gallery on the unit circle: angles 0°, 10°, 20° (class 0), 90°, 100° (class 1).
        let deg = |a: f32| [a.to_radians().cos(), a.to_radians().sin()];
        let g: Vec<f32> = [0.0, 10.0, 20.0, 90.0, 100.0]
            .iter()
            .flat_map(|&a| deg(a))
            .collect();
        let gl = [0, 0, 0, 1, 1];
        let index = Index::new(Features { data: &g, dim: 2 }).unwrap();
        // Query at 55°, class 1: order by angle distance 55→ 90 (35°), 20 (35°: tie, but
        // cos is equal; row 2 < row 3 wins the tie), 100 (45°), 10 (45°), 0 (55°).
        // Compute with 56° instead to avoid ties: 90 (34°), 20 (36°), 100 (44°), 10 (46°), 0.
        // Relevant (class 1): ranks 1 and 3. R = 2: AP@R = (1/1 + 0) / 2 = 0.5.
        // recall@1 = 1 (rank 1 is class 1).
        // Query at 5°, class 0: 0 (5°), 10 (5°: tie → row 0 first), 20, 90, 100: ranks 1–3
        // relevant, R = 3: AP@R = 1.
        let q: Vec<f32> = [56.0, 5.0].iter().flat_map(|&a| deg(a)).collect();
        let r = retrieval_metrics(
            &index,
            &gl,
            Features { data: &q, dim: 2 },
            &[1, 0],
            &[1, 2],
            false,
        )
        .unwrap();
        assert_eq!(r.recall, vec![(1, 1.0), (2, 1.0)]);
        assert!((r.map_at_r - 0.75).abs() < 1e-12, "{r:?}");
        // Query at 30°, class 1: 20 (10°), 10, 0 (30°), 90 (60°)… first class-1 hit at rank 4:
        // recall@1 = recall@2 = 0; AP@R (R = 2) over ranks 1–2 = 0.
        let q30 = deg(30.0);
        let r = retrieval_metrics(
            &index,
            &gl,
            Features { data: &q30, dim: 2 },
            &[1],
            &[1, 2, 4],
            false,
        )
        .unwrap();
        assert_eq!(r.recall, vec![(1, 0.0), (2, 0.0), (4, 1.0)]);
        assert_eq!(r.map_at_r, 0.0);
    }

    #[test]
    fn same_set_excludes_each_query_itself() {
        // Two tight clusters; against itself, every item's nearest other item shares its label.
        let g = [1.0, 0.0, 0.99, 0.1, 0.0, 1.0, 0.1, 0.99];
        let gl = [0, 0, 1, 1];
        let index = Index::new(Features { data: &g, dim: 2 }).unwrap();
        let f = Features { data: &g, dim: 2 };
        let hits = index.search_excluding(f, 1, Some).unwrap();
        assert_eq!(
            hits.iter().map(|h| h[0].index).collect::<Vec<_>>(),
            [1, 0, 3, 2]
        );
        let r = retrieval_metrics(&index, &gl, f, &gl, &[1], true).unwrap();
        assert_eq!((r.recall[0].1, r.map_at_r, r.queries), (1.0, 1.0, 4));
        // A label alone in the gallery has no match once the query itself is excluded.
        let r = retrieval_metrics(&index, &[0, 0, 1, 2], f, &[0, 0, 1, 2], &[1], true).unwrap();
        assert_eq!((r.queries, r.without_match), (2, 2));
    }

    #[test]
    fn bad_shapes_and_values_are_errors() {
        assert!(
            Index::new(Features {
                data: &[1.0, 2.0, 3.0],
                dim: 2
            })
            .is_err()
        );
        assert!(
            Index::new(Features {
                data: &[1.0, f32::NAN],
                dim: 2
            })
            .is_err()
        );
        let index = Index::new(Features {
            data: &[1.0, 0.0],
            dim: 2,
        })
        .unwrap();
        assert!(
            index
                .search(
                    Features {
                        data: &[1.0, 0.0, 0.0],
                        dim: 3
                    },
                    1
                )
                .is_err()
        );
        assert_eq!(
            index
                .search(
                    Features {
                        data: &[0.0, 1.0],
                        dim: 2
                    },
                    5
                )
                .unwrap()[0]
                .len(),
            1
        );
    }
}
