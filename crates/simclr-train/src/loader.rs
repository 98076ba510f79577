//! The data loader: a background thread that builds augmented two-view batches ahead of the
//! training step, through a bounded queue, so the model does not wait on data.
//!
//! Everything it produces is a pure function of `(seed, epoch, step)`: the epoch's order is a
//! permutation drawn from `(seed, epoch)`, and each view's randomness comes from
//! `(seed, epoch, sample index, view)` (see [`simclr_augment::view_rng`]). So a run resumed
//! at any step sees exactly the batches an uninterrupted run would have, with no generator
//! state to save. The last incomplete batch of an epoch is dropped (`drop_last`), as SimCLR
//! needs full batches of negatives.
//!
//! The loader thread also puts each batch on the training device, so the copy to a GPU
//! overlaps the step before it. It cannot fail silently: an augmentation error, a failed copy
//! or a panic while building a batch (a broken dataset, say) reaches the consumer as a
//! [`LoaderError`] naming the batch, and a producer that stopped early is an error too.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use simclr_augment::{AugmentConfig, AugmentError};
use simclr_data::Dataset;

/// Why the loader could not deliver a batch.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The augmentation pipeline refused the batch.
    #[error("building the batch of epoch {epoch}, step {step}")]
    Augment {
        /// Epoch (1-based).
        epoch: u64,
        /// Step within the epoch (1-based).
        step: u64,
        /// The cause.
        #[source]
        source: AugmentError,
    },
    /// An image of the batch could not be read (lazily read image folders).
    #[error("reading the images of epoch {epoch}, step {step}")]
    Data {
        /// Epoch (1-based).
        epoch: u64,
        /// Step within the epoch (1-based).
        step: u64,
        /// The cause.
        #[source]
        source: simclr_data::DataError,
    },
    /// The batch could not be put on the training device.
    #[error("copying the batch of epoch {epoch}, step {step} to the device")]
    Device {
        /// Epoch (1-based).
        epoch: u64,
        /// Step within the epoch (1-based).
        step: u64,
        /// The cause.
        #[source]
        source: candle_core::Error,
    },
    /// Building the batch panicked (typically a dataset that failed to read an item).
    #[error("the data loader crashed building the batch of epoch {epoch}, step {step}: {message}")]
    Panicked {
        /// Epoch (1-based).
        epoch: u64,
        /// Step within the epoch (1-based).
        step: u64,
        /// The panic's message.
        message: String,
    },
    /// The augmentation threads could not be started.
    #[error("cannot start the augmentation threads")]
    Threads(#[source] rayon::ThreadPoolBuildError),
    /// The producer ended before the batches the run needs (a bug, never a normal end).
    #[error("the data loader stopped early, before epoch {epoch}, step {step}")]
    Stopped {
        /// Epoch (1-based) of the batch that did not come.
        epoch: u64,
        /// Step within the epoch (1-based).
        step: u64,
    },
}

/// One training batch.
#[derive(Debug)]
pub struct Batch {
    /// Epoch (0-based).
    pub epoch: u64,
    /// Step within the epoch (0-based).
    pub step_in_epoch: u64,
    /// `[2N, C, H, W]` f32 views on the training device: image `i`'s at rows `i` and `N + i`.
    pub views: Tensor,
    /// Class labels of the `N` images, when the dataset has them (supervised losses).
    pub labels: Option<Vec<u32>>,
}

/// The permutation of `0..len` used in `epoch`.
pub fn epoch_order(seed: u64, epoch: u64, len: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ 0x5348_5546_464c_4521 ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    order.shuffle(&mut rng);
    order
}

/// How an epoch's images are ordered into batches.
#[derive(Clone, Debug, Default)]
pub enum Sampler {
    /// A seeded permutation of the dataset (every image once an epoch).
    #[default]
    Shuffle,
    /// Class-balanced batches of `classes` classes × `per_class` images each (the P×K
    /// sampler of metric learning, Hermans et al. 2017), so that every image of a batch has
    /// positives: see [`balanced_order`].
    Balanced {
        /// The dataset's labels.
        labels: Arc<[u32]>,
        /// Classes per batch (P).
        classes: usize,
        /// Images per class (K).
        per_class: usize,
    },
}

impl Sampler {
    /// The order of `epoch` for a dataset of `len` images: `batch_size` consecutive entries
    /// make a batch.
    pub fn order(&self, seed: u64, epoch: u64, len: usize, batch_size: usize) -> Vec<usize> {
        match self {
            Self::Shuffle => epoch_order(seed, epoch, len),
            Self::Balanced {
                labels,
                classes,
                per_class,
            } => balanced_order(
                seed,
                epoch,
                labels,
                *classes,
                *per_class,
                steps_per_epoch(len, batch_size),
            ),
        }
    }
}

/// The classes with at least `per_class` images, and their images, in label order.
pub fn classes_with(labels: &[u32], per_class: usize) -> Vec<(u32, Vec<usize>)> {
    let mut by: std::collections::BTreeMap<u32, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by.entry(l).or_default().push(i);
    }
    by.into_iter()
        .filter(|(_, v)| v.len() >= per_class)
        .collect()
}

/// `steps` class-balanced batches of `classes` × `per_class` images for `epoch`, seeded like
/// [`epoch_order`]: each batch draws `classes` distinct classes (a shuffled cycle over the
/// classes having at least `per_class` images, reshuffled when used up) and `per_class`
/// distinct images of each (a shuffled cycle over the class's images, likewise), so images
/// are used evenly and never twice in a batch. A batch lists its classes' images class after
/// class.
pub fn balanced_order(
    seed: u64,
    epoch: u64,
    labels: &[u32],
    classes: usize,
    per_class: usize,
    steps: u64,
) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ 0x4241_4c41_4e43_4544 ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let mut pools: Vec<(Vec<usize>, usize)> = classes_with(labels, per_class)
        .into_iter()
        .map(|(_, mut v)| {
            v.shuffle(&mut rng);
            (v, 0)
        })
        .collect();
    let mut class_cycle: Vec<usize> = (0..pools.len()).collect();
    class_cycle.shuffle(&mut rng);
    let mut at = 0;
    let mut order = Vec::with_capacity(steps as usize * classes * per_class);
    for _ in 0..steps {
        // `classes` distinct classes: refill the cycle when it runs short, without repeats.
        let mut chosen: Vec<usize> = Vec::with_capacity(classes);
        while chosen.len() < classes.min(pools.len()) {
            if at == class_cycle.len() {
                class_cycle.shuffle(&mut rng);
                at = 0;
            }
            let c = class_cycle[at];
            at += 1;
            if !chosen.contains(&c) {
                chosen.push(c);
            }
        }
        for c in chosen {
            let (images, next) = &mut pools[c];
            let group = order.len();
            for _ in 0..per_class {
                if *next == images.len() {
                    // A new cycle; this group's images so far go last in it, so none is
                    // drawn twice in the batch (the class has at least `per_class`).
                    images.shuffle(&mut rng);
                    let taken = &order[group..];
                    images.sort_by_key(|i| taken.contains(i));
                    *next = 0;
                }
                order.push(images[*next]);
                *next += 1;
            }
        }
    }
    order
}

/// Full batches per epoch (`drop_last`).
pub fn steps_per_epoch(len: usize, batch_size: usize) -> u64 {
    (len / batch_size.max(1)) as u64
}

/// Builds the batch of `step` in `epoch` on the calling thread, on `device`.
pub fn make_batch(
    dataset: &dyn Dataset,
    augment: &AugmentConfig,
    seed: u64,
    batch_size: usize,
    (epoch, step): (u64, u64),
    device: &Device,
) -> Result<Batch, LoaderError> {
    let order = epoch_order(seed, epoch, dataset.len());
    let config = LoaderConfig {
        batch_size,
        seed,
        prefetch: 1,
        workers: 1,
        device: device.clone(),
        rank: 0,
        world: 1,
        sampler: Sampler::Shuffle,
    };
    batch_from_order(dataset, augment, &config, epoch, step, &order)
}

/// The batch of `step` in `epoch` given the epoch's `order`; a panic while building it is
/// caught and returned as [`LoaderError::Panicked`].
fn batch_from_order(
    dataset: &dyn Dataset,
    augment: &AugmentConfig,
    config: &LoaderConfig,
    epoch: u64,
    step: u64,
    order: &[usize],
) -> Result<Batch, LoaderError> {
    let (e, s) = (epoch + 1, step + 1);
    let built = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let local = config.batch_size / config.world.max(1);
        let start = step as usize * config.batch_size + config.rank * local;
        let ids = &order[start..start + local];
        // In parallel: items of a lazily read folder are decoded here.
        let samples = ids
            .par_iter()
            .map(|&i| dataset.get(i))
            .collect::<Result<Vec<_>, _>>()?;
        let images: Vec<_> = samples.iter().map(|s| &s.image).collect();
        let indices: Vec<u64> = ids.iter().map(|&i| i as u64).collect();
        let views = augment.batch(&images, config.seed, epoch, &indices);
        let labels = samples
            .iter()
            .map(|s| s.label)
            .collect::<Option<Vec<u32>>>();
        Ok((views, labels))
    }));
    let (views, labels) = built
        .map_err(|payload| LoaderError::Panicked {
            epoch: e,
            step: s,
            message: panic_message(&*payload),
        })?
        .map_err(|source| LoaderError::Data {
            epoch: e,
            step: s,
            source,
        })?;
    let views = views.map_err(|source| LoaderError::Augment {
        epoch: e,
        step: s,
        source,
    })?;
    let views =
        Tensor::from_vec(views.data, views.shape.as_slice(), &config.device).map_err(|source| {
            LoaderError::Device {
                epoch: e,
                step: s,
                source,
            }
        })?;
    Ok(Batch {
        epoch,
        step_in_epoch: step,
        views,
        labels,
    })
}

/// The text of a panic's payload (`panic!("…")` gives a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Settings of a [`Loader`].
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// Images per batch (the step sees twice as many views).
    pub batch_size: usize,
    /// The run's seed.
    pub seed: u64,
    /// Batches built ahead of the step (the queue's bound).
    pub prefetch: usize,
    /// Threads that build one batch in parallel.
    pub workers: usize,
    /// Where the batches go (the training device).
    pub device: Device,
    /// This process's rank in a data-parallel run (0 alone).
    pub rank: usize,
    /// Ranks in the run: each builds its `batch_size / world` images of every global batch,
    /// the `rank`-th slice, with the augmentations a single process would give them.
    pub world: usize,
    /// How batches are drawn.
    pub sampler: Sampler,
}

/// Iterates batches from `(start_epoch, start_step)` up to the end of epoch `end_epoch - 1`,
/// built on a background thread.
pub struct Loader {
    rx: Receiver<Result<Batch, LoaderError>>,
    handle: Option<JoinHandle<()>>,
    waited: Duration,
    /// The next batch expected, (epoch, step), 0-based.
    next: (u64, u64),
    /// The end of the run: epoch `end_epoch` step 0 is never produced.
    end_epoch: u64,
    steps: u64,
    failed: bool,
}

impl Loader {
    /// Starts the background thread.
    pub fn start(
        dataset: Arc<dyn Dataset>,
        augment: AugmentConfig,
        config: LoaderConfig,
        start: (u64, u64),
        end_epoch: u64,
    ) -> Self {
        let (tx, rx) = sync_channel(config.prefetch.max(1));
        let steps = steps_per_epoch(dataset.len(), config.batch_size);
        let handle = std::thread::Builder::new()
            .name("simclr-loader".into())
            .spawn(move || produce(&*dataset, &augment, &config, start, end_epoch, &tx))
            .expect("spawning the loader thread");
        Self {
            rx,
            handle: Some(handle),
            waited: Duration::ZERO,
            next: start,
            end_epoch,
            steps,
            failed: false,
        }
    }

    /// Time the consumer has spent blocked waiting for batches so far.
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

fn produce(
    dataset: &dyn Dataset,
    augment: &AugmentConfig,
    config: &LoaderConfig,
    (start_epoch, start_step): (u64, u64),
    end_epoch: u64,
    tx: &SyncSender<Result<Batch, LoaderError>>,
) {
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(config.workers.max(1))
        .thread_name(|i| format!("simclr-augment-{i}"))
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            let _ = tx.send(Err(LoaderError::Threads(e)));
            return;
        }
    };
    let steps = steps_per_epoch(dataset.len(), config.batch_size);
    for epoch in start_epoch..end_epoch {
        let order = config
            .sampler
            .order(config.seed, epoch, dataset.len(), config.batch_size);
        let first = if epoch == start_epoch { start_step } else { 0 };
        for step in first..steps {
            let batch =
                pool.install(|| batch_from_order(dataset, augment, config, epoch, step, &order));
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                return; // the consumer hung up, or there is nothing more to send
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, LoaderError>;

    /// The next batch; `None` only after the run's last batch (or after an error). A producer
    /// that ended before then is reported as an error: as a panic's message if it panicked,
    /// else [`LoaderError::Stopped`].
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next.0 >= self.end_epoch || self.steps == 0 {
            return None;
        }
        let t = Instant::now();
        let item = self.rx.recv();
        self.waited += t.elapsed();
        let (epoch, step) = self.next;
        let item = match item {
            Ok(item) => item,
            Err(_) => {
                let join = self.handle.take().map(JoinHandle::join);
                Err(match join {
                    Some(Err(payload)) => LoaderError::Panicked {
                        epoch: epoch + 1,
                        step: step + 1,
                        message: panic_message(&*payload),
                    },
                    _ => LoaderError::Stopped {
                        epoch: epoch + 1,
                        step: step + 1,
                    },
                })
            }
        };
        self.failed = item.is_err();
        self.next = if step + 1 == self.steps {
            (epoch + 1, 0)
        } else {
            (epoch, step + 1)
        };
        Some(item)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Unblock the producer (its next send fails), then wait for it.
        let (_tx, rx) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, rx));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use simclr_data::{Image, InMemoryDataset, Sample};

    fn dataset(n: usize) -> Arc<dyn Dataset> {
        let images = (0..n)
            .map(|i| Image::new(8, 8, 1, vec![(i * 9) as u8; 64]).unwrap())
            .collect();
        Arc::new(InMemoryDataset::new(
            images,
            Some((0..n as u32).map(|i| i % 3).collect()),
        ))
    }

    fn cfg(batch_size: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            seed: 5,
            prefetch: 2,
            workers: 2,
            device: Device::Cpu,
            rank: 0,
            world: 1,
            sampler: Sampler::Shuffle,
        }
    }

    fn pixels(b: &Batch) -> Vec<f32> {
        b.views.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn balanced_batches_hold_p_classes_of_k_distinct_images_evenly() {
        // 5 classes of 7 to 12 images and one class of 2 (too few for K = 3: never drawn).
        let mut labels = Vec::new();
        for (c, n) in [(0u32, 7), (1, 9), (2, 12), (3, 8), (4, 10), (5, 2)] {
            labels.extend(std::iter::repeat_n(c, n));
        }
        let (p, k, steps) = (3, 3, 40);
        let order = balanced_order(7, 0, &labels, p, k, steps);
        assert_eq!(order.len(), steps as usize * p * k);
        let mut uses = vec![0usize; labels.len()];
        for batch in order.chunks_exact(p * k) {
            let mut seen = batch.to_vec();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), p * k, "an image twice in {batch:?}");
            for group in batch.chunks_exact(k) {
                assert!(
                    group.iter().all(|&i| labels[i] == labels[group[0]]),
                    "{group:?}"
                );
            }
            let mut cls: Vec<u32> = batch.chunks_exact(k).map(|g| labels[g[0]]).collect();
            cls.dedup();
            assert_eq!(cls.len(), p, "{batch:?}");
            assert!(batch.iter().all(|&i| labels[i] != 5));
            batch.iter().for_each(|&i| uses[i] += 1);
        }
        // Within a class, images are used evenly (a shuffled cycle): counts differ by ≤ 1.
        for c in 0..5u32 {
            let u: Vec<usize> = (0..labels.len())
                .filter(|&i| labels[i] == c)
                .map(|i| uses[i])
                .collect();
            let (lo, hi) = (u.iter().min().unwrap(), u.iter().max().unwrap());
            assert!(hi - lo <= 1, "class {c}: {u:?}");
        }
        assert_eq!(order, balanced_order(7, 0, &labels, p, k, steps));
        assert_ne!(order, balanced_order(7, 1, &labels, p, k, steps));
        assert_ne!(order, balanced_order(8, 0, &labels, p, k, steps));
    }

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_order(1, 0, 50);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(1, 0, 50));
        assert_ne!(a, epoch_order(1, 1, 50));
        assert_ne!(a, epoch_order(2, 0, 50));
    }

    #[test]
    fn drops_the_last_partial_batch_and_covers_each_image_once_per_epoch() {
        let ds = dataset(10);
        let aug = AugmentConfig::simclr(8, 1);
        let batches: Vec<Batch> = Loader::start(ds, aug, cfg(3), (0, 0), 2)
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            batches.len(),
            2 * 3,
            "10 images in batches of 3: 3 full batches an epoch"
        );
        assert_eq!(batches[3].epoch, 1);
        assert_eq!(batches[3].step_in_epoch, 0);
        assert_eq!(batches[0].views.dims(), [6, 1, 8, 8]);
        let order = epoch_order(5, 0, 10);
        let want: Vec<u32> = order[..3].iter().map(|&i| i as u32 % 3).collect();
        assert_eq!(batches[0].labels.as_deref(), Some(&want[..]));
    }

    #[test]
    fn resuming_mid_epoch_gives_the_same_batches() {
        let ds = dataset(12);
        let aug = AugmentConfig::simclr(8, 1);
        let all: Vec<Batch> = Loader::start(ds.clone(), aug.clone(), cfg(4), (0, 0), 2)
            .map(Result::unwrap)
            .collect();
        let resumed: Vec<Batch> = Loader::start(ds.clone(), aug.clone(), cfg(4), (0, 2), 2)
            .map(Result::unwrap)
            .collect();
        assert_eq!(resumed.len(), all.len() - 2);
        for (a, b) in all[2..].iter().zip(&resumed) {
            assert_eq!((a.epoch, a.step_in_epoch), (b.epoch, b.step_in_epoch));
            assert_eq!(pixels(a), pixels(b));
        }
        let direct = make_batch(&*ds, &aug, 5, 4, (1, 1), &Device::Cpu).unwrap();
        assert_eq!(pixels(&direct), pixels(&all[4]));
    }

    #[test]
    fn ranks_build_their_slices_of_the_global_batch() {
        let (ds, aug) = (dataset(12), AugmentConfig::simclr(8, 1));
        let whole: Vec<Batch> = Loader::start(ds.clone(), aug.clone(), cfg(6), (0, 0), 1)
            .map(Result::unwrap)
            .collect();
        for rank in 0..3 {
            let part: Vec<Batch> = Loader::start(
                ds.clone(),
                aug.clone(),
                LoaderConfig {
                    rank,
                    world: 3,
                    sampler: Sampler::Shuffle,
                    ..cfg(6)
                },
                (0, 0),
                1,
            )
            .map(Result::unwrap)
            .collect();
            assert_eq!(part.len(), whole.len(), "the same steps");
            for (p, w) in part.iter().zip(&whole) {
                // Rows i and N + i are image i's views: rank r has images 2r, 2r + 1.
                let rows = |t: &Tensor, from: usize| t.narrow(0, from, 2).unwrap();
                let (pv, wv) = (&p.views, &w.views);
                let same = |a: Tensor, b: Tensor| {
                    assert_eq!(
                        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    )
                };
                same(rows(pv, 0), rows(wv, 2 * rank));
                same(rows(pv, 2), rows(wv, 6 + 2 * rank));
                let wl = w.labels.as_ref().unwrap();
                assert_eq!(p.labels.as_deref(), Some(&wl[2 * rank..2 * rank + 2]));
            }
        }
    }

    #[test]
    fn dropping_the_loader_early_stops_its_thread() {
        let mut loader = Loader::start(
            dataset(40),
            AugmentConfig::simclr(8, 1),
            cfg(2),
            (0, 0),
            100,
        );
        assert!(loader.next().is_some());
        drop(loader); // must not hang
    }

    #[test]
    fn augmentation_errors_reach_the_consumer() {
        let aug = AugmentConfig::simclr(8, 3); // three-channel normalisation, gray images
        let mut loader = Loader::start(dataset(4), aug, cfg(2), (0, 0), 1);
        let err = loader.next().unwrap().unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::Augment {
                    epoch: 1,
                    step: 1,
                    source: AugmentError::Channels { .. }
                }
            ),
            "{err:?}"
        );
        assert!(loader.next().is_none());
    }

    /// A dataset whose item `item` fails to read after the first `after` reads: it panics, as
    /// a reader hitting a vanished file would, or with `error` returns a read error, as a
    /// lazily read folder does.
    struct Broken {
        inner: Arc<dyn Dataset>,
        reads: std::sync::atomic::AtomicUsize,
        after: usize,
        item: usize,
        error: bool,
    }

    impl Dataset for Broken {
        fn len(&self) -> usize {
            self.inner.len()
        }
        fn get(&self, index: usize) -> Result<Sample, simclr_data::DataError> {
            let read = 1 + self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if read > self.after && index == self.item {
                if self.error {
                    return Err(simclr_data::DataError::BadImage {
                        path: format!("item{index}.jpg").into(),
                        reason: "truncated".into(),
                    });
                }
                panic!("item {index} is unreadable");
            }
            self.inner.get(index)
        }
        fn label(&self, index: usize) -> Option<u32> {
            self.inner.label(index)
        }
        fn channels(&self) -> u8 {
            1
        }
        fn num_classes(&self) -> Option<usize> {
            None
        }
    }

    /// 12 images in batches of 4: the loader's batches until it fails on the second item of
    /// epoch 2, step 2, and that item.
    fn fail_in_epoch_two(error: bool) -> (Vec<Result<Batch, LoaderError>>, usize, Loader) {
        let item = epoch_order(5, 1, 12)[5];
        let ds: Arc<dyn Dataset> = Arc::new(Broken {
            inner: dataset(12),
            reads: 0.into(),
            after: 12,
            item,
            error,
        });
        let mut loader = Loader::start(ds, AugmentConfig::simclr(8, 1), cfg(4), (0, 0), 3);
        let got: Vec<_> = loader.by_ref().collect();
        (got, item, loader)
    }

    #[test]
    fn a_dataset_that_panics_mid_epoch_is_an_error_naming_the_batch() {
        let (got, item, mut loader) = fail_in_epoch_two(false);
        assert_eq!(
            got.len(),
            5,
            "three good batches of epoch 1, one of epoch 2, the error"
        );
        assert!(got[..4].iter().all(Result::is_ok));
        let msg = got[4].as_ref().unwrap_err().to_string();
        assert!(
            msg.contains("epoch 2, step 2") && msg.contains(&format!("item {item} is unreadable")),
            "{msg}"
        );
        assert!(loader.next().is_none());
    }

    #[test]
    fn an_unreadable_image_is_an_error_naming_the_batch_and_the_file() {
        let (got, item, mut loader) = fail_in_epoch_two(true);
        assert_eq!(got.len(), 5);
        assert!(got[..4].iter().all(Result::is_ok));
        let err = got[4].as_ref().unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::Data {
                    epoch: 2,
                    step: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        let chain = format!("{err} / {}", std::error::Error::source(err).unwrap());
        assert!(chain.contains(&format!("item{item}.jpg")), "{chain}");
        assert!(loader.next().is_none());
    }
}
