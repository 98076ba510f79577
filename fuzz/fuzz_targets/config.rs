//! `pretrain --config FILE`: the TOML run configuration, its validation, and the model,
//! augmentation, loss and optimiser settings derived from a configuration that validates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simclr_train::TrainConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = toml::from_str::<TrainConfig>(text) else {
        return;
    };
    if config.validate().is_ok() {
        for channels in [1, 3] {
            let model = config.model(channels);
            assert!(model.validate().is_ok());
            let _ = model.min_encoder_parameters();
            let _ = config.augment(channels as u8);
        }
        let _ = (config.loss(), config.optim());
        // The configuration survives the round trip a checkpoint gives it.
        let json = serde_json::to_string(&config).expect("serialisable");
        let back: TrainConfig = serde_json::from_str(&json).expect("readable");
        assert!(back.validate().is_ok());
    }
});
