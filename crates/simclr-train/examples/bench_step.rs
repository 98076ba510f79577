//! One SimCLR training step timed the way `../shared/bench/torch_reference.py step` times
//! PyTorch's: ResNet (CIFAR stem) + projection head + NT-Xent, forward, backward and an SGD
//! momentum update (lr 0.1, momentum 0.9, weight decay 1e-6) on fixed random `2N` views.
//!
//! Usage: `bench_step [--arch resnet18] [--stem cifar] [--width 1.0] [--batch 128] [--size 32]
//! [--channels 3] [--steps 5] [--warmup 2] [--device cpu|cuda] [--precision f32|bf16]
//! [--optimizer sgd|lars]`; prints
//! one JSON line: the median step over `--steps` after `--warmup`, the medians of its phases
//! (forward with the loss, backward, optimiser update), and the process's peak resident
//! memory. On a GPU the device is synchronised before each reading of the clock.

use std::time::Instant;

use candle_core::Tensor;
use simclr_model::{ModelConfig, SimClr};
use simclr_train::optim::{OptimConfig, OptimizerKind, build};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/mod.rs"]
mod common;
use common::{arg, peak_rss_mib};

fn main() -> candle_core::Result<()> {
    // SAFETY: first thing in `main`, before any other thread exists.
    unsafe { simclr_train::memory::prepare_process_for_training(None) };
    let args: Vec<String> = std::env::args().collect();
    let cfg = ModelConfig {
        arch: arg(&args, "--arch", "resnet18".to_string())
            .parse()
            .map_err(candle_core::Error::msg)?,
        stem: arg(&args, "--stem", "cifar".to_string())
            .parse()
            .map_err(candle_core::Error::msg)?,
        width: arg(&args, "--width", 1.0),
        in_channels: arg(&args, "--channels", 3),
        head_hidden: None,
        proj_dim: 128,
    };
    let batch: usize = arg(&args, "--batch", 128);
    let size: usize = arg(&args, "--size", 32);
    let (steps, warmup): (usize, usize) = (arg(&args, "--steps", 5), arg(&args, "--warmup", 2));
    let dev = common::device(&arg(&args, "--device", "cpu".to_string()))?;
    let precision: simclr_model::Precision = arg(&args, "--precision", "f32".to_string())
        .parse()
        .map_err(candle_core::Error::msg)?;
    let mut model = SimClr::new(&cfg, &dev, 0)?;
    model.set_precision(precision)?;
    let vars = model.trainable_vars().into_iter().map(|(_, v)| v).collect();
    // SGD as the reference; `--optimizer lars` isolates the cost of `pretrain`'s default.
    let optimizer: OptimizerKind = arg(&args, "--optimizer", "sgd".to_string())
        .parse()
        .map_err(candle_core::Error::msg)?;
    let mut opt = build(
        optimizer,
        vars,
        OptimConfig {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-6,
            exclude_bias_norm: optimizer == OptimizerKind::Lars,
            ..OptimConfig::default()
        },
    )?;
    let x = Tensor::randn(0f32, 1.0, (2 * batch, cfg.in_channels, size, size), &dev)?;
    // Per timed step: total, forward (with the loss), backward, update.
    let mut times: Vec<[f64; 4]> = Vec::new();
    let mut loss_last = 0.0;
    for i in 0..warmup + steps {
        let t = Instant::now();
        let (_, z) = model.forward_t(&x, true)?;
        let loss = simclr_loss::nt_xent(&z.narrow(0, 0, batch)?, &z.narrow(0, batch, batch)?, 0.5)?;
        loss_last = loss.to_scalar::<f32>()?;
        let fwd = t.elapsed().as_secs_f64();
        let grads = loss.backward()?;
        dev.synchronize()?;
        let bwd = t.elapsed().as_secs_f64();
        opt.step(&grads)?;
        dev.synchronize()?;
        let total = t.elapsed().as_secs_f64();
        if i >= warmup {
            times.push([total, fwd, bwd - fwd, total - bwd]);
        }
    }
    let median = |k: usize| {
        let mut v: Vec<f64> = times.iter().map(|t| t[k]).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let min = times.iter().map(|t| t[0]).fold(f64::INFINITY, f64::min);
    println!(
        "{{\"bench\":\"step\",\"framework\":\"simclr-rs\",\"device\":\"{}\",\"precision\":\"{precision}\",\"cpu_bf16_kernel\":\"{}\",\"optimizer\":\"{optimizer}\",\"arch\":\"{}\",\"width\":{},\"batch_images\":{batch},\"views\":{},\"size\":{size},\"channels\":{},\"threads\":{},\"step_s_median\":{:.4},\"step_s_min\":{min:.4},\"forward_s\":{:.4},\"backward_s\":{:.4},\"update_s\":{:.4},\"views_per_s\":{:.2},\"peak_rss_mib\":{:.1},\"loss_last\":{loss_last}}}",
        if dev.is_cpu() { "cpu" } else { "cuda" },
        match (
            simclr_model::conv::bf16_gemm(),
            simclr_model::conv::bf16_gemm_amx()
        ) {
            (false, _) => "none",
            (true, false) => "avx512bf16",
            (true, true) => "amx",
        },
        cfg.arch,
        cfg.width,
        2 * batch,
        cfg.in_channels,
        candle_core::utils::get_num_threads(),
        median(0),
        median(1),
        median(2),
        median(3),
        (2 * batch) as f64 / median(0),
        peak_rss_mib().unwrap_or(f64::NAN),
    );
    Ok(())
}
