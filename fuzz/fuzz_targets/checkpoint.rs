//! `pretrain --resume`: a training checkpoint's metadata (format, run config, counters, data
//! fingerprint, arithmetic) and tensors (model and optimiser state), resumed against the
//! bundled sample.
#![no_main]

use std::sync::{Arc, OnceLock};

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use simclr_data::{Dataset, Split};
use simclr_fuzz::{scratch, stage};

/// The bundled sample, which the seed checkpoints were trained on (so that they resume).
fn dataset() -> Arc<dyn Dataset> {
    static DS: OnceLock<Arc<dyn Dataset>> = OnceLock::new();
    DS.get_or_init(|| {
        Arc::new(simclr_data::sample::fashion_mnist(Split::Train).expect("bundled sample"))
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let dir = stage("checkpoint", "checkpoint.safetensors", data, &[]);
    let out = scratch().join("checkpoint-run");
    let _ = std::fs::remove_dir_all(&out);
    let _ = simclr_train::Trainer::resume(
        &dir.join("checkpoint.safetensors"),
        |_| {},
        dataset(),
        &out,
        &Device::Cpu,
    );
});
