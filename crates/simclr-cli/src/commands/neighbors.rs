//! `simclr neighbors`: image retrieval with an encoder. Every query's `k` most similar gallery
//! images by cosine similarity of their representations, as JSONL or CSV, a picture of the
//! hits, and the retrieval metrics of metric learning (recall@k, mAP@R) on labelled data.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::Device;
use clap::Args;
use simclr_data::{Dataset, Format, Image, Split};
use simclr_eval::{Encoder, Features, Hit, Index, retrieval_metrics};
use simclr_model::io::{self, SafetensorsFile};

use crate::DataArgs;
use crate::commands::pretrain::device;
use crate::commands::weights::{EMBEDDINGS_FORMAT, check_channels, encoder_hash};

/// Options of `simclr neighbors`.
#[derive(Debug, Args)]
pub struct NeighborsArgs {
    /// Encoder weights (`simclr export`) or a training checkpoint; not needed when gallery and
    /// queries are both embedding files.
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,
    /// The gallery searched: a dataset (as `--data` elsewhere), or the `.safetensors` file
    /// `simclr embed` wrote, so that a large gallery is embedded once [default: the bundled
    /// Fashion-MNIST sample].
    #[arg(long, value_name = "DATASET|EMBEDDINGS")]
    pub gallery: Option<PathBuf>,
    /// Split of a gallery dataset.
    #[arg(long, default_value = "train", value_name = "train|test")]
    pub gallery_split: Split,
    /// The queries: a dataset, an embeddings file, or image files [default: the gallery's
    /// dataset, --query-split].
    #[arg(long, value_name = "DATASET|EMBEDDINGS|IMAGE", num_args = 1..)]
    pub query: Vec<PathBuf>,
    /// Split of a query dataset.
    #[arg(long, default_value = "test", value_name = "train|test")]
    pub query_split: Split,
    /// Dataset format, when detection guesses wrong (gallery and query datasets).
    #[arg(long, value_name = "idx|cifar10|folder")]
    pub format: Option<Format>,
    /// Skip undecodable images in an image folder (with a warning) instead of failing.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Hits per query.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Only the first N queries [default: all].
    #[arg(long, value_name = "N")]
    pub max_queries: Option<usize>,
    /// Write every hit to this file: `.jsonl` (one object per hit) or `.csv`; columns query,
    /// query path, query label, rank, gallery index, path, label, similarity.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Draw the hits as a PNG: one row per query (the query, then its hits, each captioned
    /// with similarity and label; a hit of another label framed in red).
    #[arg(long, value_name = "PNG")]
    pub grid: Option<PathBuf>,
    /// Rows of the grid: that many queries, spread over the query set.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub grid_rows: usize,
    /// Measure recall@1/5/10 and mAP@R of the queries against the gallery (both labelled;
    /// a query is left out of its own results when the two are one set).
    #[arg(long)]
    pub eval: bool,
    /// Print one JSON line (the metrics with --eval) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Device: cpu, or cuda / cuda:N when built with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Embeddings with what is known of each row.
struct Side {
    /// What it is, for messages.
    name: String,
    /// Where it came from: a dataset (path or the bundled sample) and split, when known.
    source: Option<(Option<PathBuf>, Split)>,
    features: Vec<f32>,
    dim: usize,
    /// Rows before `--max-queries` kept the first few (the size of its dataset).
    source_len: usize,
    labels: Option<Vec<u32>>,
    paths: Vec<Option<String>>,
    /// The images, for the grid (opened lazily for an embeddings file).
    images: Option<Images>,
    /// The size the images were resized to before embedding (unknown for an embeddings file
    /// written before `simclr embed` recorded it).
    image_size: Option<u32>,
}

enum Images {
    Dataset(Arc<dyn Dataset>),
    Files(Vec<Image>),
}

impl Images {
    fn get(&self, i: usize) -> anyhow::Result<Image> {
        Ok(match self {
            Self::Dataset(ds) => ds.get(i)?.image,
            Self::Files(v) => v[i].clone(),
        })
    }
}

/// The embeddings of a side as a matrix.
fn features(side: &Side) -> Features<'_> {
    Features {
        data: &side.features,
        dim: side.dim,
    }
}

impl Side {
    fn rows(&self) -> usize {
        self.features.len() / self.dim.max(1)
    }
}

fn is_embeddings_file(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
        && path.is_file()
}

fn is_image_file(path: &Path) -> bool {
    path.is_file()
        && path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
            ["png", "jpg", "jpeg", "bmp", "webp"].contains(&e.to_ascii_lowercase().as_str())
        })
}

/// Loads a file `simclr embed` wrote; checks it came from `encoder` (read from `weights`)
/// when there is one.
fn load_embeddings(path: &Path, encoder: Option<(&Encoder, &Path)>) -> anyhow::Result<Side> {
    let f = SafetensorsFile::load(path, &Device::Cpu)?;
    if f.meta("format")? != EMBEDDINGS_FORMAT {
        bail!(
            "`{}` is not an embeddings file of `simclr embed` (format `{}`); pass a dataset, or \
             write the file with `simclr embed --out FILE.safetensors`",
            path.display(),
            f.meta("format")?
        );
    }
    if let Some((encoder, w)) = encoder
        && f.metadata.get("encoder_hash") != Some(&encoder_hash(encoder)?)
    {
        bail!(
            "`{}` was embedded by another encoder than `{}` ({}): its similarities to these \
             queries would mean nothing; embed the gallery again with these weights",
            path.display(),
            w.display(),
            f.metadata.get("weights").map_or("unknown", String::as_str)
        );
    }
    let e = f.tensor("embeddings")?;
    let (rows, dim) = e.dims2()?;
    let features = e.flatten_all()?.to_vec1::<f32>()?;
    let labels = match f.tensors.get("labels") {
        Some(l) => Some(l.to_vec1::<u32>()?),
        None => None,
    };
    let paths: Vec<Option<String>> = match f.metadata.get("paths") {
        Some(p) => serde_json::from_str(p)
            .with_context(|| format!("`{}`: metadata `paths` is unreadable", path.display()))?,
        None => vec![None; rows],
    };
    if paths.len() != rows || labels.as_ref().is_some_and(|l| l.len() != rows) {
        bail!(
            "`{}`: the labels or paths do not match the {rows} embeddings",
            path.display()
        );
    }
    let split: Split = f
        .metadata
        .get("split")
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    let data = f
        .metadata
        .get("data")
        .map(|d| (!d.is_empty()).then(|| PathBuf::from(d)));
    Ok(Side {
        name: format!("`{}`", path.display()),
        source: data.map(|d| (d, split)),
        source_len: rows,
        features,
        dim,
        labels,
        paths,
        images: None,
        image_size: f.metadata.get("image_size").and_then(|s| s.parse().ok()),
    })
}

fn open_dataset(
    path: Option<&Path>,
    split: Split,
    args: &NeighborsArgs,
) -> anyhow::Result<Arc<dyn Dataset>> {
    DataArgs {
        data: path.map(Path::to_owned),
        format: args.format,
        split,
        skip_bad_images: args.skip_bad_images,
    }
    .open()
}

fn embed(encoder: &Encoder, ds: &dyn Dataset, what: &str) -> anyhow::Result<Vec<f32>> {
    check_channels(encoder, ds)?;
    let bar = crate::progress_bar(ds.len() as u64, &format!("embedding the {what}"));
    let h = encoder.embed_dataset(ds, &mut |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    Ok(h)
}

fn dataset_side(
    path: Option<&Path>,
    split: Split,
    args: &NeighborsArgs,
    encoder: Option<&Encoder>,
    what: &str,
) -> anyhow::Result<Side> {
    let Some(encoder) = encoder else {
        bail!("--weights is needed to embed the {what} images (or pass an embeddings file)")
    };
    let ds = open_dataset(path, split, args)?;
    let features = embed(encoder, &ds, what)?;
    let paths = (0..ds.len())
        .map(|i| ds.item_path(i).map(|p| p.display().to_string()))
        .collect();
    Ok(Side {
        name: format!(
            "{} ({split})",
            path.map_or_else(
                || simclr_data::sample::NAME.to_string(),
                |p| format!("`{}`", p.display())
            )
        ),
        source: Some((path.map(Path::to_owned), split)),
        source_len: ds.len(),
        features,
        dim: encoder.feature_dim(),
        image_size: Some(encoder.image_size()),
        labels: (0..ds.len()).map(|i| ds.label(i)).collect(),
        paths,
        images: Some(Images::Dataset(ds)),
    })
}

fn image_files_side(files: &[PathBuf], encoder: Option<&Encoder>) -> anyhow::Result<Side> {
    let Some(encoder) = encoder else {
        bail!("--weights is needed to embed the query images")
    };
    let mut images = Vec::with_capacity(files.len());
    for f in files {
        let img = image::ImageReader::open(f)
            .and_then(|r| r.with_guessed_format())
            .map_err(anyhow::Error::from)
            .and_then(|mut r| {
                r.limits(simclr_data::decode_limits());
                simclr_data::decode_guarded(r).map_err(|e| anyhow::anyhow!(e))
            })
            .and_then(|d| Image::from_dynamic(&d).map_err(anyhow::Error::from))
            .with_context(|| format!("cannot decode the query image `{}`", f.display()))?;
        images.push(img);
    }
    let want = encoder.config().in_channels as u8;
    let images: Vec<Image> = images
        .into_iter()
        .map(|i| match (i.channels(), want) {
            (1, 3) => i.to_rgb(),
            (3, 1) => {
                Image::from_dynamic(&image::DynamicImage::ImageLuma8(i.to_dynamic().to_luma8()))
                    .expect("a decoded image converts")
            }
            _ => i,
        })
        .collect();
    let refs: Vec<&Image> = images.iter().collect();
    let features = encoder.embed(&refs)?;
    Ok(Side {
        name: format!("{} image file(s)", files.len()),
        source: None,
        source_len: files.len(),
        features,
        dim: encoder.feature_dim(),
        image_size: Some(encoder.image_size()),
        labels: None,
        paths: files
            .iter()
            .map(|p| Some(p.display().to_string()))
            .collect(),
        images: Some(Images::Files(images)),
    })
}

/// Makes sure the images of a side are at hand, opening the dataset an embeddings file was
/// made from if needed.
fn load_images(side: &mut Side, args: &NeighborsArgs) -> anyhow::Result<()> {
    if side.images.is_none() {
        let Some((path, split)) = side.source.clone() else {
            bail!(
                "--grid needs the images of {}, and it does not say where they are",
                side.name
            )
        };
        let ds = open_dataset(path.as_deref(), split, args)
            .with_context(|| format!("while opening the images of {} for --grid", side.name))?;
        if ds.len() != side.source_len {
            bail!(
                "{} holds {} embeddings, but its dataset now has {} images: embed it again",
                side.name,
                side.source_len,
                ds.len()
            );
        }
        side.images = Some(Images::Dataset(ds));
    }
    Ok(())
}

/// Runs `simclr neighbors`.
pub fn run(args: &NeighborsArgs) -> anyhow::Result<()> {
    if args.k == 0 {
        bail!("--k must be at least 1");
    }
    if let Some(out) = &args.out {
        let ext = out
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        if !matches!(ext.as_deref(), Some("jsonl" | "csv")) {
            bail!("--out `{}`: use .jsonl or .csv", out.display());
        }
    }
    if args.query.len() > 1
        && let Some(bad) = args.query.iter().find(|f| !is_image_file(f))
    {
        bail!(
            "--query `{}`: with several queries, each must be an image file (.png, .jpg, \
             .jpeg, .bmp, .webp)",
            bad.display()
        );
    }
    let dev = device(&args.device)?;
    let encoder = match &args.weights {
        Some(w) => Some(Encoder::from_safetensors(
            &crate::commands::weights::checkpoint_path(w),
            &dev,
        )?),
        None => None,
    };
    let weights = args
        .weights
        .as_deref()
        .map(crate::commands::weights::checkpoint_path);
    let made_by = encoder.as_ref().zip(weights.as_deref());

    let mut gallery = match &args.gallery {
        Some(p) if is_embeddings_file(p) => load_embeddings(p, made_by)?,
        p => dataset_side(
            p.as_deref(),
            args.gallery_split,
            args,
            encoder.as_ref(),
            "gallery",
        )?,
    };
    let mut queries = match args.query.as_slice() {
        [] => {
            let Some((path, _)) = gallery.source.clone() else {
                bail!("--query is needed: the gallery file does not say which dataset it holds")
            };
            dataset_side(
                path.as_deref(),
                args.query_split,
                args,
                encoder.as_ref(),
                "query",
            )?
        }
        [p] if is_embeddings_file(p) => load_embeddings(p, made_by)?,
        [p] if !is_image_file(p) => {
            dataset_side(Some(p), args.query_split, args, encoder.as_ref(), "query")?
        }
        files => image_files_side(files, encoder.as_ref())?,
    };
    if gallery.dim != queries.dim {
        bail!(
            "the gallery has {}-d embeddings, the queries {}-d: they come from different encoders",
            gallery.dim,
            queries.dim
        );
    }
    if let (Some(g), Some(q)) = (gallery.image_size, queries.image_size)
        && g != q
    {
        bail!(
            "the gallery was embedded from {g} px images, the queries from {q} px: their \
             similarities would mean little; embed both at one size (`simclr embed \
             --image-size`)"
        );
    }
    if let Some(n) = args.max_queries {
        let n = n.min(queries.rows());
        queries.features.truncate(n * queries.dim);
        queries.paths.truncate(n);
        if let Some(l) = &mut queries.labels {
            l.truncate(n);
        }
    }
    if queries.rows() == 0 || gallery.rows() == 0 {
        bail!(
            "nothing to search: {} queries against {} gallery images",
            queries.rows(),
            gallery.rows()
        );
    }
    // One set: the same source and split, so each query is excluded from its own hits.
    let same_set = gallery.source.is_some()
        && gallery.source == queries.source
        && gallery.source_len == queries.source_len;

    let index = Index::new(Features {
        data: &gallery.features,
        dim: gallery.dim,
    })?;
    let start = Instant::now();
    let hits = index.search_excluding(features(&queries), args.k, |q| same_set.then_some(q))?;
    let search_s = start.elapsed().as_secs_f64();
    eprintln!(
        "searched {} queries against {} gallery images ({}-d) in {search_s:.2} s{}",
        queries.rows(),
        gallery.rows(),
        gallery.dim,
        if same_set {
            ", each query excluded from its own hits"
        } else {
            ""
        }
    );

    if let Some(out) = &args.out {
        write_hits(out, &hits, &gallery, &queries)?;
        eprintln!(
            "wrote {} hits to {}",
            hits.iter().map(Vec::len).sum::<usize>(),
            out.display()
        );
    }
    if let Some(png) = &args.grid {
        let rows = args.grid_rows.clamp(1, queries.rows().max(1));
        let picks: Vec<usize> = (0..rows).map(|r| r * queries.rows() / rows).collect();
        draw_grid(png, &picks, &hits, &mut gallery, &mut queries, args)?;
        eprintln!("wrote {} ({rows} queries × {} hits)", png.display(), args.k);
    }
    if args.eval {
        let (Some(gl), Some(ql)) = (&gallery.labels, &queries.labels) else {
            bail!("--eval needs labels on both the gallery and the queries")
        };
        let ks = [1, 5, 10];
        let r = retrieval_metrics(&index, gl, features(&queries), ql, &ks, same_set)?;
        if args.json {
            let mut v = serde_json::json!({
                "gallery": gallery.name,
                "queries": queries.name,
                "gallery_images": gallery.rows(),
                "query_images": r.queries,
                "queries_without_match": r.without_match,
                "same_set": same_set,
                "map_at_r": r.map_at_r,
                "search_s": search_s,
            });
            for (k, rec) in &r.recall {
                v[format!("recall@{k}")] = (*rec).into();
            }
            println!("{v}");
        } else {
            let recalls: Vec<String> = r
                .recall
                .iter()
                .map(|(k, v)| format!("recall@{k} {:.2}%", 100.0 * v))
                .collect();
            println!(
                "{}, mAP@R {:.2}% ({} queries of {} against {} gallery images)",
                recalls.join(", "),
                100.0 * r.map_at_r,
                r.queries,
                queries.name,
                gallery.rows()
            );
        }
    } else if args.out.is_none() && args.grid.is_none() {
        print!("{}", hits_text(&hits, &gallery, &queries, 10));
    }
    Ok(())
}

fn label_text(labels: &Option<Vec<u32>>, i: usize) -> String {
    labels.as_ref().map_or(String::new(), |l| l[i].to_string())
}

/// A few queries' hits as text, for a terminal.
fn hits_text(hits: &[Vec<Hit>], gallery: &Side, queries: &Side, max: usize) -> String {
    let mut s = String::new();
    for (q, h) in hits.iter().enumerate().take(max) {
        let name = queries.paths[q].clone().unwrap_or_else(|| format!("#{q}"));
        let _ = write!(s, "{name}");
        if let Some(l) = &queries.labels {
            let _ = write!(s, " (label {})", l[q]);
        }
        s.push('\n');
        for (rank, hit) in h.iter().enumerate() {
            let g = gallery.paths[hit.index]
                .clone()
                .unwrap_or_else(|| format!("#{}", hit.index));
            let label = label_text(&gallery.labels, hit.index);
            let _ = writeln!(
                s,
                "  {:>2}. {g}{} {:.4}",
                rank + 1,
                if label.is_empty() {
                    String::new()
                } else {
                    format!(" (label {label})")
                },
                hit.similarity
            );
        }
    }
    if hits.len() > max {
        let _ = writeln!(
            s,
            "… {} more queries (--out FILE writes them all)",
            hits.len() - max
        );
    }
    s
}

fn write_hits(out: &Path, hits: &[Vec<Hit>], gallery: &Side, queries: &Side) -> anyhow::Result<()> {
    let csv = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let mut s = String::new();
    if csv {
        s.push_str("query,query_path,query_label,rank,gallery_index,path,label,similarity\n");
    }
    let field = |v: &Option<String>| v.clone().unwrap_or_default();
    for (q, h) in hits.iter().enumerate() {
        for (rank, hit) in h.iter().enumerate() {
            let (qp, gp) = (field(&queries.paths[q]), field(&gallery.paths[hit.index]));
            let (ql, gl) = (
                label_text(&queries.labels, q),
                label_text(&gallery.labels, hit.index),
            );
            if csv {
                let _ = writeln!(
                    s,
                    "{q},{},{ql},{},{},{},{gl},{}",
                    crate::commands::weights::csv_field(&qp),
                    rank + 1,
                    hit.index,
                    crate::commands::weights::csv_field(&gp),
                    hit.similarity
                );
            } else {
                let v = serde_json::json!({
                    "query": q,
                    "query_path": queries.paths[q],
                    "query_label": queries.labels.as_ref().map(|l| l[q]),
                    "rank": rank + 1,
                    "gallery_index": hit.index,
                    "path": gallery.paths[hit.index],
                    "label": gallery.labels.as_ref().map(|l| l[hit.index]),
                    "similarity": hit.similarity,
                });
                let _ = writeln!(s, "{v}");
            }
        }
    }
    io::write_atomic(out, s.as_bytes())?;
    Ok(())
}

/// Side of a grid cell, in pixels.
const CELL: u32 = 64;
const GAP: u32 = 6;
const CAPTION: u32 = 26;
const FRAME: u32 = 3;

/// An image scaled to `CELL`×`CELL` (nearest neighbour up, triangle filter down), as RGB.
fn cell_rgb(img: &Image) -> image::RgbImage {
    let rgb = img.to_dynamic().to_rgb8();
    let filter = if img.width() < CELL {
        image::imageops::FilterType::Nearest
    } else {
        image::imageops::FilterType::Triangle
    };
    image::imageops::resize(&rgb, CELL, CELL, filter)
}

fn draw_grid(
    png: &Path,
    picks: &[usize],
    hits: &[Vec<Hit>],
    gallery: &mut Side,
    queries: &mut Side,
    args: &NeighborsArgs,
) -> anyhow::Result<()> {
    use plotters::prelude::*;
    use plotters::style::{FontStyle, register_font};
    register_font("sans-serif", FontStyle::Normal, crate::commands::plot::FONT)
        .map_err(|_| anyhow::anyhow!("the bundled font is unreadable"))?;
    let k = args.k;
    let (cols, rows) = (k as u32 + 1, picks.len() as u32);
    // The query column is set apart by an extra gap.
    let w = GAP + cols * (CELL + GAP) + GAP;
    let h = GAP + rows * (CELL + CAPTION + GAP);
    let x_of = |c: u32| GAP + c * (CELL + GAP) + if c > 0 { GAP } else { 0 };
    let y_of = |r: u32| GAP + r * (CELL + CAPTION + GAP);
    let mut canvas = image::RgbImage::from_pixel(w, h, image::Rgb([255, 255, 255]));
    let mut frames: Vec<(u32, u32, [u8; 3])> = Vec::new();
    let mut captions: Vec<(u32, u32, String, String, bool)> = Vec::new();
    load_images(queries, args)?;
    load_images(gallery, args)?;
    let (queries, gallery) = (&*queries, &*gallery);
    {
        let q_images = queries.images.as_ref().expect("loaded");
        for (r, &q) in picks.iter().enumerate() {
            let (x, y) = (x_of(0), y_of(r as u32));
            image::imageops::overlay(
                &mut canvas,
                &cell_rgb(&q_images.get(q)?),
                x.into(),
                y.into(),
            );
            frames.push((x, y, [40, 90, 220]));
            let label = label_text(&queries.labels, q);
            captions.push((x, y + CELL, "query".into(), label, false));
        }
    }
    let q_labels = &queries.labels;
    let g_images = gallery.images.as_ref().expect("loaded");
    for (r, &q) in picks.iter().enumerate() {
        for (c, hit) in hits[q].iter().enumerate() {
            let (x, y) = (x_of(c as u32 + 1), y_of(r as u32));
            image::imageops::overlay(
                &mut canvas,
                &cell_rgb(&g_images.get(hit.index)?),
                x.into(),
                y.into(),
            );
            let label = label_text(&gallery.labels, hit.index);
            let wrong = match (q_labels, &gallery.labels) {
                (Some(ql), Some(gl)) => ql[q] != gl[hit.index],
                _ => false,
            };
            if wrong {
                frames.push((x, y, [220, 30, 30]));
            }
            captions.push((x, y + CELL, format!("{:.3}", hit.similarity), label, wrong));
        }
    }
    for &(x, y, color) in &frames {
        for t in 0..FRAME {
            for i in 0..CELL {
                for (px, py) in [
                    (x + i, y + t),
                    (x + i, y + CELL - 1 - t),
                    (x + t, y + i),
                    (x + CELL - 1 - t, y + i),
                ] {
                    canvas.put_pixel(px, py, image::Rgb(color));
                }
            }
        }
    }
    let (cw, ch) = canvas.dimensions();
    let mut buf = canvas.into_raw();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (cw, ch)).into_drawing_area();
        for (x, y, top, label, wrong) in &captions {
            let color = if *wrong {
                RGBColor(200, 20, 20)
            } else {
                RGBColor(30, 30, 30)
            };
            let style = ("sans-serif", 11).into_font().color(&color);
            root.draw_text(top, &style, (*x as i32 + 2, *y as i32 + 1))
                .map_err(|e| anyhow::anyhow!("drawing the grid: {e}"))?;
            if !label.is_empty() {
                root.draw_text(
                    &format!("label {label}"),
                    &style,
                    (*x as i32 + 2, *y as i32 + 13),
                )
                .map_err(|e| anyhow::anyhow!("drawing the grid: {e}"))?;
            }
        }
        root.present()
            .map_err(|e| anyhow::anyhow!("drawing the grid: {e}"))?;
    }
    let canvas = image::RgbImage::from_raw(cw, ch, buf).expect("the buffer it was made from");
    crate::write_image_atomic(png, &canvas, image::ImageFormat::Png)
}
