//! The IDX reader (raw and gzipped): the input as an images file on its own, and as the
//! labels file beside a valid images file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simclr_data::{Format, OpenOptions, open};
use simclr_fuzz::{idx_images, stage};

fuzz_target!(|data: &[u8]| {
    let opts = OpenOptions {
        format: Some(Format::Idx),
        ..OpenOptions::default()
    };
    let dir = stage("idx-images", "train-images-idx3-ubyte", data, &[]);
    let _ = open(&dir.join("train-images-idx3-ubyte"), &opts);
    let images = idx_images(3);
    let dir = stage(
        "idx-labels",
        "train-labels-idx1-ubyte",
        data,
        &[("train-images-idx3-ubyte", &images)],
    );
    if let Ok(ds) = open(&dir, &opts) {
        assert_eq!(simclr_data::Dataset::len(&ds), 3);
    }
});
