//! simclr-train (work in progress)
