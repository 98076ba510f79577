//! One SimCLR training step on the CPU and on another device (CUDA by default) from the same
//! weights and views: ResNet (CIFAR stem) + projection head + NT-Xent, train-mode BatchNorm,
//! forward and backward. Prints, as JSON lines, the largest difference of the loss, the
//! representations, the projections, the BatchNorm running statistics and every parameter's
//! gradient, each relative to the CPU tensor's largest magnitude, and exits with status 1 if
//! any exceeds `--tol`.
//!
//! Usage: `device_agreement [--device cuda] [--precision f32|bf16] [--arch resnet18]
//! [--width 1.0] [--batch 64] [--size 32] [--channels 3] [--tol 1e-3]`.
//! `--device cpu` compares the CPU with itself (0 everywhere): a smoke test of the check
//! that runs without a GPU (candle's CPU kernels have no bf16 matrix product).

use candle_core::{DType, Device, Tensor};
use simclr_model::{ModelConfig, Precision, SimClr};

#[path = "common/mod.rs"]
mod common;
use common::arg;

/// max |a − b| / max |b|, in f64.
fn rel_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let f = |t: &Tensor| -> candle_core::Result<Vec<f64>> {
        t.to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1()
    };
    let (a, b) = (f(a)?, f(b)?);
    let scale = b.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    Ok(a.iter()
        .zip(&b)
        .fold(0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale)
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let device = common::device(&arg(&args, "--device", "cuda".to_string()))?;
    let precision: Precision = arg(&args, "--precision", "f32".to_string())
        .parse()
        .map_err(candle_core::Error::msg)?;
    let cfg = ModelConfig {
        arch: arg(&args, "--arch", "resnet18".to_string())
            .parse()
            .map_err(candle_core::Error::msg)?,
        stem: simclr_model::Stem::Cifar,
        width: arg(&args, "--width", 1.0),
        in_channels: arg(&args, "--channels", 3),
        head_hidden: None,
        proj_dim: 128,
    };
    let (batch, size): (usize, usize) = (arg(&args, "--batch", 64), arg(&args, "--size", 32));
    let tol: f64 = arg(&args, "--tol", 1e-3);

    let x = Tensor::randn(
        0f32,
        1.0,
        (2 * batch, cfg.in_channels, size, size),
        &Device::Cpu,
    )?;
    let step = |dev: &Device, precision: Precision| -> candle_core::Result<_> {
        let mut model = SimClr::new(&cfg, dev, 0)?;
        model.set_precision(precision)?;
        let (h, z) = model.forward_t(&x.to_device(dev)?, true)?;
        let loss = simclr_loss::nt_xent(&z.narrow(0, 0, batch)?, &z.narrow(0, batch, batch)?, 0.5)?;
        let grads = loss.backward()?;
        dev.synchronize()?;
        Ok((model, h, z, loss, grads))
    };
    let (cpu, h0, z0, l0, g0) = step(&Device::Cpu, Precision::F32)?;
    let (other, h1, z1, l1, g1) = step(&device, precision)?;

    let mut rows: Vec<(String, f64)> = vec![
        ("loss".into(), rel_diff(&l1, &l0)?),
        ("representation h".into(), rel_diff(&h1, &h0)?),
        ("projection z".into(), rel_diff(&z1, &z0)?),
    ];
    let mut grad_worst = ("".to_string(), 0f64);
    let mut stats_worst = ("".to_string(), 0f64);
    for ((name, v0), (_, v1)) in cpu.named_vars().iter().zip(other.named_vars()) {
        if simclr_model::is_buffer(name) {
            let d = rel_diff(v1.as_tensor(), v0.as_tensor())?;
            if d >= stats_worst.1 {
                stats_worst = (name.clone(), d);
            }
            continue;
        }
        let (Some(a), Some(b)) = (g1.get(&v1), g0.get(v0)) else {
            candle_core::bail!("no gradient for `{name}` on one of the devices")
        };
        let d = rel_diff(a, b)?;
        if d >= grad_worst.1 {
            grad_worst = (name.clone(), d);
        }
    }
    rows.push((format!("worst gradient ({})", grad_worst.0), grad_worst.1));
    rows.push((
        format!("worst BN running statistic ({})", stats_worst.0),
        stats_worst.1,
    ));
    let worst = rows.iter().map(|r| r.1).fold(0f64, f64::max);
    for (what, d) in &rows {
        println!(
            "{{\"check\":\"device_agreement\",\"device\":\"{device:?}\",\"precision\":\"{precision}\",\"what\":\"{what}\",\"rel_diff\":{d:.3e}}}"
        );
    }
    println!(
        "{{\"check\":\"device_agreement\",\"device\":\"{device:?}\",\"precision\":\"{precision}\",\"arch\":\"{}\",\"width\":{},\"views\":{},\"size\":{size},\"worst\":{worst:.3e},\"tol\":{tol:e},\"pass\":{}}}",
        cfg.arch,
        cfg.width,
        2 * batch,
        worst <= tol
    );
    if worst > tol {
        std::process::exit(1);
    }
    Ok(())
}
