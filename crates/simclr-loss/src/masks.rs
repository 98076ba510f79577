//! A small cache of the constant tensors the losses need for a batch shape (self-pair masks,
//! partner indices, pair indicators), built on the device once and reused every step.
//!
//! A training run asks for the same few shapes every step; rebuilding them as host matrices
//! (`2N × 2N` values, 512 MiB at batch 4096) and copying them to the GPU each time was the
//! largest host-to-device traffic of a step. The cache holds at most [`CAPACITY`] entries and
//! drops the oldest beyond that, so a sweep over many shapes cannot grow it without bound.

use std::sync::Mutex;

use candle_core::{DType, DeviceLocation, Result, Tensor};

/// Entries kept (a run needs two or three; evaluation a few more).
const CAPACITY: usize = 16;

/// Which constant an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MaskKind {
    /// Additive self-pair mask (`MASKED` on the shifted diagonal).
    SelfPair,
    /// Partner key index of each anchor, `[2n, 1]` u32.
    Partner,
    /// `i < j` indicator.
    Upper,
    /// `i != j` indicator.
    OffDiagonal,
    /// Additive mask of each anchor's own and partner keys (DCL's negatives).
    SelfAndPartner,
}

#[derive(Clone, Debug, PartialEq)]
struct Key {
    kind: MaskKind,
    rows: usize,
    cols: usize,
    offset: usize,
    dtype: DType,
    device: DeviceLocation,
}

static CACHE: Mutex<Vec<(Key, Tensor)>> = Mutex::new(Vec::new());

/// The cached tensor for `(kind, rows, cols, offset)` in `like`'s dtype and on its device, or
/// the one `build` makes (then kept).
pub(crate) fn cached(
    kind: MaskKind,
    rows: usize,
    cols: usize,
    offset: usize,
    like: &Tensor,
    build: impl FnOnce() -> Result<Tensor>,
) -> Result<Tensor> {
    let dtype = match kind {
        MaskKind::Partner => DType::U32,
        _ => like.dtype(),
    };
    let key = Key {
        kind,
        rows,
        cols,
        offset,
        dtype,
        device: like.device().location(),
    };
    {
        let cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, t)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(t.clone());
        }
    }
    let t = build()?;
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= CAPACITY {
        cache.remove(0);
    }
    cache.push((key, t.clone()));
    Ok(t)
}

/// Empties the cache of constant loss tensors (they are rebuilt on next use), releasing their
/// device memory.
pub fn clear_mask_cache() {
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// Entries in the cache.
#[cfg(test)]
pub(crate) fn mask_cache_len() -> usize {
    CACHE.lock().unwrap_or_else(|e| e.into_inner()).len()
}
