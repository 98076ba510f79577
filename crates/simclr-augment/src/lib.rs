//! SimCLR's two-view augmentation (Chen et al. 2020, <https://arxiv.org/abs/2002.05709>,
//! Appendix A): random resized crop → horizontal flip → colour jitter (with probability) →
//! random grayscale → gaussian blur (with probability) → `f32` `CHW`, normalised.
//!
//! Views are reproducible: the random generator of each view is seeded from
//! `(seed, epoch, sample index, view)`, so a batch is the same whatever the number of threads
//! that build it, and a resumed run sees the views an uninterrupted one would have.
//!
//! # Grayscale images
//! Single-channel images (Fashion-MNIST) keep one channel. Crop, flip and blur act as on
//! colour images; brightness scales the gray level; contrast blends with the image's mean gray
//! level; saturation, hue and random grayscale leave a gray image unchanged (it has no colour
//! to change), though their random draws still happen, so the other draws stay aligned.

#![forbid(unsafe_code)]

mod config;
pub mod ops;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use simclr_data::Image;

pub use crate::config::{AugmentConfig, IMAGENET_MEAN, IMAGENET_STD};
use crate::ops::{FloatImage, Rect};

/// Why views could not be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AugmentError {
    /// A configuration value is out of range.
    #[error("invalid augmentation setting: {0}")]
    Config(String),
    /// An image's channel count differs from the configured normalisation's.
    #[error(
        "image {index} has {found} channel(s) but the normalisation has {expected} (mean/std entries); give one mean/std entry per image channel"
    )]
    Channels {
        /// Position of the image in the batch.
        index: usize,
        /// Channels the config normalises.
        expected: usize,
        /// Channels the image has.
        found: usize,
    },
    /// `images` and `indices` differ in length, or the batch is empty.
    #[error(
        "a batch needs one index per image and at least one image (got {images} images, {indices} indices)"
    )]
    BatchShape {
        /// Images given.
        images: usize,
        /// Indices given.
        indices: usize,
    },
}

/// Colour-jitter draws: the order of the four operations and their factors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Jitter {
    /// Permutation of `0 = brightness, 1 = contrast, 2 = saturation, 3 = hue`.
    pub order: [u8; 4],
    /// Brightness factor.
    pub brightness: f32,
    /// Contrast factor.
    pub contrast: f32,
    /// Saturation factor.
    pub saturation: f32,
    /// Hue shift.
    pub hue: f32,
}

/// Every random draw of one view, made before any pixel is touched.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ViewParams {
    /// The crop rectangle in source pixels.
    pub crop: Rect,
    /// Whether to flip horizontally.
    pub flip: bool,
    /// Colour jitter, when applied.
    pub jitter: Option<Jitter>,
    /// Whether to convert to grayscale.
    pub grayscale: bool,
    /// Blur sigma, when blurred.
    pub blur_sigma: Option<f32>,
}

/// A batch of views, `[2N, C, H, W]` row-major: the views of image `i` are rows `i` and `N + i`,
/// so a model's output splits into `z1 = z[..N]` and `z2 = z[N..]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ViewBatch {
    /// The normalised pixels.
    pub data: Vec<f32>,
    /// `[2N, C, H, W]`.
    pub shape: [usize; 4],
}

/// SplitMix64's finaliser: a bijective mix, so distinct inputs give well-spread seeds.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The generator of view `view` (0 or 1) of sample `index` in `epoch`.
pub fn view_rng(seed: u64, epoch: u64, index: u64, view: u64) -> ChaCha8Rng {
    let s = mix(mix(mix(mix(seed) ^ epoch) ^ index) ^ view);
    ChaCha8Rng::seed_from_u64(s)
}

impl AugmentConfig {
    /// torchvision's `RandomResizedCrop.get_params`: ten tries at an area fraction from
    /// `crop_scale` and a log-uniform aspect ratio from `crop_ratio`; then a centre crop with the
    /// ratio clamped into range.
    pub fn sample_crop(&self, rng: &mut impl Rng, width: u32, height: u32) -> Rect {
        let area = f64::from(width) * f64::from(height);
        let (lr0, lr1) = (self.crop_ratio[0].ln(), self.crop_ratio[1].ln());
        for _ in 0..10 {
            let target = area * uniform(rng, self.crop_scale[0], self.crop_scale[1]);
            let aspect = uniform(rng, lr0, lr1).exp();
            let w = (target * aspect).sqrt().round() as i64;
            let h = (target / aspect).sqrt().round() as i64;
            if 0 < w && w <= i64::from(width) && 0 < h && h <= i64::from(height) {
                let y = rng.random_range(0..=(i64::from(height) - h)) as u32;
                let x = rng.random_range(0..=(i64::from(width) - w)) as u32;
                return Rect {
                    x,
                    y,
                    width: w as u32,
                    height: h as u32,
                };
            }
        }
        let in_ratio = f64::from(width) / f64::from(height);
        let (w, h) = if in_ratio < self.crop_ratio[0] {
            (
                width,
                ((f64::from(width) / self.crop_ratio[0]).round() as u32).max(1),
            )
        } else if in_ratio > self.crop_ratio[1] {
            (
                ((f64::from(height) * self.crop_ratio[1]).round() as u32).max(1),
                height,
            )
        } else {
            (width, height)
        };
        Rect {
            x: (width - w) / 2,
            y: (height - h) / 2,
            width: w,
            height: h,
        }
    }

    /// Draws every random choice of one view of a `width × height` image.
    pub fn sample_params(&self, rng: &mut impl Rng, width: u32, height: u32) -> ViewParams {
        let crop = self.sample_crop(rng, width, height);
        let flip = rng.random_bool(self.flip_p);
        let jitter = rng.random_bool(self.jitter_p).then(|| {
            let mut order = [0u8, 1, 2, 3];
            for i in (1..4).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            let factor = |rng: &mut dyn rand::RngCore, s: f64| {
                uniform(rng, (1.0 - s).max(0.0), 1.0 + s) as f32
            };
            Jitter {
                order,
                brightness: factor(rng, self.brightness),
                contrast: factor(rng, self.contrast),
                saturation: factor(rng, self.saturation),
                hue: uniform(rng, -self.hue, self.hue) as f32,
            }
        });
        let grayscale = rng.random_bool(self.grayscale_p);
        let blur_sigma = rng
            .random_bool(self.blur_p)
            .then(|| uniform(rng, self.blur_sigma[0], self.blur_sigma[1]) as f32);
        ViewParams {
            crop,
            flip,
            jitter,
            grayscale,
            blur_sigma,
        }
    }

    /// Applies drawn parameters to an image; returns the view in `[0, 1]`, `HWC`.
    pub fn apply(&self, img: &Image, p: &ViewParams) -> FloatImage {
        let mut v = ops::resized_crop(img, p.crop, self.width as usize, self.height as usize);
        if p.flip {
            ops::hflip(&mut v);
        }
        if let Some(j) = p.jitter {
            for op in j.order {
                match op {
                    0 => ops::brightness(&mut v, j.brightness),
                    1 => ops::contrast(&mut v, j.contrast),
                    2 => ops::saturation(&mut v, j.saturation),
                    _ => ops::hue(&mut v, j.hue),
                }
            }
        }
        if p.grayscale {
            ops::grayscale(&mut v);
        }
        if let Some(sigma) = p.blur_sigma {
            ops::gaussian_blur(&mut v, self.blur_kernel_size(), sigma);
        }
        v
    }

    /// One augmented view of `img`, written normalised into `out` (`C × H × W` values).
    ///
    /// # Panics
    /// If `out` has the wrong length or the image's channels differ from the config's (checked
    /// with an error by [`AugmentConfig::batch`]).
    pub fn view(&self, img: &Image, rng: &mut impl Rng, out: &mut [f32]) {
        let p = self.sample_params(rng, img.width(), img.height());
        let v = self.apply(img, &p);
        ops::normalize_chw(&v, &self.mean, &self.std, out);
    }

    /// One augmented view as an 8-bit image (before normalisation), for previews.
    pub fn view_image(&self, img: &Image, rng: &mut impl Rng) -> Image {
        let p = self.sample_params(rng, img.width(), img.height());
        ops::to_image(&self.apply(img, &p))
    }

    /// The un-augmented view used for evaluation: the whole image resized to the output size
    /// (antialiased bilinear), normalised, `C × H × W` values into `out`.
    pub fn eval_view(&self, img: &Image, out: &mut [f32]) {
        let rect = Rect {
            x: 0,
            y: 0,
            width: img.width(),
            height: img.height(),
        };
        let v = ops::resized_crop(img, rect, self.width as usize, self.height as usize);
        ops::normalize_chw(&v, &self.mean, &self.std, out);
    }

    /// The un-augmented view as an 8-bit image (the whole image resized), for previews.
    pub fn eval_image(&self, img: &Image) -> Image {
        let rect = Rect {
            x: 0,
            y: 0,
            width: img.width(),
            height: img.height(),
        };
        ops::to_image(&ops::resized_crop(
            img,
            rect,
            self.width as usize,
            self.height as usize,
        ))
    }

    /// Values in one view: `C × H × W`.
    pub fn view_len(&self) -> usize {
        self.channels() * self.height as usize * self.width as usize
    }

    fn check_channels(&self, images: &[&Image]) -> Result<(), AugmentError> {
        self.validate()?;
        for (index, img) in images.iter().enumerate() {
            if img.channels() as usize != self.channels() {
                return Err(AugmentError::Channels {
                    index,
                    expected: self.channels(),
                    found: img.channels() as usize,
                });
            }
        }
        Ok(())
    }

    /// Two views of each image, `[2N, C, H, W]` (see [`ViewBatch`]), built in parallel on the
    /// current rayon pool. `indices[i]` is image `i`'s index in the dataset: with `seed` and
    /// `epoch` it fixes the views, whatever the thread count.
    pub fn batch(
        &self,
        images: &[&Image],
        seed: u64,
        epoch: u64,
        indices: &[u64],
    ) -> Result<ViewBatch, AugmentError> {
        if images.is_empty() || images.len() != indices.len() {
            return Err(AugmentError::BatchShape {
                images: images.len(),
                indices: indices.len(),
            });
        }
        self.check_channels(images)?;
        let n = images.len();
        let len = self.view_len();
        let mut data = vec![0f32; 2 * n * len];
        data.par_chunks_mut(len).enumerate().for_each(|(row, out)| {
            let (view, i) = (row / n, row % n);
            let mut rng = view_rng(seed, epoch, indices[i], view as u64);
            self.view(images[i], &mut rng, out);
        });
        Ok(ViewBatch {
            data,
            shape: [
                2 * n,
                self.channels(),
                self.height as usize,
                self.width as usize,
            ],
        })
    }

    /// Evaluation views of each image, `[N, C, H, W]`, in parallel.
    pub fn eval_batch(&self, images: &[&Image]) -> Result<ViewBatch, AugmentError> {
        if images.is_empty() {
            return Err(AugmentError::BatchShape {
                images: 0,
                indices: 0,
            });
        }
        self.check_channels(images)?;
        let len = self.view_len();
        let mut data = vec![0f32; images.len() * len];
        data.par_chunks_mut(len)
            .zip(images.par_iter())
            .for_each(|(out, img)| self.eval_view(img, out));
        Ok(ViewBatch {
            data,
            shape: [
                images.len(),
                self.channels(),
                self.height as usize,
                self.width as usize,
            ],
        })
    }
}

/// Uniform in `[lo, hi)` (`lo` when the range is empty), like `torch.empty(1).uniform_(lo, hi)`.
fn uniform<R: Rng + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}
