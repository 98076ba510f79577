//! `simclr plot`: loss and contrastive-accuracy curves of a run as a PNG.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

/// DejaVu Sans Mono (see assets/fonts/DejaVu-LICENSE), so the plot needs no system fonts.
pub const FONT: &[u8] = include_bytes!("../../../../assets/fonts/DejaVuSansMono.ttf");

/// Options of `simclr plot`.
#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Run directory (holding metrics.jsonl).
    pub run: PathBuf,
    /// Output PNG [default: <run>/curves.png].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// The curves of a run, read from `metrics.jsonl`.
#[derive(Debug, Default)]
pub struct Curves {
    /// `(step, loss, acc)` of every step.
    pub steps: Vec<(f64, f64, f64)>,
    /// `(step, loss, acc)` at the end of each epoch (epoch means).
    pub epochs: Vec<(f64, f64, f64)>,
    /// `(step, accuracy)` of the online probe (`--online-probe`), when the run has one.
    pub probe: Vec<(f64, f64)>,
}

/// Reads `metrics.jsonl`; a resumed run's repeated steps keep their last record.
pub fn read_curves(run: &Path) -> anyhow::Result<Curves> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("while reading `{}`", path.display()))?;
    let mut c = Curves::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("`{}` line {}: not JSON", path.display(), i + 1))?;
        let get = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let (Some(step), Some(loss), Some(acc)) = (get("step"), get("loss"), get("acc")) else {
            continue;
        };
        let list = if v.get("event").and_then(|e| e.as_str()) == Some("epoch") {
            &mut c.epochs
        } else {
            &mut c.steps
        };
        list.retain(|p| p.0 < step);
        list.push((step, loss, acc));
        if let Some(p) = get("probe_acc") {
            c.probe.retain(|q| q.0 < step);
            c.probe.push((step, p));
        }
    }
    if c.steps.is_empty() {
        bail!("`{}` holds no training steps yet", path.display());
    }
    Ok(c)
}

fn range(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.05).max(1e-3);
    (lo - pad, hi + pad)
}

/// Draws the loss (left) and contrastive accuracy (right) against the step.
pub fn draw(curves: &Curves, out: &Path, title: &str) -> anyhow::Result<()> {
    register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("the bundled font is unreadable"))?;
    let root = BitMapBackend::new(out, (1200, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let panels = root.split_evenly((1, 2));
    let last = curves.steps.last().map_or(1.0, |p| p.0).max(1.0);
    type Pick = fn(&(f64, f64, f64)) -> f64;
    for (panel, (name, pick, legend)) in panels.iter().zip([
        (
            "loss",
            (|p: &(f64, f64, f64)| p.1) as Pick,
            SeriesLabelPosition::UpperRight,
        ),
        (
            "contrastive top-1 accuracy",
            |p: &(f64, f64, f64)| p.2,
            SeriesLabelPosition::LowerRight,
        ),
    ]) {
        let with_probe = name.starts_with("contrastive") && !curves.probe.is_empty();
        let (lo, hi) = if with_probe {
            let (a, b) = range(curves.steps.iter().map(pick));
            let (c, d) = range(curves.probe.iter().map(|p| p.1));
            (a.min(c), b.max(d))
        } else {
            range(curves.steps.iter().map(pick))
        };
        let mut chart = ChartBuilder::on(panel)
            .caption(name, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..last, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .label_style(("sans-serif", 13))
            .draw()?;
        chart
            .draw_series(LineSeries::new(
                curves.steps.iter().map(|p| (p.0, pick(p))),
                RGBColor(120, 160, 220).stroke_width(1),
            ))?
            .label("per step")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RGBColor(120, 160, 220)));
        if with_probe {
            chart
                .draw_series(LineSeries::new(
                    curves.probe.iter().copied(),
                    RGBColor(40, 150, 60).stroke_width(1),
                ))?
                .label("online probe (linear top-1)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RGBColor(40, 150, 60)));
        }
        if !curves.epochs.is_empty() {
            chart
                .draw_series(LineSeries::new(
                    curves.epochs.iter().map(|p| (p.0, pick(p))),
                    RED.stroke_width(2),
                ))?
                .label("epoch mean")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
            chart.draw_series(
                curves
                    .epochs
                    .iter()
                    .map(|p| Circle::new((p.0, pick(p)), 4, RED.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(legend)
            .label_font(("sans-serif", 13))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()
        .with_context(|| format!("while writing `{}`", out.display()))?;
    Ok(())
}

/// Draws `<run>/curves.png` (or `out`) and returns its path.
pub fn plot_run(run: &Path, out: Option<&Path>) -> anyhow::Result<PathBuf> {
    let curves = read_curves(run)?;
    let out = out.map_or_else(|| run.join("curves.png"), Path::to_owned);
    draw(&curves, &out, &format!("simclr-rs run {}", run.display()))?;
    Ok(out)
}

/// Runs `simclr plot`.
pub fn run(args: &PlotArgs) -> anyhow::Result<()> {
    let out = plot_run(&args.run, args.out.as_deref())?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
