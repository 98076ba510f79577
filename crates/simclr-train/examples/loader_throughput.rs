//! The data loader alone on an image folder, as `simclr pretrain` runs it: files read and
//! decoded a batch at a time (or read from the decoded cache), two augmented views of each
//! image, batches queued for the step. No model: the figure is how fast the loader can feed
//! one, to set beside torchvision's `ImageFolder` + `DataLoader` (`scripts/bench-folder.sh`).
//!
//! Usage: `loader_throughput --data DIR [--size 96] [--batch 256] [--batches 40]
//! [--workers 2] [--cache DIR] [--jitter 0.5]`; prints one JSON line: the time to open the
//! folder (listing, headers, or building the cache), images/s over `--batches` batches after
//! the first, and the process's peak resident memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use simclr_augment::AugmentConfig;
use simclr_data::{CacheOptions, Dataset, Image, OpenOptions};
use simclr_train::loader::{Loader, LoaderConfig, Sampler};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/mod.rs"]
mod common;
use common::{arg, peak_rss_mib};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let data = PathBuf::from(arg(&args, "--data", String::new()));
    let size: u32 = arg(&args, "--size", 96);
    let batch: usize = arg(&args, "--batch", 256);
    let batches: usize = arg(&args, "--batches", 40);
    let workers: usize = arg(&args, "--workers", 2);
    let jitter: f64 = arg(&args, "--jitter", 0.5);
    let cache = args
        .iter()
        .position(|a| a == "--cache")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);

    let t0 = Instant::now();
    let resizer = AugmentConfig::simclr(size, 1);
    let resize = |img: &Image| resizer.eval_image(img);
    let mut progress = |_, _| {};
    let cache_options = cache.as_deref().map(|dir| CacheOptions {
        dir,
        height: size,
        width: size,
        resize: &resize,
        resize_name: "simclr-augment eval_image (whole image, bilinear) 1",
        progress: &mut progress,
    });
    let ds: Arc<dyn Dataset> =
        simclr_data::open_any(&data, &OpenOptions::default(), cache_options)?;
    let open_s = t0.elapsed().as_secs_f64();

    // The augmentation `simclr pretrain --image-size SIZE --jitter-strength JITTER` uses.
    let augment = simclr_train::TrainConfig {
        image_size: size,
        jitter_strength: jitter,
        ..Default::default()
    }
    .augment(ds.channels());
    let config = LoaderConfig {
        batch_size: batch,
        seed: 0,
        prefetch: 4,
        workers,
        device: Device::Cpu,
        rank: 0,
        world: 1,
        sampler: Sampler::Shuffle,
    };
    let loader = Loader::start(ds.clone(), augment, config, (0, 0), u64::MAX / 2);
    let mut t = None;
    let mut done = 0;
    for (i, b) in loader.take(batches + 1).enumerate() {
        let b = b?;
        if i == 0 {
            t = Some(Instant::now());
        } else {
            done += b.views.dim(0)? / 2;
        }
    }
    let dt = t.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!(
        "{{\"bench\": \"loader\", \"framework\": \"simclr-rs\", \"images\": {}, \"cached\": {}, \"size\": {size}, \"batch\": {batch}, \"workers\": {workers}, \"open_s\": {open_s:.3}, \"images_per_s\": {:.1}, \"peak_rss_mib\": {:.1}}}",
        ds.len(),
        cache.is_some(),
        done as f64 / dt,
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    Ok(())
}
