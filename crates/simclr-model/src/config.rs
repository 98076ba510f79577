//! [`ModelConfig`]: architecture, stem, width, input channels and projection head.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// ResNet depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// ResNet-18: BasicBlocks `[2, 2, 2, 2]`.
    Resnet18,
    /// ResNet-34: BasicBlocks `[3, 4, 6, 3]`.
    Resnet34,
    /// ResNet-50: Bottlenecks `[3, 4, 6, 3]`, expansion 4.
    Resnet50,
}

impl Arch {
    /// Blocks per stage.
    pub fn layers(self) -> [usize; 4] {
        match self {
            Self::Resnet18 => [2, 2, 2, 2],
            Self::Resnet34 | Self::Resnet50 => [3, 4, 6, 3],
        }
    }

    /// Whether the blocks are bottlenecks (expansion 4) rather than basic blocks.
    pub fn bottleneck(self) -> bool {
        self == Self::Resnet50
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Resnet18 => "resnet18",
            Self::Resnet34 => "resnet34",
            Self::Resnet50 => "resnet50",
        })
    }
}

impl FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "resnet18" => Ok(Self::Resnet18),
            "resnet34" => Ok(Self::Resnet34),
            "resnet50" => Ok(Self::Resnet50),
            _ => Err(format!(
                "unknown architecture `{s}`; expected resnet18, resnet34 or resnet50"
            )),
        }
    }
}

/// The arithmetic of a training step. Weights, optimiser state, BatchNorm statistics, the
/// loss and checkpoints stay f32 in both; `bf16` runs the convolutions and matrix products
/// on bf16 activations (the weights cast per step), for GPUs with bf16 tensor cores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (the default).
    #[default]
    F32,
    /// bf16 activations, convolutions and matrix products; f32 master weights.
    Bf16,
}

impl Precision {
    /// The dtype of the activations.
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::Bf16 => candle_core::DType::BF16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            _ => Err(format!("unknown precision `{s}`; expected f32 or bf16")),
        }
    }
}

/// The stem: how the network first shrinks the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 7×7 stride-2 convolution and a 3×3 stride-2 max-pool (÷4), for ImageNet-size images.
    Imagenet,
    /// 3×3 stride-1 convolution, no max-pool, for small images (CIFAR, Fashion-MNIST), as the
    /// SimCLR paper does for CIFAR-10.
    Cifar,
}

impl fmt::Display for Stem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Imagenet => "imagenet",
            Self::Cifar => "cifar",
        })
    }
}

impl FromStr for Stem {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "imagenet" => Ok(Self::Imagenet),
            "cifar" => Ok(Self::Cifar),
            _ => Err(format!("unknown stem `{s}`; expected cifar or imagenet")),
        }
    }
}

/// Everything that fixes the model's shape; saved with every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Depth.
    pub arch: Arch,
    /// Stem.
    pub stem: Stem,
    /// Width multiplier: stage widths are `⌊64·w⌋, ⌊128·w⌋, ⌊256·w⌋, ⌊512·w⌋`.
    pub width: f64,
    /// Input channels: 1 (grayscale) or 3 (RGB).
    pub in_channels: usize,
    /// Hidden widths of the projection head (`Linear → BN → ReLU` each); `None` means one
    /// hidden layer as wide as the representation, as SimCLR.
    pub head_hidden: Option<Vec<usize>>,
    /// Output width of the projection head (SimCLR: 128).
    pub proj_dim: usize,
}

impl ModelConfig {
    /// ResNet-18 with the CIFAR stem, 3 channels, SimCLR's 512→512→128 head.
    pub fn resnet18_cifar() -> Self {
        Self {
            arch: Arch::Resnet18,
            stem: Stem::Cifar,
            width: 1.0,
            in_channels: 3,
            head_hidden: None,
            proj_dim: 128,
        }
    }

    /// A one-line description, e.g. `resnet18, cifar stem, width 0.25, 1 channel`.
    pub fn describe(&self) -> String {
        format!(
            "{}, {} stem, width {}, {} channel{}",
            self.arch,
            self.stem,
            self.width,
            self.in_channels,
            if self.in_channels == 1 { "" } else { "s" }
        )
    }

    /// ResNet-50 with the ImageNet stem, 3 channels, SimCLR's 2048→2048→128 head.
    pub fn resnet50_imagenet() -> Self {
        Self {
            arch: Arch::Resnet50,
            stem: Stem::Imagenet,
            ..Self::resnet18_cifar()
        }
    }

    /// Width of stage `i` (0..4) before the bottleneck expansion.
    pub fn planes(&self, stage: usize) -> usize {
        ((64 << stage) as f64 * self.width) as usize
    }

    /// Width of the representation `h` (the encoder's output).
    pub fn feature_dim(&self) -> usize {
        self.planes(3) * if self.arch.bottleneck() { 4 } else { 1 }
    }

    /// The head's hidden widths, resolved.
    pub fn head_hidden(&self) -> Vec<usize> {
        self.head_hidden
            .clone()
            .unwrap_or_else(|| vec![self.feature_dim()])
    }

    /// A lower bound on the encoder's parameter count, from the configuration alone: one
    /// `planes × planes` 3×3 convolution per residual block (every block has one, basic and
    /// bottleneck alike), `None` past `u64`. A file whose tensors hold fewer values cannot be
    /// weights of this configuration, so loaders refuse it before allocating the model: a
    /// crafted header cannot make them allocate more than a small multiple of the file's size.
    pub fn min_encoder_parameters(&self) -> Option<u64> {
        (0..4).try_fold(0u64, |acc, stage| {
            let p = self.planes(stage) as u64;
            let block = p.checked_mul(p)?.checked_mul(9)?;
            acc.checked_add(block.checked_mul(self.arch.layers()[stage] as u64)?)
        })
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.width.is_finite() && self.width > 0.0 && self.planes(0) >= 1) {
            return Err(format!(
                "width {} gives {} channels in the first stage; it must give at least 1",
                self.width,
                self.planes(0)
            ));
        }
        if !matches!(self.in_channels, 1 | 3) {
            return Err(format!(
                "in_channels is {}; expected 1 or 3",
                self.in_channels
            ));
        }
        if self.proj_dim == 0 || self.head_hidden().contains(&0) {
            return Err("projection head widths must be at least 1".into());
        }
        Ok(())
    }
}
