//! The resolved configuration of a pretraining run: what `config.json` holds and what every
//! checkpoint carries in its metadata.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use simclr_augment::AugmentConfig;
use simclr_loss::{LossConfig, LossKind, Mining, Pairs};
use simclr_model::{Arch, ModelConfig, Precision, Stem};

use crate::optim::{OptimConfig, OptimizerKind};
use crate::schedule::LrScaling;

/// Everything that defines a pretraining run. Defaults are SimCLR's CIFAR-10 recipe, scaled
/// to a CPU: ResNet-18 with the CIFAR stem, LARS with the learning rate 0.075 × √batch that
/// SimCLR (Appendix B.1) recommends for small batches, 10 warmup epochs, τ = 0.5,
/// colour-jitter strength 0.5.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The dataset (`None`: the bundled Fashion-MNIST sample).
    pub data: Option<PathBuf>,
    /// Dataset format (`idx`, `cifar10`, `folder`); detected when `None`.
    pub format: Option<String>,
    /// The split trained on, where the format has one.
    pub split: String,
    /// Encoder depth.
    pub arch: Arch,
    /// Encoder stem.
    pub stem: Stem,
    /// Width multiplier.
    pub width: f64,
    /// Hidden widths of the projection head (`None`: one layer as wide as the features).
    pub head_hidden: Option<Vec<usize>>,
    /// Projection width.
    pub proj_dim: usize,
    /// Side of the square views.
    pub image_size: u32,
    /// Images per step (the step sees twice as many views).
    pub batch_size: usize,
    /// Epochs of the run (the schedule spans them).
    pub epochs: u64,
    /// Stop after this many steps in all (the schedule still spans `epochs`).
    pub max_steps: Option<u64>,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Base learning rate, scaled by `lr_scaling`.
    pub lr: f64,
    /// How the base rate scales with the batch size.
    pub lr_scaling: LrScaling,
    /// Weight decay.
    pub weight_decay: f64,
    /// Momentum (LARS, SGD).
    pub momentum: f64,
    /// Nesterov momentum (LARS, SGD).
    pub nesterov: bool,
    /// LARS trust coefficient η: each weight's step is `lr·η·‖w‖/‖g‖` times its gradient
    /// (SimCLR: 0.001; solo-learn's CIFAR recipe: 0.02). Biases and BatchNorm parameters take
    /// the plain learning rate.
    pub trust_coefficient: f64,
    /// Epochs of linear warmup.
    pub warmup_epochs: f64,
    /// Training objective.
    pub loss: LossKind,
    /// Temperature of NT-Xent, DCL and SupCon.
    pub temperature: f64,
    /// Margin of the contrastive and triplet losses; ArcFace's angular margin (radians).
    pub margin: f64,
    /// Positives of the contrastive and triplet losses: the two views of an image, or the
    /// images of a class.
    pub pairs: Pairs,
    /// Triplet mining.
    pub mining: Mining,
    /// ArcFace's logit scale.
    pub scale: f64,
    /// DCLW's weighting temperature σ.
    pub sigma: f64,
    /// Class-balanced batches: classes per batch (P; with `images_per_class`).
    pub classes_per_batch: Option<usize>,
    /// Class-balanced batches: images of each class per batch (K).
    pub images_per_class: Option<usize>,
    /// Train a linear classifier on the detached representations alongside (needs labels);
    /// it never changes the encoder.
    pub online_probe: bool,
    /// Colour-jitter strength `s`.
    pub jitter_strength: f64,
    /// Smallest area share of the random resized crop (SimCLR: 0.08).
    pub min_crop_scale: f64,
    /// Gaussian blur on or off (`None`: on for views larger than 32 px, as SimCLR).
    pub blur: Option<bool>,
    /// Seed of the initialisation, the shuffling and every augmentation.
    pub seed: u64,
    /// Threads that build augmented batches in the background.
    pub workers: usize,
    /// Batches built ahead of the step.
    pub prefetch: usize,
    /// Save a numbered checkpoint every this many epochs (and always at the end).
    pub save_every: u64,
    /// Numbered checkpoints kept (the oldest are deleted).
    pub keep_last: usize,
    /// Arithmetic of the step (`bf16` on CUDA); checkpoints are f32 either way, so a run may
    /// be resumed with the other one.
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            data: None,
            format: None,
            split: "train".into(),
            arch: Arch::Resnet18,
            stem: Stem::Cifar,
            width: 1.0,
            head_hidden: None,
            proj_dim: 128,
            image_size: 32,
            batch_size: 256,
            epochs: 100,
            max_steps: None,
            optimizer: OptimizerKind::Lars,
            lr: 0.075,
            lr_scaling: LrScaling::Sqrt,
            weight_decay: 1e-6,
            momentum: 0.9,
            nesterov: false,
            trust_coefficient: 1e-3,
            warmup_epochs: 10.0,
            loss: LossKind::NtXent,
            temperature: 0.5,
            margin: 0.5,
            pairs: Pairs::Views,
            mining: Mining::BatchHard,
            scale: 64.0,
            sigma: simclr_loss::DEFAULT_SIGMA,
            classes_per_batch: None,
            images_per_class: None,
            online_probe: false,
            jitter_strength: 0.5,
            min_crop_scale: 0.08,
            blur: None,
            seed: 0,
            workers: 1,
            prefetch: 4,
            save_every: 1,
            keep_last: 3,
            precision: Precision::F32,
        }
    }
}

/// The largest `--image-size`: views of 4096² pixels are far past any ResNet recipe, and a
/// bound keeps a crafted checkpoint from asking for views that fill memory.
pub const MAX_IMAGE_SIZE: u32 = 4096;

impl TrainConfig {
    /// Checks every option's range; the message names the option as a flag.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |v: f64, name: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("--{name} must be a positive number, got {v}"))
            }
        };
        let non_negative = |v: f64, name: &str| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(format!("--{name} must be zero or positive, got {v}"))
            }
        };
        positive(self.width, "width")?;
        positive(self.lr, "lr")?;
        positive(self.temperature, "temperature")?;
        positive(self.trust_coefficient, "trust-coefficient")?;
        non_negative(self.weight_decay, "weight-decay")?;
        non_negative(self.warmup_epochs, "warmup-epochs")?;
        non_negative(self.margin, "margin")?;
        non_negative(self.jitter_strength, "jitter-strength")?;
        if !(self.min_crop_scale > 0.0 && self.min_crop_scale <= 1.0) {
            return Err(format!(
                "--min-crop-scale must be in (0, 1], got {}",
                self.min_crop_scale
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!(
                "--momentum must be in [0, 1), got {}",
                self.momentum
            ));
        }
        if self.batch_size < 2 {
            return Err(format!(
                "--batch-size must be at least 2 (a contrastive batch needs negatives), got {}",
                self.batch_size
            ));
        }
        if self.epochs == 0 {
            return Err("--epochs must be at least 1".into());
        }
        if self.max_steps == Some(0) {
            return Err("--max-steps must be at least 1".into());
        }
        if !(8..=MAX_IMAGE_SIZE).contains(&self.image_size) {
            return Err(format!(
                "--image-size must be in 8..={MAX_IMAGE_SIZE}, got {}",
                self.image_size
            ));
        }
        if self.save_every == 0 {
            return Err("--save-every must be at least 1".into());
        }
        if self.keep_last == 0 {
            return Err("--keep-last must be at least 1".into());
        }
        positive(self.scale, "scale")?;
        positive(self.sigma, "sigma")?;
        if self.loss == LossKind::ArcFace && self.margin >= std::f64::consts::FRAC_PI_2 {
            return Err(format!(
                "--margin is ArcFace's angle in radians and must be below π/2, got {}",
                self.margin
            ));
        }
        match (self.classes_per_batch, self.images_per_class) {
            (None, None) => {}
            (Some(p), Some(k)) => {
                if p < 2 || k < 2 {
                    return Err(format!(
                        "--classes-per-batch and --images-per-class must be at least 2 (a batch \
                         needs positives and negatives), got {p} and {k}"
                    ));
                }
                if p.checked_mul(k) != Some(self.batch_size) {
                    return Err(format!(
                        "--batch-size {} must be --classes-per-batch × --images-per-class = {p} × \
                         {k}",
                        self.batch_size
                    ));
                }
            }
            _ => {
                return Err(
                    "--classes-per-batch and --images-per-class go together (P classes × K \
                     images a batch)"
                        .into(),
                );
            }
        }
        if self.prefetch == 0 || self.workers == 0 {
            return Err("--prefetch and --workers must be at least 1".into());
        }
        self.model(1).validate()
    }

    /// The model for `channels`-channel images.
    pub fn model(&self, channels: usize) -> ModelConfig {
        ModelConfig {
            arch: self.arch,
            stem: self.stem,
            width: self.width,
            in_channels: channels,
            head_hidden: self.head_hidden.clone(),
            proj_dim: self.proj_dim,
        }
    }

    /// The augmentation pipeline for `channels`-channel images.
    pub fn augment(&self, channels: u8) -> AugmentConfig {
        let mut a = AugmentConfig::simclr(self.image_size, channels)
            .with_jitter_strength(self.jitter_strength);
        if let Some(blur) = self.blur {
            a.blur_p = if blur { 0.5 } else { 0.0 };
        }
        a.crop_scale[0] = self.min_crop_scale;
        a
    }

    /// The loss.
    pub fn loss(&self) -> LossConfig {
        LossConfig {
            kind: self.loss,
            temperature: self.temperature,
            margin: self.margin,
            pairs: self.pairs,
            mining: self.mining,
            scale: self.scale,
            sigma: self.sigma,
        }
    }

    /// The optimiser's hyper-parameters (the learning rate is set by the schedule).
    pub fn optim(&self) -> OptimConfig {
        OptimConfig {
            lr: 0.0,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            nesterov: self.nesterov,
            trust_coefficient: self.trust_coefficient,
            ..OptimConfig::default()
        }
    }
}
