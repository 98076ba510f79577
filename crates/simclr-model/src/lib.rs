//! simclr-model (work in progress)
