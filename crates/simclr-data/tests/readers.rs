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

trait WithFormat {
    fn with_format(self, format: Format) -> Self;
}

impl WithFormat for OpenOptions {
    fn with_format(self, format: Format) -> Self {
        OpenOptions {
            format: Some(format),
            ..self
        }
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
    let s = train.get(1).unwrap();
    assert_eq!((s.image.width(), s.image.height()), (4, 2));
    assert_eq!(s.label, Some(0));
    // Second image starts at byte 8 of the data: values 8..16, row-major.
    assert_eq!(s.image.data(), &[8, 9, 10, 11, 12, 13, 14, 15]);

    let test = open(dir.path(), &opts(Split::Test)).unwrap();
    assert_eq!(test.len(), 2);
    assert_eq!(test.label(1), Some(2));
}

#[test]
fn idx_single_file_finds_labels_beside_it_or_is_unlabelled() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("train-images-idx3-ubyte");
    write(&images, &idx_images(2, 3, 3));
    let ds = open(&images, &opts(Split::Train)).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.label(0), None);
    assert_eq!(ds.num_classes(), None);
    write(
        &dir.path().join("train-labels-idx1-ubyte"),
        &idx_labels(&[3, 4]),
    );
    assert_eq!(
        open(&images, &opts(Split::Train)).unwrap().label(1),
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
    let err = open(dir.path(), &opts(Split::Train)).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                found: 0x803,
                expected: 0x801,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("train-labels-idx1-ubyte"), "{msg}");
    assert!(msg.contains("0x00000803"), "{msg}");
    assert!(msg.contains("expected 0x00000801"), "{msg}");

    // And the other way round: a labels file given as the images file.
    let images = dir.path().join("train-images-idx3-ubyte");
    write(&images, &idx_labels(&[1, 2]));
    let err = open(&images, &opts(Split::Train).with_format(Format::Idx)).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::BadMagic {
                found: 0x801,
                expected: 0x803,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn idx_trailing_data_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = idx_images(2, 2, 2);
    bytes.push(0);
    write(&dir.path().join("train-images-idx3-ubyte"), &bytes);
    let err = open(dir.path(), &opts(Split::Train)).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TrailingData {
                expected: 8,
                found: 9,
                ..
            }
        ),
        "{err:?}"
    );
}

/// The process's peak resident memory in MB (Linux).
fn peak_rss_mb() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<i64>().ok()? / 1024)
}

/// A gzip bomb: a few hundred kilobytes that expand to 256 MB past a header declaring 8
/// bytes. Only the declared bytes are kept (the rest is counted as it streams by), and the
/// message gives the true size.
#[test]
fn idx_gzip_bomb_is_refused_without_inflating_it_into_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&idx_images(2, 2, 2)).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    write(&dir.path().join("train-images-idx3-ubyte.gz"), &bomb);
    let peak_before = peak_rss_mb();
    let err = open(dir.path(), &opts(Split::Train)).unwrap_err();
    // The other tests of this binary hold a few megabytes at most.
    if let (Some(before), Some(after)) = (peak_before, peak_rss_mb()) {
        assert!(
            after - before < 128,
            "peak RSS grew from {before} to {after} MB"
        );
    }
    assert!(
        matches!(
            err,
            DataError::TrailingData {
                expected: 8,
                found: 268_435_464,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err_text(err).contains("2 images of 2x2"));
}

#[test]
fn idx_other_spellings_and_gzip_by_content_not_name() {
    let dir = tempfile::tempdir().unwrap();
    // Kaggle spelling, images gzipped under a raw name, labels raw under a .gz name.
    let images = dir.path().join("t10k-images.idx3-ubyte");
    write(&images, &gz(&idx_images(2, 2, 2)));
    write(
        &dir.path().join("t10k-labels.idx1-ubyte.gz"),
        &idx_labels(&[4, 5]),
    );
    assert_eq!(detect(dir.path()).unwrap(), Format::Idx);
    assert_eq!(detect(&images).unwrap(), Format::Idx);
    let ds = open(dir.path(), &opts(Split::Test)).unwrap();
    assert_eq!(ds.label(1), Some(5));
    let ds = open(&images, &opts(Split::Train)).unwrap();
    assert_eq!(ds.label(0), Some(4), "labels found beside a single file");

    // EMNIST: the split is a word inside the name; more than ten classes.
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("emnist-letters-train-images-idx3-ubyte.gz"),
        &gz(&idx_images(2, 2, 2)),
    );
    write(
        &dir.path().join("emnist-letters-train-labels-idx1-ubyte.gz"),
        &gz(&idx_labels(&[1, 26])),
    );
    let ds = open(dir.path(), &opts(Split::Train)).unwrap();
    assert_eq!(ds.num_classes(), Some(27));
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
    let s = train.get(1).unwrap();
    assert_eq!(s.label, Some(9));
    // Pixel (x=1, y=0) of record seed 1: red plane byte 1, green byte 1025, blue byte 2049.
    assert_eq!(
        s.image.pixel(1, 0),
        &[2, (1025u32 % 256) as u8 + 1, (2049u32 % 256) as u8 + 1]
    );
    let test = open(dir.path(), &opts(Split::Test)).unwrap();
    assert_eq!(test.len(), 1);
    assert_eq!(test.label(0), Some(5));
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

    let err = open(dir.path(), &opts(Split::Train)).unwrap_err();
    assert!(
        matches!(err, DataError::RecordLength { len: 3173, .. }),
        "{err:?}"
    );

    let mut b = cifar_record(1, 0);
    b.extend(cifar_record(12, 0));
    write(&dir.path().join("data_batch_1.bin"), &b);
    let err = open(dir.path(), &opts(Split::Train)).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::LabelOutOfRange {
                index: 1,
                label: 12,
                num_classes: 10,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("data_batch_1.bin"), "{err}");
}

#[test]
fn cifar_tarball_folder_and_single_batch_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&dir).unwrap();
    write(&dir.join("data_batch_1.bin"), &cifar_record(2, 0));
    let mut test = cifar_record(3, 0);
    test.extend(cifar_record(4, 0));
    write(&dir.join("test_batch.bin"), &test);
    assert_eq!(detect(root.path()).unwrap(), Format::Cifar10);
    assert_eq!(open(root.path(), &opts(Split::Test)).unwrap().len(), 2);
    let file = dir.join("data_batch_1.bin");
    assert_eq!(detect(&file).unwrap(), Format::Cifar10);
    let one = open(&file, &opts(Split::Test)).unwrap();
    assert_eq!((one.len(), one.label(0)), (1, Some(2)));
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
        ds.item_path(0),
        Some(dir.path().join("cat").join("z.png").as_path())
    );
    assert_eq!(ds.label(0), Some(0));
    assert_eq!(ds.label(1), Some(1));
    // One colour image makes the whole set RGB; gray pixels are replicated.
    assert_eq!(ds.channels(), 3);
    assert_eq!(ds.get(0).unwrap().image.pixel(2, 1), &[3, 3, 3]);
}

#[test]
fn flat_folder_is_unlabelled_and_split_folders_are_used() {
    let dir = tempfile::tempdir().unwrap();
    save_png(&dir.path().join("one.png"), 2, 2, false);
    save_png(&dir.path().join("two.png"), 2, 2, false);
    let ds = open(dir.path(), &opts(Split::Train)).unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds.label(0), None);
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
        assert_eq!((on_disk.channels(), on_disk.num_classes()), (1, Some(10)));
        for img in on_disk.images() {
            assert_eq!((img.width(), img.height(), img.channels()), (28, 28, 1));
        }
        let mut seen = [false; 10];
        for &l in on_disk.labels().unwrap() {
            assert!(l < 10, "label {l} in {split}");
            seen[l as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "every class appears in {split}");
    }
}

#[test]
fn channel_stats_of_known_datasets() {
    use simclr_data::{Image, InMemoryDataset, channel_stats};
    // Pixels 0 and 255 in equal number: mean 0.5, std 0.5.
    let img = Image::new(2, 1, 1, vec![0u8, 255]).unwrap();
    let ds = InMemoryDataset::new(vec![img.clone(), img], None);
    let stats = channel_stats(&ds).unwrap();
    assert!((stats.mean[0] - 0.5).abs() < 1e-12 && (stats.std[0] - 0.5).abs() < 1e-12);

    // RGB, channels kept apart; compared with a naive two-pass f64 computation.
    let a = Image::new(2, 1, 3, vec![10u8, 0, 255, 30, 0, 255]).unwrap();
    let b = Image::new(1, 1, 3, vec![50u8, 0, 255]).unwrap();
    let stats = channel_stats(&InMemoryDataset::new(vec![a, b], None)).unwrap();
    let red = [10.0f64, 30.0, 50.0].map(|v| v / 255.0);
    let m = red.iter().sum::<f64>() / 3.0;
    let sd = (red.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 3.0).sqrt();
    assert!((stats.mean[0] - m).abs() < 1e-12 && (stats.std[0] - sd).abs() < 1e-12);
    assert_eq!((stats.mean[1], stats.std[1]), (0.0, 0.0));
    assert_eq!((stats.mean[2], stats.std[2]), (1.0, 0.0));

    // The bundled sample is close to full Fashion-MNIST's well-known 0.2860 / 0.3530.
    let stats = channel_stats(&sample::fashion_mnist(Split::Train).unwrap()).unwrap();
    assert!((stats.mean[0] - 0.286).abs() < 0.01, "{stats:?}");
    assert!((stats.std[0] - 0.353).abs() < 0.01, "{stats:?}");
}

#[test]
fn split_folders_number_classes_alike() {
    let root = tempfile::tempdir().unwrap();
    // test/ lacks class "b" and has "c" empty; train/ lacks "c" entirely.
    for d in ["train/a", "train/b", "test/a", "test/c"] {
        std::fs::create_dir_all(root.path().join(d)).unwrap();
    }
    save_png(&root.path().join("train/a/1.png"), 2, 2, false);
    save_png(&root.path().join("train/b/1.png"), 2, 2, false);
    save_png(&root.path().join("test/a/1.png"), 2, 2, false);
    let names = ["a", "b", "c"].map(String::from);
    let train = open(root.path(), &opts(Split::Train)).unwrap();
    let test = open(root.path(), &opts(Split::Test)).unwrap();
    for ds in [&train, &test] {
        assert_eq!(ds.class_names().unwrap(), &names);
        assert_eq!(ds.num_classes(), Some(3));
    }
    assert_eq!(train.labels().unwrap(), &[0, 1]);
    assert_eq!(test.labels().unwrap(), &[0]);
}

#[test]
fn folder_without_images_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("cat")).unwrap();
    write(&dir.path().join("cat/notes.txt"), b"no images here");
    let err = open(dir.path(), &opts(Split::Train)).unwrap_err();
    assert!(matches!(err, DataError::UnknownFormat { .. }), "{err:?}");
    let err = open(dir.path(), &opts(Split::Train).with_format(Format::Folder)).unwrap_err();
    assert!(matches!(err, DataError::NoImages { .. }), "{err:?}");
    assert!(err.to_string().contains("png, jpg"), "{err}");

    // A file where a folder is wanted.
    let file = dir.path().join("cat/notes.txt");
    let err = open(&file, &opts(Split::Train).with_format(Format::Folder)).unwrap_err();
    assert!(matches!(err, DataError::Malformed { .. }), "{err:?}");
}

/// A PNG whose header declares a 0×1 image (valid chunk CRCs, so only the size is wrong).
fn zero_width_png() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend(kind);
        out.extend(data);
        out.extend(crc.sum().to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(0u32.to_be_bytes()); // width 0
    ihdr.extend(1u32.to_be_bytes()); // height 1
    ihdr.extend([8, 0, 0, 0, 0]); // 8-bit grayscale, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn zero_sized_image_file_is_a_bad_image() {
    let dir = tempfile::tempdir().unwrap();
    save_png(&dir.path().join("fine.png"), 2, 2, false);
    write(&dir.path().join("empty.png"), &zero_width_png());
    let err = open(dir.path(), &opts(Split::Train)).unwrap_err();
    assert!(
        matches!(&err, DataError::BadImage { path, .. } if path.ends_with("empty.png")),
        "{err:?}"
    );
}

#[test]
fn hidden_files_are_ignored_and_all_bad_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    save_png(&dir.path().join("a.png"), 2, 2, false);
    write(&dir.path().join("._a.png"), b"macOS resource fork");
    write(&dir.path().join(".DS_Store"), b"junk");
    assert_eq!(open(dir.path(), &opts(Split::Train)).unwrap().len(), 1);

    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("x.png"), b"not a png");
    write(&dir.path().join("y.jpg"), b"not a jpeg");
    let skip = OpenOptions {
        skip_bad_images: true,
        ..OpenOptions::default()
    };
    let msg = open(dir.path(), &skip).unwrap_err().to_string();
    assert!(msg.contains("none of its 2 image files"), "{msg}");
}

#[test]
fn separate_splits_are_told_apart_from_one_set_read_for_both() {
    use simclr_data::has_separate_splits;
    let dir = tempfile::tempdir().unwrap();
    // IDX folder: train and t10k files.
    let idx = dir.path().join("idx");
    std::fs::create_dir(&idx).unwrap();
    write(&idx.join("train-images-idx3-ubyte"), &idx_images(2, 2, 2));
    write(&idx.join("t10k-images-idx3-ubyte"), &idx_images(1, 2, 2));
    assert!(has_separate_splits(&idx, None).unwrap());
    // One file is one set, whatever the split.
    assert!(!has_separate_splits(&idx.join("train-images-idx3-ubyte"), None).unwrap());
    // Image folders: only with both train/ and test/.
    let folder = dir.path().join("imgs");
    std::fs::create_dir_all(folder.join("train/a")).unwrap();
    save_png(&folder.join("train/a/0.png"), 4, 4, false);
    assert!(!has_separate_splits(&folder, Some(Format::Folder)).unwrap());
    std::fs::create_dir_all(folder.join("test/a")).unwrap();
    save_png(&folder.join("test/a/0.png"), 4, 4, false);
    assert!(has_separate_splits(&folder, None).unwrap());
    assert!(matches!(
        has_separate_splits(&dir.path().join("missing"), None),
        Err(DataError::NotFound { .. })
    ));
}

/// Found by fuzzing: a 713-byte progressive JPEG on which zune-jpeg (the image crate's JPEG
/// decoder) panics with an index out of bounds. The panic is caught and the file named, like
/// any undecodable image, and `--skip-bad-images` passes over it.
#[test]
fn a_decoder_that_panics_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let class = dir.path().join("a");
    std::fs::create_dir(&class).unwrap();
    let crash = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/zune-jpeg-progressive-crash.jpg");
    std::fs::copy(&crash, class.join("bad.jpg")).unwrap();
    save_png(&class.join("ok.png"), 8, 8, false);
    let opts = OpenOptions {
        format: Some(Format::Folder),
        ..OpenOptions::default()
    };
    let err = err_text(open(dir.path(), &opts).unwrap_err());
    assert!(
        err.contains("bad.jpg") && err.contains("the image decoder crashed on this file"),
        "{err}"
    );
    let ds = open(
        dir.path(),
        &OpenOptions {
            skip_bad_images: true,
            ..opts
        },
    )
    .unwrap();
    assert_eq!((ds.len(), ds.skipped().len()), (1, 1));
}
