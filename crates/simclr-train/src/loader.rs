//! The data loader: a background thread that builds augmented two-view batches ahead of the
//! training step, through a bounded queue, so the model does not wait on data.
//!
//! Everything it produces is a pure function of `(seed, epoch, step)`: the epoch's order is a
//! permutation drawn from `(seed, epoch)`, and each view's randomness comes from
//! `(seed, epoch, sample index, view)` (see [`simclr_augment::view_rng`]). So a run resumed
//! at any step sees exactly the batches an uninterrupted run would have, with no generator
//! state to save. The last incomplete batch of an epoch is dropped (`drop_last`), as SimCLR
//! needs full batches of negatives.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use simclr_augment::{AugmentConfig, AugmentError, ViewBatch};
use simclr_data::Dataset;

/// One training batch.
#[derive(Debug)]
pub struct Batch {
    /// Epoch (0-based).
    pub epoch: u64,
    /// Step within the epoch (0-based).
    pub step_in_epoch: u64,
    /// `[2N, C, H, W]` views: image `i`'s at rows `i` and `N + i`.
    pub views: ViewBatch,
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

/// Full batches per epoch (`drop_last`).
pub fn steps_per_epoch(len: usize, batch_size: usize) -> u64 {
    (len / batch_size.max(1)) as u64
}

/// Builds the batch of `step` in `epoch` on the calling thread.
pub fn make_batch(
    dataset: &dyn Dataset,
    augment: &AugmentConfig,
    seed: u64,
    batch_size: usize,
    epoch: u64,
    step: u64,
) -> Result<Batch, AugmentError> {
    let order = epoch_order(seed, epoch, dataset.len());
    batch_from_order(dataset, augment, seed, batch_size, epoch, step, &order)
}

fn batch_from_order(
    dataset: &dyn Dataset,
    augment: &AugmentConfig,
    seed: u64,
    batch_size: usize,
    epoch: u64,
    step: u64,
    order: &[usize],
) -> Result<Batch, AugmentError> {
    let start = step as usize * batch_size;
    let ids = &order[start..start + batch_size];
    let samples: Vec<_> = ids.iter().map(|&i| dataset.get(i)).collect();
    let images: Vec<_> = samples.iter().map(|s| &s.image).collect();
    let indices: Vec<u64> = ids.iter().map(|&i| i as u64).collect();
    let views = augment.batch(&images, seed, epoch, &indices)?;
    let labels = samples
        .iter()
        .map(|s| s.label)
        .collect::<Option<Vec<u32>>>();
    Ok(Batch {
        epoch,
        step_in_epoch: step,
        views,
        labels,
    })
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
}

/// Iterates batches from `(start_epoch, start_step)` up to the end of epoch `end_epoch - 1`,
/// built on a background thread.
pub struct Loader {
    rx: Receiver<Result<Batch, AugmentError>>,
    handle: Option<JoinHandle<()>>,
    waited: Duration,
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
        let handle = std::thread::Builder::new()
            .name("simclr-loader".into())
            .spawn(move || produce(&*dataset, &augment, &config, start, end_epoch, &tx))
            .expect("spawning the loader thread");
        Self {
            rx,
            handle: Some(handle),
            waited: Duration::ZERO,
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
    tx: &SyncSender<Result<Batch, AugmentError>>,
) {
    let pool = match rayon::ThreadPoolBuilder::new()
        .num_threads(config.workers.max(1))
        .thread_name(|i| format!("simclr-augment-{i}"))
        .build()
    {
        Ok(p) => p,
        Err(e) => {
            let _ = tx.send(Err(AugmentError::Config(format!(
                "cannot start augmentation threads: {e}"
            ))));
            return;
        }
    };
    let steps = steps_per_epoch(dataset.len(), config.batch_size);
    for epoch in start_epoch..end_epoch {
        let order = epoch_order(config.seed, epoch, dataset.len());
        let first = if epoch == start_epoch { start_step } else { 0 };
        for step in first..steps {
            let batch = pool.install(|| {
                batch_from_order(
                    dataset,
                    augment,
                    config.seed,
                    config.batch_size,
                    epoch,
                    step,
                    &order,
                )
            });
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                return; // the consumer hung up, or there is nothing more to send
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, AugmentError>;

    fn next(&mut self) -> Option<Self::Item> {
        let t = Instant::now();
        let item = self.rx.recv().ok();
        self.waited += t.elapsed();
        item
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
    use simclr_data::{Image, InMemoryDataset};

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
        }
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
        assert_eq!(batches[0].views.shape, [6, 1, 8, 8]);
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
            assert_eq!(a.views, b.views);
        }
        let direct = make_batch(&*ds, &aug, 5, 4, 1, 1).unwrap();
        assert_eq!(direct.views, all[4].views);
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
        assert!(matches!(
            loader.next(),
            Some(Err(AugmentError::Channels { .. }))
        ));
        assert!(loader.next().is_none());
    }
}
