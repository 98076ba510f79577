//! Helpers shared by the training crate's test binaries.

use std::sync::Arc;

use simclr_data::{Dataset, InMemoryDataset, Split, sample};

/// The first `n` images of the bundled Fashion-MNIST sample, with their labels.
pub fn subset(n: usize) -> Arc<dyn Dataset> {
    let ds = sample::fashion_mnist(Split::Train).unwrap();
    let (images, labels) = (0..n)
        .map(|i| {
            let s = ds.get(i).unwrap();
            (s.image, s.label.unwrap())
        })
        .unzip();
    Arc::new(InMemoryDataset::new(images, Some(labels)))
}
