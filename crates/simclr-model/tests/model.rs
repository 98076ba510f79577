//! The model against torchvision: names, shapes, parameter counts, and forward values in
//! train and eval mode (fixtures from `scripts/torchvision-keys.py` and
//! `scripts/golden-resnet.py`, whose docstrings say how to rerun them).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use simclr_model::{Arch, ModelConfig, SimClr, Stem, is_bias_or_norm, is_buffer, max_pool_3x3_s2};

mod common;
use common::{cosine, rel_diff};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn cfg(arch: Arch, stem: Stem, width: f64, in_channels: usize) -> ModelConfig {
    ModelConfig {
        arch,
        stem,
        width,
        in_channels,
        head_hidden: None,
        proj_dim: 128,
    }
}

/// `name shape` lines of the encoder (no `projector.`), as the fixtures hold them.
fn encoder_keys(model: &SimClr) -> Vec<String> {
    model
        .named_vars()
        .iter()
        .filter(|(n, _)| !n.starts_with("projector."))
        .map(|(n, v)| {
            let dims: Vec<String> = v.dims().iter().map(|d| d.to_string()).collect();
            format!("{n} {}", dims.join("x"))
        })
        .collect()
}

fn torchvision_keys(file: &str) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_to_string(fixture(file))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    keys.sort();
    keys
}

#[test]
fn names_and_shapes_are_torchvisions() {
    let dev = Device::Cpu;
    for (arch, file) in [
        (Arch::Resnet18, "resnet18_keys.txt"),
        (Arch::Resnet50, "resnet50_keys.txt"),
    ] {
        let want = torchvision_keys(file);
        let model = SimClr::new(&cfg(arch, Stem::Imagenet, 1.0, 3), &dev, 0).unwrap();
        assert_eq!(encoder_keys(&model), want, "{arch}, ImageNet stem");
        // The CIFAR stem changes conv1's kernel only.
        let cifar = SimClr::new(&cfg(arch, Stem::Cifar, 1.0, 3), &dev, 0).unwrap();
        let want_cifar: Vec<String> = want
            .iter()
            .map(|k| {
                if k == "conv1.weight 64x3x7x7" {
                    "conv1.weight 64x3x3x3".into()
                } else {
                    k.clone()
                }
            })
            .collect();
        assert_eq!(encoder_keys(&cifar), want_cifar, "{arch}, CIFAR stem");
        let head: Vec<String> = cifar
            .named_vars()
            .iter()
            .filter(|(n, _)| n.starts_with("projector."))
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(
            head,
            [
                "projector.0.bias",
                "projector.0.weight",
                "projector.1.bias",
                "projector.1.running_mean",
                "projector.1.running_var",
                "projector.1.weight",
                "projector.3.bias",
                "projector.3.weight"
            ]
        );
        // Parameter counts equal torchvision's without fc.
        let count = if arch == Arch::Resnet18 {
            11_176_512
        } else {
            23_508_032
        };
        assert_eq!(model.num_params(true), count, "{arch}");
    }
}

#[test]
fn buffers_and_decay_exclusions_are_told_apart() {
    let model = SimClr::new(&cfg(Arch::Resnet18, Stem::Cifar, 0.125, 3), &Device::Cpu, 0).unwrap();
    let trainable: Vec<String> = model.trainable_vars().into_iter().map(|(n, _)| n).collect();
    assert!(trainable.iter().all(|n| !is_buffer(n)));
    assert_eq!(
        trainable.len() + 2 * 21,
        model.named_vars().len(),
        "20 encoder BNs + 1 head BN"
    );
    let vars: HashMap<String, Var> = model.named_vars().into_iter().collect();
    assert!(is_bias_or_norm("bn1.weight", &vars["bn1.weight"]));
    assert!(is_bias_or_norm(
        "projector.0.bias",
        &vars["projector.0.bias"]
    ));
    assert!(!is_bias_or_norm("conv1.weight", &vars["conv1.weight"]));
    assert!(!is_bias_or_norm(
        "projector.3.weight",
        &vars["projector.3.weight"]
    ));
    assert!(!is_bias_or_norm(
        "bn1.running_var",
        &vars["bn1.running_var"]
    ));
}

#[test]
fn initialisation_is_seeded() {
    let c = cfg(Arch::Resnet18, Stem::Cifar, 0.125, 1);
    let a = SimClr::new(&c, &Device::Cpu, 3).unwrap();
    let b = SimClr::new(&c, &Device::Cpu, 3).unwrap();
    let d = SimClr::new(&c, &Device::Cpu, 4).unwrap();
    let flat = |m: &SimClr| -> Vec<f32> {
        m.named_vars()
            .iter()
            .flat_map(|(_, v)| v.flatten_all().unwrap().to_vec1::<f32>().unwrap())
            .collect()
    };
    assert_eq!(flat(&a), flat(&b));
    assert_ne!(flat(&a), flat(&d));
    // Kaiming normal, fan out: conv1 of width 8 with 3x3 kernels has std sqrt(2 / 72).
    let w = a
        .named_vars()
        .into_iter()
        .find(|(n, _)| n == "layer1.0.conv1.weight")
        .unwrap()
        .1;
    let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    assert!((std - (2.0f32 / 72.0).sqrt()).abs() < 0.03, "std {std}");
}

fn load_golden(name: &str, config: &ModelConfig) -> (SimClr, HashMap<String, Tensor>) {
    let dev = Device::Cpu;
    let tensors = candle_core::safetensors::load(fixture(name), &dev).unwrap();
    let model = SimClr::new(config, &dev, 0).unwrap();
    let vars = model.named_vars();
    assert_eq!(
        vars.len(),
        tensors.keys().filter(|k| k.starts_with("weights.")).count()
    );
    for (n, v) in vars {
        v.set(&tensors[&format!("weights.{n}")]).unwrap();
    }
    (model, tensors)
}

fn assert_close(got: &Tensor, want: &Tensor, tol: f32, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what} shape");
    let diff = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1.0);
    assert!(
        diff <= tol * scale,
        "{what}: max difference {diff} (scale {scale})"
    );
}

fn check_golden(name: &str, config: ModelConfig) {
    let (model, t) = load_golden(name, &config);
    let x = &t["input"];
    let (h, z) = model.forward_t(x, false).unwrap();
    assert_close(&h, &t["eval.h"], 1e-4, "eval h");
    assert_close(&z, &t["eval.z"], 1e-4, "eval z");
    // Eval mode leaves running statistics alone.
    for (n, v) in model.named_vars() {
        if is_buffer(&n) {
            assert_eq!(
                v.to_vec1::<f32>().unwrap(),
                t[&format!("weights.{n}")].to_vec1::<f32>().unwrap(),
                "{n}"
            );
        }
    }
    let (h, z) = model.forward_t(x, true).unwrap();
    assert_close(&h, &t["train.h"], 1e-4, "train h");
    assert_close(&z, &t["train.z"], 1e-4, "train z");
    // One training forward updates every running statistic as PyTorch does.
    for (n, v) in model.named_vars() {
        if is_buffer(&n) {
            assert_close(v.as_tensor(), &t[&format!("after.{n}")], 1e-5, &n);
        }
    }
}

#[test]
fn resnet18_cifar_matches_pytorch_in_eval_and_train_mode() {
    check_golden(
        "golden_resnet18_cifar.safetensors",
        ModelConfig {
            proj_dim: 16,
            ..cfg(Arch::Resnet18, Stem::Cifar, 1.0 / 16.0, 3)
        },
    );
}

#[test]
fn resnet50_imagenet_stem_matches_pytorch_in_eval_and_train_mode() {
    check_golden(
        "golden_resnet50_imagenet.safetensors",
        ModelConfig {
            proj_dim: 8,
            ..cfg(Arch::Resnet50, Stem::Imagenet, 1.0 / 16.0, 1)
        },
    );
}

#[test]
fn forward_shapes_of_every_variant() {
    let dev = Device::Cpu;
    for arch in [Arch::Resnet18, Arch::Resnet34, Arch::Resnet50] {
        for stem in [Stem::Cifar, Stem::Imagenet] {
            for ch in [1, 3] {
                let c = ModelConfig {
                    head_hidden: Some(vec![24, 20]),
                    proj_dim: 12,
                    ..cfg(arch, stem, 0.0625, ch)
                };
                let model = SimClr::new(&c, &dev, 1).unwrap();
                let x = Tensor::randn(0f32, 1.0, (2, ch, 20, 20), &dev).unwrap();
                let (h, z) = model.forward_t(&x, true).unwrap();
                assert_eq!(h.dims(), &[2, c.feature_dim()], "{arch} {stem} {ch}");
                assert_eq!(z.dims(), &[2, 12]);
                assert_eq!(
                    c.feature_dim(),
                    if arch == Arch::Resnet50 { 128 } else { 32 }
                );
            }
        }
    }
}

#[test]
fn max_pool_matches_candle_forward_and_finite_difference_gradients() {
    let dev = Device::Cpu;
    // Forward equals candle's max_pool2d on an input padded with -inf by hand.
    for (h, w) in [(6usize, 6usize), (7, 5)] {
        let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev).unwrap();
        let ours = max_pool_3x3_s2(&x).unwrap();
        let ninf = |rows, cols| Tensor::full(f32::NEG_INFINITY, (2, 3, rows, cols), &dev).unwrap();
        let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
        let xp = Tensor::cat(&[&ninf(1, w), &x, &ninf(2 * ho + 1 - h, w)], 2).unwrap();
        let xp = Tensor::cat(
            &[&ninf(2 * ho + 2, 1), &xp, &ninf(2 * ho + 2, 2 * wo + 1 - w)],
            3,
        )
        .unwrap();
        let reference = xp
            .max_pool2d_with_stride(3, 2)
            .unwrap()
            .narrow(2, 0, ho)
            .unwrap()
            .narrow(3, 0, wo)
            .unwrap();
        assert_eq!(
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            reference.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    // Gradient of sum(pool(x) * r) against central differences, in f64 (distinct values, no ties).
    let n = 2 * 7 * 6;
    let vals: Vec<f64> = (0..n).map(|i| ((i * 37 % 101) as f64) / 10.0).collect();
    let x = Var::from_vec(vals.clone(), (1, 2, 7, 6), &dev).unwrap();
    let r = Tensor::randn(0f64, 1.0, (1, 2, 4, 3), &dev).unwrap();
    let f = |t: &Tensor| {
        (max_pool_3x3_s2(t).unwrap() * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let loss = (max_pool_3x3_s2(x.as_tensor()).unwrap() * &r)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    for i in 0..n {
        let mut a = vals.clone();
        a[i] += 1e-4;
        let mut b = vals.clone();
        b[i] -= 1e-4;
        let ta = Tensor::from_vec(a, (1, 2, 7, 6), &dev).unwrap();
        let tb = Tensor::from_vec(b, (1, 2, 7, 6), &dev).unwrap();
        let fd = (f(&ta) - f(&tb)) / 2e-4;
        assert!(
            (fd - g[i]).abs() < 1e-6,
            "element {i}: fd {fd}, autograd {}",
            g[i]
        );
    }
}

#[test]
fn gradients_reach_every_parameter_with_the_imagenet_stem() {
    let dev = Device::Cpu;
    let model = SimClr::new(&cfg(Arch::Resnet18, Stem::Imagenet, 0.0625, 3), &dev, 0).unwrap();
    let x = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), &dev).unwrap();
    let (_, z) = model.forward_t(&x, true).unwrap();
    let grads = z.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for (name, var) in model.trainable_vars() {
        let g = grads
            .get(&var)
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(g.dims(), var.dims());
        let size = g
            .to_dtype(DType::F64)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            size.is_finite() && size > 0.0,
            "`{name}`: gradient {size}, want finite and non-zero"
        );
    }
}

#[test]
fn half_precision_activations_follow_f32_and_keep_f32_weights() {
    // `--precision bf16` feeds bf16 activations through the same casts this runs: weights
    // cast per convolution and linear layer, BatchNorm in f32, the pooled features and the
    // projection back in f32. candle's CPU kernels have no bf16 matrix product, so here the
    // half type is f16 (CPU gemm has it); the bf16 run itself is scripts/gpu-check.sh's.
    let dev = Device::Cpu;
    let config = cfg(Arch::Resnet18, Stem::Cifar, 0.125, 1);
    let model = SimClr::new(&config, &dev, 3).unwrap();
    let x: Vec<f32> = (0..8 * 16 * 16)
        .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 3.0)
        .collect();
    let x = Tensor::from_vec(x, (8, 1, 16, 16), &dev).unwrap();
    let run = |dtype: DType| {
        let h = model.encode_t(&x.to_dtype(dtype).unwrap(), true).unwrap();
        assert_eq!(h.dtype(), DType::F32, "pooled features in f32");
        let z = model
            .projector
            .forward_t(&h.to_dtype(dtype).unwrap(), true)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        // Scaled by 2¹⁰ so that no f16 gradient underflows (f16's smallest normal is 6e-5;
        // bf16 has f32's range and needs no such scaling). The scale cancels in the
        // relative differences.
        let loss = (z.sqr().unwrap().sum_all().unwrap() * 1024.0).unwrap();
        (z, loss.backward().unwrap())
    };
    let (z32, g32) = run(DType::F32);
    let (z16, g16) = run(DType::F16);
    let dz = rel_diff(&z16, &z32);
    // Gradients: their direction (cosine with the f32 gradient) per parameter. Element-wise
    // they differ by up to ~30% of their scale here: candle's CPU convolution adds its tiles
    // in the half type, and train-mode BatchNorm's backward subtracts nearly equal sums.
    // The bias of the head's first Linear, followed by BatchNorm, has no gradient in exact
    // arithmetic (its f32 one is rounding noise) and is skipped.
    let mut worst = (String::new(), 1f64);
    for (name, v) in model.trainable_vars() {
        let (a, b) = (g16.get(&v).unwrap(), g32.get(&v).unwrap());
        assert_eq!(
            a.dtype(),
            DType::F32,
            "`{name}`: gradient of the f32 weight in f32"
        );
        if name == "projector.0.bias" {
            continue;
        }
        let c = cosine(a, b);
        if c < worst.1 {
            worst = (name, c);
        }
    }
    eprintln!(
        "f16 vs f32 on the CPU: projection {dz:.2e}, lowest gradient cosine {:.4} ({})",
        worst.1, worst.0
    );
    assert!(
        dz > 0.0 && dz < 1e-2,
        "projection differs by {dz} of its scale"
    );
    assert!(
        worst.1 > 0.95,
        "gradient of `{}`: cosine {}",
        worst.0,
        worst.1
    );
    for (name, v) in model.named_vars() {
        assert_eq!(v.dtype(), DType::F32, "{name} stays f32");
    }
}

/// The bound loaders check before allocating a model never refuses real weights (it is at
/// most the true count) and is tight enough to matter (within 5×); a file too small for the
/// model its metadata names is refused by [`simclr_model::check_file_fits`].
#[test]
fn parameter_bound_is_below_the_true_count_and_refuses_small_files() {
    let dev = Device::Cpu;
    for arch in [Arch::Resnet18, Arch::Resnet34, Arch::Resnet50] {
        for stem in [Stem::Cifar, Stem::Imagenet] {
            for width in [0.0625, 0.25] {
                let c = cfg(arch, stem, width, 3);
                let model = SimClr::new(&c, &dev, 0).unwrap();
                let actual = model.num_params(true) as u64;
                let bound = c.min_encoder_parameters().unwrap();
                assert!(bound <= actual, "{}: {bound} > {actual}", c.describe());
                assert!(5 * bound >= actual, "{}: {bound} vs {actual}", c.describe());
                let tensors: HashMap<String, Tensor> = model
                    .named_vars()
                    .into_iter()
                    .map(|(n, v)| (n, v.as_tensor().clone()))
                    .collect();
                simclr_model::check_file_fits(&c, &tensors).unwrap();
            }
        }
    }
    let small: HashMap<String, Tensor> = [(
        "conv1.weight".to_string(),
        Tensor::zeros(64, DType::F32, &dev).unwrap(),
    )]
    .into();
    let huge = cfg(Arch::Resnet50, Stem::Imagenet, 1e4, 3);
    let err = simclr_model::check_file_fits(&huge, &small).unwrap_err();
    assert!(err.contains("tensors hold 64 values"), "{err}");
    assert!(
        cfg(Arch::Resnet50, Stem::Cifar, 1e15, 3)
            .min_encoder_parameters()
            .is_none()
    );
}
