//! Forward + backward time of the SimCLR step (encoder, head, NT-Xent), no optimiser update.
//!
//! Usage: `step_time [--arch resnet18] [--width 1.0] [--batch 64] [--size 32] [--channels 3] [--steps 5]`
//! Prints the median over `--steps` timed steps after one warm-up, as one JSON line.

use std::time::Instant;

use candle_core::{Device, Tensor};
use simclr_model::{ModelConfig, SimClr, Stem};

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let cfg = ModelConfig {
        arch: arg(&args, "--arch", "resnet18".to_string())
            .parse()
            .expect("arch"),
        stem: Stem::Cifar,
        width: arg(&args, "--width", 1.0),
        in_channels: arg(&args, "--channels", 3),
        head_hidden: None,
        proj_dim: 128,
    };
    let (batch, size, steps): (usize, usize, usize) = (
        arg(&args, "--batch", 64),
        arg(&args, "--size", 32),
        arg(&args, "--steps", 5),
    );
    let dev = Device::Cpu;
    let model = SimClr::new(&cfg, &dev, 0)?;
    let x = Tensor::randn(0f32, 1.0, (2 * batch, cfg.in_channels, size, size), &dev)?;
    let mut times = Vec::new();
    for i in 0..=steps {
        let t = Instant::now();
        let (_, z) = model.forward_t(&x, true)?;
        let fwd = t.elapsed().as_secs_f64();
        let loss = simclr_loss::nt_xent(&z.narrow(0, 0, batch)?, &z.narrow(0, batch, batch)?, 0.5)?;
        let grads = loss.backward()?;
        std::hint::black_box(&grads);
        if i > 0 {
            times.push((t.elapsed().as_secs_f64(), fwd));
        }
    }
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (total, fwd) = times[times.len() / 2];
    println!(
        "{{\"bench\":\"fwd_bwd\",\"arch\":\"{}\",\"width\":{},\"views\":{},\"size\":{size},\"channels\":{},\"median_s\":{total:.3},\"forward_s\":{fwd:.3},\"views_per_s\":{:.1},\"threads\":{}}}",
        cfg.arch,
        cfg.width,
        2 * batch,
        cfg.in_channels,
        (2 * batch) as f64 / total,
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
