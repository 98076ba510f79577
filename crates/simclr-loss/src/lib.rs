//! simclr-loss (work in progress)
