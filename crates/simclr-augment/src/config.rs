//! [`AugmentConfig`]: every parameter of the view pipeline, with the SimCLR paper's defaults.

use serde::{Deserialize, Serialize};

/// Parameters of SimCLR's view pipeline (Chen et al. 2020, Appendix A; the same order and
/// defaults as torchvision's pipeline in lightly's `SimCLRTransform`).
///
/// One flat struct, serialisable, so a run's `config.json` records exactly what was used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AugmentConfig {
    /// Output height in pixels.
    pub height: u32,
    /// Output width in pixels.
    pub width: u32,
    /// Random resized crop: range of the crop's area as a fraction of the image's.
    pub crop_scale: [f64; 2],
    /// Random resized crop: range of the crop's aspect ratio (width / height), sampled
    /// log-uniformly.
    pub crop_ratio: [f64; 2],
    /// Probability of a horizontal flip.
    pub flip_p: f64,
    /// Probability of applying colour jitter.
    pub jitter_p: f64,
    /// Brightness jitter: factor uniform in `[max(0, 1 - b), 1 + b]`.
    pub brightness: f64,
    /// Contrast jitter: factor uniform in `[max(0, 1 - c), 1 + c]`.
    pub contrast: f64,
    /// Saturation jitter: factor uniform in `[max(0, 1 - s), 1 + s]`.
    pub saturation: f64,
    /// Hue jitter: shift uniform in `[-h, h]` (fraction of the hue circle, at most 0.5).
    pub hue: f64,
    /// Probability of converting to grayscale.
    pub grayscale_p: f64,
    /// Probability of a gaussian blur.
    pub blur_p: f64,
    /// Blur sigma range (uniform).
    pub blur_sigma: [f64; 2],
    /// Blur kernel side as a fraction of the output's smaller side (rounded down to odd).
    pub blur_kernel_frac: f64,
    /// Per-channel mean subtracted after scaling to `[0, 1]`; one entry per image channel.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation divided by; one entry per image channel.
    pub std: Vec<f32>,
}

/// ImageNet's per-channel mean (RGB).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl AugmentConfig {
    /// The paper's pipeline for square `size`-pixel outputs of `channels`-channel images:
    /// crop scale (0.08, 1), ratio (3/4, 4/3), flip 0.5, colour jitter strength 1.0
    /// (0.8/0.8/0.8/0.2) with p = 0.8, grayscale 0.2, blur with p = 0.5 — except for images of
    /// 32 px or less, where the paper (CIFAR-10) uses no blur. Normalisation defaults to
    /// ImageNet's statistics for RGB and to mean 0.5 / std 0.5 for grayscale; set `mean`/`std`
    /// to the dataset's own statistics where known.
    pub fn simclr(size: u32, channels: u8) -> Self {
        let (mean, std) = if channels == 1 {
            (vec![0.5], vec![0.5])
        } else {
            (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec())
        };
        Self {
            height: size,
            width: size,
            crop_scale: [0.08, 1.0],
            crop_ratio: [3.0 / 4.0, 4.0 / 3.0],
            flip_p: 0.5,
            jitter_p: 0.8,
            brightness: 0.8,
            contrast: 0.8,
            saturation: 0.8,
            hue: 0.2,
            grayscale_p: 0.2,
            blur_p: if size <= 32 { 0.0 } else { 0.5 },
            blur_sigma: [0.1, 2.0],
            blur_kernel_frac: 0.1,
            mean,
            std,
        }
    }

    /// Sets the colour-jitter strength `s` (brightness, contrast and saturation 0.8·s, hue
    /// 0.2·s), as the paper's Appendix A parameterises it.
    pub fn with_jitter_strength(mut self, s: f64) -> Self {
        self.brightness = 0.8 * s;
        self.contrast = 0.8 * s;
        self.saturation = 0.8 * s;
        self.hue = 0.2 * s;
        self
    }

    /// Number of image channels this config normalises (the length of `mean`).
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// The blur kernel side: `blur_kernel_frac` of the smaller output side, rounded down to an
    /// odd number, at least 3.
    pub fn blur_kernel_size(&self) -> usize {
        let k = (self.blur_kernel_frac * f64::from(self.height.min(self.width))) as usize;
        (k / 2 * 2 + 1).max(3)
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<(), crate::AugmentError> {
        let bad = |msg: String| Err(crate::AugmentError::Config(msg));
        if self.height == 0 || self.width == 0 {
            return bad(format!(
                "output size {}x{} must be at least 1x1",
                self.width, self.height
            ));
        }
        for (name, p) in [
            ("flip_p", self.flip_p),
            ("jitter_p", self.jitter_p),
            ("grayscale_p", self.grayscale_p),
            ("blur_p", self.blur_p),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return bad(format!("{name} = {p} is not a probability in [0, 1]"));
            }
        }
        let [s0, s1] = self.crop_scale;
        if !(s0 > 0.0 && s0 <= s1 && s1 <= 1.0) {
            return bad(format!(
                "crop_scale [{s0}, {s1}] must satisfy 0 < min <= max <= 1"
            ));
        }
        let [r0, r1] = self.crop_ratio;
        if !(r0 > 0.0 && r0 <= r1 && r1.is_finite()) {
            return bad(format!(
                "crop_ratio [{r0}, {r1}] must satisfy 0 < min <= max"
            ));
        }
        for (name, v) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!("{name} = {v} must be a finite number >= 0"));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return bad(format!("hue = {} must lie in [0, 0.5]", self.hue));
        }
        let [g0, g1] = self.blur_sigma;
        if !(g0 > 0.0 && g0 <= g1 && g1.is_finite()) {
            return bad(format!(
                "blur_sigma [{g0}, {g1}] must satisfy 0 < min <= max"
            ));
        }
        if !(self.blur_kernel_frac > 0.0 && self.blur_kernel_frac <= 1.0) {
            return bad(format!(
                "blur_kernel_frac = {} must lie in (0, 1]",
                self.blur_kernel_frac
            ));
        }
        if self.mean.len() != self.std.len() || !matches!(self.mean.len(), 1 | 3) {
            return bad(format!(
                "mean has {} entries and std {}; both need one per channel (1 or 3)",
                self.mean.len(),
                self.std.len()
            ));
        }
        if let Some(s) = self.std.iter().find(|&&s| !(s > 0.0 && s.is_finite())) {
            return bad(format!("std entry {s} must be a finite number > 0"));
        }
        Ok(())
    }
}
