//! `simclr augment-preview`: a PNG grid, one row per image: the image, then its two views.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use simclr_augment::{AugmentConfig, view_rng};
use simclr_data::{Dataset, Image};

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

    /// View size in pixels (default: the dataset's image height).
    #[arg(long, value_name = "PX")]
    image_size: Option<u32>,

    /// Seed of the random views.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Colour-jitter strength s (brightness/contrast/saturation 0.8 s, hue 0.2 s).
    #[arg(long, default_value_t = 1.0, value_name = "S")]
    jitter_strength: f64,

    /// Blur probability (default: 0.5 above 32 px, 0 at 32 px and below, as the paper).
    #[arg(long, value_name = "P")]
    blur: Option<f64>,

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
    let ds = args.data.open()?;
    let first = ds.get(0).image;
    let size = args.image_size.unwrap_or(first.height());
    if size == 0 {
        bail!("--image-size must be at least 1 pixel");
    }
    let mut cfg =
        AugmentConfig::simclr(size, ds.channels()).with_jitter_strength(args.jitter_strength);
    if let Some(p) = args.blur {
        cfg.blur_p = p;
    }
    cfg.validate().context("invalid augmentation options")?;

    let count = args.count.min(ds.len());
    let zoom = args.zoom.unwrap_or_else(|| 96u32.div_ceil(size)).max(1);
    let cell = size * zoom;
    let (w, h) = (3 * cell + 4 * GAP, count as u32 * (cell + GAP) + GAP);
    let mut grid = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    for row in 0..count {
        let index = row * ds.len() / count;
        let img = ds.get(index).image;
        let original = cfg.eval_image(&img);
        let v1 = cfg.view_image(&img, &mut view_rng(args.seed, 0, index as u64, 0));
        let v2 = cfg.view_image(&img, &mut view_rng(args.seed, 0, index as u64, 1));
        for (col, cell_img) in [original, v1, v2].iter().enumerate() {
            let x0 = GAP + col as u32 * (cell + GAP);
            let y0 = GAP + row as u32 * (cell + GAP);
            paste(&mut grid, cell_img, x0, y0, zoom);
        }
    }
    grid.save(&args.out)
        .with_context(|| format!("while writing `{}`", args.out.display()))?;
    println!(
        "wrote {} ({count} images from {}: original | view 1 | view 2, {size}x{size} px, zoom {zoom}x)",
        args.out.display(),
        args.data.describe()
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
