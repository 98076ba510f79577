//! Feature extraction as `linear-probe`, `knn`, `embed` and the kNN monitor run it: images
//! resized and normalised, then the encoder's eval forward (BatchNorm with running
//! statistics, no gradient), 256 images a batch. Set beside PyTorch's eval forward of the same
//! encoder on ready tensors (`scripts/torch_eval_forward.py`), which does less: no resize.
//!
//! Usage: `embed_throughput [--arch resnet18] [--width 1.0] [--size 32] [--channels 3]
//! [--images 2048] [--rounds 3]`; prints one JSON line with the median images/s of the rounds
//! after one warm-up batch.

use std::time::Instant;

use simclr_augment::AugmentConfig;
use simclr_data::Image;
use simclr_model::{ModelConfig, SimClr};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../simclr-train/examples/common/mod.rs"]
mod common;
use common::arg;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: first thing in `main`, before any other thread exists; as the `simclr` binary.
    unsafe { simclr_train::memory::prepare_process_for_training(None) };
    let args: Vec<String> = std::env::args().collect();
    let cfg = ModelConfig {
        arch: arg(&args, "--arch", "resnet18".to_string()).parse()?,
        stem: simclr_model::Stem::Cifar,
        width: arg(&args, "--width", 1.0),
        in_channels: arg(&args, "--channels", 3),
        head_hidden: None,
        proj_dim: 128,
    };
    let size: u32 = arg(&args, "--size", 32);
    let n: usize = arg(&args, "--images", 2048);
    let rounds: usize = arg(&args, "--rounds", 3);
    let model = SimClr::new(&cfg, &candle_core::Device::Cpu, 0)?;
    let c = cfg.in_channels as u8;
    let images: Vec<Image> = (0..n)
        .map(|i| {
            let px: Vec<u8> = (0..size as usize * size as usize * usize::from(c))
                .map(|j| ((i * 31 + j * 7) % 251) as u8)
                .collect();
            Image::new(size, size, c, px).expect("valid size")
        })
        .collect();
    let refs: Vec<&Image> = images.iter().collect();
    let preprocess = AugmentConfig::simclr(size, c);
    simclr_eval::embed_with(&model, &preprocess, &refs[..256.min(n)])?;
    let mut rates = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let f = simclr_eval::embed_with(&model, &preprocess, &refs)?;
        assert_eq!(f.len(), n * cfg.feature_dim());
        rates.push(n as f64 / t.elapsed().as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "{{\"bench\": \"embed\", \"framework\": \"simclr-rs\", \"arch\": \"{}\", \"width\": {}, \"size\": {size}, \"channels\": {c}, \"images\": {n}, \"images_per_s\": {:.1}}}",
        arg(&args, "--arch", "resnet18".to_string()),
        cfg.width,
        rates[rates.len() / 2]
    );
    Ok(())
}
