//! One module per subcommand.

pub mod augment_preview;
