//! Image datasets for simclr-rs: the [`Image`] type, and readers for IDX (MNIST /
//! Fashion-MNIST), CIFAR-10 binary batches and image folders.

mod image;

pub use crate::image::{Image, ImageError};
