//! The CPU convolutions with bf16 gemms (`--precision bf16` on a CPU with AVX-512 BF16). The
//! setting is the whole process's (`conv::set_bf16_gemm`), so these tests have a binary of
//! their own and run one after another under one lock.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use simclr_model::conv::{self, conv2d};
use simclr_model::{Arch, ModelConfig, Precision, SimClr, Stem};

mod common;
use common::{cosine, rel_diff, values_f64};

/// Serialises the tests: each sets the process-wide switch.
static SWITCH: Mutex<()> = Mutex::new(());

/// Deterministic values in (−1.5, 1.5).
fn input(shape: (usize, usize, usize, usize), salt: f32) -> Tensor {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 0.618_034 + salt).fract() - 0.5) * 3.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Where the CPU lacks the instructions, turning the gemms on is an error and nothing else
/// here can run.
fn supported() -> bool {
    if conv::bf16_gemm_supported() {
        return true;
    }
    assert!(conv::set_bf16_gemm(true).is_err());
    assert!(!conv::bf16_gemm());
    eprintln!("no AVX-512 BF16 on this CPU: only the refusal was tested");
    false
}

/// Each convolution path (im2col, 1×1 without im2col, shifted views, strided, Winograd) with
/// bf16 gemms against f32. The direct paths element by element: the output and both
/// gradients within `2.01·2⁻⁸·Σ|a·b|` of f32's (plus 2⁻¹² of it for f32's own sums), `Σ|a·b|`
/// the sum of the magnitudes of the element's products (the same convolution and gradients
/// run on `|x|`, `|w|`, `|dy|`): each product's inputs are rounded to 8 significant bits
/// (see `conv::bf16`). Winograd rounds its transformed tiles, whose products mix taps that
/// the direct sum keeps apart, so no such element-wise bound holds there; its error is held
/// to 1% of the result's scale (measured: printed).
#[test]
fn every_convolution_path_is_within_the_bf16_bound_of_f32() {
    let _lock = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    if !supported() {
        return;
    }
    // (input, output channels, kernel, stride, padding, Winograd?): 3×3 narrow (shifted
    // views), 3×3 with 64 channels 20 wide (Winograd), 1×1, strided 3×3 (im2col), 7×7 stride 2.
    let cases = [
        ((4, 16, 12, 30), 24, 3, 1, 1, false),
        ((2, 64, 20, 20), 64, 3, 1, 1, true),
        ((3, 40, 9, 9), 24, 1, 1, 0, false),
        ((3, 20, 11, 9), 16, 3, 2, 1, false),
        ((2, 3, 17, 17), 8, 7, 2, 3, false),
    ];
    for (xs, o, k, stride, padding, winograd) in cases {
        let x = input(xs, 0.1);
        let w = (input((o, xs.1, k, k), 0.3) * (1.0 / (xs.1 * k * k) as f64).sqrt()).unwrap();
        let dims = conv2d(&x, &w, stride, padding).unwrap().dims4().unwrap();
        let r = input(dims, 0.7);
        let run = |x: &Tensor, w: &Tensor, r: &Tensor, on: bool| {
            conv::set_bf16_gemm(on).unwrap();
            let (x, w) = (
                candle_core::Var::from_tensor(x).unwrap(),
                candle_core::Var::from_tensor(w).unwrap(),
            );
            let y = conv2d(&x, &w, stride, padding).unwrap();
            let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
            [y, g.get(&x).unwrap().clone(), g.get(&w).unwrap().clone()]
        };
        let got = run(&x, &w, &r, true);
        let want = run(&x, &w, &r, false);
        let abs = run(
            &x.abs().unwrap(),
            &w.abs().unwrap(),
            &r.abs().unwrap(),
            false,
        );
        for (i, what) in ["output", "input gradient", "weight gradient"]
            .iter()
            .enumerate()
        {
            if winograd {
                let d = rel_diff(&got[i], &want[i]);
                eprintln!("{xs:?} k{k} (Winograd): {what}: error {d:.2e} of its scale");
                assert!(d > 0.0 && d < 1e-2, "{xs:?} Winograd {what}: {d:.2e}");
                continue;
            }
            let (g, v, m) = (
                values_f64(&got[i]),
                values_f64(&want[i]),
                values_f64(&abs[i]),
            );
            let mut worst = 0f64;
            for ((g, v), m) in g.iter().zip(&v).zip(&m) {
                let err = (g - v).abs();
                assert!(
                    err <= (2.01 * 2f64.powi(-8) + 2f64.powi(-12)) * m,
                    "{xs:?} k{k} s{stride}: {what} off by {err:.3e}, Σ|a·b| {m:.3e}"
                );
                worst = worst.max(err / m.max(1e-30));
            }
            eprintln!("{xs:?} k{k} s{stride}: {what}: worst error {worst:.2e} of Σ|a·b|");
            assert!(
                worst > 0.0,
                "{xs:?} k{k}: {what} is f32's exactly: bf16 not used"
            );
        }
    }
    conv::set_bf16_gemm(false).unwrap();
}

/// A forward and backward of a bottleneck ResNet with bf16 gemms follows f32's: the
/// projection within 2% of f32's scale and every parameter's gradient pointing the same way
/// (cosine above 0.99); `set_precision` turns the gemms on and off, activations and weights
/// stay f32. BatchNorm runs in eval mode: a freshly initialised ResNet-50 normalising with
/// the statistics of a batch of 8 is so ill-conditioned that f32 itself moves its projection
/// by 20–26% of its scale when the input moves by 1e-3 (measured), so a train-mode
/// comparison would measure that, not the gemms (`pretrain`'s losses are compared in the CLI
/// tests).
#[test]
fn a_forward_and_backward_with_bf16_gemms_follows_f32() {
    let _lock = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    if !supported() {
        return;
    }
    let config = ModelConfig {
        arch: Arch::Resnet50,
        stem: Stem::Cifar,
        width: 0.125,
        in_channels: 1,
        head_hidden: None,
        proj_dim: 64,
    };
    let mut model = SimClr::new(&config, &Device::Cpu, 5).unwrap();
    let x = input((8, 1, 16, 16), 0.2);
    let mut run = |precision: Precision| {
        model.set_precision(precision).unwrap();
        assert_eq!(conv::bf16_gemm(), precision == Precision::Bf16);
        let (h, z) = model.forward_t(&x, false).unwrap();
        assert_eq!((h.dtype(), z.dtype()), (DType::F32, DType::F32));
        let loss = z.sqr().unwrap().sum_all().unwrap();
        (z, loss.backward().unwrap())
    };
    let (z16, g16) = run(Precision::Bf16);
    let (z32, g32) = run(Precision::F32);
    let dz = rel_diff(&z16, &z32);
    let mut worst = (String::new(), 1f64);
    for (name, v) in model.trainable_vars() {
        // The head's first bias, followed by BatchNorm, has no gradient in exact arithmetic.
        if name == "projector.0.bias" {
            continue;
        }
        let c = cosine(g16.get(&v).unwrap(), g32.get(&v).unwrap());
        if c < worst.1 {
            worst = (name, c);
        }
    }
    eprintln!(
        "bf16 gemms vs f32: projection {dz:.2e}, lowest gradient cosine {:.5} ({})",
        worst.1, worst.0
    );
    assert!(dz > 0.0 && dz < 2e-2, "projection differs by {dz:.2e}");
    assert!(
        worst.1 > 0.99,
        "gradient of `{}`: cosine {}",
        worst.0,
        worst.1
    );
    for (name, v) in model.named_vars() {
        assert_eq!(v.dtype(), DType::F32, "{name} stays f32");
    }
}
