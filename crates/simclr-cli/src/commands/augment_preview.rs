//! `simclr augment-preview`: a PNG grid, one row per image: the image, then its two views,
//! made by the augmentation `simclr pretrain` would use (its defaults and its flags, or a
//! run's own configuration with `--from-run`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use simclr_augment::view_rng;
use simclr_data::{Dataset, Image};
use simclr_train::TrainConfig;

use crate::DataArgs;

/// Options of `simclr augment-preview`.
#[derive(Debug, Args)]
pub struct AugmentPreviewArgs {
    #[command(flatten)]
    data: DataArgs,

    /// Output PNG file.
    #[arg(long, default_value = "views.png", value_name = "FILE")]
    out: PathBuf,

    /// Number of images (rows) to show, spread evenly over the dataset.
    #[arg(long, default_value_t = 8, value_name = "N")]
    count: usize,

    /// Show the augmentation of this run directory (its config.json): its view size, crop
    /// scale, jitter, blur and seed, and its dataset unless --data is given. Flags override it.
    #[arg(long, value_name = "DIR")]
    from_run: Option<PathBuf>,

    /// View size in pixels [default: the run's, else the dataset's image height].
    #[arg(long, value_name = "PX")]
    image_size: Option<u32>,

    /// Seed of the random views [default: the run's, else 0].
    #[arg(long)]
    seed: Option<u64>,

    /// Colour-jitter strength s (brightness/contrast/saturation 0.8 s, hue 0.2 s), as
    /// `simclr pretrain --jitter-strength` [default: the run's, else pretrain's 0.5].
    #[arg(long, value_name = "S")]
    jitter_strength: Option<f64>,

    /// Smallest area share of the random resized crop, as `simclr pretrain`
    /// [default: the run's, else 0.08].
    #[arg(long, value_name = "S")]
    min_crop_scale: Option<f64>,

    /// Gaussian blur, as `simclr pretrain --blur` [default: the run's, else on above 32 px].
    #[arg(long, value_name = "true|false")]
    blur: Option<bool>,

    /// Magnify each cell by this integer factor (default: to at least 96 px).
    #[arg(long, value_name = "K")]
    zoom: Option<u32>,
}

/// Gap between cells, in output pixels.
const GAP: u32 = 4;

/// Runs the command.
pub fn run(args: &AugmentPreviewArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    let format = image::ImageFormat::from_path(&args.out).with_context(|| {
        format!(
            "--out `{}`: the image format is named by the extension (.png, .jpg, …)",
            args.out.display()
        )
    })?;
    let run: Option<TrainConfig> = match &args.from_run {
        Some(dir) => {
            let path = dir.join("config.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("while reading `{}`", path.display()))?;
            Some(
                serde_json::from_str(&text)
                    .with_context(|| format!("`{}` is not a run config", path.display()))?,
            )
        }
        None => None,
    };
    let mut data = args.data.clone();
    if let Some(r) = &run
        && data.data.is_none()
    {
        data.data = r.data.clone();
        data.format = r
            .format
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?;
    }
    let ds = data.open()?;
    let read = |i| {
        ds.get(i)
            .with_context(|| format!("while reading the images of {}", data.describe()))
    };
    let first = read(0)?.image;
    let mut c = run.clone().unwrap_or_default();
    c.image_size = args
        .image_size
        .or(run.as_ref().map(|r| r.image_size))
        .unwrap_or(first.height());
    if c.image_size == 0 {
        bail!("--image-size must be at least 1 pixel");
    }
    macro_rules! set {
        ($($f:ident),*) => {$( if let Some(v) = args.$f { c.$f = v; } )*};
    }
    set!(seed, jitter_strength, min_crop_scale);
    if args.blur.is_some() {
        c.blur = args.blur;
    }
    let size = c.image_size;
    let cfg = c.augment(ds.channels());
    cfg.validate().context("invalid augmentation options")?;
    let seed = c.seed;

    let count = args.count.min(ds.len());
    let zoom = args.zoom.unwrap_or_else(|| 96u32.div_ceil(size)).max(1);
    let cell = size * zoom;
    let (w, h) = (3 * cell + 4 * GAP, count as u32 * (cell + GAP) + GAP);
    let mut grid = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for row in 0..count {
        let index = row * ds.len() / count;
        let img = read(index)?.image;
        let original = cfg.eval_image(&img);
        let v1 = cfg.view_image(&img, &mut view_rng(seed, 0, index as u64, 0));
        let v2 = cfg.view_image(&img, &mut view_rng(seed, 0, index as u64, 1));
        for (col, cell_img) in [original, v1, v2].iter().enumerate() {
            let x0 = GAP + col as u32 * (cell + GAP);
            let y0 = GAP + row as u32 * (cell + GAP);
            paste(&mut grid, cell_img, x0, y0, zoom);
        }
    }
    crate::write_image_atomic(&args.out, &grid, format)?;
    println!(
        "wrote {} ({count} images from {}: original | view 1 | view 2, {size}x{size} px, zoom {zoom}x)",
        args.out.display(),
        data.describe()
    );
    Ok(())
}

/// Draws `img` magnified `zoom` times (nearest neighbour) with its top-left at `(x0, y0)`.
fn paste(grid: &mut image::RgbImage, img: &Image, x0: u32, y0: u32, zoom: u32) {
    for y in 0..img.height() * zoom {
        for x in 0..img.width() * zoom {
            let p = img.pixel(x / zoom, y / zoom);
            let rgb = if p.len() == 1 {
                [p[0]; 3]
            } else {
                [p[0], p[1], p[2]]
            };
            grid.put_pixel(x0 + x, y0 + y, image::Rgb(rgb));
        }
    }
}
