//! simclr-augment (work in progress)
