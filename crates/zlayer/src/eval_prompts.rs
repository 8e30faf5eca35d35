//! `zlayer eval-prompts`: does the base model draw what a global prompt names? For held-out
//! prompts, the metrics segmenter looks for every prompted colour in the generated image.

use crate::args::SplitArg;
use candle_core::Device;
use clap::Args;
use indicatif::ProgressBar;
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use zlayer_app::Failure;
use zlayer_app::data::{base_batch, scenes};
use zlayer_app::model::Model;
use zlayer_app::model::{BaseMeta, ModelDir};
use zlayer_app::output::to_rgb8;
use zlayer_app::pipeline::draw;
use zlayer_composite::annotate::Canvas;
use zlayer_composite::{BitDepth, atomic_write, write_png};
use zlayer_metrics::segment::{PRESENT_INSET, colour_present, vocabulary_candidates};
use zlayer_model::base::SampleOptions;
use zlayer_synth::vocab::{Colour, Look};
use zlayer_synth::{Split, SynthScene};

/// Flags of `zlayer eval-prompts`.
#[derive(Debug, Args)]
pub struct EvalPromptsArgs {
    /// Model folder with vae.safetensors and base.safetensors (and their .json), or
    /// `bundled` (the built-in models/tiny16).
    #[arg(long, default_value = ModelDir::BUNDLED, value_parser = ModelDir::parse)]
    model: ModelDir,
    /// Held-out prompts to score.
    #[arg(long, default_value_t = 200)]
    n: usize,
    /// Splits the prompts come from, interleaved.
    #[arg(long, value_delimiter = ',', default_value = "simple,regular")]
    splits: Vec<SplitArg>,
    /// Data seed of the held-out scenes (training uses seed 0 by default).
    #[arg(long, default_value_t = 1_000_000)]
    seed: u64,
    /// Euler steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Classifier-free guidance scale, 1 disabling it [default: the model's tuned `guidance`
    /// in base.json, else 1].
    #[arg(long)]
    guidance: Option<f64>,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    noise_seed: u64,
    /// Images generated at once.
    #[arg(long, default_value_t = 25)]
    batch: usize,
    /// Where to write summary.json, summary.md, per_prompt.csv and samples.png
    /// (default: MODEL/eval-prompts).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Samples drawn in samples.png.
    #[arg(long, default_value_t = 48)]
    sheet: usize,
}

/// One prompt's outcome.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    index: u64,
    split: &'static str,
    prompt: String,
    novel: Option<bool>,
    colours: Vec<&'static str>,
    found: Vec<bool>,
    found_in_render: Vec<bool>,
    found_in_round_trip: Vec<bool>,
    extra_colours: usize,
}

impl Row {
    fn all(&self) -> bool {
        self.found.iter().all(|&f| f)
    }

    /// The prompted colours the segmenter did not find.
    fn missing(&self) -> Vec<&'static str> {
        self.colours
            .iter()
            .zip(&self.found)
            .filter(|(_, f)| !**f)
            .map(|(c, _)| *c)
            .collect()
    }
}

/// The prompt's distinct colours, and every vocabulary colour as the segmenter's candidates
/// (glass where the prompt says so).
fn colours_of(s: &SynthScene) -> (Vec<usize>, Vec<([u8; 3], bool)>) {
    let looks: Vec<Look> = s
        .scene
        .instances
        .iter()
        .filter_map(|i| Look::parse(&i.caption).ok())
        .collect();
    let mut named: Vec<usize> = looks
        .iter()
        .filter_map(|l| Colour::ALL.iter().position(|c| *c == l.colour))
        .collect();
    named.sort_unstable();
    named.dedup();
    (named, vocabulary_candidates(&looks))
}

/// The prompts the model was trained on, when its JSON says how it was trained.
fn training_prompts(meta: &BaseMeta, size: u32) -> Option<HashSet<String>> {
    let (steps, batch, seed) = (meta.steps as u64, meta.batch as u64, meta.seed);
    let splits: Vec<Split> = meta
        .splits
        .iter()
        .map(|s| Split::from_name(s))
        .collect::<Option<_>>()?;
    let min_visible = meta.min_visible;
    let mut set = HashSet::new();
    if min_visible > 0.0 {
        for step in 0..steps as usize {
            let drawn = base_batch(seed, step, batch as usize, size, &splits, min_visible);
            set.extend(drawn.into_iter().map(|s| s.scene.prompt));
        }
        return Some(set);
    }
    let total = steps * batch;
    let chunk = 2048;
    for first in (0..total).step_by(chunk) {
        let n = chunk.min((total - first) as usize);
        set.extend(
            scenes(seed, first, n, size, &splits)
                .into_iter()
                .map(|s| s.scene.prompt),
        );
    }
    Some(set)
}

/// Runs the command.
pub fn run(a: EvalPromptsArgs) -> Result<(), Failure> {
    let start = std::time::Instant::now();
    let int = |e: candle_core::Error| Failure::Internal(e.to_string());
    if a.n == 0 || a.batch == 0 || a.splits.is_empty() {
        return Err(Failure::User(
            "--n and --batch must be positive, and --splits non-empty".into(),
        ));
    }
    let dev = Device::Cpu;
    let m = Model::load(&a.model, &dev)?;
    let guidance = a.guidance.unwrap_or_else(|| m.guidance());
    let size = m.size as u32;
    let splits: Vec<Split> = a.splits.iter().map(|&s| s.into()).collect();
    let held = scenes(a.seed, 0, a.n, size, &splits);
    eprintln!("listing the training prompts to mark held-out ones that are also novel…");
    let seen = training_prompts(&m.meta, size);
    let bar = ProgressBar::new(a.n as u64);
    let mut rows = Vec::with_capacity(a.n);
    let mut images = Vec::with_capacity(a.n);
    for (c, chunk) in held.chunks(a.batch).enumerate() {
        let prompts: Vec<&str> = chunk.iter().map(|s| s.scene.prompt.as_str()).collect();
        let opts = SampleOptions {
            steps: a.steps,
            guidance,
            seed: a.noise_seed.wrapping_add(c as u64),
        };
        let (drawn, _) = draw(&m, &dev, None, &prompts, &[], &opts, None)?;
        let out = to_rgb8(&drawn).map_err(int)?;
        let trip = round_trip(&m, chunk, &dev).map_err(int)?;
        for ((s, img), back) in chunk.iter().zip(out).zip(trip) {
            let (named, all) = colours_of(s);
            let made = colour_present(&img, m.size, m.size, &all, PRESENT_INSET);
            let gt = colour_present(&s.image, m.size, m.size, &all, PRESENT_INSET);
            let vae = colour_present(&back, m.size, m.size, &all, PRESENT_INSET);
            rows.push(Row {
                index: s.spec.index,
                split: s.spec.params.split.name(),
                prompt: s.scene.prompt.clone(),
                novel: seen.as_ref().map(|set| !set.contains(&s.scene.prompt)),
                colours: named.iter().map(|&k| Colour::ALL[k].name()).collect(),
                found: named.iter().map(|&k| made[k]).collect(),
                found_in_render: named.iter().map(|&k| gt[k]).collect(),
                found_in_round_trip: named.iter().map(|&k| vae[k]).collect(),
                extra_colours: (0..all.len())
                    .filter(|k| made[*k] && !named.contains(k))
                    .count(),
            });
            images.push(img);
        }
        bar.set_position(rows.len() as u64);
    }
    bar.finish_and_clear();
    let out = a.out.clone().unwrap_or_else(|| match &a.model {
        ModelDir::Dir(d) => d.join("eval-prompts"),
        ModelDir::Bundled => PathBuf::from("eval-prompts"),
    });
    std::fs::create_dir_all(&out).map_err(|e| Failure::User(format!("{}: {e}", out.display())))?;
    let summary = summarize(&rows, &a, guidance);
    let md = markdown(&summary);
    let json =
        serde_json::to_string_pretty(&serde_json::json!({"summary": summary, "prompts": rows}))
            .expect("plain data serialises");
    let mut csv = String::from("index,split,novel,prompt,colours,found,all_found,missing\n");
    for r in &rows {
        csv.push_str(&format!(
            "{},{},{},\"{}\",{},{},{},{}\n",
            r.index,
            r.split,
            r.novel.map_or("".into(), |n| n.to_string()),
            r.prompt,
            r.colours.join(" "),
            r.found.iter().filter(|&&f| f).count(),
            r.all(),
            r.missing().join(" ")
        ));
    }
    for (name, text) in [
        ("summary.json", json.as_str()),
        ("summary.md", md.as_str()),
        ("per_prompt.csv", csv.as_str()),
    ] {
        atomic_write(&out.join(name), |f| f.write_all(text.as_bytes()))
            .map_err(|e| Failure::User(e.to_string()))?;
    }
    let k = a.sheet.min(rows.len());
    if k > 0 {
        let img = sheet(&held[..k], &images[..k], &rows[..k], m.size)
            .ok_or_else(|| Failure::Internal("no canvas".into()))?;
        write_png(&out.join("samples.png"), &img, BitDepth::Eight)
            .map_err(|e| Failure::User(e.to_string()))?;
    }
    crate::args::print_stdout(&md)?;
    eprintln!(
        "scored {} prompts in {:.1} s; wrote {}",
        rows.len(),
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// The real renders of `scenes` encoded and decoded by the model's VAE: the most of each
/// image a generator working in its latents can hope to reproduce.
fn round_trip(
    m: &Model,
    scenes: &[SynthScene],
    dev: &Device,
) -> candle_core::Result<Vec<Vec<[u8; 3]>>> {
    let g = m.size / m.vae.cfg.factor();
    let x = zlayer_app::data::to_tensor(scenes, m.size as u32, dev)?;
    to_rgb8(&m.vae.decode_tokens(&m.vae.encode_tokens(&x)?, g, g)?)
}

/// Rates over a set of rows.
#[derive(Debug, Clone, serde::Serialize)]
struct Rates {
    prompts: usize,
    all_found: f64,
    colours_found: f64,
    all_found_in_render: f64,
    all_found_in_round_trip: f64,
    extra_colours_per_image: f64,
}

fn rates<'a>(rows: impl Iterator<Item = &'a Row> + Clone) -> Rates {
    let n = rows.clone().count().max(1) as f64;
    let colours: usize = rows.clone().map(|r| r.found.len()).sum();
    Rates {
        prompts: rows.clone().count(),
        all_found: rows.clone().filter(|r| r.all()).count() as f64 / n,
        colours_found: rows
            .clone()
            .map(|r| r.found.iter().filter(|&&f| f).count())
            .sum::<usize>() as f64
            / colours.max(1) as f64,
        all_found_in_render: rows
            .clone()
            .filter(|r| r.found_in_render.iter().all(|&f| f))
            .count() as f64
            / n,
        all_found_in_round_trip: rows
            .clone()
            .filter(|r| r.found_in_round_trip.iter().all(|&f| f))
            .count() as f64
            / n,
        extra_colours_per_image: rows.map(|r| r.extra_colours).sum::<usize>() as f64 / n,
    }
}

fn summarize(rows: &[Row], a: &EvalPromptsArgs, guidance: f64) -> serde_json::Value {
    let mut by: Vec<(String, Rates)> = vec![("all".into(), rates(rows.iter()))];
    for split in ["simple", "regular", "complex"] {
        if rows.iter().any(|r| r.split == split) {
            by.push((
                split.into(),
                rates(rows.iter().filter(move |r| r.split == split)),
            ));
        }
    }
    if rows.iter().any(|r| r.novel.is_some()) {
        by.push((
            "novel prompts".into(),
            rates(rows.iter().filter(|r| r.novel == Some(true))),
        ));
    }
    serde_json::json!({
        "model": a.model, "seed": a.seed, "steps": a.steps, "guidance": guidance,
        "noise_seed": a.noise_seed, "groups": by.iter().map(|(k, r)| serde_json::json!({"group": k, "rates": r})).collect::<Vec<_>>(),
    })
}

fn markdown(s: &serde_json::Value) -> String {
    let mut md = format!(
        "# zlayer eval-prompts: {}\n\n{} Euler steps, guidance {}, held-out data seed {}.\n\n\
         | prompts | n | every colour found | colours found | every colour found in the real render | same, after the VAE's round trip | extra colours per image |\n\
         |---|---|---|---|---|---|---|\n",
        s["model"].as_str().unwrap_or(""),
        s["steps"],
        s["guidance"],
        s["seed"]
    );
    for g in s["groups"].as_array().into_iter().flatten() {
        let r = &g["rates"];
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        md.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} |\n",
            g["group"].as_str().unwrap_or(""),
            r["prompts"],
            f("all_found"),
            f("colours_found"),
            f("all_found_in_render"),
            f("all_found_in_round_trip"),
            f("extra_colours_per_image")
        ));
    }
    md
}

/// Each cell: the real render of the prompt, the generated image, and a swatch per prompted
/// colour, crossed out where the segmenter did not find it.
fn sheet(
    scenes: &[SynthScene],
    images: &[Vec<[u8; 3]>],
    rows: &[Row],
    size: usize,
) -> Option<zlayer_composite::Image<zlayer_composite::Straight>> {
    let scale = 2.0;
    let cell = size as f32 * scale;
    let cols = (scenes.len() as f32).sqrt().ceil() as usize;
    let nrows = scenes.len().div_ceil(cols);
    let (cw, ch) = (2.0 * cell + 16.0, cell + 22.0);
    let mut c = Canvas::new(
        (cols as f32 * cw) as u32,
        (nrows as f32 * ch + 20.0) as u32,
        [250, 250, 250, 255],
    )?;
    c.text(
        4.0,
        4.0,
        "each pair: real render | generated; swatches: prompted colours (crossed: not found)",
        1.0,
        [20, 20, 20, 255],
    );
    for (k, ((s, img), r)) in scenes.iter().zip(images).zip(rows).enumerate() {
        let (ox, oy) = ((k % cols) as f32 * cw + 4.0, (k / cols) as f32 * ch + 20.0);
        c.image_rgb(ox, oy, &s.image, size, scale);
        c.image_rgb(ox + cell + 4.0, oy, img, size, scale);
        for (j, (name, found)) in r.colours.iter().zip(&r.found).enumerate() {
            let x = ox + cell + 4.0 + j as f32 * 14.0;
            let y = oy + cell + 4.0;
            let rgb = Colour::from_name(name).map_or([0; 3], Colour::rgb);
            c.fill_rect([x, y, 12.0, 12.0], [rgb[0], rgb[1], rgb[2], 255]);
            c.stroke_rect([x, y, 12.0, 12.0], [20, 20, 20, 255], 1.0);
            if !found {
                c.line((x, y), (x + 12.0, y + 12.0), [20, 20, 20, 255], 2.0);
                c.line((x + 12.0, y), (x, y + 12.0), [20, 20, 20, 255], 2.0);
            }
        }
    }
    Some(c.to_image())
}
