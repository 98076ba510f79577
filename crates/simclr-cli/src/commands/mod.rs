//! One module per subcommand.

pub mod augment_preview;
pub mod pretrain;
