//! The linear probe and kNN on data whose answer is known.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use simclr_eval::{Features, LinearProbe, ProbeConfig, knn, linear_probe, top_k_accuracy};

/// `n` points per class around `classes` well-separated centres in `dim` dimensions.
fn blobs(n: usize, classes: usize, dim: usize, spread: f32, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..classes)
        .map(|c| {
            (0..dim)
                .map(|j| if j % classes == c { 3.0 } else { 0.0 })
                .collect()
        })
        .collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..n * classes {
        let c = i % classes;
        x.extend(
            centres[c]
                .iter()
                .map(|v| v + spread * (rng.random::<f32>() - 0.5)),
        );
        y.push(c as u32);
    }
    (x, y)
}

#[test]
fn linear_probe_separates_linearly_separable_features() {
    let (tx, ty) = blobs(100, 7, 16, 2.0, 1);
    let (vx, vy) = blobs(40, 7, 16, 2.0, 2);
    let r = linear_probe(
        Features { data: &tx, dim: 16 },
        &ty,
        Features { data: &vx, dim: 16 },
        &vy,
        7,
        &ProbeConfig::default(),
    )
    .unwrap();
    assert_eq!(r.top1, 1.0, "{r:?}");
    assert_eq!(r.top5, Some(1.0));
    assert_eq!(r.train_top1, 1.0);
    assert_eq!(r.val_top1.len(), ProbeConfig::default().l2_grid.len());
}

#[test]
fn linear_probe_beats_chance_on_noisy_xor_free_data_and_regularises() {
    // Overlapping blobs: not separable, but far above the 1/4 chance level.
    let (tx, ty) = blobs(200, 4, 8, 7.0, 3);
    let (vx, vy) = blobs(100, 4, 8, 7.0, 4);
    let r = linear_probe(
        Features { data: &tx, dim: 8 },
        &ty,
        Features { data: &vx, dim: 8 },
        &vy,
        4,
        &ProbeConfig::default(),
    )
    .unwrap();
    assert!(r.top1 > 0.6 && r.top1 < 1.0, "{r:?}");
    assert_eq!(r.top5, None, "no top-5 with 4 classes");

    // More dimensions than points: one informative feature and 59 of noise, 15 points a
    // class. A nearly unpenalised fit memorises the training set with large weights; the
    // penalty shrinks them, and the held-out slice picks a strength that does not overfit.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut noisy = |n: usize| {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..n {
            let c = (i % 2) as u32;
            x.push(if c == 1 { 1.0 } else { -1.0 } + rng.random::<f32>() - 0.5);
            x.extend((0..59).map(|_| 4.0 * (rng.random::<f32>() - 0.5)));
            y.push(c);
        }
        (x, y)
    };
    let (tx, ty) = noisy(30);
    let (vx, vy) = noisy(400);
    fn f(d: &[f32]) -> Features<'_> {
        Features { data: d, dim: 60 }
    }
    let fit = |l2: f64| LinearProbe::fit(f(&tx), &ty, 2, l2, 300).unwrap();
    let (loose, tight) = (fit(1e-6), fit(1.0));
    assert_eq!(loose.accuracy(f(&tx), &ty, 1).unwrap(), 1.0, "memorised");
    assert!(
        tight.weight_norm() < 0.1 * loose.weight_norm(),
        "‖W‖ {} with l2 1 against {} with l2 1e-6",
        tight.weight_norm(),
        loose.weight_norm()
    );
    let (acc_loose, acc_tight) = (
        loose.accuracy(f(&vx), &vy, 1).unwrap(),
        tight.accuracy(f(&vx), &vy, 1).unwrap(),
    );
    assert!(
        acc_tight > acc_loose,
        "test {acc_tight} (l2 1) vs {acc_loose} (l2 1e-6)"
    );
    // The probe keeps the strength with the best held-out accuracy (ties to the stronger),
    // and reports the test accuracy of that strength refitted on all the training rows.
    let config = ProbeConfig {
        l2_grid: vec![1e-6, 1e-2, 1.0],
        val_fraction: 0.3,
        ..ProbeConfig::default()
    };
    let r = linear_probe(f(&tx), &ty, f(&vx), &vy, 2, &config).unwrap();
    let best = r.val_top1.iter().map(|&(_, a)| a).fold(f64::MIN, f64::max);
    let strongest_best = r
        .val_top1
        .iter()
        .rev()
        .find(|&&(_, a)| a == best)
        .unwrap()
        .0;
    assert_eq!(r.l2, strongest_best, "{r:?}");
    assert_eq!(r.top1, fit(r.l2).accuracy(f(&vx), &vy, 1).unwrap());
}

#[test]
fn knn_matches_a_hand_computed_vote() {
    fn f(d: &[f32]) -> Features<'_> {
        Features { data: d, dim: 2 }
    }
    // Train points on the unit circle at angles 0°, 10°, 90°, 180°; classes 0, 0, 1, 1.
    let deg = |a: f32| [a.to_radians().cos(), a.to_radians().sin()];
    let train: Vec<f32> = [0.0, 10.0, 90.0, 180.0]
        .iter()
        .flat_map(|&a| deg(a))
        .collect();
    let train_y = [0, 0, 1, 1];
    // Query at 60°, k = 3: neighbours 90° (cos 30° = 0.866), 10° (cos 50° = 0.643),
    // 0° (cos 60° = 0.5). τ = 0.1: class 1 gets e^8.66 = 5768; class 0 gets
    // e^6.43 + e^5 = 620 + 148 = 768. Class 1 wins.
    // With k = 3 and τ = 10 the weights flatten (e^0.087 vs e^0.064 + e^0.05 = 1.09 vs 2.12),
    // so the two class-0 votes win.
    let query = deg(60.0);
    assert_eq!(
        knn(f(&train), &train_y, f(&query), &[1], 2, 3, 0.1).unwrap(),
        1.0
    );
    assert_eq!(
        knn(f(&train), &train_y, f(&query), &[0], 2, 3, 10.0).unwrap(),
        1.0
    );
    // k = 1: the nearest neighbour alone decides (90°, class 1).
    assert_eq!(
        knn(f(&train), &train_y, f(&query), &[0], 2, 1, 10.0).unwrap(),
        0.0
    );
    // Cosine similarity ignores length.
    let long: Vec<f32> = query.iter().map(|v| v * 5.0).collect();
    assert_eq!(
        knn(f(&train), &train_y, f(&long), &[1], 2, 3, 0.1).unwrap(),
        1.0
    );
}

#[test]
fn top_k_counts_ties_for_the_true_class() {
    let scores = [0.1, 0.5, 0.4, /**/ 0.3, 0.3, 0.1];
    assert_eq!(top_k_accuracy(&scores, 3, &[1, 0], 1), 1.0);
    assert_eq!(top_k_accuracy(&scores, 3, &[2, 2], 1), 0.0);
    assert_eq!(top_k_accuracy(&scores, 3, &[2, 2], 2), 0.5);
}

#[test]
fn shape_errors_are_clear() {
    let x = [0f32; 6];
    let f = Features { data: &x, dim: 3 };
    let err = knn(f, &[0], f, &[0, 1], 2, 1, 0.1).unwrap_err().to_string();
    assert!(err.contains("2 feature rows but 1 labels"), "{err}");
    let g = Features { data: &x, dim: 2 };
    let err = linear_probe(f, &[0, 1], g, &[0, 1, 0], 2, &ProbeConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("3 dimensions") && err.contains("2"), "{err}");
    let err = knn(f, &[0, 5], f, &[0, 1], 2, 1, 0.1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 5"), "{err}");
}
