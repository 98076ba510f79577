//! The learning-rate schedule: batch-size scaling, linear warmup, cosine decay to 0, as in
//! SimCLR's `learning_rate_schedule` (updated every step).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How the base learning rate scales with the batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrScaling {
    /// `base × batch / 256` (SimCLR's default, for LARS with lr 0.3 or SGD).
    Linear,
    /// `base × √batch` (SimCLR's choice for small batches and long training, base 0.075).
    Sqrt,
    /// `base` as given.
    None,
}

impl fmt::Display for LrScaling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Linear => "linear",
            Self::Sqrt => "sqrt",
            Self::None => "none",
        })
    }
}

impl FromStr for LrScaling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "linear" => Ok(Self::Linear),
            "sqrt" => Ok(Self::Sqrt),
            "none" => Ok(Self::None),
            _ => Err(format!(
                "unknown lr scaling `{s}`; expected linear, sqrt or none"
            )),
        }
    }
}

/// Warmup then cosine decay, over a whole run's steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Learning rate at the end of warmup (after batch scaling).
    pub peak: f64,
    /// Steps of linear warmup from 0.
    pub warmup_steps: u64,
    /// Steps of the whole run.
    pub total_steps: u64,
}

impl Schedule {
    /// The schedule of a run: `base` scaled for `batch_size`, `warmup_steps` of `total_steps`.
    pub fn new(
        base: f64,
        scaling: LrScaling,
        batch_size: usize,
        warmup_steps: u64,
        total_steps: u64,
    ) -> Self {
        let peak = match scaling {
            LrScaling::Linear => base * batch_size as f64 / 256.0,
            LrScaling::Sqrt => base * (batch_size as f64).sqrt(),
            LrScaling::None => base,
        };
        Self {
            peak,
            warmup_steps: warmup_steps.min(total_steps),
            total_steps,
        }
    }

    /// The learning rate of (0-based) step `step`: `peak·step/warmup` during warmup, then
    /// `peak·½(1 + cos(π·(step − warmup)/(total − warmup)))`.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps as f64;
        }
        let decay = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let t = (step - self.warmup_steps).min(decay) as f64 / decay as f64;
        self.peak * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_rules() {
        assert_eq!(Schedule::new(0.3, LrScaling::Linear, 512, 0, 10).peak, 0.6);
        assert_eq!(
            Schedule::new(0.075, LrScaling::Sqrt, 4096, 0, 10).peak,
            0.075 * 64.0
        );
        assert_eq!(Schedule::new(0.1, LrScaling::None, 4096, 0, 10).peak, 0.1);
    }

    #[test]
    fn warmup_end_middle_and_end() {
        // peak 1.0, 10 warmup steps of 110.
        let s = Schedule::new(1.0, LrScaling::None, 256, 10, 110);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert_eq!(s.lr(10), 1.0, "warmup ends at the peak");
        assert!(
            (s.lr(60) - 0.5).abs() < 1e-12,
            "half-way through the decay: peak/2"
        );
        assert!((s.lr(35) - 0.5 * (1.0 + (std::f64::consts::PI / 4.0).cos())).abs() < 1e-12);
        assert!(s.lr(110).abs() < 1e-12, "ends at 0");
        assert!(s.lr(500).abs() < 1e-12, "stays at 0 past the end");
    }

    #[test]
    fn no_warmup_and_warmup_longer_than_the_run() {
        let s = Schedule::new(2.0, LrScaling::None, 256, 0, 4);
        assert_eq!(s.lr(0), 2.0);
        let s = Schedule::new(2.0, LrScaling::None, 256, 100, 4);
        assert_eq!(s.warmup_steps, 4);
        assert_eq!(s.lr(2), 1.0);
    }
}
