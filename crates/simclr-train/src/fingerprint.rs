//! What a checkpoint records about the data and the machine it was trained with, so that
//! `--resume` can refuse a different dataset and say when it cannot be bit-exact.
//!
//! The dataset's fingerprint is cheap whatever its size: its length, channels and classes,
//! and a hash (FNV-1a, 64 bits) of 16 evenly spaced items (their size, pixels and label).
//! A changed file at one of those places, an added or removed image, or another dataset is
//! caught; an edit elsewhere that keeps the count is not (the fingerprint is a guard against
//! the wrong `--data`, not a checksum).

use serde::{Deserialize, Serialize};
use simclr_data::Dataset;

/// Items hashed, evenly spaced.
const PROBES: usize = 16;

/// The dataset's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// Items.
    pub len: usize,
    /// Channels of every image.
    pub channels: u8,
    /// Classes, when labelled.
    pub classes: Option<usize>,
    /// FNV-1a of the probed items, as 16 hex digits.
    pub items_hash: String,
}

impl DataFingerprint {
    /// The fingerprint of `data`.
    ///
    /// # Errors
    /// A probed item that cannot be read (lazily read folders).
    pub fn of(data: &dyn Dataset) -> Result<Self, simclr_data::DataError> {
        let mut h = simclr_data::Fnv64::new();
        let len = data.len();
        for k in 0..PROBES.min(len) {
            let i = k * len / PROBES.min(len);
            let s = data.get(i)?;
            h.write(&(i as u64).to_le_bytes());
            h.write(&s.image.width().to_le_bytes());
            h.write(&s.image.height().to_le_bytes());
            h.write(&[s.image.channels()]);
            h.write(s.image.data());
            h.write(&s.label.map_or(u64::MAX, u64::from).to_le_bytes());
        }
        Ok(Self {
            len,
            channels: data.channels(),
            classes: data.num_classes(),
            items_hash: format!("{:016x}", h.finish()),
        })
    }

    /// How `now` differs from `self` (the recorded one), in words; `None` if it does not.
    pub fn difference(&self, now: &Self) -> Option<String> {
        let mut d = Vec::new();
        if self.len != now.len {
            d.push(format!("{} images then, {} now", self.len, now.len));
        }
        if self.channels != now.channels {
            d.push(format!(
                "{} channel(s) then, {} now",
                self.channels, now.channels
            ));
        }
        if self.classes != now.classes {
            let show =
                |c: Option<usize>| c.map_or_else(|| "no labels".into(), |c| format!("{c} classes"));
            d.push(format!(
                "{} then, {} now",
                show(self.classes),
                show(now.classes)
            ));
        }
        if d.is_empty() && self.items_hash != now.items_hash {
            d.push("the same count, but other images at the places sampled".into());
        }
        (!d.is_empty()).then(|| d.join("; "))
    }
}

/// What makes a CPU run's sums come out in one order: the step's threads and the gemm
/// kernels the CPU runs (gemm picks AVX-512 or AVX2 kernels at run time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arithmetic {
    /// Threads of the step.
    pub threads: usize,
    /// `avx512`, `avx2`, `fma` or `generic` (x86-64), or the architecture's name.
    pub cpu_kernels: String,
    /// Data-parallel ranks (their sums are added in another order).
    #[serde(default = "one")]
    pub ranks: usize,
}

fn one() -> usize {
    1
}

impl Arithmetic {
    /// This process's.
    pub fn current(ranks: usize) -> Self {
        Self {
            threads: candle_core::utils::get_num_threads(),
            cpu_kernels: cpu_kernels().into(),
            ranks,
        }
    }

    /// Why a resume on `now` cannot repeat a run recorded with `self` bit for bit, if so.
    pub fn difference(&self, now: &Self) -> Option<String> {
        let mut d = Vec::new();
        if self.threads != now.threads {
            d.push(format!(
                "{} threads then, {} now",
                self.threads, now.threads
            ));
        }
        if self.cpu_kernels != now.cpu_kernels {
            d.push(format!(
                "{} kernels then, {} now",
                self.cpu_kernels, now.cpu_kernels
            ));
        }
        if self.ranks != now.ranks {
            d.push(format!("{} rank(s) then, {} now", self.ranks, now.ranks));
        }
        (!d.is_empty()).then(|| d.join(", "))
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_kernels() -> &'static str {
    if is_x86_feature_detected!("avx512f") {
        "avx512"
    } else if is_x86_feature_detected!("avx2") {
        "avx2"
    } else if is_x86_feature_detected!("fma") {
        "fma"
    } else {
        "generic"
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_kernels() -> &'static str {
    std::env::consts::ARCH
}

#[cfg(test)]
mod tests {
    use super::*;
    use simclr_data::{Image, InMemoryDataset};

    fn data(n: usize, shift: u8, labels: bool) -> InMemoryDataset {
        let images = (0..n)
            .map(|i| Image::new(4, 4, 1, vec![(i as u8).wrapping_add(shift); 16]).unwrap())
            .collect();
        InMemoryDataset::new(
            images,
            labels.then(|| (0..n as u32).map(|i| i % 2).collect()),
        )
    }

    #[test]
    fn the_fingerprint_tells_datasets_apart() {
        let a = DataFingerprint::of(&data(40, 0, true)).unwrap();
        assert_eq!(
            a,
            DataFingerprint::of(&data(40, 0, true)).unwrap(),
            "deterministic"
        );
        let fewer = DataFingerprint::of(&data(39, 0, true)).unwrap();
        assert!(
            a.difference(&fewer)
                .unwrap()
                .contains("40 images then, 39 now")
        );
        let other = DataFingerprint::of(&data(40, 1, true)).unwrap();
        assert!(a.difference(&other).unwrap().contains("other images"));
        let unlabelled = DataFingerprint::of(&data(40, 0, false)).unwrap();
        assert!(
            a.difference(&unlabelled)
                .unwrap()
                .contains("2 classes then, no labels now")
        );
        assert_eq!(a.difference(&a), None);
    }

    #[test]
    fn arithmetic_differences_are_named() {
        let a = Arithmetic {
            threads: 2,
            cpu_kernels: "avx512".into(),
            ranks: 1,
        };
        let b = Arithmetic {
            threads: 4,
            cpu_kernels: "avx2".into(),
            ranks: 2,
        };
        assert_eq!(
            a.difference(&b).unwrap(),
            "2 threads then, 4 now, avx512 kernels then, avx2 now, 1 rank(s) then, 2 now"
        );
        assert_eq!(a.difference(&a), None);
    }
}
