//! The Fashion-MNIST sample bundled in the binary (`assets/fashion-mnist-sample`: the first
//! 4,000 training and 1,000 test images, MIT-licensed), so that the default pretraining, the
//! tests and the examples need no download.

use std::path::Path;

use crate::{DataError, InMemoryDataset, Split, idx};

const TRAIN_IMAGES: &[u8] =
    include_bytes!("../../../assets/fashion-mnist-sample/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] =
    include_bytes!("../../../assets/fashion-mnist-sample/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] =
    include_bytes!("../../../assets/fashion-mnist-sample/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] =
    include_bytes!("../../../assets/fashion-mnist-sample/t10k-labels-idx1-ubyte.gz");

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// What `--data` shows when the bundled sample is used.
pub const NAME: &str = "bundled Fashion-MNIST sample";

/// The bundled Fashion-MNIST sample's `split`.
pub fn fashion_mnist(split: Split) -> Result<InMemoryDataset, DataError> {
    let (images, labels, name) = match split {
        Split::Train => (TRAIN_IMAGES, TRAIN_LABELS, "train"),
        Split::Test => (TEST_IMAGES, TEST_LABELS, "t10k"),
    };
    let ipath = format!("<{NAME}>/{name}-images-idx3-ubyte.gz");
    let lpath = format!("<{NAME}>/{name}-labels-idx1-ubyte.gz");
    let mut ds = idx::from_bytes(
        Path::new(&ipath),
        images.to_vec(),
        Some((Path::new(&lpath), labels.to_vec())),
    )?;
    ds.source = NAME.into();
    ds.num_classes = Some(10);
    ds.class_names = Some(
        FASHION_MNIST_CLASSES
            .iter()
            .map(|s| s.to_string())
            .collect(),
    );
    Ok(ds)
}
