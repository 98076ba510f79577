//! Each deterministic operation against an independent reference: PIL (float images) for the
//! antialiased resized crop, torchvision's tensor functions for the colour operations and the
//! blur, and Python's `colorsys` for the hue rotation. The script that produced every constant:
//!
//! ```python
//! # Reference values for crates/simclr-augment/tests/reference.rs.
//! # Run: python3 -m venv v && v/bin/pip install torch torchvision pillow numpy && v/bin/python aug_ref.py
//! import colorsys
//! import numpy as np, torch
//! from PIL import Image
//! import torchvision.transforms.functional as F
//!
//! def lit(a):
//!     return "[" + ", ".join(f"{float(x):.8e}" for x in np.asarray(a).ravel()) + "]"
//!
//! # Gray 7x5 source (u8), values (i*i*37 + 11) % 256 row-major.
//! src = np.array([(i * i * 37 + 11) % 256 for i in range(35)], dtype=np.float64).reshape(5, 7)
//! im = Image.fromarray((src / 255.0).astype(np.float32), mode="F")
//! print("CROP_RESIZE", lit(np.asarray(im.crop((1, 1, 6, 4)).resize((4, 6), Image.BILINEAR))))
//! print("DOWN", lit(np.asarray(im.resize((3, 2), Image.BILINEAR))))
//!
//! # RGB 3x2 float image, HWC values in [0,1].
//! rgb = np.array([[[0.9, 0.2, 0.1], [0.3, 0.6, 0.2], [0.5, 0.5, 0.5]],
//!                 [[0.1, 0.2, 0.8], [0.7, 0.7, 0.1], [0.0, 1.0, 0.4]]], dtype=np.float32)
//! t = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
//! hwc = lambda x: x.permute(1, 2, 0).numpy()
//! print("BRIGHT_1_3", lit(hwc(F.adjust_brightness(t, 1.3))))
//! print("CONTRAST_0_6", lit(hwc(F.adjust_contrast(t, 0.6))))
//! print("CONTRAST_1_7", lit(hwc(F.adjust_contrast(t, 1.7))))
//! print("SAT_0_3", lit(hwc(F.adjust_saturation(t, 0.3))))
//! print("SAT_1_8", lit(hwc(F.adjust_saturation(t, 1.8))))
//! print("GRAY", lit(hwc(F.rgb_to_grayscale(t, num_output_channels=3))))
//! # Hue through Python's colorsys, independently of torchvision.
//! def hue_shift(px, s):
//!     h, sat, v = colorsys.rgb_to_hsv(*px)
//!     return colorsys.hsv_to_rgb((h + s) % 1.0, sat, v)
//! for s in (0.13, -0.2):
//!     out = np.array([[hue_shift(px.astype(np.float64), s) for px in row] for row in rgb])
//!     print(f"HUE_{s}", lit(out))
//! # Gaussian blur on a 6x5 RGB float image, reflect padding.
//! img = np.array([(i * 53 % 97) / 96.0 for i in range(6 * 5 * 3)], dtype=np.float32).reshape(5, 6, 3)
//! tb = torch.from_numpy(img).permute(2, 0, 1).contiguous()
//! print("BLUR_3_0_8", lit(hwc(F.gaussian_blur(tb, [3, 3], [0.8, 0.8]))))
//! print("BLUR_5_1_5", lit(hwc(F.gaussian_blur(tb, [5, 5], [1.5, 1.5]))))
//! ```

// The constants are printed with 9 significant digits, more than f32 holds.
#![allow(clippy::excessive_precision)]

use simclr_augment::ops::{self, FloatImage, Rect};
use simclr_data::Image;

#[rustfmt::skip]
const CROP_RESIZE: &[f32] = &[4.08823550e-01, 6.46732032e-01, 5.18627465e-01, 7.77450979e-01, 4.15196091e-01, 5.76307178e-01, 6.01470590e-01, 6.78921580e-01, 4.27941203e-01, 4.35457528e-01, 7.67156899e-01, 4.81862724e-01, 5.44607878e-01, 3.77614379e-01, 7.23039269e-01, 4.51470584e-01, 7.65196085e-01, 4.02777791e-01, 4.69117671e-01, 5.87745070e-01, 8.75490189e-01, 4.15359497e-01, 3.42156887e-01, 6.55882359e-01];
#[rustfmt::skip]
const DOWN: &[f32] = &[3.33435208e-01, 5.25385380e-01, 5.66895843e-01, 5.66488445e-01, 4.93257850e-01, 4.63814646e-01];
#[rustfmt::skip]
const BRIGHT_1_3: &[f32] = &[1.00000000e+00, 2.59999990e-01, 1.29999995e-01, 3.90000015e-01, 7.80000031e-01, 2.59999990e-01, 6.49999976e-01, 6.49999976e-01, 6.49999976e-01, 1.29999995e-01, 2.59999990e-01, 1.00000000e+00, 9.09999967e-01, 9.09999967e-01, 1.29999995e-01, 0.00000000e+00, 1.00000000e+00, 5.19999981e-01];
#[rustfmt::skip]
const CONTRAST_0_6: &[f32] = &[7.31003344e-01, 3.11003327e-01, 2.51003325e-01, 3.71003330e-01, 5.51003337e-01, 3.11003327e-01, 4.91003335e-01, 4.91003335e-01, 4.91003335e-01, 2.51003325e-01, 3.11003327e-01, 6.71003342e-01, 6.11003339e-01, 6.11003339e-01, 2.51003325e-01, 1.91003338e-01, 7.91003346e-01, 4.31003332e-01];
#[rustfmt::skip]
const CONTRAST_1_7: &[f32] = &[1.00000000e+00, 5.74415922e-03, 0.00000000e+00, 1.75744206e-01, 6.85744286e-01, 5.74415922e-03, 5.15744209e-01, 5.15744209e-01, 5.15744209e-01, 0.00000000e+00, 5.74415922e-03, 1.00000000e+00, 8.55744243e-01, 8.55744243e-01, 0.00000000e+00, 0.00000000e+00, 1.00000000e+00, 3.45744163e-01];
#[rustfmt::skip]
const SAT_0_3: &[f32] = &[5.48467040e-01, 3.38467002e-01, 3.08467001e-01, 4.15269017e-01, 5.05269051e-01, 3.85269016e-01, 4.99965012e-01, 4.99965012e-01, 4.99965012e-01, 1.96943015e-01, 2.26943016e-01, 4.06943023e-01, 6.52070999e-01, 6.52070999e-01, 4.72070992e-01, 4.42820013e-01, 7.42820024e-01, 5.62820017e-01];
#[rustfmt::skip]
const SAT_1_8: &[f32] = &[1.00000000e+00, 4.17519808e-02, 0.00000000e+00, 1.68264002e-01, 7.08263993e-01, 0.00000000e+00, 5.00039935e-01, 5.00039935e-01, 5.00039935e-01, 0.00000000e+00, 1.69207975e-01, 1.00000000e+00, 7.54776001e-01, 7.54776001e-01, 0.00000000e+00, 0.00000000e+00, 1.00000000e+00, 2.13919938e-01];
#[rustfmt::skip]
const GRAY: &[f32] = &[3.97810012e-01, 3.97810012e-01, 3.97810012e-01, 4.64670032e-01, 4.64670032e-01, 4.64670032e-01, 4.99950022e-01, 4.99950022e-01, 4.99950022e-01, 2.38490015e-01, 2.38490015e-01, 2.38490015e-01, 6.31529987e-01, 6.31529987e-01, 6.31529987e-01, 6.32600009e-01, 6.32600009e-01, 6.32600009e-01];
#[rustfmt::skip]
const HUE_0_13: &[f32] = &[8.99999976e-01, 8.23999983e-01, 1.00000001e-01, 2.00000003e-01, 6.00000024e-01, 4.12000010e-01, 5.00000000e-01, 5.00000000e-01, 5.00000000e-01, 5.46000008e-01, 1.00000001e-01, 8.00000012e-01, 2.31999999e-01, 6.99999988e-01, 1.00000001e-01, 0.00000000e+00, 8.19999994e-01, 1.00000000e+00];
#[rustfmt::skip]
const HUE_M0_2: &[f32] = &[8.39999983e-01, 1.00000001e-01, 8.99999976e-01, 6.00000024e-01, 4.20000011e-01, 2.00000003e-01, 5.00000000e-01, 5.00000000e-01, 5.00000000e-01, 1.00000001e-01, 8.00000012e-01, 5.60000008e-01, 6.99999988e-01, 1.00000001e-01, 2.19999999e-01, 7.99999994e-01, 1.00000000e+00, 0.00000000e+00];
#[rustfmt::skip]
const BLUR_3_0_8: &[f32] = &[4.81150836e-01, 2.98151970e-01, 5.74900806e-01, 4.40111309e-01, 3.49319041e-01, 5.33861339e-01, 4.43069071e-01, 5.12184858e-01, 4.10761744e-01, 6.05934799e-01, 5.04511774e-01, 4.24350381e-01, 4.82835293e-01, 5.18100381e-01, 4.50527996e-01, 2.92518616e-01, 5.92487395e-01, 3.86268586e-01, 5.43426096e-01, 3.26576501e-01, 6.37176096e-01, 4.79166716e-01, 3.88374448e-01, 5.15203536e-01, 4.82124478e-01, 4.82896179e-01, 3.92103910e-01, 5.76646149e-01, 4.85853940e-01, 4.86625642e-01, 4.53546643e-01, 5.80375671e-01, 4.89583373e-01, 3.31573993e-01, 6.42173469e-01, 4.25324023e-01, 5.02816737e-01, 4.12024498e-01, 5.96566737e-01, 4.96270597e-01, 4.97042298e-01, 4.63963270e-01, 5.90792298e-01, 5.00000060e-01, 4.09207791e-01, 5.36036789e-01, 5.02957821e-01, 5.03729522e-01, 4.12937254e-01, 5.97479522e-01, 5.06687284e-01, 4.40241843e-01, 5.90933383e-01, 5.33991814e-01, 4.51576561e-01, 4.86841619e-01, 4.29900080e-01, 5.13374448e-01, 5.14146149e-01, 4.23353910e-01, 6.07896149e-01, 5.17103910e-01, 5.17875671e-01, 4.84796613e-01, 6.11625612e-01, 5.20833373e-01, 4.30041164e-01, 5.56870103e-01, 5.23791134e-01, 5.15058935e-01, 4.24266696e-01, 6.08808935e-01, 5.01262784e-01, 5.49116850e-01, 3.42898130e-01, 5.75649798e-01, 4.95488316e-01, 3.94065261e-01, 5.89238346e-01, 4.87815261e-01, 5.56931019e-01, 4.66138780e-01, 6.50681019e-01, 5.59888780e-01, 4.92316395e-01, 5.27581453e-01, 5.86066425e-01, 5.64745188e-01, 3.37264746e-01, 6.58495188e-01];
#[rustfmt::skip]
const BLUR_5_1_5: &[f32] = &[4.78827387e-01, 4.04583067e-01, 5.14301300e-01, 5.09322047e-01, 3.99590671e-01, 5.10880888e-01, 5.16321659e-01, 4.60318863e-01, 4.70171720e-01, 4.97315645e-01, 5.07168591e-01, 4.48112190e-01, 4.56606537e-01, 5.64843237e-01, 4.52194661e-01, 4.56432611e-01, 5.56933641e-01, 4.79306459e-01, 4.74938691e-01, 4.09689695e-01, 5.11935592e-01, 5.01289070e-01, 4.12872702e-01, 5.11392534e-01, 5.08288622e-01, 4.73970056e-01, 4.77744848e-01, 4.89336371e-01, 5.21487713e-01, 4.58792537e-01, 4.48627234e-01, 5.68777502e-01, 4.58730698e-01, 4.41338003e-01, 5.64899147e-01, 4.78334904e-01, 5.09513199e-01, 4.56534863e-01, 4.75633979e-01, 5.20572901e-01, 4.64623779e-01, 4.80722994e-01, 5.24601698e-01, 4.99999911e-01, 4.75398183e-01, 5.10103345e-01, 5.26202619e-01, 4.84822452e-01, 4.76455659e-01, 5.44800341e-01, 5.06391048e-01, 4.57651109e-01, 5.48798621e-01, 5.22263110e-01, 5.28850734e-01, 4.74020183e-01, 4.55307633e-01, 5.24972379e-01, 4.97715175e-01, 4.66051877e-01, 5.22255063e-01, 5.26029825e-01, 4.91711199e-01, 5.07810354e-01, 5.42515576e-01, 5.17913818e-01, 4.80855107e-01, 5.37190735e-01, 5.46228528e-01, 4.53821272e-01, 5.49787343e-01, 5.47571421e-01, 5.36816180e-01, 4.99269545e-01, 4.34242398e-01, 5.28906584e-01, 5.26603341e-01, 4.44265068e-01, 5.29828131e-01, 5.39680958e-01, 4.83678162e-01, 5.22890985e-01, 5.41990161e-01, 5.24449885e-01, 4.99358356e-01, 5.15403926e-01, 5.63970327e-01, 4.68086809e-01, 5.28722048e-01, 5.61836779e-01];

/// Largest absolute difference, asserted below `tol`.
fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "element {i}: got {g}, want {w} (tol {tol})"
        );
    }
}

fn gray_source() -> Image {
    let data: Vec<u8> = (0u32..35)
        .map(|i| ((i * i * 37 + 11) % 256) as u8)
        .collect();
    Image::new(7, 5, 1, data).unwrap()
}

fn rgb() -> FloatImage {
    FloatImage {
        width: 3,
        height: 2,
        channels: 3,
        data: vec![
            0.9, 0.2, 0.1, 0.3, 0.6, 0.2, 0.5, 0.5, 0.5, //
            0.1, 0.2, 0.8, 0.7, 0.7, 0.1, 0.0, 1.0, 0.4,
        ],
    }
}

#[test]
fn resized_crop_matches_pil_bilinear_on_float_images() {
    let src = gray_source();
    let rect = Rect {
        x: 1,
        y: 1,
        width: 5,
        height: 3,
    };
    let got = ops::resized_crop(&src, rect, 4, 6);
    assert_eq!((got.width, got.height, got.channels), (4, 6, 1));
    assert_close(&got.data, CROP_RESIZE, 1e-6);
    let whole = Rect {
        x: 0,
        y: 0,
        width: 7,
        height: 5,
    };
    assert_close(&ops::resized_crop(&src, whole, 3, 2).data, DOWN, 1e-6);
}

#[test]
fn resized_crop_treats_channels_independently() {
    // The gray source replicated into three channels resizes to three equal channels.
    let g = gray_source();
    let data: Vec<u8> = g.data().iter().flat_map(|&v| [v, v, v]).collect();
    let src = Image::new(7, 5, 3, data).unwrap();
    let got = ops::resized_crop(
        &src,
        Rect {
            x: 1,
            y: 1,
            width: 5,
            height: 3,
        },
        4,
        6,
    );
    for (px, want) in got.data.chunks_exact(3).zip(CROP_RESIZE) {
        assert_close(px, &[*want; 3], 1e-6);
    }
}

#[test]
fn colour_ops_match_torchvision() {
    type Op<'a> = &'a dyn Fn(&mut FloatImage);
    let cases: [(Op, &[f32]); 7] = [
        (&|i| ops::brightness(i, 1.3), BRIGHT_1_3),
        (&|i| ops::contrast(i, 0.6), CONTRAST_0_6),
        (&|i| ops::contrast(i, 1.7), CONTRAST_1_7),
        (&|i| ops::saturation(i, 0.3), SAT_0_3),
        (&|i| ops::saturation(i, 1.8), SAT_1_8),
        (&|i| ops::grayscale(i), GRAY),
        (&|i| ops::hue(i, 0.13), HUE_0_13),
    ];
    for (k, (op, want)) in cases.iter().enumerate() {
        let mut img = rgb();
        op(&mut img);
        assert!(
            img.data.iter().all(|v| (0.0..=1.0).contains(v)),
            "case {k} range"
        );
        assert_close(&img.data, want, 2e-6);
    }
    let mut img = rgb();
    ops::hue(&mut img, -0.2);
    assert_close(&img.data, HUE_M0_2, 2e-6);
}

#[test]
fn gaussian_blur_matches_torchvision_with_reflect_padding() {
    let data: Vec<f32> = (0..90).map(|i| (i * 53 % 97) as f32 / 96.0).collect();
    let base = FloatImage {
        width: 6,
        height: 5,
        channels: 3,
        data,
    };
    let mut a = base.clone();
    ops::gaussian_blur(&mut a, 3, 0.8);
    assert_close(&a.data, BLUR_3_0_8, 2e-6);
    let mut b = base;
    ops::gaussian_blur(&mut b, 5, 1.5);
    assert_close(&b.data, BLUR_5_1_5, 2e-6);
}

#[test]
fn flip_reverses_columns() {
    let mut img = FloatImage {
        width: 3,
        height: 1,
        channels: 3,
        data: (0..9).map(|v| v as f32).collect(),
    };
    ops::hflip(&mut img);
    assert_eq!(img.data, vec![6.0, 7.0, 8.0, 3.0, 4.0, 5.0, 0.0, 1.0, 2.0]);
}

#[test]
fn colour_ops_on_one_channel() {
    let gray = FloatImage {
        width: 2,
        height: 1,
        channels: 1,
        data: vec![0.2, 0.6],
    };
    let mut img = gray.clone();
    ops::saturation(&mut img, 0.1);
    ops::hue(&mut img, 0.3);
    ops::grayscale(&mut img);
    assert_eq!(
        img, gray,
        "saturation, hue and grayscale leave gray images alone"
    );
    ops::brightness(&mut img, 2.0);
    assert_close(&img.data, &[0.4, 1.0], 1e-7);
    let mut img = gray;
    ops::contrast(&mut img, 0.5); // mean 0.4: 0.5 x + 0.2
    assert_close(&img.data, &[0.3, 0.5], 1e-7);
}

#[test]
fn normalize_writes_planar_chw() {
    let img = rgb();
    let mut out = vec![0f32; 18];
    ops::normalize_chw(&img, &[0.5, 0.5, 0.5], &[0.5, 0.25, 1.0], &mut out);
    // Channel 1 (green) plane: (g - 0.5) / 0.25.
    assert_close(&out[6..12], &[-1.2, 0.4, 0.0, -1.2, 0.8, 2.0], 1e-6);
    assert_close(&out[0..3], &[0.8, -0.4, 0.0], 1e-6);
}

/// Python's `colorsys.rgb_to_hsv` / `hsv_to_rgb` line by line, in f64: the reference the
/// branch-free [`ops::hue`] is held to.
fn colorsys_hue(px: [f32; 3], shift: f64) -> [f32; 3] {
    let [r, g, b] = px.map(f64::from);
    let maxc = r.max(g).max(b);
    let minc = r.min(g).min(b);
    if maxc == minc {
        return px;
    }
    let s = (maxc - minc) / maxc;
    let (rc, gc, bc) = (
        (maxc - r) / (maxc - minc),
        (maxc - g) / (maxc - minc),
        (maxc - b) / (maxc - minc),
    );
    let h = if r == maxc {
        bc - gc
    } else if g == maxc {
        2.0 + rc - bc
    } else {
        4.0 + gc - rc
    };
    let h = (h / 6.0).rem_euclid(1.0);
    let h = (h + shift).rem_euclid(1.0);
    let v = maxc;
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let out = match (i as i64).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    };
    out.map(|c| c.clamp(0.0, 1.0) as f32)
}

#[test]
fn hue_matches_colorsys_on_every_sector_ties_and_grays() {
    // A grid over RGB (ties and grays included: every level appears in every channel),
    // plus irregular values, under shifts spanning the allowed [-0.5, 0.5].
    let levels = [0.0f32, 0.05, 0.2, 0.33, 0.5, 0.51, 0.75, 0.99, 1.0];
    let mut data = Vec::new();
    for &r in &levels {
        for &g in &levels {
            for &b in &levels {
                data.extend([r, g, b]);
            }
        }
    }
    data.extend((0..3000).map(|i| ((i * 7919) % 1009) as f32 / 1008.0));
    for shift in [
        -0.5f32,
        -0.37,
        -0.2,
        -1e-3,
        0.0,
        0.01,
        1.0 / 6.0,
        0.25,
        0.4999,
        0.5,
    ] {
        let mut img = FloatImage {
            width: data.len() / 3,
            height: 1,
            channels: 3,
            data: data.clone(),
        };
        ops::hue(&mut img, shift);
        for (i, (got, px)) in img
            .data
            .chunks_exact(3)
            .zip(data.chunks_exact(3))
            .enumerate()
        {
            let want = colorsys_hue([px[0], px[1], px[2]], f64::from(shift));
            for k in 0..3 {
                assert!(
                    (got[k] - want[k]).abs() <= 2e-6,
                    "shift {shift}, pixel {i} {px:?}: got {got:?}, want {want:?}"
                );
            }
        }
    }
}
