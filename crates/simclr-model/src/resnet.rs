//! ResNet encoders (He et al. 2016, torchvision's v1.5 layout: a Bottleneck strides on its 3×3
//! convolution) and the SimCLR projection head.
//!
//! Parameter names are torchvision's state-dict keys (`conv1.weight`, `layer2.0.downsample.1.
//! running_var`, …), as candle-transformers' `resnet.rs` does, so exported encoders load into
//! `torchvision.models.resnet18/50`. Unlike that file, BatchNorm runs in training mode when
//! asked: every forward takes `train` (`ModuleT`).

use candle_core::{D, DType, Module, ModuleT, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::batchnorm::BatchNorm;
use crate::{ModelConfig, Stem};

/// PyTorch's BatchNorm (eps 1e-5, momentum 0.1, unbiased running variance), fused with the
/// ReLU or residual add after it.
fn bn(channels: usize, vb: VarBuilder) -> Result<BatchNorm> {
    BatchNorm::new(channels, vb)
}

/// A bias-free convolution (`weight` `[cout, cin, k, k]`, as `nn.Conv2d(bias=False)` names
/// it) run by [`crate::conv::conv2d`], whose CPU backward is far faster than candle's.
struct Conv {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv {
    fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let weight = vb.get_with_hints(
            (cout, cin, k, k),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        Ok(Self {
            weight,
            stride,
            padding,
        })
    }

    /// The convolution in `x`'s dtype (the f32 weight is cast for bf16 activations).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.to_dtype(x.dtype())?;
        crate::conv::conv2d(x, &w, self.stride, self.padding)
    }
}

/// A `k`×`k` convolution with "same" padding `k / 2`.
fn conv(cin: usize, cout: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Conv> {
    Conv::new(cin, cout, k, stride, k / 2, vb)
}

/// `downsample`: 1×1 strided convolution + BN, on the shortcut when the shape changes.
struct Downsample {
    conv: Conv,
    bn: BatchNorm,
}

impl Downsample {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv(cin, cout, 1, stride, vb.pp("0"))?,
            bn: bn(cout, vb.pp("1"))?,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.forward_t(&self.conv.forward(x)?, train)
    }
}

/// A residual block: BasicBlock (two 3×3) or Bottleneck (1×1, 3×3, 1×1 with expansion 4).
struct Block {
    convs: Vec<(Conv, BatchNorm)>,
    downsample: Option<Downsample>,
}

impl Block {
    fn new(
        cin: usize,
        planes: usize,
        stride: usize,
        bottleneck: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (shapes, cout): (Vec<(usize, usize, usize, usize)>, usize) = if bottleneck {
            let out = planes * 4;
            (
                vec![
                    (cin, planes, 1, 1),
                    (planes, planes, 3, stride),
                    (planes, out, 1, 1),
                ],
                out,
            )
        } else {
            (
                vec![(cin, planes, 3, stride), (planes, planes, 3, 1)],
                planes,
            )
        };
        let convs = shapes
            .iter()
            .enumerate()
            .map(|(i, &(a, b, k, s))| {
                Ok((
                    conv(a, b, k, s, vb.pp(format!("conv{}", i + 1)))?,
                    bn(b, vb.pp(format!("bn{}", i + 1)))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let downsample = (stride != 1 || cin != cout)
            .then(|| Downsample::new(cin, cout, stride, vb.pp("downsample")))
            .transpose()?;
        Ok(Self { convs, downsample })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let shortcut = match &self.downsample {
            Some(d) => d.forward_t(x, train)?,
            None => x.clone(),
        };
        let (last, inner) = self.convs.split_last().expect("a block has convolutions");
        let mut y = x.clone();
        for (c, b) in inner {
            y = b.forward_relu(&c.forward(&y)?, train)?;
        }
        last.1
            .forward_add_relu(&last.0.forward(&y)?, &shortcut, train)
    }
}

/// 3×3 stride-2 max-pool with padding 1, built from differentiable ops (padding with −∞,
/// strided window views, element-wise maxima): candle 0.11's `max_pool2d` backward only works
/// when kernel == stride.
///
/// # Shapes
/// `[B, C, H, W]` → `[B, C, ⌊(H−1)/2⌋+1, ⌊(W−1)/2⌋+1]`.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    // Pad to [B, C, 2·ho + 2, 2·wo + 2]: one −∞ row/column before, enough after.
    let pad = |t: &Tensor, dim: usize, before: usize, after: usize| -> Result<Tensor> {
        let mut shape = t.dims().to_vec();
        let mut parts = Vec::new();
        shape[dim] = before;
        parts
            .push(Tensor::full(f32::NEG_INFINITY, shape.clone(), t.device())?.to_dtype(t.dtype())?);
        parts.push(t.clone());
        shape[dim] = after;
        parts.push(Tensor::full(f32::NEG_INFINITY, shape, t.device())?.to_dtype(t.dtype())?);
        Tensor::cat(&parts, dim)
    };
    let xp = pad(x, 2, 1, 2 * ho + 1 - h)?;
    let xp = pad(&xp, 3, 1, 2 * wo + 1 - w)?;
    let mut out: Option<Tensor> = None;
    for dy in 0..3 {
        // Rows dy, dy + 2, …: [B, C, ho, Wp].
        let rows = xp
            .narrow(2, dy, 2 * ho)?
            .reshape((b, c, ho, 2, 2 * wo + 2))?
            .narrow(3, 0, 1)?
            .squeeze(3)?;
        for dx in 0..3 {
            let win = rows
                .narrow(3, dx, 2 * wo)?
                .reshape((b, c, ho, wo, 2))?
                .narrow(4, 0, 1)?
                .squeeze(4)?;
            out = Some(match out {
                None => win,
                Some(m) => m.maximum(&win)?,
            });
        }
    }
    Ok(out.expect("nine windows"))
}

/// The ResNet encoder: stem, four stages, global average pool.
pub struct ResNet {
    conv1: Conv,
    bn1: BatchNorm,
    stem: Stem,
    stages: Vec<Vec<Block>>,
}

impl ResNet {
    /// Builds the encoder, naming tensors as torchvision does under `vb`.
    pub fn new(cfg: &ModelConfig, vb: VarBuilder) -> Result<Self> {
        let c0 = cfg.planes(0);
        let (conv1, stem) = match cfg.stem {
            Stem::Imagenet => (
                Conv::new(cfg.in_channels, c0, 7, 2, 3, vb.pp("conv1"))?,
                Stem::Imagenet,
            ),
            Stem::Cifar => (
                conv(cfg.in_channels, c0, 3, 1, vb.pp("conv1"))?,
                Stem::Cifar,
            ),
        };
        let bn1 = bn(c0, vb.pp("bn1"))?;
        let expansion = if cfg.arch.bottleneck() { 4 } else { 1 };
        let mut cin = c0;
        let mut stages = Vec::new();
        for (s, &n) in cfg.arch.layers().iter().enumerate() {
            let planes = cfg.planes(s);
            let vs = vb.pp(format!("layer{}", s + 1));
            let mut blocks = Vec::new();
            for i in 0..n {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                blocks.push(Block::new(
                    cin,
                    planes,
                    stride,
                    cfg.arch.bottleneck(),
                    vs.pp(i),
                )?);
                cin = planes * expansion;
            }
            stages.push(blocks);
        }
        Ok(Self {
            conv1,
            bn1,
            stem,
            stages,
        })
    }
}

impl ModuleT for ResNet {
    /// # Shapes
    /// `[B, C, H, W]` → `[B, feature_dim]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = self.bn1.forward_relu(&self.conv1.forward(x)?, train)?; // [B, c0, h, w]
        if self.stem == Stem::Imagenet {
            y = max_pool_3x3_s2(&y)?;
        }
        for blocks in &self.stages {
            for block in blocks {
                y = block.forward_t(&y, train)?;
            }
        }
        // Global average pool, in f32 whatever the activations: [B, feature_dim].
        y.to_dtype(DType::F32)?.mean(D::Minus1)?.mean(D::Minus1)
    }
}

/// The projection head: `(Linear → BN → ReLU) × len(hidden)`, then `Linear`, with
/// `nn.Sequential` indices (`projector.0` Linear, `projector.1` BN, ReLU at 2, …).
pub struct Projector {
    hidden: Vec<(Linear, BatchNorm)>,
    out: Linear,
}

impl Projector {
    /// Builds the head from `input` to `proj_dim` through `hidden` widths.
    pub fn new(input: usize, hidden: &[usize], proj_dim: usize, vb: VarBuilder) -> Result<Self> {
        let mut layers = Vec::new();
        let mut cin = input;
        for (i, &width) in hidden.iter().enumerate() {
            layers.push((
                candle_nn::linear(cin, width, vb.pp(3 * i))?,
                bn(width, vb.pp(3 * i + 1))?,
            ));
            cin = width;
        }
        let out = candle_nn::linear(cin, proj_dim, vb.pp(3 * hidden.len()))?;
        Ok(Self {
            hidden: layers,
            out,
        })
    }
}

impl ModuleT for Projector {
    /// # Shapes
    /// `[B, feature_dim]` → `[B, proj_dim]`.
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for (lin, bn) in &self.hidden {
            y = bn.forward_relu(&linear(lin, &y)?, train)?;
        }
        linear(&self.out, &y)
    }
}

/// `lin(x)` in `x`'s dtype: the f32 weight and bias are cast for bf16 activations.
fn linear(lin: &Linear, x: &Tensor) -> Result<Tensor> {
    if lin.weight().dtype() == x.dtype() {
        return lin.forward(x);
    }
    let w = lin.weight().to_dtype(x.dtype())?;
    let b = lin.bias().map(|b| b.to_dtype(x.dtype())).transpose()?;
    Linear::new(w, b).forward(x)
}
