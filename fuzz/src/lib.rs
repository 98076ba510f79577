//! What the fuzz targets share: a scratch directory per process in which each input is
//! written under the name the reader expects, so that the targets run the same path-based
//! entry points (format detection included) a user's files go through.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// This process's scratch directory (in `/dev/shm` when there is one: inputs are written
/// there for every execution), created once and emptied of nothing: each target overwrites
/// the same few files.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("simclr-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

/// Writes `data` to `name` under a fresh subdirectory `sub` of the scratch directory (the
/// subdirectory holds only that file and `extra`) and returns the subdirectory.
pub fn stage(sub: &str, name: &str, data: &[u8], extra: &[(&str, &[u8])]) -> PathBuf {
    let dir = scratch().join(sub);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("stage directory");
    std::fs::write(dir.join(name), data).expect("stage input");
    for (n, d) in extra {
        std::fs::write(dir.join(n), d).expect("stage extra file");
    }
    dir
}

/// A valid IDX images file of `count` images of 2×2 pixels.
pub fn idx_images(count: u32) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [count, 2, 2] {
        b.extend(d.to_be_bytes());
    }
    b.extend((0..count * 4).map(|i| i as u8));
    b
}
