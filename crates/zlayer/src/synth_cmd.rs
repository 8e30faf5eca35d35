//! `zlayer synth`: datasets, contact sheets and the vocabulary.

use crate::args::SplitArg;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use zlayer_app::Failure;
use zlayer_composite::{BitDepth, atomic_write, write_png};
use zlayer_synth::store::{DatasetInfo, write_png_folder, write_shard};
use zlayer_synth::{Params, SynthScene, scene_at};

/// How `synth` stores scenes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StoreArg {
    /// safetensors shards + JSONL metadata, for training.
    Shards,
    /// A folder of PNGs and scene JSON per scene, for browsing.
    Png,
}

/// Flags of `zlayer synth`.
#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Number of scenes to write (with --out).
    #[arg(long)]
    pub n: Option<u64>,
    /// Output folder for the dataset.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw a contact sheet of this many scenes (with -o).
    #[arg(long)]
    pub show: Option<usize>,
    /// Output PNG of the contact sheet.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Print the vocabulary as JSON.
    #[arg(long)]
    pub vocab: bool,
    /// Canvas side in pixels (typically 64, 128 or 256).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(16..=1024))]
    pub size: u32,
    /// Difficulty split.
    #[arg(long, value_enum, default_value = "complex")]
    pub split: SplitArg,
    /// Seed; scene k of a seed is always the same.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Probability that a box is placed against an earlier one (default: the split's).
    #[arg(long)]
    pub overlap: Option<f32>,
    /// Storage format of the dataset.
    #[arg(long, value_enum, default_value = "shards")]
    pub format: StoreArg,
    /// Scenes per shard.
    #[arg(long, default_value_t = 1000)]
    pub shard_size: u64,
    /// Index of the first scene.
    #[arg(long, default_value_t = 0)]
    pub start: u64,
}

/// Runs the command.
pub fn run(a: SynthArgs) -> Result<(), Failure> {
    let split = a.split.into();
    let mut params = Params::new(split, a.size);
    if let Some(o) = a.overlap {
        if !(0.0..=1.0).contains(&o) {
            return Err(user(format!("--overlap {o} is outside [0, 1]")));
        }
        params.overlap = o;
    }
    let job = Job {
        params,
        seed: a.seed,
        start: a.start,
        shard_size: a.shard_size,
        png: matches!(a.format, StoreArg::Png),
    };
    match (a.vocab, a.show, a.n) {
        (true, None, None) => vocab(),
        (false, Some(k), None) => show(&job, k, a.output.as_deref()),
        (false, None, Some(n)) => generate(&job, n, a.out.as_deref()),
        _ => Err(user(
            "choose one mode: --n N --out DIR (a dataset), --show K -o sheet.png (a contact sheet), or --vocab",
        )),
    }
}

/// What to generate.
pub struct Job {
    /// Sampling parameters.
    pub params: Params,
    /// Seed.
    pub seed: u64,
    /// First scene index.
    pub start: u64,
    /// Scenes per shard.
    pub shard_size: u64,
    /// PNG folders instead of shards.
    pub png: bool,
}

fn user(e: impl std::fmt::Display) -> Failure {
    Failure::User(e.to_string())
}

/// Prints the vocabulary.
pub fn vocab() -> Result<(), Failure> {
    let v = serde_json::to_string_pretty(&zlayer_synth::vocab::vocabulary())
        .expect("plain data serialises");
    crate::args::print_stdout(&(v + "\n"))
}

/// Draws a contact sheet of `k` scenes.
pub fn show(job: &Job, k: usize, output: Option<&Path>) -> Result<(), Failure> {
    let output = output.ok_or_else(|| user("--show needs -o sheet.png"))?;
    if k == 0 || k > 400 {
        return Err(user(format!("--show {k}: draw between 1 and 400 scenes")));
    }
    let scenes: Vec<SynthScene> = (0..k as u64)
        .into_par_iter()
        .map(|i| scene_at(job.seed, job.start + i, &job.params))
        .collect();
    let cell = (job.params.size * 3).clamp(192, 384);
    let sheet = zlayer_synth::sheet::contact_sheet(&scenes, cell)
        .ok_or_else(|| Failure::Internal("could not allocate the sheet".into()))?;
    write_png(output, &sheet, BitDepth::Eight).map_err(user)?;
    eprintln!(
        "wrote {} ({} {} scenes, {}×{})",
        output.display(),
        k,
        job.params.split.name(),
        sheet.width,
        sheet.height
    );
    Ok(())
}

/// Writes `n` scenes to `out`, shard by shard, skipping shards already complete.
pub fn generate(job: &Job, n: u64, out: Option<&Path>) -> Result<(), Failure> {
    let out = out.ok_or_else(|| user("--n needs --out DIR"))?;
    if job.shard_size == 0 {
        return Err(user("--shard-size must be at least 1"));
    }
    std::fs::create_dir_all(out).map_err(|e| user(format!("{}: {e}", out.display())))?;
    let bar = ProgressBar::new(n);
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} scenes, {per_sec}, eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let mut shards = Vec::new();
    let (mut written, mut skipped) = (0u64, 0u64);
    for (k, lo) in (0..n).step_by(job.shard_size as usize).enumerate() {
        let hi = (lo + job.shard_size).min(n);
        let range = job.start + lo..job.start + hi;
        if job.png {
            range.into_par_iter().try_for_each(|i| {
                let s = scene_at(job.seed, i, &job.params);
                write_png_folder(&out.join(format!("{i:06}")), &s).map_err(user)?;
                bar.inc(1);
                Ok::<(), Failure>(())
            })?;
            written += hi - lo;
            continue;
        }
        let stem = format!("shard-{k:05}");
        shards.push(stem.clone());
        let done = ["safetensors", "jsonl"]
            .iter()
            .all(|e| out.join(format!("{stem}.{e}")).exists());
        if done {
            skipped += hi - lo;
            bar.inc(hi - lo);
            continue;
        }
        let scenes: Vec<SynthScene> = range
            .into_par_iter()
            .map(|i| {
                let s = scene_at(job.seed, i, &job.params);
                bar.inc(1);
                s
            })
            .collect();
        write_shard(out, &stem, &scenes).map_err(user)?;
        written += hi - lo;
    }
    bar.finish();
    let info = DatasetInfo {
        format: if job.png {
            "zlayer-synth-png-v1"
        } else {
            "zlayer-synth-shards-v1"
        }
        .into(),
        split: job.params.split.name().into(),
        size: job.params.size,
        overlap: job.params.overlap,
        seed: job.seed,
        n,
        shards,
    };
    let text = serde_json::to_string_pretty(&serde_json::json!({"dataset": info, "start": job.start, "vocabulary": zlayer_synth::vocab::vocabulary()}))
        .expect("plain data serialises");
    atomic_write(&out.join("dataset.json"), |f| f.write_all(text.as_bytes())).map_err(user)?;
    eprintln!(
        "wrote {written} scenes to {}{} ({} split, {}×{}, seed {})",
        out.display(),
        if skipped > 0 {
            format!(", {skipped} already there")
        } else {
            String::new()
        },
        job.params.split.name(),
        job.params.size,
        job.params.size,
        job.seed
    );
    Ok(())
}
