//! The pipeline as a whole: rates and ranges of the random draws over many samples,
//! determinism across thread counts, layout, shapes and ranges, and configuration errors.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use simclr_augment::{AugmentConfig, AugmentError, view_rng};
use simclr_data::Image;

const DRAWS: usize = 20_000;

/// Asserts an observed rate lies within 5 binomial standard deviations of `p`.
fn assert_rate(name: &str, hits: usize, p: f64) {
    let n = DRAWS as f64;
    let sd = (p * (1.0 - p) / n).sqrt();
    let rate = hits as f64 / n;
    assert!(
        (rate - p).abs() <= 5.0 * sd + 1e-12,
        "{name}: rate {rate}, expected {p} ± {}",
        5.0 * sd
    );
}

fn textured(w: u32, h: u32, c: u8) -> Image {
    let data: Vec<u8> = (0..w * h * u32::from(c))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    Image::new(w, h, c, data).unwrap()
}

#[test]
fn draw_rates_match_the_configured_probabilities() {
    let cfg = AugmentConfig::simclr(96, 3);
    assert_eq!(cfg.blur_p, 0.5);
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut flips, mut jitters, mut grays, mut blurs) = (0, 0, 0, 0);
    for _ in 0..DRAWS {
        let p = cfg.sample_params(&mut rng, 120, 90);
        flips += usize::from(p.flip);
        jitters += usize::from(p.jitter.is_some());
        grays += usize::from(p.grayscale);
        blurs += usize::from(p.blur_sigma.is_some());
        if let Some(j) = p.jitter {
            let mut order = j.order;
            order.sort_unstable();
            assert_eq!(order, [0, 1, 2, 3], "jitter order is a permutation");
            for f in [j.brightness, j.contrast, j.saturation] {
                assert!((0.2..=1.8).contains(&f), "factor {f}");
            }
            assert!((-0.2..=0.2).contains(&j.hue), "hue {}", j.hue);
        }
        if let Some(s) = p.blur_sigma {
            assert!((0.1..=2.0).contains(&s), "sigma {s}");
        }
    }
    assert_rate("flip", flips, 0.5);
    assert_rate("jitter", jitters, 0.8);
    assert_rate("grayscale", grays, 0.2);
    assert_rate("blur", blurs, 0.5);
}

#[test]
fn crops_stay_inside_the_image_with_area_and_ratio_in_range() {
    let cfg = AugmentConfig::simclr(32, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (w, h) = (200u32, 150u32);
    let mut area_sum = 0.0;
    let mut seen_small = false;
    for _ in 0..DRAWS {
        let r = cfg.sample_crop(&mut rng, w, h);
        assert!(
            r.width > 0 && r.height > 0 && r.x + r.width <= w && r.y + r.height <= h,
            "{r:?}"
        );
        let area = f64::from(r.width * r.height) / f64::from(w * h);
        let ratio = f64::from(r.width) / f64::from(r.height);
        // Rounding the sides to whole pixels moves area and ratio by at most a pixel's worth.
        assert!((0.08 - 0.01..=1.0).contains(&area), "area {area}");
        assert!(
            (0.75 * 0.97..=4.0 / 3.0 * 1.03).contains(&ratio),
            "ratio {ratio}"
        );
        area_sum += area;
        seen_small |= area < 0.1;
    }
    // torchvision draws the same distribution; its mean area fraction on a 200x150 image
    // (large crops that do not fit are redrawn, which pulls the mean below the uniform's 0.54):
    //   import torch, torchvision.transforms as T; torch.manual_seed(0)
    //   img = torch.zeros(3, 150, 200)
    //   a = [h * w / 30000 for _ in range(200000)
    //        for (i, j, h, w) in [T.RandomResizedCrop.get_params(img, (0.08, 1.0), (3/4, 4/3))]]
    //   -> mean 0.435456, std 0.217687
    let mean = area_sum / DRAWS as f64;
    let se = 0.217_687 / (DRAWS as f64).sqrt();
    assert!((mean - 0.435_456).abs() < 5.0 * se, "mean area {mean}");
    assert!(seen_small);
}

#[test]
fn crop_falls_back_to_a_centre_crop_for_extreme_images() {
    let cfg = AugmentConfig::simclr(32, 3);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // A 1-pixel-high strip rarely fits a sampled crop; the fallback clamps the ratio to 4/3.
    for _ in 0..100 {
        let r = cfg.sample_crop(&mut rng, 400, 1);
        assert!(r.x + r.width <= 400 && r.height == 1, "{r:?}");
    }
}

#[test]
fn batch_layout_shapes_and_ranges() {
    let mut cfg = AugmentConfig::simclr(16, 3);
    cfg.mean = vec![0.0; 3];
    cfg.std = vec![1.0; 3];
    let imgs: Vec<Image> = (0..5).map(|i| textured(20 + i, 24, 3)).collect();
    let refs: Vec<&Image> = imgs.iter().collect();
    let b = cfg.batch(&refs, 1, 0, &[10, 11, 12, 13, 14]).unwrap();
    assert_eq!(b.shape, [10, 3, 16, 16]);
    assert_eq!(b.data.len(), 10 * 3 * 16 * 16);
    assert!(
        b.data.iter().all(|v| (0.0..=1.0).contains(v)),
        "unnormalised views lie in [0, 1]"
    );
    // Row i and N + i are the two views of image i: view 0 and view 1 of its generator.
    let len = cfg.view_len();
    for (i, img) in imgs.iter().enumerate() {
        for view in 0..2u64 {
            let mut out = vec![0f32; len];
            cfg.view(img, &mut view_rng(1, 0, 10 + i as u64, view), &mut out);
            let row = view as usize * 5 + i;
            assert_eq!(&b.data[row * len..(row + 1) * len], &out[..]);
        }
    }
}

#[test]
fn batches_are_identical_on_one_and_two_threads_and_change_with_epoch() {
    let cfg = AugmentConfig::simclr(40, 3);
    let imgs: Vec<Image> = (0..9).map(|_| textured(48, 48, 3)).collect();
    let refs: Vec<&Image> = imgs.iter().collect();
    let idx: Vec<u64> = (100..109).collect();
    let run = |threads| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| cfg.batch(&refs, 42, 3, &idx).unwrap())
    };
    let one = run(1);
    assert_eq!(one, run(2));
    let other_epoch = cfg.batch(&refs, 42, 4, &idx).unwrap();
    assert_ne!(one.data, other_epoch.data);
    let other_seed = cfg.batch(&refs, 43, 3, &idx).unwrap();
    assert_ne!(one.data, other_seed.data);
}

#[test]
fn grayscale_images_keep_one_channel() {
    let cfg = AugmentConfig::simclr(28, 1);
    let img = textured(28, 28, 1);
    let b = cfg.batch(&[&img, &img], 0, 0, &[0, 1]).unwrap();
    assert_eq!(b.shape, [4, 1, 28, 28]);
    assert!(
        b.data
            .iter()
            .all(|v| v.is_finite() && (-1.0..=1.0).contains(v))
    );
    let preview = cfg.view_image(&img, &mut view_rng(0, 0, 0, 0));
    assert_eq!(
        (preview.width(), preview.height(), preview.channels()),
        (28, 28, 1)
    );
}

#[test]
fn eval_view_is_the_resized_whole_image() {
    let mut cfg = AugmentConfig::simclr(4, 1);
    cfg.mean = vec![0.0];
    cfg.std = vec![1.0];
    let img = Image::new(
        8,
        8,
        1,
        (0..64)
            .map(|i| if i % 8 < 4 { 0 } else { 255 })
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let b = cfg.eval_batch(&[&img]).unwrap();
    assert_eq!(b.shape, [1, 1, 4, 4]);
    // Left half black, right half white. Halving uses a triangle filter of support 2: output
    // pixel 1 (centre 3.0) weighs input pixels 1..=4 by 0.25, 0.75, 0.75, 0.25 (/ 2), so it sees
    // white pixel 4 with weight 0.125.
    for row in b.data.chunks_exact(4) {
        assert_eq!(row, &[0.0, 0.125, 0.875, 1.0]);
    }
}

#[test]
fn bad_configs_and_batches_are_clear_errors() {
    let base = AugmentConfig::simclr(32, 3);
    let check = |f: &dyn Fn(&mut AugmentConfig), needle: &str| {
        let mut c = base.clone();
        f(&mut c);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{err} should mention {needle}");
    };
    check(&|c| c.flip_p = 1.5, "flip_p");
    check(&|c| c.crop_scale = [0.5, 0.2], "crop_scale");
    check(&|c| c.crop_ratio = [0.0, 1.0], "crop_ratio");
    check(&|c| c.hue = 0.7, "hue");
    check(&|c| c.blur_sigma = [2.0, 1.0], "blur_sigma");
    check(&|c| c.std = vec![1.0, 0.0, 1.0], "std");
    check(&|c| c.mean = vec![0.5], "mean");
    check(&|c| c.width = 0, "size");
    assert!(base.validate().is_ok());

    let gray = textured(10, 10, 1);
    assert_eq!(
        base.batch(&[&gray], 0, 0, &[0]).unwrap_err(),
        AugmentError::Channels {
            index: 0,
            expected: 3,
            found: 1
        }
    );
    assert!(matches!(
        base.batch(&[], 0, 0, &[]),
        Err(AugmentError::BatchShape { .. })
    ));
    assert!(matches!(
        base.batch(&[&gray], 0, 0, &[0, 1]),
        Err(AugmentError::BatchShape { .. })
    ));
}

#[test]
fn config_round_trips_through_json() {
    let cfg = AugmentConfig::simclr(96, 3).with_jitter_strength(0.5);
    assert_eq!(cfg.brightness, 0.4);
    assert_eq!(cfg.blur_kernel_size(), 9);
    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(serde_json::from_str::<AugmentConfig>(&json).unwrap(), cfg);
}
