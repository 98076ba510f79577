//! Image folders read lazily ([`FolderDataset`]) and through the decoded cache: the same items
//! as the eager reader, errors that name the file, and a cache that is reused, rebuilt when
//! the folder changes, and never trusted half-written.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use simclr_data::{
    CacheOptions, DataError, Dataset, FolderDataset, Image, OpenOptions, Split, open, open_folder,
};

fn save_png(path: &Path, w: u32, h: u32, rgb: bool, shift: u8) {
    if rgb {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([x as u8 * 9 + shift, y as u8 * 7, 200 - shift])
        })
        .save(path)
        .unwrap();
    } else {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 5 + y * 3) as u8 + shift]))
            .save(path)
            .unwrap();
    }
}

/// `root/{cat,dog}/*.png` with a colour image among grayscale ones of several sizes.
fn labelled_folder(root: &Path) {
    for class in ["cat", "dog"] {
        std::fs::create_dir(root.join(class)).unwrap();
    }
    save_png(&root.join("cat/a.png"), 6, 4, false, 0);
    save_png(&root.join("cat/b.png"), 5, 5, false, 1);
    save_png(&root.join("dog/c.png"), 7, 3, true, 2);
    save_png(&root.join("dog/d.png"), 4, 4, false, 3);
    save_png(&root.join("dog/e.png"), 8, 6, false, 4);
}

fn lazy(root: &Path, skip: bool) -> Result<FolderDataset, DataError> {
    open_folder(root, Split::Train, skip, None)
}

/// Nearest-neighbour resize, a stand-in for the trainer's: any resize to the cache's size.
fn nearest(img: &Image, w: u32, h: u32) -> Image {
    let c = usize::from(img.channels());
    let mut out = Vec::with_capacity(w as usize * h as usize * c);
    for y in 0..h {
        for x in 0..w {
            let (sx, sy) = (x * img.width() / w, y * img.height() / h);
            out.extend_from_slice(img.pixel(sx, sy));
        }
    }
    Image::new(w, h, img.channels(), out).unwrap()
}

/// Opens `root` through a cache in `dir` at 4×3, counting the resizes (one per decoded image)
/// and recording the last progress report.
fn cached(
    root: &Path,
    dir: &Path,
    skip: bool,
    resizes: &AtomicUsize,
) -> (Result<FolderDataset, DataError>, Option<(usize, usize)>) {
    let resize = |img: &Image| {
        resizes.fetch_add(1, Ordering::SeqCst);
        nearest(img, 4, 3)
    };
    let mut last = None;
    let mut progress = |done, total| last = Some((done, total));
    let ds = open_folder(
        root,
        Split::Train,
        skip,
        Some(CacheOptions {
            dir,
            height: 3,
            width: 4,
            resize: &resize,
            resize_name: "nearest",
            progress: &mut progress,
        }),
    );
    (ds, last)
}

fn cache_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_lazy_folder_gives_the_items_of_the_eager_reader() {
    let dir = tempfile::tempdir().unwrap();
    labelled_folder(dir.path());
    let eager = open(dir.path(), &OpenOptions::default()).unwrap();
    let lazy = lazy(dir.path(), false).unwrap();
    assert_eq!(lazy.len(), 5);
    assert_eq!(lazy.channels(), 3, "one colour image makes the set RGB");
    assert_eq!(lazy.channels(), eager.channels());
    assert_eq!(lazy.class_names(), eager.class_names());
    assert_eq!(lazy.num_classes(), Some(2));
    assert!(!lazy.is_cached());
    for i in 0..eager.len() {
        assert_eq!(lazy.get(i).unwrap(), eager.get(i).unwrap(), "item {i}");
        assert_eq!(lazy.label(i), eager.label(i));
        assert_eq!(lazy.item_path(i), eager.item_path(i));
    }
}

#[test]
fn a_lazy_folder_checks_headers_at_open_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    labelled_folder(dir.path());
    std::fs::write(dir.path().join("dog/notes.png"), b"plain text, not a PNG").unwrap();
    let err = lazy(dir.path(), false).unwrap_err();
    assert!(
        matches!(&err, DataError::BadImage { path, .. } if path.ends_with("dog/notes.png")),
        "{err:?}"
    );
    let ds = lazy(dir.path(), true).unwrap();
    assert_eq!(ds.len(), 5);
    assert_eq!(ds.skipped().len(), 1);
    assert!(ds.skipped()[0].path.ends_with("dog/notes.png"));
}

#[test]
fn a_corrupt_body_is_an_error_at_the_read_or_is_replaced_with_skip() {
    let dir = tempfile::tempdir().unwrap();
    labelled_folder(dir.path());
    // The header survives (the open succeeds), the pixels do not.
    let path = dir.path().join("cat/b.png");
    let png = std::fs::read(&path).unwrap();
    std::fs::write(&path, &png[..png.len() / 2]).unwrap();
    let ds = lazy(dir.path(), false).unwrap();
    assert_eq!(ds.len(), 5);
    let err = ds.get(1).unwrap_err();
    assert!(
        matches!(&err, DataError::BadImage { path, .. } if path.ends_with("cat/b.png")),
        "{err:?}"
    );
    assert!(err.to_string().contains("--skip-bad-images"), "{err}");
    assert!(
        ds.get(0).is_ok() && ds.get(2).is_ok(),
        "other items still read"
    );

    // With skip, the next decodable item takes its place, label and all.
    let ds = lazy(dir.path(), true).unwrap();
    assert_eq!(ds.get(1).unwrap(), ds.get(2).unwrap());
    assert_eq!(ds.get(1).unwrap().label, Some(1));
}

#[test]
fn the_cache_holds_the_resized_images_and_is_reused_while_the_folder_is_unchanged() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    labelled_folder(data.path());
    let eager = open(data.path(), &OpenOptions::default()).unwrap();

    let resizes = AtomicUsize::new(0);
    let (ds, progress) = cached(data.path(), cache.path(), false, &resizes);
    let ds = ds.unwrap();
    assert!(ds.is_cached());
    assert_eq!(resizes.load(Ordering::SeqCst), 5, "each image decoded once");
    assert_eq!(progress, Some((5, 5)));
    assert_eq!(ds.len(), 5);
    assert_eq!(ds.channels(), 3);
    for i in 0..ds.len() {
        let want = nearest(&eager.get(i).unwrap().image, 4, 3);
        assert_eq!(ds.get(i).unwrap().image, want, "item {i}");
        assert_eq!(ds.label(i), eager.label(i));
        assert_eq!(ds.item_path(i), eager.item_path(i));
    }
    let files = cache_files(cache.path());
    assert_eq!(files.len(), 1, "one cache, no temporary left: {files:?}");

    // Unchanged folder: nothing decoded, nothing built.
    let (again, progress) = cached(data.path(), cache.path(), false, &resizes);
    let again = again.unwrap();
    assert_eq!(resizes.load(Ordering::SeqCst), 5);
    assert_eq!(progress, None);
    assert_eq!(again.get(3).unwrap(), ds.get(3).unwrap());
    assert_eq!(cache_files(cache.path()), files);

    // A rewritten file (new size on disk) makes another cache with the new pixels.
    save_png(&data.path().join("dog/d.png"), 9, 9, false, 50);
    let (changed, _) = cached(data.path(), cache.path(), false, &resizes);
    let changed = changed.unwrap();
    assert_eq!(resizes.load(Ordering::SeqCst), 10);
    let eager = open(data.path(), &OpenOptions::default()).unwrap();
    assert_eq!(
        changed.get(3).unwrap().image,
        nearest(&eager.get(3).unwrap().image, 4, 3)
    );
    assert_eq!(cache_files(cache.path()).len(), 2);
}

#[test]
fn a_truncated_cache_is_rebuilt_not_trusted() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    labelled_folder(data.path());
    let resizes = AtomicUsize::new(0);
    let first = cached(data.path(), cache.path(), false, &resizes)
        .0
        .unwrap();
    let want: Vec<_> = (0..5).map(|i| first.get(i).unwrap()).collect();
    drop(first);
    let file = cache.path().join(&cache_files(cache.path())[0]);
    let bytes = std::fs::read(&file).unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 2, 10, 0] {
        std::fs::write(&file, &bytes[..cut]).unwrap();
        let before = resizes.load(Ordering::SeqCst);
        let ds = cached(data.path(), cache.path(), false, &resizes)
            .0
            .unwrap();
        assert_eq!(resizes.load(Ordering::SeqCst), before + 5, "cut at {cut}");
        let got: Vec<_> = (0..5).map(|i| ds.get(i).unwrap()).collect();
        assert_eq!(got, want, "cut at {cut}");
        assert_eq!(std::fs::read(&file).unwrap(), bytes, "cut at {cut}");
    }
}

#[test]
fn the_cache_records_skipped_files_and_a_strict_open_still_refuses_them() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    labelled_folder(data.path());
    let path = data.path().join("cat/b.png");
    let png = std::fs::read(&path).unwrap();
    std::fs::write(&path, &png[..png.len() / 2]).unwrap();
    let resizes = AtomicUsize::new(0);

    let (strict, _) = cached(data.path(), cache.path(), false, &resizes);
    let err = strict.unwrap_err();
    assert!(
        matches!(&err, DataError::BadImage { path, .. } if path.ends_with("cat/b.png")),
        "{err:?}"
    );
    assert!(
        cache_files(cache.path()).is_empty(),
        "no cache, no temporary"
    );

    let ds = cached(data.path(), cache.path(), true, &resizes).0.unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(ds.skipped().len(), 1);
    assert!(ds.skipped()[0].path.ends_with("cat/b.png"));
    assert_eq!(ds.label(0), Some(0));
    assert_eq!(ds.label(1), Some(1), "b.png is gone, c.png is item 1");

    // Reopened from the cache: the same skip, and a strict open names the file again.
    let again = cached(data.path(), cache.path(), true, &resizes).0.unwrap();
    assert_eq!(again.skipped(), ds.skipped());
    assert_eq!(again.get(1).unwrap(), ds.get(1).unwrap());
    let err = cached(data.path(), cache.path(), false, &resizes)
        .0
        .unwrap_err();
    assert!(matches!(&err, DataError::BadImage { .. }), "{err:?}");
}

#[test]
fn an_unwritable_cache_folder_is_an_error_naming_it() {
    let data = tempfile::tempdir().unwrap();
    labelled_folder(data.path());
    let file = data.path().join("cat/a.png");
    // A file where the cache folder should be.
    let resizes = AtomicUsize::new(0);
    let err = cached(data.path(), &file, false, &resizes).0.unwrap_err();
    assert!(err.to_string().contains("a.png"), "{err}");
}
