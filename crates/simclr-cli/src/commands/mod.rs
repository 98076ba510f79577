//! One module per subcommand.

pub mod augment_preview;
pub mod evaluate;
pub mod knn_monitor;
pub mod neighbors;
pub mod plot;
pub mod pretrain;
pub mod weights;
