//! Drives the real `simclr` binary in temporary directories (ripgrep-style integration tests).

use std::path::Path;
use std::process::{Command, Output};

fn simclr(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_simclr"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("the simclr binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_lists_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = simclr(&["--help"], dir.path());
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("augment-preview"), "{text}");
}

#[test]
fn augment_preview_on_the_bundled_sample_writes_the_grid() {
    let dir = tempfile::tempdir().unwrap();
    let out = simclr(
        &[
            "augment-preview",
            "--out",
            "grid.png",
            "--count",
            "3",
            "--zoom",
            "2",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let img = image::open(dir.path().join("grid.png")).unwrap();
    // Three 28x28 cells zoomed 2x across, three rows, 4-px gaps.
    assert_eq!(img.width(), 3 * 56 + 4 * 4);
    assert_eq!(img.height(), 3 * (56 + 4) + 4);
}

#[test]
fn augment_preview_reads_an_image_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("imgs");
    std::fs::create_dir(&data).unwrap();
    for i in 0..3u8 {
        image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([x as u8 * 6, y as u8 * 8, i * 80])
        })
        .save(data.join(format!("{i}.png")))
        .unwrap();
    }
    let out = simclr(
        &[
            "augment-preview",
            "--data",
            "imgs",
            "--image-size",
            "24",
            "--zoom",
            "1",
            "--out",
            "v.png",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let img = image::open(dir.path().join("v.png")).unwrap();
    assert_eq!((img.width(), img.height()), (3 * 24 + 16, 3 * 28 + 4));
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = simclr(
        &["augment-preview", "--data", "missing", "--out", "x.png"],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.starts_with("error: "), "{err}");
    assert!(
        err.contains("missing") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!dir.path().join("x.png").exists());

    // A corrupt image in a folder names the file, and --skip-bad-images gets past it.
    let data = dir.path().join("imgs");
    std::fs::create_dir(&data).unwrap();
    image::GrayImage::from_pixel(8, 8, image::Luma([9]))
        .save(data.join("ok.png"))
        .unwrap();
    std::fs::write(data.join("bad.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let out = simclr(&["augment-preview", "--data", "imgs"], dir.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bad.png"), "{}", stderr(&out));
    let out = simclr(
        &["augment-preview", "--data", "imgs", "--skip-bad-images"],
        dir.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: skipped"),
        "{}",
        stderr(&out)
    );

    let out = simclr(&["augment-preview", "--count", "0"], dir.path());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--count"), "{}", stderr(&out));
}
