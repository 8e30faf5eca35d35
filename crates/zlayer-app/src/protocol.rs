//! The paired evaluation protocol: every method draws the same held-out scenes from the same
//! noise, one batch at a time, into folders that resume; the metrics crate scores them.

use crate::data::synth_layout;
use crate::method::SceneSampler;
use crate::model::Model;
use crate::output::{rgb_image, to_rgb8};
use crate::pipeline::draw;
use crate::report::{Progress as Bar, write_report};
use crate::{Failure, user};
use candle_core::Device;
use std::io::Write;
use std::path::{Path, PathBuf};
use zlayer_composite::annotate::Canvas;
use zlayer_composite::{BitDepth, atomic_write, write_png};
use zlayer_metrics::eval::{Summary, evaluate_dirs, read_rgb, summarize};
use zlayer_model::base::SampleOptions;
use zlayer_synth::SynthScene;
use zlayer_synth::store::write_png_folder;

/// One row of the comparison.
#[derive(serde::Serialize)]
pub struct Row {
    /// The variant's label.
    pub name: String,
    /// The grounding ratio it sampled with (none for the reference rows).
    pub grounding_ratio: Option<f64>,
    /// Seconds per generated image (0 for the reference rows).
    pub seconds: f64,
    /// Its scores.
    pub summary: Summary,
}

/// A held-out scene's file name.
pub fn name(i: usize) -> String {
    format!("{i:06}")
}

/// Writes the scenes' ground truth to `OUT/gt` and their real renders to `OUT/render`;
/// returns both folders.
pub fn write_truth(
    held: &[SynthScene],
    out: &Path,
    size: usize,
) -> Result<(PathBuf, PathBuf), Failure> {
    let (gt, render) = (out.join("gt"), out.join("render"));
    std::fs::create_dir_all(&render).map_err(|e| user(format!("{}: {e}", render.display())))?;
    for (i, s) in held.iter().enumerate() {
        write_png_folder(&gt.join(name(i)), s).map_err(user)?;
        let img = rgb_image(&s.image, size, size);
        let path = render.join(format!("{}.png", name(i)));
        write_png(&path, &img, BitDepth::Eight).map_err(user)?;
    }
    Ok((gt, render))
}

/// What every row of a comparison shares: the models, the noise and the sampler settings.
pub struct Protocol<'a> {
    /// The vae and base.
    pub m: &'a Model,
    /// Where the tensors live.
    pub dev: &'a Device,
    /// Data seed of the held-out scenes; batch c draws its noise from `seed ^ c`.
    pub seed: u64,
    /// Euler steps.
    pub steps: usize,
    /// Scenes per batch.
    pub batch: usize,
    /// Requested grounding ratio (else each model file's).
    pub ratio: Option<f64>,
    /// Only take what earlier runs generated; generate nothing.
    pub score_only: bool,
}

/// What [`Protocol::generate`] left in a folder.
pub enum Generated {
    /// Every scene, at these seconds per image.
    All(f64),
    /// Only this many scenes (score-only runs).
    Partial(usize),
}

/// What `DIR/progress.json` records, so that an interrupted run resumes at its last batch.
#[derive(serde::Serialize, serde::Deserialize, PartialEq)]
struct Progress {
    method: String,
    seed: u64,
    steps: usize,
    batch: usize,
    grounding_ratio: Option<f64>,
    /// Images written so far (whole batches).
    done: usize,
    /// Seconds spent generating them.
    seconds: f64,
}

impl Protocol<'_> {
    /// Generates every held-out scene with `sampler` (the base alone when `None`) into
    /// `DIR/<scene>.png`, resuming after the batches `DIR/progress.json` records when it was
    /// made with the same settings.
    pub fn generate(
        &self,
        sampler: Option<&SceneSampler>,
        held: &[SynthScene],
        dir: &Path,
    ) -> Result<Generated, Failure> {
        let int = |e: candle_core::Error| Failure::Internal(e.to_string());
        let (size, vae) = (self.m.size, &self.m.vae);
        let g = size / vae.cfg.factor();
        std::fs::create_dir_all(dir).map_err(|e| user(format!("{}: {e}", dir.display())))?;
        let mut prog = Progress {
            method: sampler.map_or("base", SceneSampler::name).into(),
            seed: self.seed,
            steps: self.steps,
            batch: self.batch,
            grounding_ratio: sampler.and_then(|s| s.ratio(self.ratio)),
            done: 0,
            seconds: 0.0,
        };
        let file = dir.join("progress.json");
        if let Some(old) = read_progress(&file) {
            let same = Progress {
                done: old.done,
                seconds: old.seconds,
                ..prog
            };
            if same == old {
                prog = old;
            } else {
                eprintln!(
                    "{}: made with other settings; generating afresh",
                    dir.display()
                );
                prog = Progress {
                    done: 0,
                    seconds: 0.0,
                    ..same
                };
            }
        }
        let label = dir.display();
        if prog.done >= held.len() {
            eprintln!("{label}: all {} scenes already generated", held.len());
            return Ok(Generated::All(prog.seconds / prog.done as f64));
        }
        if self.score_only {
            eprintln!(
                "{label}: {} of {} scenes generated; left out",
                prog.done,
                held.len()
            );
            return Ok(Generated::Partial(prog.done));
        }
        eprintln!(
            "generating {} scenes with {} into {label}…",
            held.len() - prog.done,
            prog.method
        );
        let bar = Bar::new(held.len());
        for (c, chunk) in held
            .chunks(self.batch)
            .enumerate()
            .skip(prog.done / self.batch)
        {
            let start = std::time::Instant::now();
            let opts = SampleOptions {
                steps: self.steps,
                guidance: 1.0,
                seed: self.seed ^ c as u64,
            };
            let prompts: Vec<&str> = chunk.iter().map(|s| s.scene.prompt.as_str()).collect();
            let layouts = match sampler {
                None => Vec::new(),
                Some(_) => chunk
                    .iter()
                    .map(|s| synth_layout(s, (g, g), false))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(Failure::Internal)?,
            };
            let (images, _) = draw(
                self.m, self.dev, sampler, &prompts, &layouts, &opts, self.ratio,
            )?;
            let imgs = to_rgb8(&images).map_err(int)?;
            for (k, img) in imgs.iter().enumerate() {
                let path = dir.join(format!("{}.png", name(c * self.batch + k)));
                write_png(&path, &rgb_image(img, size, size), BitDepth::Eight).map_err(user)?;
            }
            prog.done += chunk.len();
            prog.seconds += start.elapsed().as_secs_f64();
            let json = serde_json::to_string_pretty(&prog).expect("plain data serialises");
            atomic_write(&file, |f| f.write_all(json.as_bytes())).map_err(user)?;
            bar.update(prog.done, String::new());
        }
        bar.finish();
        Ok(Generated::All(prog.seconds / prog.done as f64))
    }
}

impl Generated {
    /// Seconds per image (0 when only part was generated).
    pub fn seconds(&self) -> f64 {
        match self {
            Self::All(s) => *s,
            Self::Partial(_) => 0.0,
        }
    }
}

/// Scenes earlier runs generated into `dir` (by its progress.json).
pub fn generated(dir: &Path) -> usize {
    read_progress(&dir.join("progress.json")).map_or(0, |p| p.done)
}

fn read_progress(file: &Path) -> Option<Progress> {
    serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()
}

/// The label of the real renders scored as predictions: the suites' ceiling.
pub const REAL_RENDERS: &str = "real renders";

/// The folder under `evals` that [`score`] writes `label`'s report to.
pub fn report_folder(label: &str) -> String {
    label.replace([' ', '(', ')'], "")
}

/// Scores `pred` against `gt` and writes the report under `evals/<label>`.
pub fn score(
    evals: &Path,
    label: &str,
    pred: &Path,
    gt: &Path,
    seconds: f64,
    grounding_ratio: Option<f64>,
) -> Result<Row, Failure> {
    let results = evaluate_dirs(pred, gt).map_err(user)?;
    let summary = summarize(&results);
    let out = evals.join(report_folder(label));
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

/// Writes the scenes `names` (columns) of each labelled folder of images (rows) to `path`.
pub fn write_grid(
    path: &Path,
    rows: &[(String, &Path)],
    names: &[String],
    size: usize,
) -> Result<(), Failure> {
    let cols = names.len();
    // The bitmap font is 8 px per character.
    let longest = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let (scale, label_w) = (2.0, (longest * 8 + 12).max(130) as f32);
    let cell = size as f32 * scale + 4.0;
    let mut c = Canvas::new(
        (label_w + cols as f32 * cell) as u32,
        (rows.len() as f32 * cell + 4.0) as u32,
        [250, 250, 250, 255],
    )
    .ok_or_else(|| Failure::Internal("no canvas".into()))?;
    for (r, (label, dir)) in rows.iter().enumerate() {
        let y = 4.0 + r as f32 * cell;
        c.text(4.0, y + cell / 2.0 - 6.0, label, 1.0, [20, 20, 20, 255]);
        for (k, n) in names.iter().enumerate() {
            let file = dir.join(format!("{n}.png"));
            if !file.is_file() {
                continue;
            }
            let (w, _, px) = read_rgb(&file).map_err(user)?;
            c.image_rgb(label_w + k as f32 * cell, y, &px, w, scale);
        }
    }
    write_png(path, &c.to_image(), BitDepth::Eight).map_err(user)
}
