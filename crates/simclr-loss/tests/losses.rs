//! The losses against a naive loop written from the paper, closed forms, PyTorch golden
//! values, central finite differences in f64, and every error.

use candle_core::{DType, Device, Tensor, Var};
use simclr_loss::{
    LossConfig, LossKind, Mining, Pairs, arcface, contrastive_accuracy, dcl, dcl_gathered,
    margin_contrastive, nt_xent, nt_xent_gathered, scalar, supcon, supcon_gathered, triplet,
    triplet_batch_hard, view_labels,
};

fn t64(rows: &[[f64; 3]]) -> Tensor {
    let v: Vec<f64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(v, (rows.len(), 3), &Device::Cpu).unwrap()
}

const Z1: [[f64; 3]; 4] = [
    [0.3, -1.2, 0.5],
    [1.0, 0.4, -0.2],
    [-0.7, 0.1, 0.9],
    [0.2, 0.2, -1.1],
];
const Z2: [[f64; 3]; 4] = [
    [0.5, -0.9, 0.1],
    [0.8, 0.6, 0.3],
    [-0.2, -0.4, 1.0],
    [0.1, 0.9, -0.6],
];
const LABELS: [u32; 8] = [0, 1, 0, 2, 0, 1, 2, 2];

fn value(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// NT-Xent written straight from Algorithm 1 of the paper: for k in 1..N, views 2k-1 and 2k;
/// s_ij = cosine; l(i, j) = −log exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ); L = 1/2N Σ_k l(2k−1, 2k) + l(2k, 2k−1).
/// Cosine similarity of two vectors, in f64.
fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn naive_nt_xent(z1: &[Vec<f64>], z2: &[Vec<f64>], tau: f64) -> f64 {
    let n = z1.len();
    let mut z: Vec<Vec<f64>> = Vec::new();
    for k in 0..n {
        z.push(z1[k].clone());
        z.push(z2[k].clone());
    }
    let l = |i: usize, j: usize| {
        let num = (cosine(&z[i], &z[j]) / tau).exp();
        let den: f64 = (0..2 * n)
            .filter(|&k| k != i)
            .map(|k| (cosine(&z[i], &z[k]) / tau).exp())
            .sum();
        -(num / den).ln()
    };
    (0..n)
        .map(|k| l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k))
        .sum::<f64>()
        / (2 * n) as f64
}

fn random(n: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            (0..d)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
                })
                .collect()
        })
        .collect()
}

fn tensor(v: &[Vec<f64>]) -> Tensor {
    let d = v[0].len();
    Tensor::from_vec(v.concat(), (v.len(), d), &Device::Cpu).unwrap()
}

#[test]
fn nt_xent_matches_the_papers_algorithm() {
    for (n, d, tau, seed) in [
        (4, 3, 0.5, 1),
        (7, 5, 0.1, 2),
        (16, 8, 1.0, 3),
        (3, 2, 0.05, 4),
    ] {
        let (a, b) = (random(n, d, seed), random(n, d, seed + 100));
        let got = value(&nt_xent(&tensor(&a), &tensor(&b), tau).unwrap());
        let want = naive_nt_xent(&a, &b, tau);
        assert!(
            (got - want).abs() < 1e-10,
            "n={n} tau={tau}: {got} vs {want}"
        );
    }
}

// Golden values (PyTorch 2.15, float64), from this script:
// import torch, torch.nn.functional as F
// z1 = torch.tensor([[0.3, -1.2, 0.5], [1.0, 0.4, -0.2], [-0.7, 0.1, 0.9], [0.2, 0.2, -1.1]], dtype=torch.float64)
// z2 = torch.tensor([[0.5, -0.9, 0.1], [0.8, 0.6, 0.3], [-0.2, -0.4, 1.0], [0.1, 0.9, -0.6]], dtype=torch.float64)
// def nt_xent(z1, z2, t):  # lightly's NTXentLoss (memory bank off), written out
//     n = z1.shape[0]
//     z = F.normalize(torch.cat([z1, z2]), dim=1)
//     sim = z @ z.t() / t
//     sim.fill_diagonal_(float("-inf"))
//     target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
//     return F.cross_entropy(sim, target)
// for t in (0.5, 0.1):
//     print(f"ntxent t={t}: {nt_xent(z1, z2, t).item():.15f}")
// z = F.normalize(torch.cat([z1, z2]), dim=1)
// labels = torch.tensor([0, 1, 0, 2, 0, 1, 2, 2])
// def supcon(z, labels, t):
//     sim = z @ z.t() / t
//     m = z.shape[0]
//     eye = torch.eye(m, dtype=torch.bool)
//     logp = sim.masked_fill(eye, float("-inf")).log_softmax(1)
//     pos = (labels[:, None] == labels[None, :]) & ~eye
//     per = -(logp.masked_fill(~pos, 0).sum(1)) / pos.sum(1)
//     return per[pos.sum(1) > 0].mean()
// print(f"supcon t=0.3: {supcon(z, labels, 0.3).item():.15f}")
// d = torch.cdist(z, z)
// iu = torch.triu_indices(8, 8, 1)
// same = (labels[iu[0]] == labels[iu[1]])
// dd = d[iu[0], iu[1]]
// print(f"contrastive m=1.2: {0.5 * ((dd[same] ** 2).mean() + ((1.2 - dd[~same]).clamp(min=0) ** 2).mean()).item():.15f}")
// eye = torch.eye(8, dtype=torch.bool)
// samel = labels[:, None] == labels[None, :]
// ap = d.masked_fill(~(samel & ~eye), float("-inf")).max(1).values
// an = d.masked_fill(samel, float("inf")).min(1).values
// print(f"triplet m=0.3: {(ap - an + 0.3).clamp(min=0).mean().item():.15f}")
#[test]
fn golden_values_from_pytorch() {
    let (z1, z2) = (t64(&Z1), t64(&Z2));
    assert!((value(&nt_xent(&z1, &z2, 0.5).unwrap()) - 0.744480092554779).abs() < 1e-12);
    assert!((value(&nt_xent(&z1, &z2, 0.1).unwrap()) - 0.060389729161508).abs() < 1e-12);
    let both = Tensor::cat(&[&z1, &z2], 0).unwrap();
    assert!((value(&supcon(&both, &LABELS, 0.3).unwrap()) - 2.599726641596459).abs() < 1e-12);
    assert!(
        (value(&margin_contrastive(&both, &LABELS, 1.2).unwrap()) - 0.945892576909061).abs()
            < 1e-10
    );
    assert!(
        (value(&triplet_batch_hard(&both, &LABELS, 0.3).unwrap()) - 0.857432273125194).abs()
            < 1e-10
    );
    // f32 agrees to f32 precision.
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    assert!((value(&nt_xent(&f(&z1), &f(&z2), 0.5).unwrap()) - 0.744480092554779).abs() < 1e-6);
}

#[test]
fn nt_xent_is_symmetric_in_its_views() {
    let (a, b) = (tensor(&random(9, 6, 5)), tensor(&random(9, 6, 6)));
    let ab = value(&nt_xent(&a, &b, 0.3).unwrap());
    let ba = value(&nt_xent(&b, &a, 0.3).unwrap());
    assert!((ab - ba).abs() < 1e-12, "{ab} vs {ba}");
}

#[test]
fn nt_xent_closed_forms() {
    // Identical embeddings everywhere: all 2N−1 candidates tie, loss = ln(2N − 1).
    let same = tensor(&vec![vec![0.3, -0.2, 0.9]; 5]);
    let l = value(&nt_xent(&same, &same, 0.2).unwrap());
    assert!((l - 9f64.ln()).abs() < 1e-10, "{l}");
    // Partners equal, different samples orthogonal (z1 = z2 = I_N): the positive scores 1/τ,
    // the 2N − 2 negatives score 0, so loss = ln(1 + (2N − 2) e^{−1/τ}).
    let eye: Vec<Vec<f64>> = (0..4)
        .map(|i| (0..4).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    let e = tensor(&eye);
    let l = value(&nt_xent(&e, &e, 0.5).unwrap());
    assert!(
        (l - (1.0 + 6.0 * (-2.0f64).exp()).ln()).abs() < 1e-12,
        "{l}"
    );
    // N = 1: each anchor's only candidate is its positive, loss 0.
    let one =
        value(&nt_xent(&tensor(&[vec![1.0, 2.0]]), &tensor(&[vec![-3.0, 0.5]]), 0.5).unwrap());
    assert!(one.abs() < 1e-12, "{one}");
}

#[test]
fn gathered_form_averages_to_the_whole_batch_loss() {
    // Two ranks of n = 3 samples; the mean of their gathered losses is the loss of the
    // combined 6-sample batch (same anchors, same candidates, same positives).
    let (a1, a2, b1, b2) = (
        random(3, 4, 7),
        random(3, 4, 8),
        random(3, 4, 9),
        random(3, 4, 10),
    );
    let local_a = tensor(&[a1.clone(), a2.clone()].concat());
    let local_b = tensor(&[b1.clone(), b2.clone()].concat());
    let keys = Tensor::cat(&[&local_a, &local_b], 0).unwrap();
    let la = value(&nt_xent_gathered(&local_a, &keys, 0, 0.4).unwrap());
    let lb = value(&nt_xent_gathered(&local_b, &keys, 1, 0.4).unwrap());
    let whole = value(
        &nt_xent(
            &tensor(&[a1, b1].concat()),
            &tensor(&[a2, b2].concat()),
            0.4,
        )
        .unwrap(),
    );
    assert!(((la + lb) / 2.0 - whole).abs() < 1e-12, "{la} {lb} {whole}");
}

#[test]
fn supcon_with_view_labels_is_nt_xent() {
    let (a, b) = (tensor(&random(6, 5, 11)), tensor(&random(6, 5, 12)));
    let both = Tensor::cat(&[&a, &b], 0).unwrap();
    let s = value(&supcon(&both, &view_labels(6), 0.25).unwrap());
    let n = value(&nt_xent(&a, &b, 0.25).unwrap());
    assert!((s - n).abs() < 1e-12, "{s} vs {n}");
}

#[test]
fn stable_at_low_temperature_and_large_batches() {
    let n = 2048; // 4096 views
    let a = Tensor::randn(0f32, 1.0, (n, 128), &Device::Cpu).unwrap();
    let b = (&a + Tensor::randn(0f32, 0.1, (n, 128), &Device::Cpu).unwrap()).unwrap();
    let av = Var::from_tensor(&a).unwrap();
    let loss = nt_xent(av.as_tensor(), &b, 0.05).unwrap();
    let l = scalar(&loss).unwrap();
    assert!(l.is_finite() && l >= 0.0, "{l}");
    let g = loss
        .backward()
        .unwrap()
        .get(&av)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(scalar(&g).unwrap().is_finite());
    // A far temperature too.
    assert!(scalar(&nt_xent(&a, &b, 1.0).unwrap()).unwrap().is_finite());
}

/// Central finite differences of `f` at `x` against its autograd gradient, in f64.
fn check_grad(f: &dyn Fn(&Tensor) -> Tensor, x: &[Vec<f64>]) {
    let v = Var::from_tensor(&tensor(x)).unwrap();
    let g = f(v.as_tensor())
        .backward()
        .unwrap()
        .get(&v)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let flat = x.concat();
    let d = x[0].len();
    for i in 0..flat.len() {
        let at = |delta: f64| {
            let mut p = flat.clone();
            p[i] += delta;
            value(&f(&Tensor::from_vec(p, (x.len(), d), &Device::Cpu).unwrap()))
        };
        let fd = (at(1e-6) - at(-1e-6)) / 2e-6;
        assert!(
            (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
            "element {i}: fd {fd}, autograd {}",
            g[i]
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    let x = random(8, 4, 21);
    let other = tensor(&random(4, 4, 22));
    check_grad(
        &|t| {
            nt_xent(
                &t.narrow(0, 0, 4).unwrap(),
                &t.narrow(0, 4, 4).unwrap(),
                0.3,
            )
            .unwrap()
        },
        &x,
    );
    check_grad(
        &|t| nt_xent(t.narrow(0, 0, 4).as_ref().unwrap(), &other, 0.7).unwrap(),
        &x[..4],
    );
    check_grad(
        &|t| nt_xent_gathered(&t.narrow(0, 4, 4).unwrap(), t, 1, 0.5).unwrap(),
        &x,
    );
    check_grad(&|t| supcon(t, &LABELS, 0.3).unwrap(), &x);
    check_grad(&|t| margin_contrastive(t, &LABELS, 1.2).unwrap(), &x);
    check_grad(&|t| triplet_batch_hard(t, &LABELS, 0.3).unwrap(), &x);
    for mining in [Mining::BatchAll, Mining::SemiHard] {
        check_grad(&|t| triplet(t, &LABELS, 0.8, mining).unwrap().0, &x);
    }
    let w = random(3, 4, 23);
    check_grad(&|t| arcface(t, &tensor(&w), &LABELS, 0.5, 4.0).unwrap(), &x);
    // And with respect to the class weights.
    let z = tensor(&x);
    check_grad(&|w| arcface(&z, w, &LABELS, 0.5, 4.0).unwrap(), &w);
}

/// DCL written from eq. 6 of Yeh et al. (2022), the same 2N-view layout as
/// [`naive_nt_xent`]: for view `i` with partner `p`,
/// `l_i = −w_i s_ip/τ + ln Σ_{k∉{i,p}} exp(s_ik/τ)`, mean over the 2N views; DCLW's
/// `w_i = 2 − N exp(s_ip/σ) / Σ_j exp(s_jj′/σ)` over the N pairs, else `w_i = 1`.
fn naive_dcl(z1: &[Vec<f64>], z2: &[Vec<f64>], tau: f64, sigma: Option<f64>) -> f64 {
    let z: Vec<Vec<f64>> = z1.iter().chain(z2).cloned().collect();
    let w = match sigma {
        None => vec![1.0; z1.len()],
        Some(s) => dclw_weights(&z, s),
    };
    naive_dcl_weighted(&z, tau, &w)
}

/// DCLW's pair weights `w_i = 2 − N exp(s_ii′/σ) / Σ_j exp(s_jj′/σ)` of the 2N views `z`
/// (views 1 then views 2).
fn dclw_weights(z: &[Vec<f64>], sigma: f64) -> Vec<f64> {
    let n = z.len() / 2;
    let pair: Vec<f64> = (0..n).map(|i| cosine(&z[i], &z[n + i])).collect();
    let den: f64 = pair.iter().map(|c| (c / sigma).exp()).sum();
    pair.iter()
        .map(|c| 2.0 - n as f64 * (c / sigma).exp() / den)
        .collect()
}

/// Eq. 6 over the 2N views `z` (view `i`'s partner: `(i + N) mod 2N`) with the pair weights
/// `w` given.
fn naive_dcl_weighted(z: &[Vec<f64>], tau: f64, w: &[f64]) -> f64 {
    let n = z.len() / 2;
    let mut total = 0.0;
    for i in 0..2 * n {
        let p = (i + n) % (2 * n);
        let neg: f64 = (0..2 * n)
            .filter(|&k| k != i && k != p)
            .map(|k| (cosine(&z[i], &z[k]) / tau).exp())
            .sum();
        total += -w[i % n] * cosine(&z[i], &z[p]) / tau + neg.ln();
    }
    total / (2 * n) as f64
}

#[test]
fn dcl_matches_the_papers_equation() {
    for (n, d, tau, seed) in [
        (4, 3, 0.5, 41),
        (7, 5, 0.1, 42),
        (16, 8, 1.0, 43),
        (2, 2, 0.05, 44),
    ] {
        let (a, b) = (random(n, d, seed), random(n, d, seed + 100));
        for sigma in [None, Some(0.5), Some(2.0)] {
            let got = value(&dcl(&tensor(&a), &tensor(&b), tau, sigma).unwrap());
            let want = naive_dcl(&a, &b, tau, sigma);
            assert!(
                (got - want).abs() < 1e-10,
                "n={n} tau={tau} sigma={sigma:?}: {got} vs {want}"
            );
        }
    }
}

// Golden values (PyTorch 2.15, float64) from the DCL authors' reference formula (one
// direction at a time, negatives masked with ln 1e-45), made symmetric; Z1, Z2 as above:
// def one_way(a, b, t, sigma):
//     a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
//     cross = a @ b.t()
//     pos = -torch.diag(cross) / t
//     if sigma is not None:
//         pos = pos * (2 - a.shape[0] * F.softmax(torch.diag(cross) / sigma, dim=0))
//     neg = torch.cat([a @ a.t(), cross], dim=1) / t
//     mask = torch.eye(a.shape[0], dtype=torch.float64).repeat(1, 2)
//     return (pos + torch.logsumexp(neg + mask * torch.log(torch.tensor(1e-45, dtype=torch.float64)), dim=1)).mean()
// for t, s in ((0.5, None), (0.1, None), (0.2, 0.5)):
//     print(f"dcl t={t} sigma={s}: {(0.5 * (one_way(z1, z2, t, s) + one_way(z2, z1, t, s))).item():.15f}")
#[test]
fn dcl_golden_values_from_pytorch() {
    let (z1, z2) = (t64(&Z1), t64(&Z2));
    for (tau, sigma, want) in [
        (0.5, None, 0.085247784051373),
        (0.1, None, -3.796011428894273),
        (0.2, Some(0.5), -1.540376336299951),
    ] {
        let got = value(&dcl(&z1, &z2, tau, sigma).unwrap());
        assert!(
            (got - want).abs() < 1e-12,
            "tau={tau} sigma={sigma:?}: {got} vs {want}"
        );
    }
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
    let got = value(&dcl(&f(&z1), &f(&z2), 0.5, None).unwrap());
    assert!((got - 0.085247784051373).abs() < 1e-6, "{got}");
}

#[test]
fn dcl_closed_forms() {
    // Partners equal, different samples orthogonal (z1 = z2 = I_N): the positive scores 1/τ
    // and is out of the denominator, whose 2N − 2 negatives score 0: loss = ln(2N − 2) − 1/τ,
    // where NT-Xent's is ln(1 + (2N − 2) e^{−1/τ}).
    let eye: Vec<Vec<f64>> = (0..4)
        .map(|i| (0..4).map(|j| f64::from(u8::from(i == j))).collect())
        .collect();
    let e = tensor(&eye);
    let l = value(&dcl(&e, &e, 0.5, None).unwrap());
    assert!((l - (6f64.ln() - 2.0)).abs() < 1e-12, "{l}");
    // Every pair equally similar: DCLW's weights are all 1, so DCLW is DCL.
    let w = value(&dcl(&e, &e, 0.5, Some(0.3)).unwrap());
    assert!((w - l).abs() < 1e-12, "{w} vs {l}");
    // Symmetric in its views.
    let (a, b) = (tensor(&random(9, 6, 45)), tensor(&random(9, 6, 46)));
    for sigma in [None, Some(0.5)] {
        let ab = value(&dcl(&a, &b, 0.3, sigma).unwrap());
        let ba = value(&dcl(&b, &a, 0.3, sigma).unwrap());
        assert!((ab - ba).abs() < 1e-12, "{ab} vs {ba}");
    }
}

#[test]
fn gathered_dcl_averages_to_the_whole_batch_loss() {
    let (a1, a2, b1, b2) = (
        random(3, 4, 47),
        random(3, 4, 48),
        random(3, 4, 49),
        random(3, 4, 50),
    );
    let local_a = tensor(&[a1.clone(), a2.clone()].concat());
    let local_b = tensor(&[b1.clone(), b2.clone()].concat());
    let keys = Tensor::cat(&[&local_a, &local_b], 0).unwrap();
    let la = value(&dcl_gathered(&local_a, &keys, 0, 0.4, None).unwrap());
    let lb = value(&dcl_gathered(&local_b, &keys, 1, 0.4, None).unwrap());
    let whole = value(
        &dcl(
            &tensor(&[a1.clone(), b1].concat()),
            &tensor(&[a2.clone(), b2].concat()),
            0.4,
            None,
        )
        .unwrap(),
    );
    assert!(((la + lb) / 2.0 - whole).abs() < 1e-12, "{la} {lb} {whole}");
    // One rank: the gathered form is the plain one, DCLW included.
    let alone = value(&dcl_gathered(&local_a, &local_a, 0, 0.4, Some(0.5)).unwrap());
    let plain = value(&dcl(&tensor(&a1), &tensor(&a2), 0.4, Some(0.5)).unwrap());
    assert!((alone - plain).abs() < 1e-12, "{alone} vs {plain}");
}

#[test]
fn dcl_gradients_match_finite_differences() {
    let x = random(8, 4, 51);
    check_grad(
        &|t| {
            dcl(
                &t.narrow(0, 0, 4).unwrap(),
                &t.narrow(0, 4, 4).unwrap(),
                0.3,
                None,
            )
            .unwrap()
        },
        &x,
    );
    check_grad(
        &|t| dcl_gathered(&t.narrow(0, 4, 4).unwrap(), t, 1, 0.5, None).unwrap(),
        &x,
    );
}

#[test]
fn dclw_gradient_holds_its_weights_constant() {
    // DCLW's pair weights are constants of the backward pass (lightly detaches them too):
    // its gradient is the finite difference of the paper's loss with the weights frozen at
    // the unperturbed point, and differs from the one through the weights.
    let (n, d, tau, sigma) = (4, 3, 0.3, 0.5);
    let x = random(2 * n, d, 52);
    let w = dclw_weights(&x, sigma);
    // The paper's loss with the weights given: DCL's negatives, −w_i s_ip/τ.
    let frozen = |z: &[Vec<f64>]| naive_dcl_weighted(z, tau, &w);
    let v = Var::from_tensor(&tensor(&x)).unwrap();
    let loss = dcl(
        &v.as_tensor().narrow(0, 0, n).unwrap(),
        &v.as_tensor().narrow(0, n, n).unwrap(),
        tau,
        Some(sigma),
    )
    .unwrap();
    assert!((value(&loss) - frozen(&x)).abs() < 1e-12);
    let g = loss
        .backward()
        .unwrap()
        .get(&v)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let mut through_weights = 0f64;
    for (i, &gi) in g.iter().enumerate() {
        let at = |delta: f64| {
            let mut z = x.clone();
            z[i / d][i % d] += delta;
            z
        };
        let fd = (frozen(&at(1e-6)) - frozen(&at(-1e-6))) / 2e-6;
        assert!(
            (fd - gi).abs() < 1e-6 * (1.0 + fd.abs()),
            "element {i}: fd {fd}, autograd {gi}"
        );
        let full = (naive_dcl(&at(1e-6)[..n], &at(1e-6)[n..], tau, Some(sigma))
            - naive_dcl(&at(-1e-6)[..n], &at(-1e-6)[n..], tau, Some(sigma)))
            / 2e-6;
        through_weights = through_weights.max((full - fd).abs());
    }
    assert!(
        through_weights > 1e-3,
        "the weights' own gradient is negligible here: {through_weights}"
    );
}

#[test]
fn dcl_refuses_bad_input() {
    let (a, b) = (t64(&Z1), t64(&Z2));
    let msg = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    assert!(msg(dcl(&a, &b, 0.0, None)).contains("temperature"));
    assert!(msg(dcl(&a, &b, 0.5, Some(0.0))).contains("sigma"));
    assert!(msg(dcl(&a, &b, 0.5, Some(f64::INFINITY))).contains("sigma"));
    assert!(msg(dcl(&a, &b.narrow(0, 0, 3).unwrap(), 0.5, None)).contains("same shape"));
    // One sample: no negatives left once the positive is out of the denominator.
    let one = a.narrow(0, 0, 1).unwrap();
    assert!(msg(dcl(&one, &one, 0.5, None)).contains("negative"));
    assert!(msg(dcl_gathered(&a, &b.narrow(0, 0, 3).unwrap(), 0, 0.5, None)).contains("world"));
}

#[test]
fn contrastive_accuracy_counts_partners_found() {
    // Views 0 and 1 of sample 0 point the same way; sample 1's views are far apart, and its
    // view in z2 is closest to sample 0's views.
    let z1 = tensor(&[vec![1.0, 0.0], vec![0.0, 1.0]]);
    let z2 = tensor(&[vec![1.0, 0.1], vec![0.9, -0.5]]);
    // Anchors: z1[0] → z2[0] ✓; z1[1] → nearest is z2[0] (cos 0.0995) vs z2[1] (−0.486) ✗;
    // z2[0] → z1[0] ✓; z2[1] → z1[0] (0.874) ✗. Accuracy 2/4.
    assert_eq!(contrastive_accuracy(&z1, &z2).unwrap(), 0.5);
    assert_eq!(contrastive_accuracy(&z1, &z1).unwrap(), 1.0);
}

#[test]
fn loss_config_dispatches_and_needs_labels_for_supcon() {
    let (a, b) = (tensor(&random(5, 4, 31)), tensor(&random(5, 4, 32)));
    let mut cfg = LossConfig {
        temperature: 0.3,
        ..LossConfig::default()
    };
    assert_eq!(
        value(&cfg.compute(&a, &b, None, None).unwrap().loss),
        value(&nt_xent(&a, &b, 0.3).unwrap())
    );
    cfg.kind = LossKind::SupCon;
    let err = cfg.compute(&a, &b, None, None).unwrap_err().to_string();
    assert!(err.contains("class labels"), "{err}");
    let both = Tensor::cat(&[&a, &b], 0).unwrap();
    let labels = [0, 1, 0, 1, 2];
    let l2: Vec<u32> = labels.iter().chain(&labels).copied().collect();
    assert_eq!(
        value(&cfg.compute(&a, &b, Some(&labels), None).unwrap().loss),
        value(&supcon(&both, &l2, 0.3).unwrap())
    );
    for kind in [LossKind::Contrastive, LossKind::Triplet] {
        cfg.kind = kind;
        assert!(value(&cfg.compute(&a, &b, None, None).unwrap().loss).is_finite());
        // With labelled pairs, the class labels of both views decide.
        cfg.pairs = Pairs::Labels;
        let err = cfg.compute(&a, &b, None, None).unwrap_err().to_string();
        assert!(err.contains("--pairs labels"), "{err}");
        let out = cfg.compute(&a, &b, Some(&labels), None).unwrap();
        let want = if kind == LossKind::Contrastive {
            margin_contrastive(&both, &l2, cfg.margin).unwrap()
        } else {
            triplet(&both, &l2, cfg.margin, cfg.mining).unwrap().0
        };
        assert_eq!(value(&out.loss), value(&want));
        assert_eq!(out.active.is_some(), kind == LossKind::Triplet);
        cfg.pairs = Pairs::Views;
    }
    cfg.kind = LossKind::ArcFace;
    let w = tensor(&random(3, 4, 33));
    let err = cfg.compute(&a, &b, None, Some(&w)).unwrap_err().to_string();
    assert!(err.contains("class labels"), "{err}");
    assert_eq!(
        value(&cfg.compute(&a, &b, Some(&labels), Some(&w)).unwrap().loss),
        value(&arcface(&both, &w, &l2, cfg.margin, cfg.scale).unwrap())
    );
    for (kind, sigma) in [(LossKind::Dcl, None), (LossKind::Dclw, Some(cfg.sigma))] {
        cfg.kind = kind;
        assert_eq!(
            value(&cfg.compute(&a, &b, None, None).unwrap().loss),
            value(&dcl(&a, &b, 0.3, sigma).unwrap())
        );
    }
    assert_eq!("NT-Xent".parse::<LossKind>().unwrap(), LossKind::NtXent);
    assert_eq!("DCLW".parse::<LossKind>().unwrap(), LossKind::Dclw);
    assert_eq!(
        LossKind::Dcl.to_string().parse::<LossKind>().unwrap(),
        LossKind::Dcl
    );
    assert!("byol".parse::<LossKind>().is_err());
}

#[test]
fn bad_arguments_are_clear_errors() {
    let (a, b) = (t64(&Z1), t64(&Z2));
    let msg = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    assert!(msg(nt_xent(&a, &b, 0.0)).contains("temperature"));
    assert!(msg(nt_xent(&a, &b, f64::NAN)).contains("temperature"));
    assert!(msg(nt_xent(&a, &b.narrow(0, 0, 3).unwrap(), 0.5)).contains("same shape"));
    let empty = Tensor::zeros((0, 3), DType::F64, &Device::Cpu).unwrap();
    assert!(msg(nt_xent(&empty, &empty, 0.5)).contains("empty"));
    let rank3 = Tensor::zeros((2, 2, 3), DType::F64, &Device::Cpu).unwrap();
    assert!(msg(nt_xent(&rank3, &rank3, 0.5)).contains("rank 2"));
    assert!(msg(nt_xent_gathered(&a, &b.narrow(0, 0, 3).unwrap(), 0, 0.5)).contains("world"));
    assert!(msg(supcon(&a, &[0, 1, 2], 0.5)).contains("labels"));
    assert!(msg(supcon(&a, &[0, 1, 2, 3], 0.5)).contains("unique"));
    assert!(msg(margin_contrastive(&a, &[0, 0, 1, 1], -1.0)).contains("margin"));
    assert!(msg(triplet_batch_hard(&a, &[0, 0, 0, 0], 0.2)).contains("negative"));
}

/// Unit vectors at `degrees`, one per row.
fn at_angles(degrees: &[f64]) -> Tensor {
    let v: Vec<f64> = degrees
        .iter()
        .flat_map(|a| [a.to_radians().cos(), a.to_radians().sin()])
        .collect();
    Tensor::from_vec(v, (degrees.len(), 2), &Device::Cpu).unwrap()
}

/// Triplets by hand on the unit circle, where the distance between angles α, β is
/// 2·sin(|α − β| / 2).
#[test]
fn triplet_mining_rules_match_hand_computed_values() {
    // 0°, 30° (class 0); 90°, 140° (class 1); margin 1. Distances: d(0,30) = 0.517638,
    // d(0,90) = 1.414214, d(0,140) = 1.879385, d(30,90) = 1, d(30,140) = 1.638304,
    // d(90,140) = 0.845237.
    let z = at_angles(&[0.0, 30.0, 90.0, 140.0]);
    let labels = [0, 0, 1, 1];
    let run = |mining| {
        let (loss, active) = triplet(&z, &labels, 1.0, mining).unwrap();
        (value(&loss), value(&active))
    };
    // Batch-hard: one positive each; nearest negatives 1.414214, 1, 1, 1.638304:
    // (0.103424 + 0.517638 + 0.845237 + 0.206933) / 4.
    let (loss, active) = run(Mining::BatchHard);
    assert!((loss - 0.418308).abs() < 1e-6, "{loss}");
    assert_eq!(active, 1.0);
    // Batch-all: 8 triplets; hinges 0.103424, 0, 0.517638, 0, 0.431023, 0.845237, 0,
    // 0.206933: 5 active, loss 2.104255 / 5.
    let (loss, active) = run(Mining::BatchAll);
    assert!((loss - 2.104255 / 5.0).abs() < 1e-6, "{loss}");
    assert_eq!(active, 5.0 / 8.0);
    // Semi-hard, where it differs from batch-hard: 0°, 60° (class 0); 40°, 180° (class 1);
    // margin 1.2. (0°, 60°): d_ap = 1, negatives 0.684040 (closer: hard) and 2 → 2, hinge
    // 0.2. (60°, 0°): negatives 0.347296, 1.732051 → 1.732051, 0.467949. (40°, 180°):
    // d_ap = 1.879385, negatives 0.684040, 0.347296, none farther → the farthest, 0.684040:
    // 2.395345. (180°, 40°): negatives 2 (farther), 1.732051 → 2: 1.079385.
    let z = at_angles(&[0.0, 60.0, 40.0, 180.0]);
    let (loss, active) = triplet(&z, &labels, 1.2, Mining::SemiHard).unwrap();
    assert!(
        (value(&loss) - 4.1426793 / 4.0).abs() < 1e-6,
        "{}",
        value(&loss)
    );
    assert_eq!(value(&active), 1.0);
    // Batch-hard takes the hard negatives instead: a larger loss.
    let hard = value(&triplet(&z, &labels, 1.2, Mining::BatchHard).unwrap().0);
    assert!(hard > value(&loss) + 0.3, "{hard}");
}

/// ArcFace by hand (Python: for each row, phi = cos(acos(c) + m) if c > cos(π − m) else
/// c − m·sin(m); logits = s·(phi at the target, cos elsewhere); cross-entropy), with class
/// vectors at 0° and 90°, m = 0.5, s = 2: rows at 30° (class 0: CE 0.6730571), 30° (class
/// 1: 1.8549977) and 170° (class 0, past π − m: 2.8555805).
#[test]
fn arcface_matches_a_hand_computed_case() {
    let z = at_angles(&[30.0, 30.0, 170.0]);
    let w = at_angles(&[0.0, 90.0]);
    let loss = value(&arcface(&z, &w, &[0, 1, 0], 0.5, 2.0).unwrap());
    assert!((loss - 1.7945451044205265).abs() < 1e-9, "{loss}");
    // Lengths do not matter: embeddings and class weights are normalised.
    let loss2 = value(
        &arcface(
            &(z * 3.0).unwrap(),
            &(w * 0.2).unwrap(),
            &[0, 1, 0],
            0.5,
            2.0,
        )
        .unwrap(),
    );
    assert!((loss - loss2).abs() < 1e-12);
}

#[test]
fn metric_losses_refuse_bad_input() {
    let z = at_angles(&[0.0, 30.0, 90.0]);
    let msg = |r: candle_core::Result<Tensor>| r.unwrap_err().to_string();
    let t = |r: candle_core::Result<(Tensor, Tensor)>| r.map(|(l, _)| l);
    // One class: no negatives. All different: no positives.
    for labels in [[0, 0, 0], [0, 1, 2]] {
        for mining in [Mining::BatchHard, Mining::BatchAll, Mining::SemiHard] {
            let e = msg(t(triplet(&z, &labels, 0.5, mining)));
            assert!(e.contains("a positive and a negative"), "{e}");
        }
    }
    assert!(msg(t(triplet(&z, &[0, 0], 0.5, Mining::BatchAll))).contains("2 labels for 3"));
    assert!(msg(t(triplet(&z, &[0, 0, 1], -1.0, Mining::SemiHard))).contains("margin"));
    let w = at_angles(&[0.0, 90.0]);
    assert!(msg(arcface(&z, &w, &[0, 2, 1], 0.5, 64.0)).contains("label 2 is not below the 2"));
    assert!(msg(arcface(&z, &w, &[0, 1, 1], 2.0, 64.0)).contains("margin"));
    assert!(msg(arcface(&z, &w, &[0, 1, 1], 0.5, 0.0)).contains("scale"));
    let w3 = Tensor::zeros((2, 3), DType::F64, &Device::Cpu).unwrap();
    assert!(msg(arcface(&z, &w3, &[0, 1, 1], 0.5, 64.0)).contains("3 columns"));
    assert_eq!("semi_hard".parse::<Mining>().unwrap(), Mining::SemiHard);
    assert!("hardest".parse::<Mining>().is_err());
}

/// SupCon split across ranks: the mean over ranks of each rank's gathered loss is SupCon of
/// the whole batch, and so is its gradient with respect to every key (the sum over ranks the
/// gather's backward computes). Labels are uneven across ranks (rank 1 has a unique label),
/// so a plain mean of per-rank means would be off.
#[test]
fn gathered_supcon_averages_to_the_whole_batch_loss_and_gradient() {
    let x = random(12, 4, 41);
    let labels = [0, 1, 0, 2, 0, 1, 2, 2, 3, 1, 0, 2];
    let whole = |t: &Tensor| supcon(t, &labels, 0.4).unwrap();
    for world in [1, 2, 3] {
        let m = 12 / world;
        let split = |t: &Tensor| {
            let parts: Vec<Tensor> = (0..world)
                .map(|r| {
                    supcon_gathered(&t.narrow(0, r * m, m).unwrap(), t, &labels, r, 0.4).unwrap()
                })
                .collect();
            (Tensor::stack(&parts, 0).unwrap().sum_all().unwrap() / world as f64).unwrap()
        };
        let t = tensor(&x);
        assert!(
            (value(&split(&t)) - value(&whole(&t))).abs() < 1e-12,
            "world {world}"
        );
        // The gradients agree: check both against finite differences.
        check_grad(&split, &x);
    }
    check_grad(&whole, &x);
    let e = supcon_gathered(&tensor(&x[..5]), &tensor(&x), &labels, 0, 0.4).unwrap_err();
    assert!(e.to_string().contains("world ×"), "{e}");
}
