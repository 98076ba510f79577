//! The fused BatchNorm op against candle-nn's BatchNorm followed by candle's add and ReLU:
//! outputs, running statistics, and the gradients of every input (x, weight, bias, residual),
//! in training and evaluation mode, for 4-D and 2-D input; and the input gradient against
//! central finite differences.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use simclr_model::batchnorm::BatchNorm;

fn randn(shape: &[usize], seed: u64, scale: f32, offset: f32) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            offset + scale * z as f32
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A BatchNorm over `c` channels with non-trivial weight, bias and running statistics.
fn make(c: usize) -> (VarMap, BatchNorm) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let bn = BatchNorm::new(c, vb).unwrap();
    let data = varmap.data().lock().unwrap();
    data["weight"].set(&randn(&[c], 1, 0.5, 1.0)).unwrap();
    data["bias"].set(&randn(&[c], 2, 0.5, 0.0)).unwrap();
    data["running_mean"].set(&randn(&[c], 3, 0.3, 0.0)).unwrap();
    data["running_var"]
        .set(&randn(&[c], 4, 0.2, 1.0).abs().unwrap())
        .unwrap();
    drop(data);
    (varmap, bn)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn var(varmap: &VarMap, name: &str) -> Tensor {
    varmap.data().lock().unwrap()[name].as_tensor().clone()
}

/// Runs `fused` or reference with the given tail; returns the output, the running statistics
/// after it, and the gradients of Σ y·probe with respect to x, weight, bias and residual.
fn run(
    shape: &[usize],
    residual: bool,
    relu: bool,
    train: bool,
    fused: bool,
) -> (Tensor, Vec<Tensor>, Vec<Tensor>) {
    let c = shape[1];
    let (varmap, bn) = make(c);
    // An offset and scale per run so normalisation has work to do.
    let x = Var::from_tensor(&randn(shape, 5, 2.0, 0.7)).unwrap();
    let r = Var::from_tensor(&randn(shape, 6, 1.0, 0.0)).unwrap();
    let probe = randn(shape, 7, 1.0, 0.0);
    let y = if fused {
        match (residual, relu) {
            (true, _) => bn.forward_add_relu(&x, &r, train),
            (false, true) => bn.forward_relu(&x, train),
            (false, false) => bn.forward_t(&x, train),
        }
    } else {
        bn.forward_reference(&x, residual.then_some(r.as_tensor()), relu, train)
    }
    .unwrap();
    let grads = (&y * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let stats = vec![var(&varmap, "running_mean"), var(&varmap, "running_var")];
    let mut g = vec![
        grads.get(&x).unwrap().clone(),
        grads.get(&var(&varmap, "weight")).unwrap().clone(),
        grads.get(&var(&varmap, "bias")).unwrap().clone(),
    ];
    if residual {
        g.push(grads.get(&r).unwrap().clone());
    }
    (y, stats, g)
}

#[test]
fn fused_batch_norm_matches_candle_nn_forward_statistics_and_gradients() {
    for shape in [&[6usize, 5, 7, 9][..], &[16, 12], &[3, 4, 1, 1]] {
        for train in [true, false] {
            for (residual, relu) in [(false, false), (false, true), (true, true)] {
                let what = format!("{shape:?} train={train} residual={residual} relu={relu}");
                let (y, s, g) = run(shape, residual, relu, train, true);
                let (yr, sr, gr) = run(shape, residual, relu, train, false);
                let scale = yr.abs().unwrap().max_keepdim(0).unwrap().max_all().unwrap();
                let scale = scale.to_scalar::<f32>().unwrap().max(1.0);
                assert!(max_abs_diff(&y, &yr) < 1e-5 * scale, "output, {what}");
                for (a, b) in s.iter().zip(&sr) {
                    assert!(max_abs_diff(a, b) < 1e-6, "running statistics, {what}");
                }
                assert_eq!(g.len(), gr.len());
                for (i, (a, b)) in g.iter().zip(&gr).enumerate() {
                    let d = max_abs_diff(a, b);
                    let m = b
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(
                        d <= 2e-5 * m.max(1.0),
                        "gradient {i}: {d} (max {m}), {what}"
                    );
                }
            }
        }
    }
}

#[test]
fn training_gradient_matches_finite_differences() {
    // A loss that is not invariant to the normalisation: Σ relu(bn(x) + r)·probe.
    let shape = [4usize, 3, 5, 5];
    let (_varmap, bn) = make(3);
    let x0 = randn(&shape, 11, 1.5, 0.3);
    let r = randn(&shape, 12, 1.0, 0.0);
    let probe = randn(&shape, 13, 1.0, 0.0);
    let loss = |x: &Tensor| -> f64 {
        let y = bn.forward_add_relu(x, &r, true).unwrap();
        let v = (y * &probe)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        v.iter().map(|&a| a as f64).sum()
    };
    let xv = Var::from_tensor(&x0).unwrap();
    let y = bn.forward_add_relu(&xv, &r, true).unwrap();
    let grads = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
    let analytic = grads
        .get(&xv)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let base = x0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let eps = 1e-2f32;
    let mut worst = 0f64;
    for i in (0..base.len()).step_by(7) {
        let at = |delta: f32| {
            let mut v = base.clone();
            v[i] += delta;
            loss(&Tensor::from_vec(v, &shape[..], &Device::Cpu).unwrap())
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        worst = worst.max((numeric - analytic[i] as f64).abs());
    }
    // f32 forward at eps 1e-2: a few 1e-3 of noise; a wrong term is O(0.1–1).
    assert!(worst < 2e-2, "largest |numeric − analytic| = {worst}");
}

#[test]
fn bad_input_is_an_error() {
    let (_varmap, bn) = make(3);
    let x = randn(&[2, 4, 3, 3], 1, 1.0, 0.0);
    assert!(bn.forward_t(&x, true).is_err(), "wrong channel count");
    let one = randn(&[1, 3], 1, 1.0, 0.0);
    assert!(bn.forward_t(&one, true).is_err(), "one value per channel");
    let x = randn(&[2, 3, 3, 3], 1, 1.0, 0.0);
    let r = randn(&[2, 3, 3, 2], 1, 1.0, 0.0);
    assert!(bn.forward_add_relu(&x, &r, true).is_err(), "residual shape");
}
