//! Image decoding in the folder reader (PNG, JPEG, BMP, WebP, told apart by content): the
//! input as one image of a folder, read strictly and with `--skip-bad-images`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simclr_data::{Dataset, Format, OpenOptions, open};
use simclr_fuzz::stage;

fuzz_target!(|data: &[u8]| {
    let dir = stage("folder", "a.png", data, &[]);
    for skip_bad_images in [false, true] {
        let opts = OpenOptions {
            format: Some(Format::Folder),
            skip_bad_images,
            ..OpenOptions::default()
        };
        if let Ok(ds) = open(&dir, &opts) {
            let s = ds.get(0);
            assert!(s.image.width() > 0 && s.image.height() > 0);
        }
    }
});
