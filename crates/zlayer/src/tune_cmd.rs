//! `zlayer tune`: choose a trained branch's grounding ratio and layout guidance on validation
//! scenes and record them in its layout.json (what `train layout` does after training).

use crate::args::{SplitArg, TuneFlags, parse_variant};
use candle_core::Device;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use zlayer_app::Failure;
use zlayer_app::model::{Model, ModelDir};
use zlayer_app::tune;
use zlayer_composite::atomic_write;
use zlayer_model::layout_model::Variant;
use zlayer_synth::Split;

/// Flags of `zlayer tune`.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// Model folder whose branch is tuned (its layout.json is rewritten; the built-in model
    /// cannot be: copy models/tiny16 and point here).
    #[arg(long)]
    model: PathBuf,
    /// Which branch: occlusionformer (the folder's own), or a variant under variants/NAME/.
    #[arg(long, default_value = "occlusionformer", value_parser = parse_variant)]
    variant: Variant,
    /// Splits of the validation scenes.
    #[arg(long, value_delimiter = ',', default_value = "simple,regular,complex")]
    splits: Vec<SplitArg>,
    /// The data seed the branch was trained with (validation uses seed + 2,000,000).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Working folder for the validation images and scores (resumable).
    #[arg(long, default_value = "tune-work")]
    work: PathBuf,
    /// Candidates and validation scenes.
    #[command(flatten)]
    tune: TuneFlags,
}

/// Runs the command.
pub fn run(a: TuneArgs) -> Result<(), Failure> {
    if a.tune.scenes == 0 || a.tune.ratios.is_empty() || a.splits.is_empty() {
        return Err(Failure::User(
            "--tune-scenes, --tune-ratios and --splits must be non-empty".into(),
        ));
    }
    let dir = ModelDir::Dir(a.model.clone());
    let name = a.variant.name();
    let weights = dir
        .layout_path(name)
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            Failure::User(format!(
                "{}: no trained {name} branch (layout.safetensors) to tune; train one with `zlayer train layout`",
                a.model.display()
            ))
        })?;
    let json = weights.with_extension("json");
    let text = std::fs::read_to_string(&json)
        .map_err(|e| Failure::User(format!("{}: {e}", json.display())))?;
    let mut meta: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Failure::User(format!("{}: {e}", json.display())))?;
    let dev = Device::Cpu;
    let m = Model::load(&dir, &dev)?;
    let splits: Vec<Split> = a.splits.iter().map(|&s| s.into()).collect();
    let t = a.tune.tuning(&splits, a.seed);
    std::fs::create_dir_all(&a.work)
        .map_err(|e| Failure::User(format!("{}: {e}", a.work.display())))?;
    let (best, scores) = tune::grounding(&m, &weights, &t, &a.work, &dev)?;
    for line in tune::describe(&scores) {
        eprintln!("{line}");
    }
    tune::record(&mut meta, best, &scores, &t);
    let out = serde_json::to_string_pretty(&meta).map_err(|e| Failure::Internal(e.to_string()))?;
    atomic_write(&json, |f| f.write_all(out.as_bytes()))
        .map_err(|e| Failure::User(e.to_string()))?;
    eprintln!("{}", tune::chosen(best, &json));
    Ok(())
}
