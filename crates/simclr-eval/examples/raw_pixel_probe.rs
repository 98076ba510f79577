//! Baseline: the linear probe and kNN on raw pixels (scaled to [0, 1]) of a labelled dataset.
//!
//! Usage: `raw_pixel_probe [DATASET_PATH]` (default: the bundled Fashion-MNIST sample).

use std::path::PathBuf;
use std::time::Instant;

use simclr_data::{Dataset, InMemoryDataset, OpenOptions, Split};
use simclr_eval::{Features, ProbeConfig, knn, linear_probe};

fn load(path: &Option<PathBuf>, split: Split) -> InMemoryDataset {
    match path {
        None => simclr_data::sample::fashion_mnist(split).expect("bundled sample"),
        Some(p) => simclr_data::open(
            p,
            &OpenOptions {
                split,
                ..Default::default()
            },
        )
        .expect("dataset"),
    }
}

fn pixels(ds: &InMemoryDataset) -> (Vec<f32>, Vec<u32>, usize) {
    let dim = ds.images()[0].data().len();
    let x = ds
        .images()
        .iter()
        .flat_map(|i| i.data().iter().map(|&v| f32::from(v) / 255.0))
        .collect();
    (x, ds.labels().expect("labelled").to_vec(), dim)
}

fn main() {
    let path = std::env::args().nth(1).map(PathBuf::from);
    let (train, test) = (load(&path, Split::Train), load(&path, Split::Test));
    let classes = train.num_classes().expect("labelled");
    let (tx, ty, dim) = pixels(&train);
    let (vx, vy, _) = pixels(&test);
    let t = Instant::now();
    let r = linear_probe(
        Features { data: &tx, dim },
        &ty,
        Features { data: &vx, dim },
        &vy,
        classes,
        &ProbeConfig::default(),
    )
    .expect("probe");
    println!(
        "linear probe on raw pixels: top1 {:.4}, top5 {:?}, l2 {:e}, train top1 {:.4} ({:.1} s)",
        r.top1,
        r.top5,
        r.l2,
        r.train_top1,
        t.elapsed().as_secs_f64()
    );
    println!("held-out top1 per l2: {:?}", r.val_top1);
    let t = Instant::now();
    let k = knn(
        Features { data: &tx, dim },
        &ty,
        Features { data: &vx, dim },
        &vy,
        classes,
        200,
        0.1,
    )
    .expect("knn");
    println!(
        "kNN (k=200, tau=0.1) on raw pixels: top1 {k:.4} ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
}
