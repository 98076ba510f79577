//! Multinomial logistic regression fitted with L-BFGS: the linear probe.

use candle_core::{Device, Tensor};

use crate::{EvalError, Features, top_k_accuracy};

/// How the probe is fitted.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// L2 strengths tried (penalty `l2 / 2 · ‖W‖²` on the mean cross-entropy; the bias is not
    /// penalised).
    pub l2_grid: Vec<f64>,
    /// Share of the training rows held out to pick the L2 strength.
    pub val_fraction: f64,
    /// L-BFGS iterations per fit.
    pub max_iter: usize,
    /// Seed of the held-out split.
    pub seed: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            l2_grid: vec![1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
            val_fraction: 0.1,
            max_iter: 300,
            seed: 0,
        }
    }
}

/// What [`linear_probe`] measured.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeReport {
    /// Test top-1 accuracy.
    pub top1: f64,
    /// Test top-5 accuracy (`None` with 5 classes or fewer).
    pub top5: Option<f64>,
    /// The L2 strength picked on the held-out slice.
    pub l2: f64,
    /// Held-out top-1 accuracy of each L2 strength tried, in grid order.
    pub val_top1: Vec<(f64, f64)>,
    /// Training top-1 accuracy of the final fit.
    pub train_top1: f64,
}

/// A fitted multinomial logistic regression on standardised features.
#[derive(Clone, Debug)]
pub struct LinearProbe {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    /// `[dim, classes]` weights, then `classes` biases.
    params: Vec<f32>,
    dim: usize,
    classes: usize,
}

fn onehot(labels: &[u32], classes: usize, device: &Device) -> Result<Tensor, EvalError> {
    let mut y = vec![0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        y[i * classes + l as usize] = 1.0;
    }
    Ok(Tensor::from_vec(y, (labels.len(), classes), device)?)
}

/// Mean cross-entropy plus L2 penalty, and its gradient, at `params`.
fn loss_grad(
    x: &Tensor,
    y: &Tensor,
    params: &[f32],
    dim: usize,
    classes: usize,
    l2: f64,
) -> Result<(f64, Vec<f32>), EvalError> {
    let n = x.dim(0)? as f64;
    let device = x.device();
    let w = Tensor::from_slice(&params[..dim * classes], (dim, classes), device)?;
    let b = Tensor::from_slice(&params[dim * classes..], classes, device)?;
    let logits = x.matmul(&w)?.broadcast_add(&b)?; // [n, k]
    let max = logits.max_keepdim(1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?; // [n, k], stable log-softmax
    let nll = -(f64::from((y * &logp)?.sum_all()?.to_scalar::<f32>()?) / n);
    let wsq: f64 = params[..dim * classes]
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum();
    let loss = nll + 0.5 * l2 * wsq;
    let diff = (logp.exp()? - y)?; // [n, k]: softmax - onehot
    let gw = (x.t()?.matmul(&diff)? / n)?; // [d, k]
    let gb = (diff.sum(0)? / n)?; // [k]
    let mut grad = gw.flatten_all()?.to_vec1::<f32>()?;
    for (g, &p) in grad.iter_mut().zip(&params[..dim * classes]) {
        *g += (l2 * f64::from(p)) as f32;
    }
    grad.extend(gb.to_vec1::<f32>()?);
    Ok((loss, grad))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises `f` with L-BFGS (memory 10, backtracking Armijo line search).
fn lbfgs(
    mut f: impl FnMut(&[f32]) -> Result<(f64, Vec<f32>), EvalError>,
    x0: Vec<f32>,
    max_iter: usize,
) -> Result<Vec<f32>, EvalError> {
    const MEMORY: usize = 10;
    let to64 = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
    let mut x = to64(&x0);
    let (mut fx, g) = f(&x0)?;
    let mut g = to64(&g);
    let mut hist: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::new(); // (s, y, 1 / y·s)
    for iter in 0..max_iter {
        let gnorm = dot(&g, &g).sqrt();
        if gnorm < 1e-6 {
            break;
        }
        // Two-loop recursion: d = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(hist.len());
        for (s, y, rho) in hist.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = hist
            .last()
            .map_or(1.0 / gnorm.max(1.0), |(s, y, _)| dot(s, y) / dot(y, y));
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in hist.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let mut d: Vec<f64> = q.into_iter().map(|v| -v).collect();
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            // Not a descent direction (curvature lost to rounding): restart from the gradient.
            hist.clear();
            d = g.iter().map(|v| -v / gnorm.max(1.0)).collect();
            slope = dot(&g, &d);
        }
        let mut step = 1.0;
        let (x_new, f_new, g_new) = loop {
            let cand: Vec<f32> = x
                .iter()
                .zip(&d)
                .map(|(xi, di)| (xi + step * di) as f32)
                .collect();
            let (fc, gc) = f(&cand)?;
            if fc <= fx + 1e-4 * step * slope || step < 1e-10 {
                break (to64(&cand), fc, to64(&gc));
            }
            step *= 0.5;
        };
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let ys = dot(&y, &s);
        let converged = (fx - f_new).abs() <= 1e-10 * fx.abs().max(1.0) && iter > 0;
        x = x_new;
        fx = f_new;
        g = g_new;
        if ys > 1e-12 {
            if hist.len() == MEMORY {
                hist.remove(0);
            }
            hist.push((s, y, 1.0 / ys));
        }
        if converged {
            break;
        }
    }
    Ok(x.into_iter().map(|v| v as f32).collect())
}

impl LinearProbe {
    /// Fits on `x` (standardised with its own per-feature mean and std) and `labels`.
    pub fn fit(
        x: Features<'_>,
        labels: &[u32],
        classes: usize,
        l2: f64,
        max_iter: usize,
    ) -> Result<Self, EvalError> {
        x.check(labels, "train")?;
        if let Some(&bad) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(EvalError::Shape(format!(
                "label {bad} is not below the {classes} classes"
            )));
        }
        let (n, d) = (x.rows(), x.dim);
        let mut mean = vec![0f64; d];
        let mut sq = vec![0f64; d];
        for row in x.data.chunks_exact(d) {
            for j in 0..d {
                let v = f64::from(row[j]);
                mean[j] += v;
                sq[j] += v * v;
            }
        }
        let mean: Vec<f32> = mean.iter().map(|m| (m / n as f64) as f32).collect();
        let inv_std: Vec<f32> = sq
            .iter()
            .zip(&mean)
            .map(|(q, &m)| {
                let var = q / n as f64 - f64::from(m) * f64::from(m);
                if var > 1e-12 {
                    (1.0 / var.sqrt()) as f32
                } else {
                    1.0
                }
            })
            .collect();
        let mut probe = Self {
            mean,
            inv_std,
            params: vec![0.0; d * classes + classes],
            dim: d,
            classes,
        };
        let device = Device::Cpu;
        let xt = probe.standardised(x, &device)?;
        let y = onehot(labels, classes, &device)?;
        probe.params = lbfgs(
            |p| loss_grad(&xt, &y, p, d, classes, l2),
            probe.params.clone(),
            max_iter,
        )?;
        Ok(probe)
    }

    fn standardised(&self, x: Features<'_>, device: &Device) -> Result<Tensor, EvalError> {
        let mut data = x.data.to_vec();
        for row in data.chunks_exact_mut(self.dim) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.inv_std) {
                *v = (*v - m) * s;
            }
        }
        Ok(Tensor::from_vec(data, (x.rows(), self.dim), device)?)
    }

    /// ‖W‖, the Frobenius norm of the weights (on standardised features; biases excluded):
    /// what the L2 penalty shrinks.
    pub fn weight_norm(&self) -> f64 {
        self.params[..self.dim * self.classes]
            .iter()
            .map(|&w| f64::from(w) * f64::from(w))
            .sum::<f64>()
            .sqrt()
    }

    /// Class scores (logits) of every row of `x`, row-major `[rows, classes]`.
    pub fn scores(&self, x: Features<'_>) -> Result<Vec<f32>, EvalError> {
        if x.dim != self.dim {
            return Err(EvalError::Shape(format!(
                "features have {} dimensions; the probe was fitted on {}",
                x.dim, self.dim
            )));
        }
        let device = Device::Cpu;
        let xt = self.standardised(x, &device)?;
        let w = Tensor::from_slice(
            &self.params[..self.dim * self.classes],
            (self.dim, self.classes),
            &device,
        )?;
        let b = Tensor::from_slice(
            &self.params[self.dim * self.classes..],
            self.classes,
            &device,
        )?;
        Ok(xt.matmul(&w)?.broadcast_add(&b)?.flatten_all()?.to_vec1()?)
    }

    /// Top-`k` accuracy on labelled features.
    pub fn accuracy(&self, x: Features<'_>, labels: &[u32], k: usize) -> Result<f64, EvalError> {
        x.check(labels, "evaluation")?;
        Ok(top_k_accuracy(&self.scores(x)?, self.classes, labels, k))
    }
}

/// The linear-evaluation protocol: picks the L2 strength on a held-out `val_fraction` of the
/// training rows, refits on all of them, and reports test top-1 (and top-5 with more than five
/// classes).
pub fn linear_probe(
    train: Features<'_>,
    train_labels: &[u32],
    test: Features<'_>,
    test_labels: &[u32],
    classes: usize,
    config: &ProbeConfig,
) -> Result<ProbeReport, EvalError> {
    train.check(train_labels, "train")?;
    test.check(test_labels, "test")?;
    if train.dim != test.dim {
        return Err(EvalError::Shape(format!(
            "train features have {} dimensions, test features {}",
            train.dim, test.dim
        )));
    }
    if config.l2_grid.is_empty() {
        return Err(EvalError::Shape("the L2 grid is empty".into()));
    }
    // Held-out split: a seeded shuffle (SplitMix64-driven Fisher–Yates).
    let n = train.rows();
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = config.seed ^ 0x9e37_79b9_7f4a_7c15;
    for i in (1..n).rev() {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        order.swap(i, ((z ^ (z >> 31)) % (i as u64 + 1)) as usize);
    }
    let n_val = ((n as f64 * config.val_fraction) as usize).clamp(1, n.saturating_sub(1).max(1));
    let gather = |ids: &[usize]| {
        let mut x = Vec::with_capacity(ids.len() * train.dim);
        let mut y = Vec::with_capacity(ids.len());
        for &i in ids {
            x.extend_from_slice(&train.data[i * train.dim..(i + 1) * train.dim]);
            y.push(train_labels[i]);
        }
        (x, y)
    };
    let (vx, vy) = gather(&order[..n_val]);
    let (fx, fy) = gather(&order[n_val..]);
    let (fit_x, fit_y) = if fy.is_empty() {
        (vx.clone(), vy.clone())
    } else {
        (fx, fy)
    };
    let mut val_top1 = Vec::new();
    for &l2 in &config.l2_grid {
        let probe = LinearProbe::fit(
            Features {
                data: &fit_x,
                dim: train.dim,
            },
            &fit_y,
            classes,
            l2,
            config.max_iter,
        )?;
        let acc = probe.accuracy(
            Features {
                data: &vx,
                dim: train.dim,
            },
            &vy,
            1,
        )?;
        val_top1.push((l2, acc));
    }
    // Best held-out accuracy; ties go to the stronger penalty (the simpler model).
    let l2 = val_top1
        .iter()
        .fold((f64::NAN, -1.0), |best, &(l2, acc)| {
            if acc >= best.1 { (l2, acc) } else { best }
        })
        .0;
    let probe = LinearProbe::fit(train, train_labels, classes, l2, config.max_iter)?;
    Ok(ProbeReport {
        top1: probe.accuracy(test, test_labels, 1)?,
        top5: (classes > 5)
            .then(|| probe.accuracy(test, test_labels, 5))
            .transpose()?,
        l2,
        val_top1,
        train_top1: probe.accuracy(train, train_labels, 1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let device = Device::Cpu;
        let (n, d, k) = (7, 3, 4);
        let xs: Vec<f32> = (0..n * d)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| i % k as u32).collect();
        let x = Tensor::from_vec(xs, (n, d), &device).unwrap();
        let y = onehot(&labels, k, &device).unwrap();
        let p: Vec<f32> = (0..d * k + k)
            .map(|i| ((i * 13 % 7) as f32 - 3.0) / 10.0)
            .collect();
        let (_, g) = loss_grad(&x, &y, &p, d, k, 0.3).unwrap();
        let h = 1e-2f32;
        for i in 0..p.len() {
            let mut a = p.clone();
            a[i] += h;
            let mut b = p.clone();
            b[i] -= h;
            let fd = (loss_grad(&x, &y, &a, d, k, 0.3).unwrap().0
                - loss_grad(&x, &y, &b, d, k, 0.3).unwrap().0)
                / (2.0 * f64::from(h));
            assert!(
                (fd - f64::from(g[i])).abs() < 2e-3,
                "param {i}: fd {fd}, analytic {}",
                g[i]
            );
        }
    }

    #[test]
    fn loss_at_zero_is_log_classes() {
        let device = Device::Cpu;
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (2, 2), &device).unwrap();
        let y = onehot(&[0, 2], 3, &device).unwrap();
        let (loss, _) = loss_grad(&x, &y, &[0.0; 9], 2, 3, 1.0).unwrap();
        assert!((loss - 3f64.ln()).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn lbfgs_minimises_a_quadratic() {
        // f(x) = Σ i·(x_i − i)², minimum at x_i = i.
        let f = |x: &[f32]| -> Result<(f64, Vec<f32>), EvalError> {
            let v = x
                .iter()
                .enumerate()
                .map(|(i, &xi)| (i as f64 + 1.0) * (f64::from(xi) - i as f64).powi(2))
                .sum();
            let g = x
                .iter()
                .enumerate()
                .map(|(i, &xi)| (2.0 * (i as f64 + 1.0) * (f64::from(xi) - i as f64)) as f32)
                .collect();
            Ok((v, g))
        };
        let x = lbfgs(f, vec![10.0; 5], 100).unwrap();
        for (i, xi) in x.iter().enumerate() {
            assert!((xi - i as f32).abs() < 1e-3, "{x:?}");
        }
    }
}
