//! Two-view augmentation throughput, printed as one JSON line (like the PyTorch reference's).
//!
//! Usage: `augment_throughput --size 32 --images 4000 --threads 1 [--blur]`
//!
//! Sources are synthetic RGB images of the output size (as CIFAR-10 at 32 px, STL-10 at
//! 96 px) with noise texture, so every crop, resample and colour op does real work.

use std::time::Instant;

use simclr_augment::AugmentConfig;
use simclr_data::Image;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, got {v}"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size = arg(&args, "--size", 32) as u32;
    let images = arg(&args, "--images", 4000);
    let threads = arg(&args, "--threads", 1);
    let blur = args.iter().any(|a| a == "--blur");
    let batch = 256.min(images);

    let mut cfg = AugmentConfig::simclr(size, 3);
    cfg.blur_p = if blur { 0.5 } else { 0.0 };
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let sources: Vec<Image> = (0..batch)
        .map(|_| {
            let data: Vec<u8> = (0..size * size * 3)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 56) as u8
                })
                .collect();
            Image::new(size, size, 3, data).expect("valid size")
        })
        .collect();
    let refs: Vec<&Image> = sources.iter().collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let run = |epoch: u64, n: usize| {
        let mut done = 0;
        while done < n {
            let idx: Vec<u64> = (done as u64..(done + batch) as u64).collect();
            let b = pool.install(|| cfg.batch(&refs, 0, epoch, &idx).expect("valid batch"));
            std::hint::black_box(&b);
            done += batch;
        }
        done
    };
    run(0, batch * 2); // warm-up
    let start = Instant::now();
    let done = run(1, images);
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"augment\",\"impl\":\"simclr-rs\",\"size\":{size},\"threads\":{threads},\"blur\":{blur},\"images\":{done},\"images_per_s\":{:.1},\"peak_rss_mib\":{:.1}}}",
        done as f64 / secs,
        peak_rss_mib().unwrap_or(f64::NAN)
    );
}

/// Peak resident set size in MiB (`VmHWM`), Linux only.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
