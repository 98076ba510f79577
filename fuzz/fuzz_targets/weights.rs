//! Exported weights and checkpoints as `linear-probe`, `knn`, `embed` and `inspect` load
//! them: the safetensors container, our metadata (format, model, normalisation, image size)
//! and the tensors' fit to the model it names; and the header-only read `pretrain --resume`
//! starts with.
#![no_main]

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use simclr_fuzz::stage;

fuzz_target!(|data: &[u8]| {
    let dir = stage("weights", "encoder.safetensors", data, &[]);
    let path = dir.join("encoder.safetensors");
    let _ = simclr_model::io::SafetensorsFile::load_metadata(&path);
    if let Ok(encoder) = simclr_eval::Encoder::from_safetensors(&path, &Device::Cpu) {
        assert!(encoder.feature_dim() > 0);
    }
});
