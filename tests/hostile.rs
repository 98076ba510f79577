//! Hostile and broken files, each as a user meets it through the `simclr` binary: the exact
//! message they see, and that nothing is written. The README's "What happens when…" table
//! lists the same cases.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn simclr(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simclr"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the simclr binary runs")
}

/// A seed file of the fuzz corpus (small real files of each format).
fn seed(target: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
        .join(name)
}

/// A safetensors file: the JSON header, then `data`.
fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend(data);
    b
}

/// One f32 tensor `w` of one value, with `metadata` (a JSON object's inside).
fn one_tensor(metadata: &str) -> Vec<u8> {
    let header = format!(
        r#"{{"__metadata__":{{{metadata}}},"w":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}}}"#
    );
    safetensors(&header, &[0; 4])
}

fn idx_header(count: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [count, rows, cols] {
        b.extend(d.to_be_bytes());
    }
    b
}

/// Runs `args` in a directory holding `files` and checks that it fails with `message` (the
/// whole error line after `error: `, or its start when `message` ends in `…`), writing nothing.
fn refused(files: &[(&str, Vec<u8>)], args: &[&str], message: &str) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let before = listing(dir.path());
    let out = simclr(args, dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded: {err}");
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("{args:?}: no error line in {err}"));
    match message.strip_suffix('…') {
        Some(start) => assert!(line.starts_with(start), "{args:?}:\n{line}\nwant\n{start}…"),
        None => assert_eq!(line, message, "{args:?}"),
    }
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(listing(dir.path()), before, "{args:?} wrote files");
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = walk(dir);
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

const EMBED: &[&str] = &["embed", "--weights", "w.safetensors", "--out", "e.npy"];

#[test]
fn weights_files_that_are_not_ours_or_lie_about_their_contents() {
    let cases: &[(&str, Vec<u8>, &str)] = &[
        (
            "a header length of 2^60",
            [&(1u64 << 60).to_le_bytes()[..], b"{}"].concat(),
            "`w.safetensors` is not a valid safetensors file; it may be truncated or corrupt: header too large",
        ),
        (
            "offsets past the end",
            safetensors(
                r#"{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#,
                &[0; 8],
            ),
            "`w.safetensors` is not a valid safetensors file; it may be truncated or corrupt: incomplete metadata, file not fully covered",
        ),
        (
            "a shape whose size overflows",
            safetensors(
                r#"{"w":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
            "`w.safetensors` is not a valid safetensors file; it may be truncated or corrupt: overflow computing buffer size from shape and/or element type",
        ),
        (
            "a dtype that does not match the byte count",
            safetensors(
                r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#,
                &[0; 8],
            ),
            "`w.safetensors` is not a valid safetensors file; it may be truncated or corrupt: invalid shape, data type, or offset for tensor",
        ),
        (
            "metadata of the wrong type (a number, not a string)",
            safetensors(
                r#"{"__metadata__":{"format":5},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
                &[0; 4],
            ),
            "`w.safetensors` is not a valid safetensors file; it may be truncated or corrupt: invalid JSON in header: invalid type: integer `5`, expected a string at line 1 column 27",
        ),
        (
            "metadata that is not our schema",
            one_tensor(r#""hello":"x""#),
            "w.safetensors: metadata field `format` is missing; is this a simclr-rs file?",
        ),
        (
            "another program's file",
            one_tensor(r#""format":"pt""#),
            "w.safetensors: unknown format `pt`; expected simclr-rs weights or a checkpoint",
        ),
        (
            "a model description of the wrong types",
            one_tensor(r#""format":"simclr-rs/encoder/1","model":"{\"arch\": 5}""#),
            "w.safetensors: metadata `model` is unreadable: …",
        ),
        (
            "a model far larger than the file (checked before allocating it)",
            one_tensor(
                r#""format":"simclr-rs/encoder/1","model":"{\"arch\":\"resnet50\",\"stem\":\"imagenet\",\"width\":10000.0,\"in_channels\":3,\"head_hidden\":null,\"proj_dim\":128}","normalize_mean":"[0.5,0.5,0.5]","normalize_std":"[0.5,0.5,0.5]","image_size":"32""#,
            ),
            "w.safetensors: its metadata names a model (resnet50, imagenet stem, width 10000, 3 channels) of at least 1131724800000000 parameters, but its tensors hold 1 values: the file is not weights of that model",
        ),
        (
            "a zero-byte file",
            Vec::new(),
            "`w.safetensors` is not a valid safetensors file; it may be truncated or corrupt: …",
        ),
    ];
    for (what, bytes, message) in cases {
        eprintln!("case: {what}");
        refused(&[("w.safetensors", bytes.clone())], EMBED, message);
    }
    // Our metadata, from real exported weights, over tensors of another model.
    let meta = simclr_model::io::SafetensorsFile::load_metadata(&seed(
        "weights",
        "resnet18-w64.safetensors",
    ))
    .unwrap()
    .metadata;
    let w = candle_core::Tensor::zeros(4096, candle_core::DType::F32, &candle_core::Device::Cpu)
        .unwrap();
    let bytes = simclr_model::io::to_bytes(Path::new("w"), &[("w".into(), w)], &meta).unwrap();
    refused(
        &[("w.safetensors", bytes)],
        EMBED,
        "`w.safetensors` does not fit the model its metadata names: 100 tensors of this model (resnet18, cifar stem, width 0.015625, 1 channel) are missing, first `bn1.bias`",
    );
    // --resume reads the header alone first: the same files are refused there too.
    refused(
        &[("run/last.safetensors", one_tensor(r#""format":"pt""#))],
        &["pretrain", "--resume", "run"],
        "`run/last.safetensors` is a `pt` file, not a training checkpoint; --resume takes the \
         `last.safetensors` (or a numbered checkpoint) of a run directory",
    );
    refused(
        &[("run/last.safetensors", one_tensor(r#""hello":"x""#))],
        &["pretrain", "--resume", "run"],
        "run/last.safetensors: metadata field `format` is missing; is this a simclr-rs file?",
    );
    refused(
        &[(
            "run/last.safetensors",
            [&(1u64 << 60).to_le_bytes()[..], b"{}"].concat(),
        )],
        &["pretrain", "--resume", "run"],
        "`run/last.safetensors` is not a valid safetensors file; it may be truncated or corrupt: header of 1152921504606846976 bytes in a file of 10",
    );
}

const PREVIEW: &[&str] = &["augment-preview", "--data", "d", "--out", "p.png"];

#[test]
fn dataset_files_whose_counts_disagree_with_their_size() {
    let mut long = idx_header(2, 2, 2);
    long.extend([0; 9]);
    let mut short = idx_header(3, 28, 28);
    short.extend([0; 784]);
    let mut huge = idx_header(1 << 31, 28, 28);
    huge.extend([0; 784]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "d/train-images-idx3-ubyte",
            short,
            "while opening the dataset at `d`: `d/train-images-idx3-ubyte` is truncated: its header declares 3 images of 28x28 (2352 bytes of data) but only 784 bytes follow; download it again",
        ),
        (
            "d/train-images-idx3-ubyte",
            long,
            "while opening the dataset at `d`: `d/train-images-idx3-ubyte` …",
        ),
        (
            "d/train-images-idx3-ubyte",
            huge,
            "while opening the dataset at `d`: `d/train-images-idx3-ubyte` is truncated: its header declares 2147483648 images of 28x28 (1683627180032 bytes of data) but only 784 bytes follow; download it again",
        ),
        (
            "d/data_batch_1.bin",
            [&[1u8][..], &[0; 3072], &[2]].concat(),
            "while opening the dataset at `d`: `d/data_batch_1.bin` is 3074 bytes long, not a whole number of 3073-byte CIFAR-10 records (1 label byte + 3072 pixel bytes): truncated, or not the binary version of CIFAR-10 (the Python pickle version is not supported)",
        ),
        (
            "d/data_batch_1.bin",
            vec![1; 3072],
            "while opening the dataset at `d`: `d/data_batch_1.bin` is 3072 bytes long, not a whole number of 3073-byte CIFAR-10 records …",
        ),
    ];
    for (name, bytes, message) in cases {
        eprintln!("case: {name}");
        refused(&[(name, bytes)], PREVIEW, message);
    }
}

#[test]
fn broken_and_unusual_images_in_a_folder() {
    let png = std::fs::read(seed("image_folder", "sample.rgb.png")).unwrap();
    let at_open = "while opening the dataset at `d`: cannot decode image `d/a/bad.png`: …";
    // Folders are read lazily: opening checks each file's header, so a file whose header is
    // intact but whose pixels are cut off is found when its image is read.
    let at_read = "while reading the images of `d`: cannot decode image `d/a/bad.png`: …";
    // The decoded cache decodes every file before training: every case is refused at open,
    // with no run directory and no cache folder left behind.
    let cached = &[
        "pretrain",
        "--data",
        "d",
        "--cache",
        "c",
        "--out",
        "r",
        "--image-size",
        "8",
        "--width",
        "0.125",
        "--batch-size",
        "2",
        "--max-steps",
        "1",
    ];
    for (what, bytes, preview) in [
        ("zero bytes", Vec::new(), at_open),
        (
            "a truncated PNG",
            png[..300.min(png.len() - 1)].to_vec(),
            at_read,
        ),
        (
            "not an image at all",
            b"\x89PNG\r\n\x1a\nnot really".to_vec(),
            at_open,
        ),
    ] {
        eprintln!("case: {what}");
        let files = [("d/a/ok.png", png.clone()), ("d/a/bad.png", bytes)];
        refused(&files, PREVIEW, preview);
        refused(&files, cached, at_open);
    }
    // CMYK JPEG, 16-bit grey, palette and RGBA PNGs are decoded (to 8-bit grey or RGB).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("d/a");
    std::fs::create_dir_all(&d).unwrap();
    for name in [
        "sample.cmyk.jpg",
        "sample-16bit.png",
        "sample.palette.png",
        "sample.rgba.png",
    ] {
        std::fs::copy(seed("image_folder", name), d.join(name)).unwrap();
    }
    // A symlink loop and a link to the folder itself are not images: they are passed over.
    std::os::unix::fs::symlink("b.png", d.join("a.png")).unwrap();
    std::os::unix::fs::symlink("a.png", d.join("b.png")).unwrap();
    std::os::unix::fs::symlink("..", d.join("up")).unwrap();
    let out = simclr(PREVIEW, dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("4 images from `d`"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
