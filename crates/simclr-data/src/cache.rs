//! The decoded cache of an image folder (`simclr pretrain --cache DIR`): every image decoded
//! once, resized to the training resolution, and stored as raw `u8` pixels in one file, so
//! that an epoch reads fixed-size records instead of decoding JPEGs.
//!
//! - **Reuse.** The file is named by a 64-bit FNV-1a key of the folder's path, its class
//!   names, every file's place, size, modification time and label, the resolution and the
//!   resize method. An unchanged folder finds its cache and opening reads no image; an added,
//!   removed or rewritten file gives another key and a new cache (old ones stay until removed).
//! - **Reading.** Records are read with positioned reads (`pread`), several loader threads at
//!   once; the operating system's page cache keeps a cache that fits in memory hot, and the
//!   process's own memory does not grow with the folder.
//! - **Building** writes a temporary file beside the final one and renames it into place once
//!   complete and synced: a crash, Ctrl-C or full disk while building leaves no half-written
//!   cache that a later run would trust. A cache whose length or footer does not match is
//!   rebuilt with a warning.
//!
//! Layout (little-endian): `files × (height × width × channels)` pixel records (`HWC`, the
//! [`Image`] layout; a skipped file's record is zeros), one status byte per file (1 kept,
//! 0 skipped), the skipped files' reasons as `index\treason\n` lines, and a 48-byte footer:
//! magic `SIMCLRC1`, key, files (u64), height, width (u32), channels (u8, 7 bytes padding),
//! length of the reasons (u64).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::folder::{FolderDataset, FolderIndex, Store};
use crate::{DataError, Fnv64, Image, Skipped, Split};

const MAGIC: &[u8; 8] = b"SIMCLRC1";
const FOOTER: usize = 48;
/// Images decoded in parallel, then written in order, per round of the build.
const CHUNK: usize = 512;

/// How [`crate::open_folder`] caches decoded images.
pub struct CacheOptions<'a> {
    /// Folder of cache files (created if missing).
    pub dir: &'a Path,
    /// Height of the cached images.
    pub height: u32,
    /// Width of the cached images.
    pub width: u32,
    /// Resizes a decoded image to `width × height` (keeping its channels): the trainer passes
    /// its evaluation resize, so that a cached image is what evaluation would have made of
    /// the file.
    pub resize: &'a (dyn Fn(&Image) -> Image + Sync),
    /// A name for `resize`, part of the key: another method makes another cache.
    pub resize_name: &'a str,
    /// Called while building with (images done, images in all): once with 0 before the first
    /// image, then after each round of decoding.
    pub progress: &'a mut dyn FnMut(usize, usize),
}

/// An open cache file: the records of the dataset's items.
pub(crate) struct CacheFile {
    path: PathBuf,
    file: File,
    width: u32,
    height: u32,
    channels: u8,
    /// Record of each dataset item.
    records: Vec<usize>,
}

impl CacheFile {
    fn record_len(&self) -> usize {
        self.width as usize * self.height as usize * usize::from(self.channels)
    }

    /// Item `index`'s image.
    pub(crate) fn image(&self, index: usize) -> Result<Image, DataError> {
        let len = self.record_len();
        let mut buf = vec![0u8; len];
        read_at(&self.file, &mut buf, (self.records[index] * len) as u64)
            .map_err(|e| DataError::io(&self.path, e))?;
        Image::new(self.width, self.height, self.channels, buf).map_err(|source| DataError::Image {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// The cache key of `index` with `options` (see the module docs).
fn key(index: &FolderIndex, options: &CacheOptions<'_>) -> Result<u64, DataError> {
    let mut h = Fnv64::new();
    h.field(b"simclr-rs folder cache 1");
    let root = std::fs::canonicalize(&index.root).unwrap_or_else(|_| index.root.clone());
    h.field(root.to_string_lossy().as_bytes());
    h.field(options.resize_name.as_bytes());
    h.write(&options.height.to_le_bytes());
    h.write(&options.width.to_le_bytes());
    for name in index.class_names.iter().flatten() {
        h.field(name.as_bytes());
    }
    let stats: Vec<Result<(u64, u64, u32), DataError>> = index
        .files
        .par_iter()
        .map(|f| {
            let m = std::fs::metadata(f).map_err(|e| DataError::io(f, e))?;
            let t = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .unwrap_or_default();
            Ok((m.len(), t.as_secs(), t.subsec_nanos()))
        })
        .collect();
    for (i, (file, stat)) in index.files.iter().zip(stats).enumerate() {
        let (len, secs, nanos) = stat?;
        let place = file.strip_prefix(&index.root).unwrap_or(file);
        h.field(place.to_string_lossy().as_bytes());
        h.write(&len.to_le_bytes());
        h.write(&secs.to_le_bytes());
        h.write(&nanos.to_le_bytes());
        let label = index.labels.as_ref().map_or(u64::MAX, |l| u64::from(l[i]));
        h.write(&label.to_le_bytes());
    }
    Ok(h.finish())
}

/// What a cache file's footer says.
struct Footer {
    key: u64,
    files: u64,
    height: u32,
    width: u32,
    channels: u8,
    reasons_len: u64,
}

impl Footer {
    fn to_bytes(&self) -> [u8; FOOTER] {
        let mut b = [0u8; FOOTER];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.key.to_le_bytes());
        b[16..24].copy_from_slice(&self.files.to_le_bytes());
        b[24..28].copy_from_slice(&self.height.to_le_bytes());
        b[28..32].copy_from_slice(&self.width.to_le_bytes());
        b[32] = self.channels;
        b[40..48].copy_from_slice(&self.reasons_len.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8; FOOTER]) -> Option<Self> {
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        (&b[..8] == MAGIC).then(|| Self {
            key: u64_at(8),
            files: u64_at(16),
            height: u32_at(24),
            width: u32_at(28),
            channels: b[32],
            reasons_len: u64_at(40),
        })
    }
}

/// Opens the cache of `index` in `options.dir`, building it first when there is none or it
/// does not match.
pub(crate) fn open(
    path: &Path,
    split: Split,
    skip_bad_images: bool,
    mut options: CacheOptions<'_>,
) -> Result<FolderDataset, DataError> {
    if options.height == 0 || options.width == 0 {
        return Err(DataError::malformed(
            options.dir,
            "a decoded cache needs a resolution of at least 1x1",
        ));
    }
    let index = crate::folder::index(path, split)?;
    let key = key(&index, &options)?;
    let file_path = options.dir.join(format!("folder-{key:016x}.cache"));
    let existing = match read_existing(&file_path, key, &index, &options) {
        Ok(Some(existing)) => existing,
        found => {
            if let Err(why) = found {
                eprintln!(
                    "warning: the cache `{}` is unusable ({why}); building it again",
                    file_path.display()
                );
            }
            build(&index, skip_bad_images, &file_path, key, &mut options)?;
            read_existing(&file_path, key, &index, &options)
                .map_err(|why| DataError::malformed(&file_path, why))?
                .ok_or_else(|| {
                    DataError::malformed(&file_path, "the cache just built is missing")
                })?
        }
    };
    finish(index, path, skip_bad_images, file_path, &options, existing)
}

/// A cache file that matches its folder, read up to its records.
struct Existing {
    file: File,
    channels: u8,
    /// One byte per file: 1 kept, 0 skipped.
    status: Vec<u8>,
    /// The skipped files' `index\treason` lines.
    reasons: String,
}

/// The cache at `file_path` when it exists and matches; `Ok(None)` when there is none;
/// `Err` (why) when it exists but does not match its key or length.
fn read_existing(
    file_path: &Path,
    key: u64,
    index: &FolderIndex,
    options: &CacheOptions<'_>,
) -> Result<Option<Existing>, String> {
    let file = match File::open(file_path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len < FOOTER as u64 {
        return Err(format!("{len} bytes, shorter than its footer"));
    }
    let mut b = [0u8; FOOTER];
    read_at(&file, &mut b, len - FOOTER as u64).map_err(|e| e.to_string())?;
    let footer = Footer::from_bytes(&b).ok_or("no simclr-rs cache footer")?;
    let n = index.files.len() as u64;
    if footer.key != key
        || footer.files != n
        || footer.height != options.height
        || footer.width != options.width
        || !matches!(footer.channels, 1 | 3)
    {
        return Err("its footer does not match the folder".into());
    }
    let record = u64::from(footer.height) * u64::from(footer.width) * u64::from(footer.channels);
    let expected = n
        .checked_mul(record)
        .and_then(|x| x.checked_add(n + footer.reasons_len + FOOTER as u64));
    if expected != Some(len) {
        return Err(format!(
            "{len} bytes where its footer implies {}; truncated?",
            expected.map_or_else(|| "an overflow".into(), |e| e.to_string())
        ));
    }
    let mut status = vec![0u8; n as usize];
    read_at(&file, &mut status, n * record).map_err(|e| e.to_string())?;
    let mut reasons = vec![0u8; footer.reasons_len as usize];
    read_at(&file, &mut reasons, n * record + n).map_err(|e| e.to_string())?;
    let reasons = String::from_utf8(reasons).map_err(|_| "its reasons are not UTF-8")?;
    Ok(Some(Existing {
        file,
        channels: footer.channels,
        status,
        reasons,
    }))
}

/// The dataset read from `existing`, the cache of `index`.
fn finish(
    index: FolderIndex,
    path: &Path,
    skip_bad_images: bool,
    file_path: PathBuf,
    options: &CacheOptions<'_>,
    existing: Existing,
) -> Result<FolderDataset, DataError> {
    let Existing {
        file,
        channels,
        status,
        reasons,
    } = existing;
    let mut skipped = Vec::new();
    for line in reasons.lines() {
        let (i, reason) = line.split_once('\t').unwrap_or((line, ""));
        if let Some(file) = i.parse::<usize>().ok().and_then(|i| index.files.get(i)) {
            skipped.push(Skipped {
                path: file.clone(),
                reason: reason.to_string(),
            });
        }
    }
    if let Some(first) = skipped.first()
        && !skip_bad_images
    {
        return Err(DataError::BadImage {
            path: first.path.clone(),
            reason: first.reason.clone(),
        });
    }
    let kept: Vec<usize> = (0..status.len()).filter(|&i| status[i] == 1).collect();
    if kept.is_empty() {
        return Err(DataError::malformed(
            &index.root,
            "none of its image files could be decoded; nothing is left to read",
        ));
    }
    let cache = CacheFile {
        path: file_path,
        file,
        width: options.width,
        height: options.height,
        channels,
        records: kept.clone(),
    };
    Ok(FolderDataset::from_index(
        index,
        &kept,
        channels,
        skipped,
        skip_bad_images,
        Store::Cache(cache),
        path,
    ))
}

/// Decodes every image of `index` into a new cache at `file_path`.
fn build(
    index: &FolderIndex,
    skip_bad_images: bool,
    file_path: &Path,
    key: u64,
    options: &mut CacheOptions<'_>,
) -> Result<(), DataError> {
    let dir = options.dir;
    // Headers first: the channel count must be known before the first record is written, and
    // an unreadable file fails the build before it has cost a decode pass.
    let probed: Vec<Result<u8, String>> = index
        .files
        .par_iter()
        .map(|f| crate::folder::probe(f))
        .collect();
    let channels = if probed.iter().any(|p| matches!(p, Ok(3))) {
        3
    } else {
        1
    };
    let mut status: Vec<u8> = probed.iter().map(|p| u8::from(p.is_ok())).collect();
    let mut reasons = String::new();
    for (i, p) in probed.into_iter().enumerate() {
        if let Err(reason) = p {
            if !skip_bad_images {
                return Err(DataError::BadImage {
                    path: index.files[i].clone(),
                    reason,
                });
            }
            push_reason(&mut reasons, i, &reason);
        }
    }
    // A folder this build creates is removed again if the build fails, so that a refused
    // folder leaves nothing behind.
    let created = !dir.exists();
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let tmp = dir.join(format!(
        ".folder-{key:016x}.cache.tmp-{}",
        std::process::id()
    ));
    let result = write_cache(
        index,
        skip_bad_images,
        &tmp,
        key,
        options,
        channels,
        &mut status,
        &mut reasons,
    )
    .and_then(|()| std::fs::rename(&tmp, file_path).map_err(|e| DataError::io(file_path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        if created {
            let _ = std::fs::remove_dir(dir);
        }
    }
    result?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn push_reason(reasons: &mut String, i: usize, reason: &str) {
    let one_line: String = reason
        .chars()
        .map(|c| if c == '\n' || c == '\t' { ' ' } else { c })
        .collect();
    reasons.push_str(&format!("{i}\t{one_line}\n"));
}

#[allow(clippy::too_many_arguments)]
fn write_cache(
    index: &FolderIndex,
    skip_bad_images: bool,
    tmp: &Path,
    key: u64,
    options: &mut CacheOptions<'_>,
    channels: u8,
    status: &mut [u8],
    reasons: &mut String,
) -> Result<(), DataError> {
    let io = |e| DataError::io(tmp, e);
    let mut out = BufWriter::with_capacity(1 << 20, File::create(tmp).map_err(io)?);
    let record = options.width as usize * options.height as usize * usize::from(channels);
    let n = index.files.len();
    let (resize, width, height) = (options.resize, options.width, options.height);
    (options.progress)(0, n);
    for start in (0..n).step_by(CHUNK) {
        let end = (start + CHUNK).min(n);
        let decoded: Vec<Result<Vec<u8>, String>> = (start..end)
            .into_par_iter()
            .map(|i| {
                if status[i] == 0 {
                    return Ok(Vec::new());
                }
                let img = crate::folder::decode(&index.files[i])?;
                let img = resize(&img);
                if img.width() != width || img.height() != height {
                    return Err(format!(
                        "the resize gave {}x{}, not {width}x{height}",
                        img.width(),
                        img.height(),
                    ));
                }
                let img = if channels == 3 { img.to_rgb() } else { img };
                if img.channels() != channels {
                    return Err("the file is in colour but its header said grayscale".into());
                }
                Ok(img.data().to_vec())
            })
            .collect();
        for (k, d) in decoded.into_iter().enumerate() {
            let i = start + k;
            match d {
                Ok(px) if status[i] == 1 => out.write_all(&px).map_err(io)?,
                Ok(_) => out.write_all(&vec![0u8; record]).map_err(io)?,
                Err(reason) if skip_bad_images => {
                    status[i] = 0;
                    push_reason(reasons, i, &reason);
                    out.write_all(&vec![0u8; record]).map_err(io)?;
                }
                Err(reason) => {
                    return Err(DataError::BadImage {
                        path: index.files[i].clone(),
                        reason,
                    });
                }
            }
        }
        (options.progress)(end, n);
    }
    out.write_all(status).map_err(io)?;
    out.write_all(reasons.as_bytes()).map_err(io)?;
    let footer = Footer {
        key,
        files: n as u64,
        height: options.height,
        width: options.width,
        channels,
        reasons_len: reasons.len() as u64,
    };
    out.write_all(&footer.to_bytes()).map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)
}
