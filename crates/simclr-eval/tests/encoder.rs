//! Exported weights: the round trip to a file gives the in-memory model's features, and bad
//! files get errors that say what is wrong.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use simclr_data::{Dataset, Split, sample};
use simclr_eval::{Encoder, EvalError};
use simclr_model::io::{self, IoError};
use simclr_model::{ModelConfig, SimClr};

fn tiny(in_channels: usize) -> ModelConfig {
    ModelConfig {
        width: 0.125,
        in_channels,
        proj_dim: 16,
        ..ModelConfig::resnet18_cifar()
    }
}

/// A model whose BatchNorm running statistics have moved away from their initial values, so
/// that eval mode really depends on them being saved.
fn trained_model() -> SimClr {
    let m = SimClr::new(&tiny(1), &Device::Cpu, 3).unwrap();
    for seed in 0..3 {
        let x = Tensor::randn(0.3f32 * seed as f32, 1.0, (8, 1, 16, 16), &Device::Cpu).unwrap();
        m.forward_t(&x, true).unwrap();
    }
    m
}

#[test]
fn export_then_load_gives_the_in_memory_features() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enc.safetensors");
    let ds = sample::fashion_mnist(Split::Test).unwrap();
    let images: Vec<_> = (0..20).map(|i| ds.get(i).unwrap().image).collect();
    let refs: Vec<_> = images.iter().collect();

    let encoder = Encoder::new(trained_model(), 16, vec![0.286], vec![0.353]);
    let want = encoder.embed(&refs).unwrap();
    // The same through the model directly, to be sure `embed` is eval-mode `h`.
    let x = encoder.preprocess().eval_batch(&refs).unwrap();
    let direct = encoder
        .model()
        .encode_t(
            &Tensor::from_vec(x.data, x.shape.as_slice(), &Device::Cpu).unwrap(),
            false,
        )
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(want, direct);

    encoder.save(&path, false).unwrap();
    let loaded = Encoder::from_safetensors(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.config(), encoder.config());
    assert_eq!(loaded.preprocess().mean, vec![0.286]);
    assert_eq!(loaded.preprocess().height, 16);
    let got = loaded.embed(&refs).unwrap();
    assert_eq!(got.len(), 20 * 64);
    let max = want
        .iter()
        .zip(&got)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max <= 1e-5, "max difference {max}");

    // Encoder-only: no head, no optimiser state; every torchvision encoder tensor.
    let f = io::SafetensorsFile::load(&path, &Device::Cpu).unwrap();
    assert!(f.tensors.keys().all(|k| !k.starts_with("projector.")));
    assert!(f.tensors.contains_key("layer4.1.bn2.running_var"));
    for key in [
        "arch",
        "stem",
        "width",
        "in_channels",
        "normalize_mean",
        "normalize_std",
        "image_size",
        "simclr_version",
    ] {
        assert!(f.metadata.contains_key(key), "{key}");
    }
    encoder.save(&path, true).unwrap();
    let f = io::SafetensorsFile::load(&path, &Device::Cpu).unwrap();
    assert!(f.tensors.contains_key("projector.3.weight"));
}

#[test]
fn another_image_size_embeds_the_images_resized_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let ds = sample::fashion_mnist(Split::Test).unwrap();
    let images: Vec<_> = (0..8).map(|i| ds.get(i).unwrap().image).collect();
    let refs: Vec<_> = images.iter().collect();
    let mut encoder = Encoder::new(trained_model(), 16, vec![0.286], vec![0.353]);
    let at16 = encoder.embed(&refs).unwrap();
    assert!(matches!(
        encoder.set_image_size(0),
        Err(EvalError::Shape(_))
    ));
    assert_eq!(encoder.image_size(), 16);

    encoder.set_image_size(24).unwrap();
    assert_eq!(encoder.image_size(), 24);
    let x = encoder.preprocess().eval_batch(&refs).unwrap();
    assert_eq!(x.shape, [8, 1, 24, 24]);
    let at24 = encoder.embed(&refs).unwrap();
    assert_eq!(at24.len(), at16.len(), "the same feature width");
    let direct = encoder
        .forward(&Tensor::from_vec(x.data, x.shape.as_slice(), &Device::Cpu).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(at24, direct);
    let moved = at16.iter().zip(&at24).filter(|(a, b)| a != b).count();
    assert!(
        moved > at16.len() / 2,
        "{moved} of {} features moved",
        at16.len()
    );

    // Saved weights carry the size they were last set to use.
    let path = dir.path().join("enc.safetensors");
    encoder.save(&path, false).unwrap();
    let loaded = Encoder::from_safetensors(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.image_size(), 24);
}

#[test]
fn bad_weight_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("enc.safetensors");
    Encoder::new(trained_model(), 16, vec![0.5], vec![0.5])
        .save(&good, false)
        .unwrap();
    let load = |p: &std::path::Path| Encoder::from_safetensors(p, &Device::Cpu).err().unwrap();

    // Truncated.
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&cut);
    assert!(
        matches!(err, EvalError::Weights(IoError::Corrupt { .. })),
        "{err}"
    );

    // Another architecture under the same names: a shape mismatch names the tensor.
    let f = io::SafetensorsFile::load(&good, &Device::Cpu).unwrap();
    let mut meta = f.metadata.clone();
    let wider = ModelConfig {
        width: 0.25,
        ..tiny(1)
    };
    meta.insert("model".into(), serde_json::to_string(&wider).unwrap());
    let tensors: Vec<(String, Tensor)> = f.tensors.clone().into_iter().collect();
    let other = dir.path().join("other.safetensors");
    io::save(&other, &tensors, &meta).unwrap();
    // A wider model than the file holds is refused before it is allocated…
    let err = load(&other).to_string();
    assert!(
        err.contains("tensors hold") && err.contains("width 0.25"),
        "{err}"
    );
    // …one of the same size but another stem when a tensor's shape does not fit.
    let stem = ModelConfig {
        stem: simclr_model::Stem::Imagenet,
        ..tiny(1)
    };
    meta.insert("model".into(), serde_json::to_string(&stem).unwrap());
    io::save(&other, &tensors, &meta).unwrap();
    let err = load(&other);
    assert!(matches!(err, EvalError::Misfit { .. }), "{err}");
    let err = anyhow_like(&err);
    assert!(
        err.contains("shape") && err.contains("imagenet stem"),
        "{err}"
    );

    // No simclr-rs metadata at all.
    let bare = dir.path().join("bare.safetensors");
    io::save(&bare, &tensors, &BTreeMap::new()).unwrap();
    let err = load(&bare).to_string();
    assert!(err.contains("`format` is missing"), "{err}");

    // Metadata present, a field missing.
    let mut partial = f.metadata.clone();
    partial.remove("normalize_std");
    let p = dir.path().join("partial.safetensors");
    io::save(&p, &tensors, &partial).unwrap();
    assert!(load(&p).to_string().contains("`normalize_std` is missing"));

    // A tensor missing.
    let fewer: Vec<(String, Tensor)> = tensors
        .iter()
        .filter(|(n, _)| n != "conv1.weight")
        .cloned()
        .collect();
    let p = dir.path().join("fewer.safetensors");
    io::save(&p, &fewer, &f.metadata).unwrap();
    let err = anyhow_like(&load(&p));
    assert!(err.contains("missing, first `conv1.weight`"), "{err}");
}

/// An error and its sources as one line.
fn anyhow_like(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}
