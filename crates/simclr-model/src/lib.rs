//! The SimCLR model for simclr-rs: a ResNet encoder (ResNet-18/34/50, ImageNet or CIFAR stem,
//! width multiplier, 1 or 3 input channels) and an MLP projection head, on candle.
//!
//! Parameters carry torchvision's state-dict names (the head under `projector.`), so encoder
//! weights exported from simclr-rs load into `torchvision.models.resnet18/50` with only `fc.*`
//! missing (the CIFAR stem changes `conv1`'s shape only).
//!
//! BatchNorm running statistics live in the same [`VarMap`] as the trainable parameters (that
//! is how candle-nn stores them); [`is_buffer`] tells them apart, so the optimiser is handed
//! only [`SimClr::trainable_vars`].

pub mod batchnorm;
mod config;
pub mod conv;
pub mod io;
mod resnet;

use std::collections::HashMap;

use candle_core::{DType, Device, ModuleT, Result, Tensor, Var, bail};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

pub use crate::config::{Arch, ModelConfig, Precision, Stem};
pub use crate::resnet::{Projector, ResNet, max_pool_3x3_s2};

/// Whether the named tensor is a BatchNorm running statistic (saved, never optimised).
pub fn is_buffer(name: &str) -> bool {
    name.ends_with("running_mean") || name.ends_with("running_var")
}

/// Whether the named parameter is excluded from weight decay and from LARS's trust-ratio
/// adaptation: biases and BatchNorm weights/biases, i.e. every 1-D parameter (SimCLR's and
/// solo-learn's `exclude_bias_n_norm`).
pub fn is_bias_or_norm(name: &str, var: &Var) -> bool {
    !is_buffer(name) && var.rank() == 1
}

/// The encoder and the projection head.
pub struct SimClr {
    /// The ResNet encoder.
    pub encoder: ResNet,
    /// The projection head.
    pub projector: Projector,
    config: ModelConfig,
    varmap: VarMap,
    precision: Precision,
}

/// Whether `tensors` (a file's) hold enough values to be weights of `config`, checked before
/// the model is allocated: the metadata of a crafted or mismatched file may name a model far
/// larger than the file (see [`ModelConfig::min_encoder_parameters`]). The error says both.
pub fn check_file_fits(
    config: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
) -> std::result::Result<(), String> {
    let held: u64 = tensors.values().map(|t| t.elem_count() as u64).sum();
    match config.min_encoder_parameters() {
        Some(need) if need <= held => Ok(()),
        need => Err(format!(
            "its metadata names a model ({}) of at least {} parameters, but its tensors hold \
             {held} values: the file is not weights of that model",
            config.describe(),
            need.map_or_else(|| "2^64".into(), |n| n.to_string())
        )),
    }
}

impl SimClr {
    /// Builds the model with torchvision's initialisation drawn from a generator seeded with
    /// `seed` (candle cannot seed its CPU generator): convolutions Kaiming-normal (fan out,
    /// ReLU), BatchNorm weight 1 and bias 0, Linear layers PyTorch's default
    /// `U(−1/√fan_in, 1/√fan_in)` for weights and biases.
    pub fn new(config: &ModelConfig, device: &Device, seed: u64) -> Result<Self> {
        config.validate().map_err(candle_core::Error::msg)?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let encoder = ResNet::new(config, vb.clone())?;
        let projector = Projector::new(
            config.feature_dim(),
            &config.head_hidden(),
            config.proj_dim,
            vb.pp("projector"),
        )?;
        let model = Self {
            encoder,
            projector,
            config: config.clone(),
            varmap,
            precision: Precision::F32,
        };
        model.init(seed)?;
        Ok(model)
    }

    fn init(&self, seed: u64) -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (name, var) in self.named_vars() {
            let dims = var.dims().to_vec();
            let n: usize = dims.iter().product();
            let values: Vec<f32> = if name.ends_with("running_var") {
                vec![1.0; n]
            } else if name.ends_with("running_mean") {
                vec![0.0; n]
            } else if dims.len() == 4 {
                let fan_out = dims[0] * dims[2] * dims[3];
                let normal = Normal::new(0.0, (2.0 / fan_out as f64).sqrt()).expect("positive std");
                (0..n).map(|_| normal.sample(&mut rng) as f32).collect()
            } else if name.starts_with("projector") && !self.is_head_bn(&name) {
                let fan_in = if dims.len() == 2 {
                    dims[1]
                } else {
                    self.head_fan_in(&name)
                };
                let bound = 1.0 / (fan_in as f64).sqrt();
                let u = Uniform::new_inclusive(-bound, bound).expect("valid bounds");
                (0..n).map(|_| u.sample(&mut rng) as f32).collect()
            } else if name.ends_with("weight") {
                vec![1.0; n] // BatchNorm scale
            } else {
                vec![0.0; n] // BatchNorm shift
            };
            var.set(&Tensor::from_vec(values, dims, var.device())?)?;
        }
        Ok(())
    }

    /// Whether a `projector.<i>.*` name belongs to a BatchNorm (indices 1, 4, 7, …).
    fn is_head_bn(&self, name: &str) -> bool {
        name.split('.')
            .nth(1)
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| i % 3 == 1)
    }

    /// Fan-in of a head Linear's bias: the in-width of its weight.
    fn head_fan_in(&self, name: &str) -> usize {
        let weight = name.replace(".bias", ".weight");
        self.varmap
            .data()
            .lock()
            .expect("varmap lock")
            .get(&weight)
            .map_or(1, |w| w.dims()[1])
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Every tensor (parameters and BatchNorm running statistics), sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("varmap lock");
        let mut v: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The parameters an optimiser updates (no running statistics), sorted by name.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.named_vars()
            .into_iter()
            .filter(|(n, _)| !is_buffer(n))
            .collect()
    }

    /// Every tensor (parameters and running statistics) by name, for saving.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.named_vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect()
    }

    /// Sets every tensor from `tensors` (extra entries are ignored). With `with_head` false,
    /// the projection head may be absent (an exported encoder) and is left as it is.
    ///
    /// # Errors
    /// A missing tensor or one whose shape differs, naming it: the usual sign of weights
    /// from another architecture, width or stem.
    pub fn load_tensors(&self, tensors: &HashMap<String, Tensor>, with_head: bool) -> Result<()> {
        let mut missing = Vec::new();
        for (name, var) in self.named_vars() {
            match tensors.get(&name) {
                Some(t) if t.dims() == var.dims() => {
                    var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?
                }
                Some(t) => bail!(
                    "tensor `{name}` has shape {:?}, this model ({}) expects {:?}",
                    t.dims(),
                    self.config.describe(),
                    var.dims()
                ),
                None if !with_head && name.starts_with("projector.") => {}
                None => missing.push(name),
            }
        }
        if !missing.is_empty() {
            bail!(
                "{} tensors of this model ({}) are missing, first `{}`",
                missing.len(),
                self.config.describe(),
                missing[0]
            )
        }
        Ok(())
    }

    /// The underlying map, for saving and loading.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Number of trainable scalars, optionally only the encoder's.
    pub fn num_params(&self, encoder_only: bool) -> usize {
        self.trainable_vars()
            .iter()
            .filter(|(n, _)| !encoder_only || !n.starts_with("projector."))
            .map(|(_, v)| v.elem_count())
            .sum()
    }

    /// The representation `h` (after global average pooling).
    ///
    /// # Shapes
    /// `[B, C, H, W]` → `[B, feature_dim]`.
    pub fn encode_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.encoder.forward_t(x, train)
    }

    /// The representation `h` and the projection `z` the loss sees.
    ///
    /// # Shapes
    /// `[B, C, H, W]` → (`[B, feature_dim]`, `[B, proj_dim]`).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        // On the CPU, bf16 is the convolutions' gemms only (`conv::set_bf16_gemm`); candle's
        // CPU kernels for bf16 tensors are slower than f32 ones.
        let dtype = if x.device().is_cpu() {
            DType::F32
        } else {
            self.precision.dtype()
        };
        let x = x.to_dtype(dtype)?;
        let h = self.encode_t(&x, train)?;
        let z = self.projector.forward_t(&h.to_dtype(x.dtype())?, train)?;
        Ok((h, z.to_dtype(DType::F32)?))
    }

    /// Sets the arithmetic of [`forward_t`](Self::forward_t) (the weights stay f32). On a GPU,
    /// bf16 activations, convolutions and matrix products; on the CPU, where the model lives
    /// there, bf16 inputs to the convolutions' gemms with f32 sums and f32 activations
    /// ([`conv::set_bf16_gemm`], a setting of the whole process, which this turns on or off).
    ///
    /// # Errors
    /// bf16 on a CPU without AVX-512 BF16 ([`conv::bf16_gemm_supported`]).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if self.device().is_cpu() {
            conv::set_bf16_gemm(precision == Precision::Bf16)?;
        }
        self.precision = precision;
        Ok(())
    }

    /// The device of the model's parameters.
    pub fn device(&self) -> Device {
        self.varmap
            .all_vars()
            .first()
            .map_or(Device::Cpu, |v| v.device().clone())
    }

    /// The arithmetic of [`forward_t`](Self::forward_t).
    pub fn precision(&self) -> Precision {
        self.precision
    }
}
