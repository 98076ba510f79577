//! Readers on small files written by the tests, and every bad-input case.

use std::io::Write;
use std::path::Path;

use simclr_data::{DataError, Dataset, Format, OpenOptions, Split, detect, open, sample};

fn idx_images(count: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [count, rows, cols] {
        b.extend(d.to_be_bytes());
    }
    b.extend((0..count * rows * cols).map(|i| (i % 251) as u8));
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend((labels.len() as u32).to_be_bytes());
    b.extend(labels);
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

fn opts(split: Split) -> OpenOptions {
    OpenOptions {
        split,
        ..OpenOptions::default()
    }
}

fn err_text(e: DataError) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(inner) = src {
        s.push_str(&format!(": {inner}"));
        src = inner.source();
    }
    s
}

#[test]
fn idx_folder_raw_and_gzipped_both_splits() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("train-images-idx3-ubyte.gz"),
        &gz(&idx_images(3, 2, 4)),
    );
    write(
        &dir.path().join("train-labels-idx1-ubyte.gz"),
        &gz(&idx_labels(&[7, 0, 9])),
    );
    write(
        &dir.path().join("t10k-images-idx3-ubyte"),
        &idx_images(2, 2, 4),
    );
    write(
        &dir.path().join("t10k-labels-idx1-ubyte"),
        &idx_labels(&[1, 2]),
    );
    assert_eq!(detect(dir.path()).unwrap(), Format::Idx);

    let train = open(dir.path(), &opts(Split::Train)).unwrap();
    assert_eq!(train.len(), 3);
    assert_eq!(train.channels(), 1);
    assert_eq!(train.num_classes(), Some(10));
    let s = train.get(1);
    assert_eq!((s.image.width(), s.image.height()), (4, 2));
    assert_eq!(s.label, Some(0));
    // Second image starts at byte 8 of the data: values 8..16, row-major.
    assert_eq!(s.image.data(), &[8, 9, 10, 11, 12, 13, 14, 15]);

    let test = open(dir.path(), &opts(Split::Test)).unwrap();
    assert_eq!(test.len(), 2);
    assert_eq!(test.get(1).label, Some(2));
}

#[test]
fn idx_single_file_finds_labels_beside_it_or_is_unlabelled() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("train-images-idx3-ubyte");
    write(&images, &idx_images(2, 3, 3));
    let ds = open(&images, &opts(Split::Train)).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.get(0).label, None);
    assert_eq!(ds.num_classes(), None);
    write(
        &dir.path().join("train-labels-idx1-ubyte"),
        &idx_labels(&[3, 4]),
    );
    assert_eq!(
        open(&images, &opts(Split::Train)).unwrap().get(1).label,
        Some(4)
    );
}

#[test]
fn idx_truncated_file_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = idx_images(3, 2, 2);
    bytes.truncate(bytes.len() - 1);
    write(&dir.path().join("train-images-idx3-ubyte"), &bytes);
    let msg = err_text(open(dir.path(), &opts(Split::Train)).unwrap_err());
    assert!(msg.contains("train-images-idx3-ubyte"), "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    assert!(msg.contains("11 bytes follow"), "{msg}");
}

#[test]
fn idx_truncated_gzip_stream_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = gz(&idx_images(50, 8, 8));
    bytes.truncate(bytes.len() / 2);
    write(&dir.path().join("train-images-idx3-ubyte.gz"), &bytes);
    let err = open(dir.path(), &opts(Split::Train)).unwrap_err();
    assert!(matches!(err, DataError::Gzip { .. }), "{err:?}");
    assert!(err.to_string().contains("train-images-idx3-ubyte.gz"));
}

#[test]
fn idx_wrong_magic_reports_found_and_expected() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("train-images-idx3-ubyte"),
        &idx_images(1, 2, 2),
    );
    // A labels file where the images file should be pairs magic 0x801 with 0x803.
    write(
        &dir.path().join("train-labels-idx1-ubyte"),
        &idx_images(1, 2, 2),
    );
    let msg = err_text(open(dir.path(), &opts(Split::Train)).unwrap_err());
    assert!(msg.contains("0x00000803"), "{msg}");
    assert!(msg.contains("expected 0x00000801"), "{msg}");
}

#[test]
fn idx_count_mismatch_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("train-images-idx3-ubyte"),
        &idx_images(3, 2, 2),
    );
    write(
        &dir.path().join("train-labels-idx1-ubyte"),
        &idx_labels(&[1, 2]),
    );
    let err = open(dir.path(), &opts(Split::Train)).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::CountMismatch {
                images: 3,
                labels: 2,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn idx_zero_sized_images_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("train-images-idx3-ubyte"),
        &idx_images(4, 0, 28),
    );
    let msg = err_text(open(dir.path(), &opts(Split::Train)).unwrap_err());
    assert!(msg.contains("zero size"), "{msg}");
}

#[test]
fn missing_split_and_missing_path_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("train-images-idx3-ubyte"),
        &idx_images(1, 2, 2),
    );
    let err = open(dir.path(), &opts(Split::Test)).unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err:?}");
    let err = open(&dir.path().join("nope"), &opts(Split::Train)).unwrap_err();
    assert!(matches!(err, DataError::NotFound { .. }), "{err:?}");
}

#[test]
fn unknown_layout_says_what_was_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("notes.txt"), b"hello");
    let msg = open(dir.path(), &opts(Split::Train))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("--format"), "{msg}");
    assert!(msg.contains("CIFAR-10"), "{msg}");
}

fn cifar_record(label: u8, seed: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072u32).map(|i| (i as u8).wrapping_add(seed)));
    r
}

#[test]
fn cifar_batches_decode_planar_to_interleaved() {
    let dir = tempfile::tempdir().unwrap();
    let mut b1 = cifar_record(3, 0);
    b1.extend(cifar_record(9, 1));
    write(&dir.path().join("data_batch_1.bin"), &b1);
    write(&dir.path().join("data_batch_2.bin"), &cifar_record(0, 2));
    write(&dir.path().join("test_batch.bin"), &cifar_record(5, 3));
    write(
        &dir.path().join("batches.meta.txt"),
        b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n",
    );
    assert_eq!(detect(dir.path()).unwrap(), Format::Cifar10);
    let train = open(dir.path(), &opts(Split::Train)).unwrap();
    assert_eq!(train.len(), 3);
    assert_eq!(train.channels(), 3);
    assert_eq!(train.class_names().unwrap()[3], "cat");
    let s = train.get(1);
    assert_eq!(s.label, Some(9));
    // Pixel (x=1, y=0) of record seed 1: red plane byte 1, green byte 1025, blue byte 2049.
    assert_eq!(
        s.image.pixel(1, 0),
        &[2, (1025u32 % 256) as u8 + 1, (2049u32 % 256) as u8 + 1]
    );
    let test = open(dir.path(), &opts(Split::Test)).unwrap();
    assert_eq!(test.len(), 1);
    assert_eq!(test.get(0).label, Some(5));
}

#[test]
fn cifar_partial_record_and_bad_label_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = cifar_record(1, 0);
    b.extend(&cifar_record(2, 0)[..100]);
    write(&dir.path().join("data_batch_1.bin"), &b);
    let msg = open(dir.path(), &opts(Split::Train))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("data_batch_1.bin") && msg.contains("3173"),
        "{msg}"
    );

    write(&dir.path().join("data_batch_1.bin"), &cifar_record(12, 0));
    let msg = open(dir.path(), &opts(Split::Train))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("label 12"), "{msg}");
}

fn save_png(path: &Path, w: u32, h: u32, rgb: bool) {
    if rgb {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]))
            .save(path)
            .unwrap();
    } else {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x + y) as u8]))
            .save(path)
            .unwrap();
    }
}

#[test]
fn labelled_folder_sorted_classes_and_uniform_channels() {
    let dir = tempfile::tempdir().unwrap();
    for class in ["dog", "cat"] {
        std::fs::create_dir(dir.path().join(class)).unwrap();
    }
    save_png(&dir.path().join("dog/b.png"), 4, 3, false);
    save_png(&dir.path().join("dog/a.PNG"), 4, 3, true);
    save_png(&dir.path().join("cat/z.png"), 5, 5, false);
    write(&dir.path().join("cat/readme.txt"), b"not an image");
    assert_eq!(detect(dir.path()).unwrap(), Format::Folder);
    let ds = open(dir.path(), &opts(Split::Train)).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(
        ds.class_names().unwrap(),
        &["cat".to_string(), "dog".to_string()]
    );
    assert_eq!(ds.num_classes(), Some(2));
    assert_eq!(
        ds.item_name(0),
        Some(Path::new("cat").join("z.png").to_str().unwrap())
    );
    assert_eq!(ds.get(0).label, Some(0));
    assert_eq!(ds.get(1).label, Some(1));
    // One colour image makes the whole set RGB; gray pixels are replicated.
    assert_eq!(ds.channels(), 3);
    assert_eq!(ds.get(0).image.pixel(2, 1), &[3, 3, 3]);
}

#[test]
fn flat_folder_is_unlabelled_and_split_folders_are_used() {
    let dir = tempfile::tempdir().unwrap();
    save_png(&dir.path().join("one.png"), 2, 2, false);
    save_png(&dir.path().join("two.png"), 2, 2, false);
    let ds = open(dir.path(), &opts(Split::Train)).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.get(0).label, None);
    assert_eq!(ds.channels(), 1);
    // Other extensions are read too (BMP decodes as RGB, so the set becomes RGB).
    save_png(&dir.path().join("three.bmp"), 2, 2, true);
    let ds = open(dir.path(), &opts(Split::Train)).unwrap();
    assert_eq!((ds.len(), ds.channels()), (3, 3));

    let root = tempfile::tempdir().unwrap();
    for split in ["train", "test"] {
        std::fs::create_dir_all(root.path().join(split).join("x")).unwrap();
    }
    save_png(&root.path().join("train/x/a.png"), 2, 2, false);
    save_png(&root.path().join("train/x/b.png"), 2, 2, false);
    save_png(&root.path().join("test/x/c.png"), 2, 2, false);
    assert_eq!(open(root.path(), &opts(Split::Train)).unwrap().len(), 2);
    assert_eq!(open(root.path(), &opts(Split::Test)).unwrap().len(), 1);
}

#[test]
fn corrupt_image_fails_or_is_skipped_on_request() {
    let dir = tempfile::tempdir().unwrap();
    save_png(&dir.path().join("good.png"), 3, 3, true);
    let mut png = std::fs::read(dir.path().join("good.png")).unwrap();
    png.truncate(png.len() / 2);
    write(&dir.path().join("broken.png"), &png);
    let err = open(dir.path(), &opts(Split::Train)).unwrap_err();
    assert!(matches!(err, DataError::BadImage { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("broken.png") && msg.contains("--skip-bad-images"),
        "{msg}"
    );

    let ds = open(
        dir.path(),
        &OpenOptions {
            skip_bad_images: true,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.skipped().len(), 1);
    assert!(ds.skipped()[0].path.ends_with("broken.png"));
}

#[test]
fn folder_mixing_classes_and_loose_images_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    save_png(&dir.path().join("a/x.png"), 2, 2, false);
    save_png(&dir.path().join("loose.png"), 2, 2, false);
    let msg = open(dir.path(), &opts(Split::Train))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("mixes"), "{msg}");
}

#[test]
fn format_override_and_parsing() {
    assert_eq!("cifar10".parse::<Format>().unwrap(), Format::Cifar10);
    assert_eq!("IDX".parse::<Format>().unwrap(), Format::Idx);
    assert!("tfrecord".parse::<Format>().is_err());
    assert_eq!("test".parse::<Split>().unwrap(), Split::Test);
    // Forcing a format onto the wrong files gives that format's error.
    let dir = tempfile::tempdir().unwrap();
    save_png(&dir.path().join("a.png"), 2, 2, false);
    let err = open(
        dir.path(),
        &OpenOptions {
            format: Some(Format::Cifar10),
            ..OpenOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, DataError::MissingFile { .. }), "{err:?}");
}

#[test]
fn bundled_sample_and_assets_folder_agree() {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/fashion-mnist-sample");
    for (split, n) in [(Split::Train, 4000), (Split::Test, 1000)] {
        let bundled = sample::fashion_mnist(split).unwrap();
        let on_disk = open(&assets, &opts(split)).unwrap();
        assert_eq!(bundled.len(), n);
        assert_eq!(on_disk.len(), n);
        assert_eq!(bundled.images(), on_disk.images());
        assert_eq!(bundled.labels(), on_disk.labels());
        let img = &bundled.images()[0];
        assert_eq!((img.width(), img.height(), img.channels()), (28, 28, 1));
        let mut seen = [false; 10];
        for &l in bundled.labels().unwrap() {
            seen[l as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "every class appears in {split}");
    }
}

#[test]
fn channel_stats_of_a_known_dataset() {
    use simclr_data::{Image, InMemoryDataset, channel_stats};
    // Pixels 0 and 255 in equal number: mean 0.5, std 0.5.
    let img = Image::new(2, 1, 1, vec![0u8, 255]).unwrap();
    let ds = InMemoryDataset::new(vec![img.clone(), img], None);
    let (mean, std) = channel_stats(&ds);
    assert!((mean[0] - 0.5).abs() < 1e-12 && (std[0] - 0.5).abs() < 1e-12);
}
