//! The pixel operations, on `f32` images in `[0, 1]`, interleaved `HWC`.
//!
//! Written by hand rather than taken from `image`/`imageproc`: those work on `u8` buffers and
//! round to 8 bits after every step (five roundings for a jittered, blurred view), have no
//! antialiased float resampling of a sub-rectangle, and no reflect-padded blur. Here a view
//! goes from the `u8` source to `f32` once, in the crop-resize, and stays `f32` until it is
//! written normalised into the batch — the same arithmetic as torchvision's tensor transforms.

use simclr_data::Image;

/// Luma weights of torchvision's `rgb_to_grayscale` (ITU-R 601-2).
pub const GRAY_WEIGHTS: [f32; 3] = [0.2989, 0.587, 0.114];

/// An `f32` image in `[0, 1]`, interleaved `HWC`.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Channels (1 or 3).
    pub channels: usize,
    /// `height * width * channels` values.
    pub data: Vec<f32>,
}

/// A crop rectangle in source pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top row.
    pub y: u32,
    /// Width (> 0).
    pub width: u32,
    /// Height (> 0).
    pub height: u32,
}

/// Resampling taps of one output coordinate: the first input index and the weights.
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    weights: Vec<f32>,
    stride: usize,
}

/// PIL's `precompute_coeffs` for the bilinear (triangle) filter: the filter's support grows
/// with the downscale factor, so shrinking averages every input pixel (antialiasing), and
/// pixel centres sit at `+0.5`. Computed in `f64` like PIL, stored as `f32`.
fn taps(in_size: usize, out_size: usize) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle filter's support is 1
    let stride = (support.ceil() as usize) * 2 + 1;
    let mut t = Taps {
        start: Vec::with_capacity(out_size),
        len: Vec::with_capacity(out_size),
        weights: vec![0.0; out_size * stride],
        stride,
    };
    let mut w = vec![0f64; stride];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5) as i64).max(0) as usize; // `as` truncates like C's (int)
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax - xmin;
        let mut total = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            let d = ((x + xmin) as f64 - center + 0.5) / filterscale;
            *wx = (1.0 - d.abs()).max(0.0);
            total += *wx;
        }
        let row = &mut t.weights[xx * stride..xx * stride + n];
        for (dst, &wx) in row.iter_mut().zip(&w[..n]) {
            *dst = (if total != 0.0 { wx / total } else { 0.0 }) as f32;
        }
        t.start.push(xmin);
        t.len.push(n);
    }
    t
}

/// Crops `rect` out of `src` and resizes it to `out_w × out_h` with antialiased bilinear
/// filtering (PIL's `Image.resize(..., BILINEAR)` after `crop`), scaling `u8` to `[0, 1]`.
/// Horizontal pass first, then vertical, as PIL does.
pub fn resized_crop(src: &Image, rect: Rect, out_w: usize, out_h: usize) -> FloatImage {
    let c = src.channels() as usize;
    let sw = src.width() as usize;
    let data = src.data();
    let (cw, ch) = (rect.width as usize, rect.height as usize);
    let hx = taps(cw, out_w);
    let vy = taps(ch, out_h);
    // Horizontal pass over the crop's rows: [ch, out_w, c].
    let mut tmp = vec![0f32; ch * out_w * c];
    for y in 0..ch {
        let row = &data[((rect.y as usize + y) * sw + rect.x as usize) * c..];
        let out = &mut tmp[y * out_w * c..(y + 1) * out_w * c];
        for xx in 0..out_w {
            let w = &hx.weights[xx * hx.stride..xx * hx.stride + hx.len[xx]];
            let s = hx.start[xx];
            for k in 0..c {
                let mut acc = 0f32;
                for (i, &wi) in w.iter().enumerate() {
                    acc += wi * f32::from(row[(s + i) * c + k]);
                }
                out[xx * c + k] = acc / 255.0;
            }
        }
    }
    // Vertical pass: [out_h, out_w, c].
    let line = out_w * c;
    let mut out = vec![0f32; out_h * line];
    for yy in 0..out_h {
        let w = &vy.weights[yy * vy.stride..yy * vy.stride + vy.len[yy]];
        let s = vy.start[yy];
        let dst = &mut out[yy * line..(yy + 1) * line];
        for (i, &wi) in w.iter().enumerate() {
            let srow = &tmp[(s + i) * line..(s + i + 1) * line];
            for (d, &v) in dst.iter_mut().zip(srow) {
                *d += wi * v;
            }
        }
    }
    FloatImage {
        width: out_w,
        height: out_h,
        channels: c,
        data: out,
    }
}

/// Mirrors the image left–right.
pub fn hflip(img: &mut FloatImage) {
    let c = img.channels;
    for row in img.data.chunks_exact_mut(img.width * c) {
        let (mut a, mut b) = (0, img.width - 1);
        while a < b {
            for k in 0..c {
                row.swap(a * c + k, b * c + k);
            }
            a += 1;
            b -= 1;
        }
    }
}

fn gray_of(px: &[f32]) -> f32 {
    GRAY_WEIGHTS[0] * px[0] + GRAY_WEIGHTS[1] * px[1] + GRAY_WEIGHTS[2] * px[2]
}

/// Multiplies by `factor`, clamped to `[0, 1]` (torchvision `adjust_brightness`).
pub fn brightness(img: &mut FloatImage, factor: f32) {
    for v in &mut img.data {
        *v = (*v * factor).clamp(0.0, 1.0);
    }
}

/// Blends with the image's mean gray level (torchvision `adjust_contrast`). On one channel the
/// mean is that channel's mean.
pub fn contrast(img: &mut FloatImage, factor: f32) {
    let mean = if img.channels == 3 {
        let sum: f64 = img
            .data
            .chunks_exact(3)
            .map(|p| f64::from(gray_of(p)))
            .sum();
        (sum / (img.width * img.height) as f64) as f32
    } else {
        (img.data.iter().map(|&v| f64::from(v)).sum::<f64>() / img.data.len() as f64) as f32
    };
    let offset = (1.0 - factor) * mean;
    for v in &mut img.data {
        *v = (factor * *v + offset).clamp(0.0, 1.0);
    }
}

/// Blends each pixel with its gray level (torchvision `adjust_saturation`). A no-op on one
/// channel: a grayscale image has no saturation to change.
pub fn saturation(img: &mut FloatImage, factor: f32) {
    if img.channels != 3 {
        return;
    }
    for p in img.data.chunks_exact_mut(3) {
        let g = (1.0 - factor) * gray_of(p);
        for v in p {
            *v = (factor * *v + g).clamp(0.0, 1.0);
        }
    }
}

/// Rotates the hue by `shift` (a fraction of the circle) through HSV, as Python's `colorsys`
/// (which torchvision's tensor `adjust_hue` reproduces) does. A no-op on one channel: gray
/// pixels have no hue.
///
/// Written without branches or `floor` so that it runs at a few cycles a pixel: hue in
/// sixths `H ∈ [0, 6)`, and back to RGB with `c(n) = max − Δ·clamp(min(k, 4 − k), 0, 1)`,
/// `k = (n + H) mod 6`, for `n` = 5, 3, 1 (red, green, blue), which equals colorsys's
/// six-sector table (`Δ = max − min = v·s`).
pub fn hue(img: &mut FloatImage, shift: f32) {
    if img.channels != 3 {
        return;
    }
    let shift6 = 6.0 * shift.rem_euclid(1.0); // [0, 6)
    let wrap = |x: f32| if x >= 6.0 { x - 6.0 } else { x };
    for p in img.data.chunks_exact_mut(3) {
        let (r, g, b) = (p[0], p[1], p[2]);
        let maxc = r.max(g).max(b);
        let delta = maxc - r.min(g).min(b);
        // Gray pixels (Δ = 0) get H = 0 and come back unchanged: c(n) = max.
        let inv = if delta > 0.0 { 1.0 / delta } else { 0.0 };
        let (rc, gc, bc) = ((maxc - r) * inv, (maxc - g) * inv, (maxc - b) * inv);
        let h6 = if r == maxc {
            bc - gc
        } else if g == maxc {
            2.0 + rc - bc
        } else {
            4.0 + gc - rc
        }; // [-1, 5]
        let h = h6 + shift6; // [-1, 11)
        let h = wrap(if h < 0.0 { h + 6.0 } else { h });
        let c = |n: f32| {
            let k = wrap(n + h);
            (maxc - delta * k.min(4.0 - k).clamp(0.0, 1.0)).clamp(0.0, 1.0)
        };
        p[0] = c(5.0);
        p[1] = c(3.0);
        p[2] = c(1.0);
    }
}

/// Replaces every channel by the pixel's gray level (torchvision `rgb_to_grayscale` with three
/// output channels). A no-op on one channel.
pub fn grayscale(img: &mut FloatImage) {
    if img.channels != 3 {
        return;
    }
    for p in img.data.chunks_exact_mut(3) {
        let g = gray_of(p);
        p.fill(g);
    }
}

/// The normalised 1-D gaussian kernel of torchvision's `gaussian_blur`.
pub fn gaussian_kernel(size: usize, sigma: f32) -> Vec<f32> {
    let half = (size as f32 - 1.0) * 0.5;
    let k: Vec<f32> = (0..size)
        .map(|i| {
            let x = (i as f32 - half) / sigma;
            (-0.5 * x * x).exp()
        })
        .collect();
    let sum: f32 = k.iter().sum();
    k.into_iter().map(|v| v / sum).collect()
}

/// Reflect-padding index (`torch.nn.functional.pad(mode="reflect")`, scipy's "mirror"): the
/// edge pixel is not repeated. Folds repeatedly, so kernels wider than the image still work.
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

/// Separable gaussian blur with reflect padding, horizontal then vertical. Each row is
/// copied once into a reflect-padded buffer, so the inner loops are plain dot products.
pub fn gaussian_blur(img: &mut FloatImage, kernel_size: usize, sigma: f32) {
    let k = gaussian_kernel(kernel_size, sigma);
    let r = kernel_size / 2;
    let (w, h, c) = (img.width, img.height, img.channels);
    let line = w * c;
    let mut tmp = vec![0f32; img.data.len()];
    let mut padded = vec![0f32; (w + 2 * r) * c];
    for y in 0..h {
        let row = &img.data[y * line..(y + 1) * line];
        for (px, dst) in padded.chunks_exact_mut(c).enumerate() {
            let sx = reflect(px as isize - r as isize, w);
            dst.copy_from_slice(&row[sx * c..(sx + 1) * c]);
        }
        let out = &mut tmp[y * line..(y + 1) * line];
        for (t, &kt) in k.iter().enumerate() {
            for (d, &v) in out.iter_mut().zip(&padded[t * c..t * c + line]) {
                *d += kt * v;
            }
        }
    }
    img.data.fill(0.0);
    for y in 0..h {
        let dst = &mut img.data[y * line..(y + 1) * line];
        for (t, &kt) in k.iter().enumerate() {
            let sy = reflect(y as isize + t as isize - r as isize, h);
            for (d, &v) in dst.iter_mut().zip(&tmp[sy * line..(sy + 1) * line]) {
                *d += kt * v;
            }
        }
    }
}

/// Writes `img` into `out` as planar `CHW`, `(v - mean[c]) / std[c]`.
pub fn normalize_chw(img: &FloatImage, mean: &[f32], std: &[f32], out: &mut [f32]) {
    let (c, plane) = (img.channels, img.width * img.height);
    debug_assert_eq!(out.len(), c * plane);
    for ch in 0..c {
        let inv = 1.0 / std[ch];
        let dst = &mut out[ch * plane..(ch + 1) * plane];
        for (p, d) in dst.iter_mut().enumerate() {
            *d = (img.data[p * c + ch] - mean[ch]) * inv;
        }
    }
}

/// Quantises to an 8-bit [`Image`] (round half up), for previews.
pub fn to_image(img: &FloatImage) -> Image {
    let data: Vec<u8> = img
        .data
        .iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8)
        .collect();
    Image::new(
        img.width as u32,
        img.height as u32,
        img.channels as u8,
        data,
    )
    .expect("sizes come from a valid image")
}
