//! Pretrained encoders loaded from safetensors: exported weights (`simclr export`) or training
//! checkpoints (`simclr pretrain`), with everything needed to preprocess images the way the
//! encoder was trained read from the file's metadata.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use simclr_augment::AugmentConfig;
use simclr_data::{Dataset, Image};
use simclr_model::io::{self, CHECKPOINT_FORMAT, ENCODER_FORMAT, IoError, SafetensorsFile};
use simclr_model::{ModelConfig, SimClr};

use crate::EvalError;

/// Images per forward pass when embedding.
const BATCH: usize = 256;

/// A frozen encoder and its preprocessing.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use candle_core::Device;
/// use simclr_data::{Dataset, Split};
/// use simclr_eval::Encoder;
/// use simclr_model::{ModelConfig, SimClr};
///
/// // A freshly initialised model stands in for a pretrained one here.
/// let config = ModelConfig { width: 0.125, in_channels: 1, ..ModelConfig::resnet18_cifar() };
/// let model = SimClr::new(&config, &Device::Cpu, 0)?;
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("encoder.safetensors");
/// Encoder::new(model, 28, vec![0.5], vec![0.5]).save(&path, false)?;
///
/// // What a user of exported weights writes:
/// let encoder = Encoder::from_safetensors(&path, &Device::Cpu)?;
/// let test = simclr_data::sample::fashion_mnist(Split::Test)?;
/// let images: Vec<_> = (0..4).map(|i| test.get(i).unwrap().image).collect();
/// let h = encoder.embed(&images.iter().collect::<Vec<_>>())?;
/// assert_eq!(h.len(), 4 * encoder.feature_dim());
/// # Ok(())
/// # }
/// ```
pub struct Encoder {
    model: SimClr,
    preprocess: AugmentConfig,
    metadata: BTreeMap<String, String>,
}

/// The representations `h` of `images` under `model` (BatchNorm in eval mode), each image
/// resized and normalised by `preprocess`'s evaluation transform; row-major
/// `images.len() × feature_dim`. [`Encoder::embed`] is this with the encoder's own model and
/// preprocessing; a training loop uses it to measure the model it is training.
pub fn embed_with(
    model: &SimClr,
    preprocess: &AugmentConfig,
    images: &[&Image],
) -> Result<Vec<f32>, EvalError> {
    let device = model
        .named_vars()
        .first()
        .map_or(Device::Cpu, |(_, v)| v.device().clone());
    let mut out = Vec::with_capacity(images.len() * model.config().feature_dim());
    for chunk in images.chunks(BATCH) {
        let v = preprocess.eval_batch(chunk)?;
        let x = Tensor::from_vec(v.data, v.shape.as_slice(), &device)?;
        out.extend(model.encode_t(&x, false)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// [`embed_with`] over items `indices` of `dataset`, in that order, a batch at a time;
/// `progress` is called with the number of items done after each batch.
pub fn embed_items(
    model: &SimClr,
    preprocess: &AugmentConfig,
    dataset: &dyn Dataset,
    indices: &[usize],
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<f32>, EvalError> {
    let mut out = Vec::with_capacity(indices.len() * model.config().feature_dim());
    for (b, chunk) in indices.chunks(BATCH).enumerate() {
        // Items of a lazily read folder are decoded here, in parallel.
        let images = chunk
            .par_iter()
            .map(|&i| dataset.get(i).map(|s| s.image))
            .collect::<Result<Vec<Image>, _>>()?;
        out.extend(embed_with(
            model,
            preprocess,
            &images.iter().collect::<Vec<_>>(),
        )?);
        progress(b * BATCH + chunk.len());
    }
    Ok(out)
}

fn meta_err(path: &Path, reason: String) -> EvalError {
    EvalError::Weights(IoError::Metadata {
        path: path.to_owned(),
        reason,
    })
}

impl Encoder {
    /// Wraps a model with the preprocessing it was trained with: images resized to
    /// `image_size` and normalised with `mean` / `std` (one value per channel).
    pub fn new(model: SimClr, image_size: u32, mean: Vec<f32>, std: Vec<f32>) -> Self {
        let mut preprocess = AugmentConfig::simclr(image_size, model.config().in_channels as u8);
        preprocess.mean = mean;
        preprocess.std = std;
        Self {
            model,
            preprocess,
            metadata: BTreeMap::new(),
        }
    }

    /// Loads exported weights or a training checkpoint onto `device`.
    ///
    /// # Errors
    /// A missing, truncated or corrupt file, a file that is not from simclr-rs (no `format`
    /// metadata), or tensors that do not fit the architecture its metadata names.
    pub fn from_safetensors(path: &Path, device: &Device) -> Result<Self, EvalError> {
        let file = SafetensorsFile::load(path, device)?;
        let format = file.meta("format")?;
        if format != ENCODER_FORMAT && format != CHECKPOINT_FORMAT {
            return Err(meta_err(
                path,
                format!("unknown format `{format}`; expected simclr-rs weights or a checkpoint"),
            ));
        }
        let config: ModelConfig = serde_json::from_str(file.meta("model")?)
            .map_err(|e| meta_err(path, format!("metadata `model` is unreadable: {e}")))?;
        let floats = |key: &str| -> Result<Vec<f32>, EvalError> {
            serde_json::from_str(file.meta(key)?)
                .map_err(|e| meta_err(path, format!("metadata `{key}` is unreadable: {e}")))
        };
        let (mean, std) = (floats("normalize_mean")?, floats("normalize_std")?);
        let image_size: u32 = file
            .meta("image_size")?
            .parse()
            .map_err(|e| meta_err(path, format!("metadata `image_size`: {e}")))?;
        if mean.len() != config.in_channels || std.len() != config.in_channels {
            return Err(meta_err(
                path,
                format!(
                    "normalisation constants do not match {} channels",
                    config.in_channels
                ),
            ));
        }
        simclr_model::check_file_fits(&config, &file.tensors).map_err(|r| meta_err(path, r))?;
        let model = SimClr::new(&config, device, 0)?;
        let with_head = file.tensors.keys().any(|k| k.starts_with("projector."));
        model
            .load_tensors(&file.tensors, with_head)
            .map_err(|source| EvalError::Misfit {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        let mut encoder = Self::new(model, image_size, mean, std);
        encoder.metadata = file.metadata;
        Ok(encoder)
    }

    /// The model (the head is freshly initialised when the file had none).
    pub fn model(&self) -> &SimClr {
        &self.model
    }

    /// The architecture.
    pub fn config(&self) -> &ModelConfig {
        self.model.config()
    }

    /// Width of the representation `h`.
    pub fn feature_dim(&self) -> usize {
        self.config().feature_dim()
    }

    /// The preprocessing (resize to `height × width`, normalise).
    pub fn preprocess(&self) -> &AugmentConfig {
        &self.preprocess
    }

    /// The side images are resized to before the forward pass: the training size unless
    /// [`Encoder::set_image_size`] changed it.
    pub fn image_size(&self) -> u32 {
        self.preprocess.height
    }

    /// Resizes images to `size × size` from now on instead of the training size. The
    /// convolutions and the global average pool take any size, and an encoder trained on
    /// random resized crops, which show objects larger than whole images do, often gives
    /// better features a little above its training size (Touvron et al. 2019, "Fixing the
    /// train-test resolution discrepancy"). [`Encoder::save`] records the new size.
    ///
    /// # Errors
    /// `size` is 0.
    pub fn set_image_size(&mut self, size: u32) -> Result<(), EvalError> {
        if size == 0 {
            return Err(EvalError::Shape("the image size must be positive".into()));
        }
        self.preprocess.height = size;
        self.preprocess.width = size;
        Ok(())
    }

    /// The metadata of the file it was loaded from (empty when built in memory).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The representations `h` of preprocessed `[B, C, H, W]` input, BatchNorm in eval mode.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, EvalError> {
        Ok(self.model.encode_t(x, false)?)
    }

    /// The representations of `images` (resized and normalised as in training), row-major
    /// `images.len() × feature_dim`.
    pub fn embed(&self, images: &[&Image]) -> Result<Vec<f32>, EvalError> {
        embed_with(&self.model, &self.preprocess, images)
    }

    /// The representations of every image of `dataset`, in order; `progress` is called with
    /// the number of images done after each batch.
    pub fn embed_dataset(
        &self,
        dataset: &dyn Dataset,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>, EvalError> {
        let all: Vec<usize> = (0..dataset.len()).collect();
        embed_items(&self.model, &self.preprocess, dataset, &all, progress)
    }

    /// Writes the encoder (and the head with `with_head`) under torchvision's names, with
    /// metadata: format, architecture, stem, width, channels, feature width, image size,
    /// normalisation constants and the simclr-rs version, plus where it came from.
    pub fn save(&self, path: &Path, with_head: bool) -> Result<(), EvalError> {
        let c = self.config();
        let tensors: Vec<(String, Tensor)> = self
            .model
            .tensors()
            .into_iter()
            .filter(|(n, _)| with_head || !n.starts_with("projector."))
            .collect();
        let mut meta = BTreeMap::from([
            ("format".to_string(), ENCODER_FORMAT.to_string()),
            ("simclr_version".into(), env!("CARGO_PKG_VERSION").into()),
            ("model".into(), json(c)),
            ("arch".into(), c.arch.to_string()),
            ("stem".into(), c.stem.to_string()),
            ("width".into(), c.width.to_string()),
            ("in_channels".into(), c.in_channels.to_string()),
            ("feature_dim".into(), c.feature_dim().to_string()),
            ("image_size".into(), self.preprocess.height.to_string()),
            ("normalize_mean".into(), json(&self.preprocess.mean)),
            ("normalize_std".into(), json(&self.preprocess.std)),
            ("with_head".into(), with_head.to_string()),
            (
                "layout".into(),
                "NCHW input, OIHW convolution weights, BatchNorm eps 1e-5".into(),
            ),
        ]);
        for key in ["epoch", "global_step", "seed"] {
            if let Some(v) = self.metadata.get(key) {
                meta.insert(format!("source_{key}"), v.clone());
            }
        }
        Ok(io::save(path, &tensors, &meta)?)
    }
}

/// JSON of a metadata value (the values here always serialise).
fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("metadata serialises")
}
