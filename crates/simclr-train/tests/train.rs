//! The pretraining loop end to end on small slices of the bundled Fashion-MNIST sample.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{Device, Tensor};
use simclr_data::Dataset;
use simclr_model::io::SafetensorsFile;
use simclr_train::{Event, OptimizerKind, Outcome, TrainConfig, TrainError, Trainer};

mod common;
use common::subset;

/// A tiny ResNet-18 on 16 px views: fast enough for a test, real enough to learn.
fn tiny(optimizer: OptimizerKind) -> TrainConfig {
    TrainConfig {
        width: 0.125,
        proj_dim: 16,
        image_size: 16,
        batch_size: 16,
        epochs: 4,
        optimizer,
        lr: 1.0,
        warmup_epochs: 1.0,
        workers: 2,
        ..TrainConfig::default()
    }
}

fn values(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Every tensor of two checkpoints, bit for bit, and their positions.
fn assert_same_checkpoint(a: &Path, b: &Path) {
    let a = SafetensorsFile::load(a, &Device::Cpu).unwrap();
    let b = SafetensorsFile::load(b, &Device::Cpu).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, t) in &a.tensors {
        assert!(values(t) == values(&b.tensors[name]), "`{name}` differs");
    }
    for key in ["epoch", "step_in_epoch", "global_step", "optimizer_steps"] {
        assert_eq!(a.metadata[key], b.metadata[key], "{key}");
    }
}

fn run(trainer: &mut Trainer) -> simclr_train::Summary {
    trainer.run(&AtomicBool::new(false), &mut |_| {}).unwrap()
}

#[test]
fn loss_falls_over_a_few_dozen_steps() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 32,
        warmup_epochs: 0.5,
        ..tiny(OptimizerKind::Lars)
    };
    let mut t = Trainer::new(cfg, subset(512), dir.path(), &Device::Cpu).unwrap();
    let mut losses = Vec::new();
    t.run(&AtomicBool::new(false), &mut |e| {
        if let Event::Step(m) = e {
            losses.push(m.loss)
        }
    })
    .unwrap();
    assert_eq!(losses.len(), 48);
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&losses[..8]), mean(&losses[40..]));
    assert!(last < first - 0.1, "loss went from {first} to {last}");
}

#[test]
fn resume_after_two_epochs_matches_four_straight() {
    for optimizer in [OptimizerKind::Lars, OptimizerKind::AdamW] {
        let data = subset(64); // 4 steps an epoch
        let straight = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            lr: if optimizer == OptimizerKind::AdamW {
                1e-3
            } else {
                1.0
            },
            ..tiny(optimizer)
        };
        let mut t = Trainer::new(cfg.clone(), data.clone(), straight.path(), &Device::Cpu).unwrap();
        assert_eq!(run(&mut t).outcome, Outcome::Finished);

        let split = tempfile::tempdir().unwrap();
        let first = TrainConfig {
            max_steps: Some(8),
            ..cfg.clone()
        };
        let mut t = Trainer::new(first, data.clone(), split.path(), &Device::Cpu).unwrap();
        assert_eq!(run(&mut t).outcome, Outcome::MaxSteps);
        let ckpt = split.path().join("last.safetensors");
        drop(t); // it holds the run directory's lock
        let mut t = Trainer::resume(
            &ckpt,
            |c| c.max_steps = None,
            data.clone(),
            split.path(),
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(t.global_step(), 8);
        assert_eq!(run(&mut t).steps, 8);
        assert_same_checkpoint(
            &straight.path().join("last.safetensors"),
            &split.path().join("last.safetensors"),
        );
    }
}

#[test]
fn ctrl_c_saves_mid_epoch_and_resume_continues_exactly() {
    let data = subset(64);
    let cfg = TrainConfig {
        epochs: 2,
        ..tiny(OptimizerKind::Sgd)
    };
    let straight = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(cfg.clone(), data.clone(), straight.path(), &Device::Cpu).unwrap();
    run(&mut t);

    let dir = tempfile::tempdir().unwrap();
    let stop = AtomicBool::new(false);
    let mut t = Trainer::new(cfg, data.clone(), dir.path(), &Device::Cpu).unwrap();
    let summary = t
        .run(&stop, &mut |e| {
            if let Event::Step(m) = e
                && m.step == 3
            {
                stop.store(true, Ordering::SeqCst); // what the Ctrl-C handler does
            }
        })
        .unwrap();
    assert_eq!(summary.outcome, Outcome::Interrupted);
    let ckpt = dir.path().join("last.safetensors");
    let saved = SafetensorsFile::load(&ckpt, &Device::Cpu).unwrap();
    assert_eq!(saved.metadata["step_in_epoch"], "3");
    drop(t); // it holds the run directory's lock
    let mut t = Trainer::resume(&ckpt, |_| {}, data, dir.path(), &Device::Cpu).unwrap();
    run(&mut t);
    assert_same_checkpoint(&straight.path().join("last.safetensors"), &ckpt);
}

#[test]
fn checkpoint_holds_every_tensor_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        keep_last: 2,
        ..tiny(OptimizerKind::Lars)
    };
    let mut t = Trainer::new(cfg.clone(), subset(32), dir.path(), &Device::Cpu).unwrap();
    run(&mut t);
    let f = SafetensorsFile::load(&dir.path().join("last.safetensors"), &Device::Cpu).unwrap();
    for (name, tensor) in t.model().tensors() {
        assert!(
            values(&tensor) == values(f.tensor(&name).unwrap()),
            "{name}"
        );
    }
    for (name, _) in t.model().trainable_vars() {
        f.tensor(&format!("optimizer.{name}.momentum")).unwrap();
    }
    let n_model = t.model().tensors().len();
    let n_params = t.model().trainable_vars().len();
    assert_eq!(f.tensors.len(), n_model + n_params);
    assert_eq!(f.metadata, t.checkpoint_metadata());
    let saved: TrainConfig = serde_json::from_str(&f.metadata["config"]).unwrap();
    assert_eq!(saved, cfg);
    assert_eq!(f.metadata["epoch"], "3");
    assert_eq!(f.metadata["global_step"], "6");
    assert_eq!(f.metadata["optimizer_steps"], "6");
    assert_eq!(f.metadata["image_size"], "16");
    assert_eq!(f.metadata["normalize_mean"], "[0.5]");
    // Numbered checkpoints: the last two epochs only.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "config.json",
            "epoch-0002.safetensors",
            "epoch-0003.safetensors",
            "last.safetensors",
            "metrics.jsonl",
            "run.lock"
        ]
    );
    // metrics.jsonl: a line per step and per epoch, with the promised fields.
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6 + 3);
    for key in [
        "epoch",
        "step",
        "loss",
        "lr",
        "views_per_s",
        "acc",
        "data_wait_s",
    ] {
        assert!(
            lines[0].get(key).is_some(),
            "{key} missing from {}",
            lines[0]
        );
    }
    assert_eq!(lines[2]["event"], "epoch");
}

/// Poisons a weight, as a diverging run would. (The head's last layer: a NaN earlier on is
/// clamped to 0 by the ReLUs and would only freeze the loss.)
fn poison(t: &Trainer) {
    let (_, w) = t
        .model()
        .named_vars()
        .into_iter()
        .find(|(n, _)| n == "projector.3.weight")
        .unwrap();
    w.set(&(w.as_tensor() * f64::NAN).unwrap()).unwrap();
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        max_steps: Some(2),
        ..tiny(OptimizerKind::Lars)
    };
    let mut t = Trainer::new(cfg, subset(32), dir.path(), &Device::Cpu).unwrap();
    run(&mut t);
    let ckpt = dir.path().join("last.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    poison(&t);
    t.set_max_steps(None);
    let err = t.run(&AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, TrainError::NonFinite { step: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("last.safetensors"), "{err}");
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "the last good checkpoint is untouched"
    );
}

#[test]
fn bad_setups_fail_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let err = Trainer::new(
        tiny(OptimizerKind::Lars),
        subset(8),
        dir.path(),
        &Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("fewer than one batch"), "{err}");
    let bad = TrainConfig {
        temperature: 0.0,
        ..tiny(OptimizerKind::Lars)
    };
    let err = Trainer::new(bad, subset(32), dir.path(), &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("--temperature"), "{err}");
    // A run directory below a regular file cannot be created.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let err = Trainer::new(
        tiny(OptimizerKind::Lars),
        subset(32),
        &file.join("run"),
        &Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(matches!(err, TrainError::File { .. }), "{err}");
    // Resuming from something that is not a checkpoint.
    let weights = dir.path().join("w.safetensors");
    let one = Tensor::ones(2, candle_core::DType::F32, &Device::Cpu).unwrap();
    simclr_model::io::save(&weights, &[("x".into(), one)], &Default::default()).unwrap();
    let err = Trainer::resume(&weights, |_| {}, subset(32), dir.path(), &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("`format` is missing"), "{err}");
}

/// Records the epochs it is called at and the model's first weight then; fails at `fail_at`.
struct Recorder {
    calls: Arc<std::sync::Mutex<Vec<(u64, f32)>>>,
    fail_at: Option<u64>,
}

impl simclr_train::Monitor for Recorder {
    fn measure(
        &mut self,
        model: &simclr_model::SimClr,
        epoch: u64,
    ) -> Result<Vec<(String, f64)>, Box<dyn std::error::Error + Send + Sync>> {
        if self.fail_at == Some(epoch) {
            return Err("the bank is empty".into());
        }
        let w = model.named_vars()[0].1.flatten_all()?.to_vec1::<f32>()?[0];
        self.calls.lock().unwrap().push((epoch, w));
        Ok(vec![("probe".into(), epoch as f64 / 10.0)])
    }
}

#[test]
fn the_monitor_measures_every_n_epochs_and_the_last_into_the_epoch_lines() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        ..tiny(OptimizerKind::Lars)
    };
    let mut t = Trainer::new(cfg, subset(32), dir.path(), &Device::Cpu).unwrap();
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    t.set_monitor(
        Box::new(Recorder {
            calls: calls.clone(),
            fail_at: None,
        }),
        2,
    );
    let mut seen = Vec::new();
    t.run(&AtomicBool::new(false), &mut |e| {
        if let Event::Epoch(m) = e {
            seen.push((m.epoch, m.monitor.get("probe").copied()));
        }
    })
    .unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(|c| c.0).collect::<Vec<_>>(),
        [2, 3],
        "every 2nd epoch and the last"
    );
    assert_eq!(seen, [(1, None), (2, Some(0.2)), (3, Some(0.3))]);
    // It saw the trained weights of that epoch, as saved in its checkpoint.
    let ckpt =
        SafetensorsFile::load(&dir.path().join("epoch-0002.safetensors"), &Device::Cpu).unwrap();
    let name = &t.model().named_vars()[0].0;
    let saved = ckpt.tensors[name]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    assert_eq!(calls[0].1, saved);
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let epochs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "epoch")
        .collect();
    assert_eq!(epochs.len(), 3);
    assert!(epochs[0].get("probe").is_none());
    assert_eq!(epochs[1]["probe"], 0.2);
    assert_eq!(epochs[2]["probe"], 0.3);
}

#[test]
fn a_failing_monitor_stops_the_run_after_saving_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        save_every: 5,
        ..tiny(OptimizerKind::Lars)
    };
    let mut t = Trainer::new(cfg, subset(32), dir.path(), &Device::Cpu).unwrap();
    t.set_monitor(
        Box::new(Recorder {
            calls: Arc::default(),
            fail_at: Some(2),
        }),
        1,
    );
    let err = t.run(&AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(matches!(err, TrainError::Monitor { epoch: 2, .. }), "{err}");
    // The cause is kept as the error's source, so `{err:#}` (anyhow) shows the chain.
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    assert_eq!(cause.as_deref(), Some("the bank is empty"), "{err}");
    // Epoch 2 was not a numbered save (save_every 5), so last.safetensors holds it.
    let last = SafetensorsFile::load(&dir.path().join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(last.metadata["epoch"], "2");
    assert_eq!(last.metadata["step_in_epoch"], "0");
}

/// Per-step losses reported by a run.
fn run_losses(trainer: &mut Trainer) -> Vec<(u64, f32)> {
    let mut losses = Vec::new();
    trainer
        .run(&AtomicBool::new(false), &mut |e| {
            if let Event::Step(m) = e {
                losses.push((m.step, m.loss));
            }
        })
        .unwrap();
    losses
}

#[test]
fn a_second_trainer_cannot_train_into_a_locked_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = Trainer::new(
        tiny(OptimizerKind::Lars),
        subset(32),
        dir.path(),
        &Device::Cpu,
    )
    .unwrap();
    let err = Trainer::new(
        tiny(OptimizerKind::Sgd),
        subset(32),
        dir.path(),
        &Device::Cpu,
    )
    .err()
    .expect("the directory is locked");
    let msg = err.to_string();
    assert!(matches!(err, TrainError::Lock(_)), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    assert!(
        config.contains("\"lars\""),
        "the first run's config.json is untouched"
    );
    drop(first);
    Trainer::new(
        tiny(OptimizerKind::Sgd),
        subset(32),
        dir.path(),
        &Device::Cpu,
    )
    .unwrap();
}

#[test]
fn reading_the_loss_back_every_few_steps_changes_nothing_but_when() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = TrainConfig {
        epochs: 2,
        ..tiny(OptimizerKind::Lars)
    };
    let mut every_step = Trainer::new(cfg.clone(), subset(80), a.path(), &Device::Cpu).unwrap();
    let mut windowed = Trainer::new(cfg, subset(80), b.path(), &Device::Cpu).unwrap();
    windowed.set_log_every(3); // 5 steps an epoch: windows of 3, then 2 at the epoch's end
    let want = run_losses(&mut every_step);
    let got = run_losses(&mut windowed);
    assert_eq!(want.len(), 10);
    assert_eq!(
        got, want,
        "every step reported, in order, with the same loss"
    );
    assert_same_checkpoint(
        &a.path().join("last.safetensors"),
        &b.path().join("last.safetensors"),
    );
    let lines = |d: &Path| {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .count()
    };
    assert_eq!(lines(a.path()), lines(b.path()));
}

#[test]
fn a_nan_read_back_late_is_still_reported_at_its_step_and_saves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        max_steps: Some(2),
        ..tiny(OptimizerKind::Lars)
    };
    let mut t = Trainer::new(cfg, subset(48), dir.path(), &Device::Cpu).unwrap();
    run(&mut t);
    let ckpt = dir.path().join("last.safetensors");
    let before = std::fs::read(&ckpt).unwrap();
    poison(&t);
    t.set_max_steps(None);
    // Steps 3 is read back with the epoch's last step (3 steps an epoch), before its
    // checkpoint would be written.
    t.set_log_every(10);
    let err = t.run(&AtomicBool::new(false), &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, TrainError::NonFinite { step: 3, .. }),
        "{err}"
    );
    assert_eq!(std::fs::read(&ckpt).unwrap(), before);
    assert!(!dir.path().join("epoch-0001.safetensors").exists());
}

/// The sample subset, whose `bad`-th read panics.
struct Panicking {
    inner: Arc<dyn Dataset>,
    reads: std::sync::atomic::AtomicUsize,
    bad: usize,
}

impl Dataset for Panicking {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn get(&self, index: usize) -> Result<simclr_data::Sample, simclr_data::DataError> {
        let read = 1 + self.reads.fetch_add(1, Ordering::SeqCst);
        assert!(read != self.bad, "cannot read item {index}: disk gone");
        self.inner.get(index)
    }
    fn label(&self, index: usize) -> Option<u32> {
        self.inner.label(index)
    }
    fn channels(&self) -> u8 {
        self.inner.channels()
    }
    fn num_classes(&self) -> Option<usize> {
        self.inner.num_classes()
    }
}

#[test]
fn a_loader_that_dies_mid_epoch_fails_the_run_and_keeps_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // 32 images, batches of 16: 32 reads an epoch, after the 16 of the dataset's fingerprint
    // when the trainer is built; read 16 + 40 is in epoch 2, step 1.
    let data: Arc<dyn Dataset> = Arc::new(Panicking {
        inner: subset(32),
        reads: 0.into(),
        bad: 16 + 40,
    });
    let mut t = Trainer::new(tiny(OptimizerKind::Lars), data, dir.path(), &Device::Cpu).unwrap();
    let mut saved = Vec::new();
    let err = t
        .run(&AtomicBool::new(false), &mut |e| {
            if let Event::Checkpoint(p) = e {
                saved.push(p.to_owned());
            }
        })
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::Loader { .. }), "{msg}");
    assert!(
        msg.contains("epoch 2, step 1")
            && msg.contains("disk gone")
            && msg.contains("last.safetensors"),
        "{msg}"
    );
    assert_eq!(saved, [dir.path().join("epoch-0001.safetensors")]);
    let last = SafetensorsFile::load(&dir.path().join("last.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(
        last.metadata["global_step"], "2",
        "the epoch-1 checkpoint is intact"
    );
}

#[test]
fn a_resume_on_other_data_is_refused_naming_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        max_steps: Some(1),
        ..tiny(OptimizerKind::Lars)
    };
    let mut t = Trainer::new(cfg, subset(48), dir.path(), &Device::Cpu).unwrap();
    run(&mut t);
    drop(t);
    let ckpt = dir.path().join("last.safetensors");
    let saved = SafetensorsFile::load(&ckpt, &Device::Cpu).unwrap();
    assert!(saved.metadata["data_fingerprint"].contains("\"len\":48"));
    assert!(saved.metadata["arithmetic"].contains("\"threads\""));
    let err = Trainer::resume(&ckpt, |_| {}, subset(47), dir.path(), &Device::Cpu)
        .err()
        .expect("another dataset");
    let msg = err.to_string();
    assert!(msg.contains("48 images then, 47 now"), "{msg}");
    // The same data resumes, with nothing to note on the same machine.
    let t = Trainer::resume(&ckpt, |_| {}, subset(48), dir.path(), &Device::Cpu).unwrap();
    assert!(t.resume_notes().is_empty(), "{:?}", t.resume_notes());
}

/// `trust_coefficient` is LARS's η: on the first step (no momentum yet, the same gradient) a
/// weight moves by `lr·η·‖w‖` along its gradient, so four times the η moves every adapted
/// weight four times as far, while biases and BatchNorm parameters, which take the plain
/// learning rate, move exactly as before. A config saved before the field existed reads
/// SimCLR's 0.001.
#[test]
fn the_trust_coefficient_scales_the_lars_step_of_weights_only() {
    let first_step = |eta: f64| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = TrainConfig {
            warmup_epochs: 0.0,
            max_steps: Some(1),
            trust_coefficient: eta,
            ..tiny(OptimizerKind::Lars)
        };
        let mut t = Trainer::new(cfg, subset(64), dir.path(), &Device::Cpu).unwrap();
        let before = t.model().trainable_vars();
        let before: Vec<(String, Tensor)> = before
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().copy().unwrap()))
            .collect();
        assert_eq!(run(&mut t).steps, 1);
        let after = t.model().trainable_vars();
        before
            .into_iter()
            .zip(after)
            .map(|((n, w0), (m, w1))| {
                assert_eq!(n, m);
                let rank = w0.rank();
                let moved = (w1.as_tensor() - &w0).unwrap();
                (n, rank, moved)
            })
            .collect::<Vec<_>>()
    };
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt()
    };
    let (a, b) = (first_step(1e-3), first_step(4e-3));
    let mut adapted = 0;
    for ((name, rank, da), (_, _, db)) in a.iter().zip(&b) {
        let (na, nb) = (norm(da), norm(db));
        assert!(na > 0.0, "`{name}` did not move");
        if *rank > 1 {
            adapted += 1;
            assert!(
                (nb / na - 4.0).abs() < 4e-3,
                "`{name}`: moved {nb} with η 0.004 against {na} with η 0.001"
            );
        } else {
            assert!(
                values(da) == values(db),
                "`{name}` is not adapted, yet moved {nb} against {na}"
            );
        }
    }
    assert!(adapted > 10, "{adapted} adapted weights");

    let mut old = serde_json::to_value(TrainConfig::default()).unwrap();
    old.as_object_mut()
        .unwrap()
        .remove("trust_coefficient")
        .unwrap();
    let old: TrainConfig = serde_json::from_value(old).unwrap();
    assert_eq!(old.trust_coefficient, 1e-3);
}
