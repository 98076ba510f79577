//! Optimisers candle-nn lacks, as [`candle_nn::Optimizer`]s whose state can be saved and
//! restored exactly: LARS as in SimCLR, SGD with (Nesterov) momentum, and AdamW that leaves
//! biases and normalisation parameters undecayed.
//!
//! Every optimiser takes its variables in a fixed order and keeps one state vector per
//! variable in that order; [`StatefulOptimizer::state`] exports it and
//! [`StatefulOptimizer::load_state`] puts it back, which is what makes `--resume` exact.
//!
//! Which variables are "bias or norm" is decided by rank, as SimCLR's `exclude_bias_n_norm`
//! and solo-learn do: every 1-D parameter (biases, BatchNorm scale and shift) is excluded
//! from weight decay and from LARS's trust-ratio adaptation when `exclude_bias_norm` is set.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var, bail};
use serde::{Deserialize, Serialize};

/// Which optimiser `simclr pretrain` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// [`Lars`] (SimCLR's).
    Lars,
    /// [`Sgd`] with momentum.
    Sgd,
    /// [`AdamW`].
    AdamW,
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Lars => "lars",
            Self::Sgd => "sgd",
            Self::AdamW => "adamw",
        })
    }
}

impl FromStr for OptimizerKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "lars" => Ok(Self::Lars),
            "sgd" => Ok(Self::Sgd),
            "adamw" => Ok(Self::AdamW),
            _ => Err(format!(
                "unknown optimizer `{s}`; expected lars, sgd or adamw"
            )),
        }
    }
}

/// Hyper-parameters of every optimiser here (each reads the ones it uses).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Learning rate of the next step (the schedule sets it every step).
    pub lr: f64,
    /// Weight decay (L2 added to the gradient for LARS/SGD, decoupled for AdamW).
    pub weight_decay: f64,
    /// Momentum of LARS and SGD (SimCLR: 0.9).
    pub momentum: f64,
    /// Nesterov momentum for LARS and SGD.
    pub nesterov: bool,
    /// LARS trust coefficient η (SimCLR: 0.001).
    pub trust_coefficient: f64,
    /// AdamW's β₁.
    pub beta1: f64,
    /// AdamW's β₂.
    pub beta2: f64,
    /// AdamW's ε.
    pub eps: f64,
    /// Exclude 1-D parameters (biases, BatchNorm) from weight decay and LARS adaptation.
    pub exclude_bias_norm: bool,
}

impl Default for OptimConfig {
    /// SimCLR's LARS settings: momentum 0.9, η = 0.001, weight decay 1e-6.
    fn default() -> Self {
        Self {
            lr: 0.0,
            weight_decay: 1e-6,
            momentum: 0.9,
            nesterov: false,
            trust_coefficient: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            exclude_bias_norm: true,
        }
    }
}

/// An optimiser whose state can be exported and restored.
pub trait StatefulOptimizer {
    /// One update from the gradients of the loss.
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    /// The learning rate of the next step.
    fn learning_rate(&self) -> f64;
    /// Sets the learning rate of the next step.
    fn set_learning_rate(&mut self, lr: f64);
    /// Steps taken so far.
    fn steps(&self) -> u64;
    /// Per variable (in the order given at construction), its state tensors, named by slot.
    fn state(&self) -> Vec<Vec<(&'static str, Tensor)>>;
    /// Restores what [`state`](Self::state) exported, and the step count.
    fn load_state(&mut self, state: Vec<Vec<(String, Tensor)>>, steps: u64) -> Result<()>;
}

fn excluded(var: &Var, config: &OptimConfig) -> bool {
    config.exclude_bias_norm && var.rank() == 1
}

/// The gradient of `var`, zeros when it took no part in the loss.
///
/// Detached: candle's gradients carry the graph they were computed from (the forward pass's
/// activations), and state built from them would chain every step's graph to the next and
/// keep all of it alive.
fn grad_of(grads: &GradStore, var: &Var) -> Result<Tensor> {
    match grads.get(var.as_tensor()) {
        Some(g) => Ok(g.detach()),
        None => var.as_tensor().zeros_like(),
    }
}

fn check_loaded(
    slots: &[&str],
    vars: &[Var],
    state: &[Vec<(String, Tensor)>],
) -> Result<Vec<Vec<Tensor>>> {
    if state.len() != vars.len() {
        bail!(
            "optimizer state has {} entries, the model has {} parameters",
            state.len(),
            vars.len()
        )
    }
    let mut out = Vec::with_capacity(vars.len());
    for (i, (var, entry)) in vars.iter().zip(state).enumerate() {
        let mut tensors = Vec::with_capacity(slots.len());
        for slot in slots {
            let Some((_, t)) = entry.iter().find(|(n, _)| n == slot) else {
                bail!("optimizer state of parameter {i} lacks its `{slot}` buffer")
            };
            if t.dims() != var.dims() {
                bail!(
                    "optimizer `{slot}` buffer of parameter {i} has shape {:?}, the parameter {:?}",
                    t.dims(),
                    var.dims()
                )
            }
            tensors.push(t.to_device(var.device())?.to_dtype(var.dtype())?);
        }
        out.push(tensors);
    }
    Ok(out)
}

/// An optimiser's update rule: its per-parameter state and one parameter's update.
/// [`Optim`] does the rest (the loop over parameters, the step count, the learning rate,
/// exporting and restoring the state).
pub trait Rule: Send + 'static {
    /// Names of the per-parameter state buffers (PyTorch's names where it has them).
    const SLOTS: &'static [&'static str];

    /// The new value of a parameter from its detached value `w`, its detached gradient `g`,
    /// whether it is `excluded` from decay and adaptation, and its state `slots` (updated in
    /// place); `t` is the step being taken, 1 for the first.
    fn update(
        c: &OptimConfig,
        w: Tensor,
        g: Tensor,
        excluded: bool,
        slots: &mut [Tensor],
        t: u64,
    ) -> Result<Tensor>;
}

/// An optimiser over a fixed list of variables, following rule `R`.
pub struct Optim<R> {
    vars: Vec<Var>,
    slots: Vec<Vec<Tensor>>,
    config: OptimConfig,
    steps: u64,
    rule: PhantomData<R>,
}

/// LARS as in SimCLR's TensorFlow code (`lars_optimizer.py`, classic momentum):
///
/// ```text
/// g ← ∇ + wd·w                                   (unless excluded)
/// r ← η‖w‖/‖g‖ if ‖w‖ > 0 and ‖g‖ > 0, else 1    (1 if excluded)
/// v ← μ·v + lr·r·g
/// w ← w − v                   (Nesterov: w ← w − (μ·v + lr·r·g))
/// ```
pub type Lars = Optim<LarsRule>;

/// SGD with momentum as PyTorch's `torch.optim.SGD` (dampening 0):
///
/// ```text
/// g ← ∇ + wd·w                                   (unless excluded)
/// b ← μ·b + g
/// w ← w − lr·b                (Nesterov: w ← w − lr·(g + μ·b))
/// ```
pub type Sgd = Optim<SgdRule>;

/// AdamW as PyTorch's `torch.optim.AdamW`, with biases and norms undecayed when
/// `exclude_bias_norm` is set (candle-nn's decays every variable and hides its moments):
///
/// ```text
/// w ← w·(1 − lr·wd)                              (unless excluded)
/// m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²
/// w ← w − lr · (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)
/// ```
pub type AdamW = Optim<AdamWRule>;

/// The rule of [`Lars`].
pub struct LarsRule;
/// The rule of [`Sgd`].
pub struct SgdRule;
/// The rule of [`AdamW`].
pub struct AdamWRule;

/// `‖t‖₂` as a scalar tensor on `t`'s device.
fn norm(t: &Tensor) -> Result<Tensor> {
    t.sqr()?.sum_all()?.sqrt()
}

/// LARS's trust ratio `η‖w‖/‖g‖` (1 where either norm is 0) as a scalar tensor, computed on
/// the parameters' device: the update never reads a value back to the host, so a GPU step
/// runs without a synchronisation per parameter.
pub fn lars_trust_ratio(w: &Tensor, g: &Tensor, trust_coefficient: f64) -> Result<Tensor> {
    let (wn, gn) = (norm(w)?, norm(g)?);
    let ratio = (wn.affine(trust_coefficient, 0.0)? / &gn)?;
    let both = (wn.gt(0.0)? * gn.gt(0.0)?)?; // u8: 1 where both norms are positive
    both.where_cond(&ratio, &wn.ones_like()?)
}

impl Rule for LarsRule {
    const SLOTS: &'static [&'static str] = &["momentum"];

    fn update(
        c: &OptimConfig,
        w: Tensor,
        mut g: Tensor,
        excluded: bool,
        slots: &mut [Tensor],
        _t: u64,
    ) -> Result<Tensor> {
        if !excluded && c.weight_decay != 0.0 {
            g = (g + (&w * c.weight_decay)?)?;
        }
        let scaled = if excluded {
            (&g * c.lr)?
        } else {
            let factor = lars_trust_ratio(&w, &g, c.trust_coefficient)?.affine(c.lr, 0.0)?;
            g.broadcast_mul(&factor)?
        };
        let v = &mut slots[0];
        *v = ((&*v * c.momentum)? + &scaled)?;
        let update = if c.nesterov {
            ((&*v * c.momentum)? + scaled)?
        } else {
            v.clone()
        };
        w - update
    }
}

impl Rule for SgdRule {
    const SLOTS: &'static [&'static str] = &["momentum"];

    fn update(
        c: &OptimConfig,
        w: Tensor,
        mut g: Tensor,
        excluded: bool,
        slots: &mut [Tensor],
        _t: u64,
    ) -> Result<Tensor> {
        if !excluded && c.weight_decay != 0.0 {
            g = (g + (&w * c.weight_decay)?)?;
        }
        // PyTorch starts the buffer at g; from zeros, μ·0 + g is the same.
        let b = &mut slots[0];
        *b = ((&*b * c.momentum)? + &g)?;
        let d = if c.nesterov {
            (g + (&*b * c.momentum)?)?
        } else {
            b.clone()
        };
        w - (d * c.lr)?
    }
}

impl Rule for AdamWRule {
    const SLOTS: &'static [&'static str] = &["exp_avg", "exp_avg_sq"];

    fn update(
        c: &OptimConfig,
        mut w: Tensor,
        g: Tensor,
        excluded: bool,
        slots: &mut [Tensor],
        t: u64,
    ) -> Result<Tensor> {
        let t = t as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        if !excluded && c.weight_decay != 0.0 {
            w = (w * (1.0 - c.lr * c.weight_decay))?;
        }
        let [m, v] = slots else {
            bail!("AdamW keeps two buffers per parameter")
        };
        *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
        *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
        let m_hat = (&*m / bc1)?;
        let v_hat = (&*v / bc2)?;
        let update = (m_hat / (v_hat.sqrt()? + c.eps)?)?;
        w - (update * c.lr)?
    }
}

impl<R: Rule> candle_nn::Optimizer for Optim<R> {
    type Config = OptimConfig;

    fn new(vars: Vec<Var>, config: OptimConfig) -> Result<Self> {
        let slots = vars
            .iter()
            .map(|v| R::SLOTS.iter().map(|_| v.zeros_like()).collect())
            .collect::<Result<_>>()?;
        Ok(Self {
            vars,
            slots,
            config,
            steps: 0,
            rule: PhantomData,
        })
    }

    fn step(&mut self, grads: &GradStore) -> Result<()> {
        StatefulOptimizer::step(self, grads)
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }
}

impl<R: Rule> StatefulOptimizer for Optim<R> {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = &self.config;
        for (var, slots) in self.vars.iter().zip(self.slots.iter_mut()) {
            let w = var.as_tensor().detach();
            let g = grad_of(grads, var)?;
            let new = R::update(c, w, g, excluded(var, c), slots, self.steps + 1)?;
            var.set(&new)?;
        }
        self.steps += 1;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.config.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    fn steps(&self) -> u64 {
        self.steps
    }

    fn state(&self) -> Vec<Vec<(&'static str, Tensor)>> {
        self.slots
            .iter()
            .map(|s| R::SLOTS.iter().copied().zip(s.iter().cloned()).collect())
            .collect()
    }

    fn load_state(&mut self, state: Vec<Vec<(String, Tensor)>>, steps: u64) -> Result<()> {
        self.slots = check_loaded(R::SLOTS, &self.vars, &state)?;
        self.steps = steps;
        Ok(())
    }
}

/// Builds the optimiser of `kind` over `vars`.
pub fn build(
    kind: OptimizerKind,
    vars: Vec<Var>,
    config: OptimConfig,
) -> Result<Box<dyn StatefulOptimizer + Send>> {
    use candle_nn::Optimizer;
    Ok(match kind {
        OptimizerKind::Lars => Box::new(Lars::new(vars, config)?),
        OptimizerKind::Sgd => Box::new(Sgd::new(vars, config)?),
        OptimizerKind::AdamW => Box::new(AdamW::new(vars, config)?),
    })
}

#[cfg(test)]
mod tests {
    //! Each optimiser's step against numbers worked out by hand (in the comments).
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::Optimizer;

    /// A matrix parameter `W = [[3, 4]]` (‖W‖ = 5) and a bias `b = [1]`, with the loss
    /// `L = Σ W·c + 2·b`, `c = [0.6, 0.8]`, so `∇W = [0.6, 0.8]` (‖∇W‖ = 1), `∇b = [2]`.
    fn setup() -> (Var, Var, impl Fn(&Var, &Var) -> GradStore) {
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![3f32, 4.0], (1, 2), &dev).unwrap();
        let b = Var::from_vec(vec![1f32], 1, &dev).unwrap();
        let grads = |w: &Var, b: &Var| {
            let c = Tensor::new(&[[0.6f32], [0.8]], &Device::Cpu).unwrap();
            let loss = (w.as_tensor().matmul(&c).unwrap().sum_all().unwrap()
                + (b.as_tensor() * 2.0).unwrap().sum_all().unwrap())
            .unwrap();
            loss.backward().unwrap()
        };
        (w, b, grads)
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor()
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn close(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        // f32 arithmetic: a few ulps of the values compared.
        for (g, w) in got.iter().zip(want) {
            let tol = 4.0 * f64::from(f32::EPSILON) * w.abs().max(1.0);
            assert!(
                (f64::from(*g) - w).abs() <= tol,
                "got {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn lars_two_steps_by_hand() {
        let (w, b, grads) = setup();
        let cfg = OptimConfig {
            lr: 0.5,
            weight_decay: 0.1,
            momentum: 0.9,
            trust_coefficient: 0.01,
            ..OptimConfig::default()
        };
        let mut opt = Lars::new(vec![w.clone(), b.clone()], cfg).unwrap();
        Optimizer::step(&mut opt, &grads(&w, &b)).unwrap();
        // W: g = [0.6,0.8] + 0.1·[3,4] = [0.9,1.2], ‖g‖ = 1.5, r = 0.01·5/1.5 = 1/30,
        //    v = 0.5/30·[0.9,1.2] = [0.015, 0.02], W = [2.985, 3.98].
        // b: excluded, g = 2, r = 1, v = 1, b = 0.
        close(&values(&w), &[2.985, 3.98]);
        close(&values(&b), &[0.0]);
        Optimizer::step(&mut opt, &grads(&w, &b)).unwrap();
        // W: g = [0.6+0.2985, 0.8+0.398] = [0.8985, 1.198], ‖g‖ = 1.4975,
        //    ‖W‖ = √(2.985² + 3.98²) = 4.975, r = 0.01·4.975/1.4975,
        //    v = 0.9·[0.015,0.02] + 0.5·r·g.
        let r = 0.01 * 4.975 / 1.4975;
        let v = [0.9 * 0.015 + 0.5 * r * 0.8985, 0.9 * 0.02 + 0.5 * r * 1.198];
        close(&values(&w), &[2.985 - v[0], 3.98 - v[1]]);
        // b: v = 0.9·1 + 0.5·2 = 1.9, b = −1.9.
        close(&values(&b), &[-1.9]);
        assert_eq!(StatefulOptimizer::steps(&opt), 2);
    }

    /// LARS's rule with the norms read back to the host and the trust ratio computed there,
    /// in the f32 arithmetic the device tensors use (`affine` is `x·mul + 0`).
    fn host_lars(c: &OptimConfig, w: &[f32], g: &[f32], v: &mut [f32], excluded: bool) -> Vec<f32> {
        let dev = Device::Cpu;
        let g: Vec<f32> = if !excluded && c.weight_decay != 0.0 {
            let wd = c.weight_decay as f32;
            w.iter().zip(g).map(|(w, g)| g + (w * wd + 0.0)).collect()
        } else {
            g.to_vec()
        };
        let read = |x: &[f32]| {
            Tensor::from_slice(x, x.len(), &dev)
                .and_then(|t| t.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>())
                .unwrap()
        };
        let lr = c.lr as f32;
        let factor = if excluded {
            lr
        } else {
            let (wn, gn) = (read(w), read(&g));
            let r = if wn > 0.0 && gn > 0.0 {
                (wn * c.trust_coefficient as f32 + 0.0) / gn
            } else {
                1.0
            };
            r * lr + 0.0
        };
        let mu = c.momentum as f32;
        w.iter()
            .zip(&g)
            .zip(v.iter_mut())
            .map(|((w, g), v)| {
                let scaled = if excluded {
                    g * factor + 0.0
                } else {
                    g * factor
                };
                *v = (*v * mu + 0.0) + scaled;
                w - *v
            })
            .collect()
    }

    #[test]
    fn device_side_lars_equals_the_host_rule_bit_for_bit() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let dev = Device::Cpu;
        let c = OptimConfig {
            lr: 0.37,
            weight_decay: 1e-4,
            ..OptimConfig::default()
        };
        for (len, excluded, zero_w) in [(300, false, false), (7, true, false), (50, false, true)] {
            let w: Vec<f32> = (0..len)
                .map(|_| {
                    if zero_w {
                        0.0
                    } else {
                        rng.random_range(-1.0..1.0)
                    }
                })
                .collect();
            let mut v_host: Vec<f32> = (0..len).map(|_| rng.random_range(-0.1..0.1)).collect();
            let mut slots = [Tensor::from_slice(&v_host, len, &dev).unwrap()];
            let mut w_now = w.clone();
            for _ in 0..3 {
                let g: Vec<f32> = (0..len).map(|_| rng.random_range(-0.01..0.01)).collect();
                let want = host_lars(&c, &w_now, &g, &mut v_host, excluded);
                let got = LarsRule::update(
                    &c,
                    Tensor::from_slice(&w_now, len, &dev).unwrap(),
                    Tensor::from_slice(&g, len, &dev).unwrap(),
                    excluded,
                    &mut slots,
                    1,
                )
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
                assert_eq!(got, want, "len {len}, excluded {excluded}");
                assert_eq!(slots[0].to_vec1::<f32>().unwrap(), v_host);
                w_now = got;
            }
        }
    }

    #[test]
    fn lars_nesterov_and_zero_norm_guard() {
        let dev = Device::Cpu;
        let w = Var::from_vec(vec![0f32, 0.0], (1, 2), &dev).unwrap();
        let loss = w.as_tensor().sum_all().unwrap(); // ∇ = [1, 1]
        let cfg = OptimConfig {
            lr: 0.1,
            weight_decay: 0.0,
            nesterov: true,
            ..OptimConfig::default()
        };
        let mut opt = Lars::new(vec![w.clone()], cfg).unwrap();
        Optimizer::step(&mut opt, &loss.backward().unwrap()).unwrap();
        // ‖W‖ = 0: r = 1. v = 0.1, update = 0.9·0.1 + 0.1 = 0.19.
        close(&values(&w), &[-0.19, -0.19]);
    }

    #[test]
    fn sgd_momentum_and_nesterov_by_hand() {
        for nesterov in [false, true] {
            let (w, b, grads) = setup();
            let cfg = OptimConfig {
                lr: 0.1,
                weight_decay: 0.5,
                momentum: 0.9,
                nesterov,
                ..OptimConfig::default()
            };
            let mut opt = Sgd::new(vec![w.clone(), b.clone()], cfg).unwrap();
            Optimizer::step(&mut opt, &grads(&w, &b)).unwrap();
            // W: g = [0.6,0.8] + 0.5·[3,4] = [2.1, 2.8], buf = g.
            //    plain: W = [3,4] − 0.1·[2.1,2.8] = [2.79, 3.72]
            //    nesterov: d = g + 0.9·buf = 1.9·g, W = [3 − 0.399, 4 − 0.532]
            // b: excluded from decay, g = 2; plain b = 0.8, nesterov b = 1 − 0.38 = 0.62.
            if nesterov {
                close(&values(&w), &[2.601, 3.468]);
                close(&values(&b), &[0.62]);
            } else {
                close(&values(&w), &[2.79, 3.72]);
                close(&values(&b), &[0.8]);
            }
            Optimizer::step(&mut opt, &grads(&w, &b)).unwrap();
            if !nesterov {
                // g = [0.6 + 1.395, 0.8 + 1.86] = [1.995, 2.66], buf = 0.9·[2.1,2.8] + g
                //   = [3.885, 5.18], W = [2.79 − 0.3885, 3.72 − 0.518].
                close(&values(&w), &[2.4015, 3.202]);
                // b: buf = 0.9·2 + 2 = 3.8, b = 0.8 − 0.38 = 0.42.
                close(&values(&b), &[0.42]);
            }
        }
    }

    #[test]
    fn adamw_by_hand_and_bias_not_decayed() {
        let (w, b, grads) = setup();
        let cfg = OptimConfig {
            lr: 0.01,
            weight_decay: 0.5,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            ..OptimConfig::default()
        };
        let mut opt = AdamW::new(vec![w.clone(), b.clone()], cfg).unwrap();
        Optimizer::step(&mut opt, &grads(&w, &b)).unwrap();
        // Step 1: m̂ = g, v̂ = g², update = g/(|g| + ε) ≈ sign(g) = 1.
        // W = [3,4]·(1 − 0.01·0.5) − 0.01 = [2.975, 3.97]; b = 1 − 0.01 = 0.99.
        close(&values(&w), &[2.975, 3.97]);
        close(&values(&b), &[0.99]);
        Optimizer::step(&mut opt, &grads(&w, &b)).unwrap();
        // Step 2, constant gradient: m = 0.19g, m̂ = g; v = 0.001999g², v̂ = g²: update = 1 again.
        close(&values(&w), &[2.975 * 0.995 - 0.01, 3.97 * 0.995 - 0.01]);
        close(&values(&b), &[0.98]);
    }

    #[test]
    fn decay_applies_to_biases_when_not_excluded() {
        let (w, b, grads) = setup();
        let cfg = OptimConfig {
            lr: 0.1,
            weight_decay: 0.5,
            momentum: 0.0,
            exclude_bias_norm: false,
            ..OptimConfig::default()
        };
        let mut opt = Sgd::new(vec![w.clone(), b.clone()], cfg).unwrap();
        Optimizer::step(&mut opt, &grads(&w, &b)).unwrap();
        // b: g = 2 + 0.5·1 = 2.5, b = 1 − 0.25.
        close(&values(&b), &[0.75]);
    }

    #[test]
    fn state_round_trip_continues_identically() {
        for kind in [
            OptimizerKind::Lars,
            OptimizerKind::Sgd,
            OptimizerKind::AdamW,
        ] {
            let cfg = OptimConfig {
                lr: 0.05,
                ..OptimConfig::default()
            };
            let (w1, b1, grads) = setup();
            let mut a = build(kind, vec![w1.clone(), b1.clone()], cfg.clone()).unwrap();
            a.step(&grads(&w1, &b1)).unwrap();
            // Copy the parameters and the state into a fresh optimiser.
            let w2 = Var::from_tensor(&w1.as_tensor().copy().unwrap()).unwrap();
            let b2 = Var::from_tensor(&b1.as_tensor().copy().unwrap()).unwrap();
            let mut b = build(kind, vec![w2.clone(), b2.clone()], cfg.clone()).unwrap();
            let state = a
                .state()
                .into_iter()
                .map(|s| {
                    s.into_iter()
                        .map(|(n, t)| (n.to_string(), t.copy().unwrap()))
                        .collect()
                })
                .collect();
            b.load_state(state, a.steps()).unwrap();
            a.step(&grads(&w1, &b1)).unwrap();
            b.step(&grads(&w2, &b2)).unwrap();
            assert_eq!(values(&w1), values(&w2), "{kind}");
            assert_eq!(values(&b1), values(&b2), "{kind}");
        }
    }

    #[test]
    fn state_does_not_hold_on_to_the_graph() {
        // A momentum buffer that tracked its ops would keep every step's forward graph alive
        // (a run on full Fashion-MNIST grew to 24 GB this way).
        for kind in [
            OptimizerKind::Lars,
            OptimizerKind::Sgd,
            OptimizerKind::AdamW,
        ] {
            let (w, b, grads) = setup();
            let mut opt = build(kind, vec![w.clone(), b.clone()], OptimConfig::default()).unwrap();
            for _ in 0..2 {
                opt.step(&grads(&w, &b)).unwrap();
            }
            for slots in opt.state() {
                for (slot, t) in slots {
                    assert!(!t.track_op(), "{kind}: `{slot}` tracks its graph");
                }
            }
        }
    }

    #[test]
    fn load_state_rejects_wrong_shapes_and_counts() {
        let (w, b, _) = setup();
        let mut opt = build(OptimizerKind::Sgd, vec![w, b], OptimConfig::default()).unwrap();
        let bad = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let err = opt
            .load_state(
                vec![
                    vec![("momentum".into(), bad.clone())],
                    vec![("momentum".into(), bad)],
                ],
                1,
            )
            .unwrap_err();
        assert!(err.to_string().contains("shape"), "{err}");
        let err = opt.load_state(vec![], 1).unwrap_err();
        assert!(err.to_string().contains("2 parameters"), "{err}");
    }
}
