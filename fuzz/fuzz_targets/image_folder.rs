//! Image decoding in the folder reader (PNG, JPEG, BMP, WebP, told apart by content): the
//! input as one image of a folder, read strictly and with `--skip-bad-images`.
//!
//! A panic inside a third-party decoder is caught by `simclr_data::decode_guarded` and made
//! an error naming the file (fuzzing found one in zune-jpeg: the regression test is
//! `a_decoder_that_panics_is_an_error_naming_the_file`); libFuzzer's hook would abort on it
//! even though it is caught, so this target lets panics raised in the registry's crates
//! unwind to that guard and aborts on every other.
#![no_main]

use libfuzzer_sys::fuzz_target;
use simclr_data::{Dataset, Format, OpenOptions, open};
use simclr_fuzz::stage;

fuzz_target!(
    init: {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let third_party = info
                .location()
                .is_some_and(|l| l.file().contains("/.cargo/registry/"));
            if !third_party {
                abort(info);
            }
        }));
    },
    |data: &[u8]| {
        let dir = stage("folder", "a.png", data, &[]);
        for skip_bad_images in [false, true] {
            let opts = OpenOptions {
                format: Some(Format::Folder),
                skip_bad_images,
                ..OpenOptions::default()
            };
            if let Ok(ds) = open(&dir, &opts) {
                let s = ds.get(0).expect("decoded at open");
                assert!(s.image.width() > 0 && s.image.height() > 0);
            }
            // Lazily: the header check at open, the decode at the read, either may refuse.
            if let Ok(ds) = simclr_data::open_folder(&dir, opts.split, skip_bad_images, None)
                && let Ok(s) = ds.get(0)
            {
                assert!(s.image.width() > 0 && s.image.height() > 0);
                assert_eq!(s.image.channels(), ds.channels());
            }
        }
    }
);
