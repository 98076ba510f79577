//! SimCLR pretraining for simclr-rs: the background data [`loader`], the [`optim`]isers
//! candle-nn lacks (LARS, momentum SGD, AdamW with bias/norm exclusion), the learning-rate
//! [`schedule`], and the [`trainer`] loop that writes metrics and safetensors checkpoints
//! from which a run resumes exactly.

pub mod config;
pub mod fingerprint;
pub mod loader;
pub mod lock;
pub mod memory;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use crate::config::TrainConfig;
pub use crate::optim::{OptimConfig, OptimizerKind, StatefulOptimizer};
pub use crate::schedule::{LrScaling, Schedule};
pub use crate::trainer::{
    CHECKPOINT_FORMAT, EpochMetrics, Event, Monitor, Outcome, StepMetrics, Summary, TrainError,
    Trainer,
};
