//! `zlayer eval-layout`: the layout variants side by side on held-out synthetic scenes.
//!
//! Every variant generates the same scenes from the same noise (one batch at a time, in the
//! same order), so the comparison is paired. The ground truth goes to `OUT/gt`, each
//! variant's images to `OUT/<variant>`, and the metrics crate scores them as `zlayer eval`
//! does. Two reference rows frame the table: the real renders (`OUT/render`) scored as
//! predictions, the measure's ceiling; and the base model without the branch, the floor.

use crate::cli::Failure;
use crate::eval_cmd::write_report;
use crate::generate_cmd::{Model, ratio, rgb_image, to_rgb8};
use crate::scene_sampler::SceneSampler;
use crate::synth_cmd::SplitArg;
use crate::train_cmd::{Progress, scenes};
use crate::train_layout::synth_layout;
use candle_core::Device;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use zlayer_composite::annotate::Canvas;
use zlayer_composite::{BitDepth, atomic_write, write_png};
use zlayer_metrics::eval::{Summary, evaluate_dirs, summarize};
use zlayer_model::base::SampleOptions;
use zlayer_model::vae::VaeConfig;
use zlayer_synth::SynthScene;
use zlayer_synth::store::write_png_folder;

/// Flags of `zlayer eval-layout`.
#[derive(Debug, Args)]
pub struct EvalLayoutArgs {
    /// Trained layout branches (`layout.safetensors` with its `.json`), one row each.
    #[arg(
        long = "layout",
        required_unless_present = "larender",
        value_delimiter = ','
    )]
    layouts: Vec<PathBuf>,
    /// Model folder with the vae and base the branches were trained on.
    #[arg(long, default_value = "models/tiny")]
    model: PathBuf,
    /// Output folder: gt/, one folder per variant, summary.md, summary.json, grid.png.
    #[arg(long)]
    out: PathBuf,
    /// Split of the held-out scenes.
    #[arg(long, default_value = "complex")]
    split: SplitArg,
    /// Number of held-out scenes.
    #[arg(long, default_value_t = 300)]
    n: usize,
    /// Data seed of the held-out scenes (training uses seed 0 by default).
    #[arg(long, default_value_t = 1_000_000)]
    seed: u64,
    /// Euler steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Fraction of the sampling steps that run the layout branch (default: the model
    /// file's tuned `grounding_ratio`, else the official 0.3; see docs/layout.md).
    #[arg(long, value_parser = ratio)]
    grounding_ratio: Option<f64>,
    /// Scenes generated per batch (each batch has its own noise seed, shared by the variants).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Leave out the base model's row (it costs one more generation pass).
    #[arg(long)]
    no_base: bool,
    /// Add a row for LaRender (training-free, on the base; object opacity 0.8, every step).
    #[arg(long)]
    larender: bool,
}

/// 8-bit RGB images, one per scene.
type Images = Vec<Vec<[u8; 3]>>;

/// One row of the comparison.
#[derive(serde::Serialize)]
struct Row {
    name: String,
    /// The grounding ratio it sampled with (none for the reference rows).
    grounding_ratio: Option<f64>,
    seconds: f64,
    summary: Summary,
}

fn user(e: impl std::fmt::Display) -> Failure {
    Failure::User(e.to_string())
}

/// Runs the command.
pub fn run(a: EvalLayoutArgs) -> Result<(), Failure> {
    if a.n == 0 || a.batch == 0 || a.steps == 0 {
        return Err(user("--n, --batch and --steps must be positive"));
    }
    let dev = Device::Cpu;
    let m = Model::load(&a.model, &dev)?;
    let size = m.size;
    let split: zlayer_synth::Split = a.split.into();
    let held = scenes(a.seed, 0, a.n, size as u32, &[split]);
    let (gt, render) = (a.out.join("gt"), a.out.join("render"));
    std::fs::create_dir_all(&render).map_err(|e| user(format!("{}: {e}", render.display())))?;
    for (i, s) in held.iter().enumerate() {
        write_png_folder(&gt.join(name(i)), s).map_err(user)?;
        let img = rgb_image(&s.image, size, size);
        write_png(
            &render.join(format!("{}.png", name(i))),
            &img,
            BitDepth::Eight,
        )
        .map_err(user)?;
    }
    // The real renders, segmented like any prediction: the ceiling of the measure.
    let mut rows = vec![score(&a, "ground truth", &render, &gt, 0.0, None)?];
    let mut images = vec![("ground truth".to_string(), Vec::new())];
    if !a.no_base {
        let (secs, _, imgs) = generate(&a, None, "base", &m, &held, &dev)?;
        let base = a.out.join("base");
        rows.push(score(&a, "base (no branch)", &base, &gt, secs, None)?);
        images.push(("base (no branch)".into(), imgs));
    }
    let mut samplers = Vec::new();
    for path in &a.layouts {
        samplers.push(SceneSampler::from_file(path, m.base.clone(), &dev)?);
    }
    if a.larender {
        samplers.push(SceneSampler::LaRender(m.base.clone()));
    }
    for s in &samplers {
        // Two branches of one variant (say, two runs) get distinct folders and rows.
        let mut label = s.name().to_string();
        let mut k = 1;
        while rows.iter().any(|r| r.name == label) {
            k += 1;
            label = format!("{}-{k}", s.name());
        }
        let (secs, r, imgs) = generate(&a, Some(s), &label, &m, &held, &dev)?;
        rows.push(score(&a, &label, &a.out.join(&label), &gt, secs, r)?);
        images.push((label, imgs));
    }
    let md = table(&a, &rows);
    let json = serde_json::to_string_pretty(&rows).expect("plain data serialises");
    for (file, text) in [("summary.md", md.as_str()), ("summary.json", json.as_str())] {
        atomic_write(&a.out.join(file), |f| f.write_all(text.as_bytes())).map_err(user)?;
    }
    if let Some(img) = grid(&held, &images, size) {
        write_png(&a.out.join("grid.png"), &img, BitDepth::Eight).map_err(user)?;
    }
    crate::cli::print_stdout(&md)?;
    eprintln!("wrote {}", a.out.join("summary.md").display());
    Ok(())
}

fn name(i: usize) -> String {
    format!("{i:06}")
}

/// Generates every held-out scene with `sampler` (the base alone when `None`), writes the
/// images to `OUT/<label>/<scene>.png`; returns the seconds taken, the grounding ratio used
/// and the images.
fn generate(
    a: &EvalLayoutArgs,
    sampler: Option<&SceneSampler>,
    label: &str,
    m: &Model,
    held: &[SynthScene],
    dev: &Device,
) -> Result<(f64, Option<f64>, Images), Failure> {
    let int = |e: candle_core::Error| Failure::Internal(e.to_string());
    let (size, vae) = (m.size, &m.vae);
    let g = size / VaeConfig::FACTOR;
    let base = sampler.map_or(&m.base, SceneSampler::base);
    let dir = a.out.join(label);
    std::fs::create_dir_all(&dir).map_err(|e| user(format!("{}: {e}", dir.display())))?;
    eprintln!("generating {} scenes with {label}…", held.len());
    let bar = Progress::new(held.len());
    let start = std::time::Instant::now();
    let mut out = Vec::with_capacity(held.len());
    for (c, chunk) in held.chunks(a.batch).enumerate() {
        let opts = SampleOptions {
            steps: a.steps,
            guidance: 1.0,
            seed: a.seed ^ c as u64,
        };
        let prompts: Vec<&str> = chunk.iter().map(|s| s.scene.prompt.as_str()).collect();
        let ids = base
            .tokenizer
            .batch(&prompts, base.max_len, dev)
            .map_err(user)?;
        let tokens = match sampler {
            None => base
                .sample(&ids, (g, g), vae.cfg.latent, &opts)
                .map_err(int)?,
            Some(s) => {
                let layouts = chunk
                    .iter()
                    .map(|s| synth_layout(s, (g, g), false))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(Failure::Internal)?;
                let spec = ((g, g), vae.cfg.latent);
                s.sample(&ids, &prompts, &layouts, spec, &opts, a.grounding_ratio)
                    .map_err(int)?
                    .0
            }
        };
        let imgs = to_rgb8(&vae.decode_tokens(&tokens, g, g).map_err(int)?).map_err(int)?;
        for (k, img) in imgs.into_iter().enumerate() {
            let path = dir.join(format!("{}.png", name(c * a.batch + k)));
            write_png(&path, &rgb_image(&img, size, size), BitDepth::Eight).map_err(user)?;
            out.push(img);
        }
        bar.update(out.len(), String::new());
    }
    bar.finish();
    let ratio = sampler.and_then(|s| s.ratio(a.grounding_ratio));
    Ok((start.elapsed().as_secs_f64(), ratio, out))
}

/// Scores `pred` against `gt` and writes the report under `pred/eval`.
fn score(
    a: &EvalLayoutArgs,
    label: &str,
    pred: &Path,
    gt: &Path,
    seconds: f64,
    grounding_ratio: Option<f64>,
) -> Result<Row, Failure> {
    let results = evaluate_dirs(pred, gt).map_err(user)?;
    let summary = summarize(&results);
    let out = a.out.join("eval").join(label.replace([' ', '(', ')'], ""));
    write_report(
        &out,
        &summary,
        &results,
        &format!("{label} on {}", gt.display()),
    )?;
    Ok(Row {
        name: label.into(),
        grounding_ratio,
        seconds,
        summary,
    })
}

/// The comparison as Markdown.
fn table(a: &EvalLayoutArgs, rows: &[Row]) -> String {
    let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.3}"));
    let split: zlayer_synth::Split = a.split.into();
    let mut s = format!(
        "# Layout variants on {} held-out `{}` scenes\n\n\
         Data seed {}, {} Euler steps, no guidance; every variant draws the same noise. Order \
         accuracy and Occ. F1 are over declared overlapping pairs whose order the real render \
         shows ({} pairs).\n\n\
         | variant | grounding ratio | order acc. | Occ. F1 | WHDR (%) | mIoU | O-mIoU | box mIoU | box O-mIoU | s/image |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        a.n,
        split.name(),
        a.seed,
        a.steps,
        rows[0].summary.pairs,
    );
    for r in rows {
        let m = &r.summary;
        s += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.name,
            r.grounding_ratio.map_or("–".into(), |v| format!("{v}")),
            f(m.order_accuracy),
            f(m.occ_f1),
            m.whdr.map_or("–".into(), |v| format!("{v:.1}")),
            f(m.mask_miou),
            f(m.mask_o_miou),
            f(m.box_miou),
            f(m.box_o_miou),
            if r.seconds > 0.0 {
                format!("{:.2}", r.seconds / a.n as f64)
            } else {
                "–".into()
            },
        );
    }
    s
}

/// The first scenes (columns) under each row's images, labelled.
fn grid(
    held: &[SynthScene],
    rows: &[(String, Images)],
    size: usize,
) -> Option<zlayer_composite::Image<zlayer_composite::Straight>> {
    let cols = held.len().min(8);
    let (scale, label_w) = (2.0, 130.0);
    let cell = size as f32 * scale + 4.0;
    let mut c = Canvas::new(
        (label_w + cols as f32 * cell) as u32,
        (rows.len() as f32 * cell + 4.0) as u32,
        [250, 250, 250, 255],
    )?;
    for (r, (label, imgs)) in rows.iter().enumerate() {
        let y = 4.0 + r as f32 * cell;
        c.text(4.0, y + cell / 2.0 - 6.0, label, 1.0, [20, 20, 20, 255]);
        for k in 0..cols {
            let px = if r == 0 { &held[k].image } else { &imgs[k] };
            c.image_rgb(label_w + k as f32 * cell, y, px, size, scale);
        }
    }
    Some(c.to_image())
}
