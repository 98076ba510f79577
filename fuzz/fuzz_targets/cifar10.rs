//! The CIFAR-10 binary-batch reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simclr_data::{Format, OpenOptions, open};
use simclr_fuzz::stage;

fuzz_target!(|data: &[u8]| {
    let dir = stage("cifar", "data_batch_1.bin", data, &[]);
    let opts = OpenOptions {
        format: Some(Format::Cifar10),
        ..OpenOptions::default()
    };
    if let Ok(ds) = open(&dir, &opts) {
        // Only whole records of 3073 bytes make a dataset.
        assert_eq!(simclr_data::Dataset::len(&ds) * 3073, data.len());
    }
});
