//! `zlayer train layout`: stage 2, the layout branch on a frozen base (DESIGN.md §4.3).

use super::loop_config;
use crate::args::parse_variant;
use crate::args::{SplitArg, TuneFlags};
use candle_core::{DType, Device};
use clap::Args;
use std::path::PathBuf;
use zlayer_app::Failure;
use zlayer_app::data::{scenes, synth_layout, to_tensor};
use zlayer_app::flip::paired_batch;
use zlayer_app::model::Model;
use zlayer_app::model::ModelDir;
use zlayer_app::report::Progress;
use zlayer_app::tune;
use zlayer_model::layout_model::{LayoutModel, Variant};
use zlayer_model::train::{export_f16, train_loop};
use zlayer_synth::Split;

/// Flags of `zlayer train layout`.
#[derive(Debug, Args)]
pub struct LayoutArgs {
    /// Model folder with the trained vae and base (their weights stay frozen), or `bundled`
    /// (the built-in models/tiny16).
    #[arg(long, default_value = ModelDir::BUNDLED, value_parser = ModelDir::parse)]
    model: ModelDir,
    /// Run folder (created; an existing checkpoint there is resumed).
    #[arg(long)]
    out: PathBuf,
    /// Total optimisation steps.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Scenes per step.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = 4)]
    rank: usize,
    /// Double blocks with a layout branch. The official model uses every third of 19; the
    /// tiny model has 2, and its first sees the image before the text has mixed in.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    double: Vec<usize>,
    /// Single blocks with a layout branch (official: 0, 9, 18, 27, 37 of 38): the first and
    /// last of tiny's 4.
    #[arg(long, value_delimiter = ',', default_value = "0,3")]
    single: Vec<usize>,
    /// Splits to train on, interleaved.
    #[arg(long, value_delimiter = ',', default_value = "complex")]
    splits: Vec<SplitArg>,
    /// Data seed (held-out evaluation uses seed + 1,000,000).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The method: occlusionformer; the baselines global and global-rank; or an ablation
    /// (static-sigma, no-align, visible-masks, attn-map-loss). See docs/layout.md.
    #[arg(long, default_value = "occlusionformer", value_parser = parse_variant)]
    variant: Variant,
    /// Train on flip pairs: each scene beside itself with one adjacent overlapping pair's
    /// order swapped, both in the step's batch (which must be even), so the order is the
    /// only thing that tells them apart.
    #[arg(long)]
    paired_flips: bool,
    /// How the sampling settings are chosen after training.
    #[command(flatten)]
    tune: TuneFlags,
}

/// Runs the command.
pub fn run(a: LayoutArgs) -> Result<(), Failure> {
    if a.batch == 0 || a.steps == 0 || a.splits.is_empty() || a.rank == 0 {
        return Err(Failure::User(
            "--batch, --steps and --rank must be positive, and --splits non-empty".into(),
        ));
    }
    if a.paired_flips && !a.batch.is_multiple_of(2) {
        return Err(Failure::User(format!(
            "--paired-flips puts each scene and its flip in one batch: --batch must be even, not {}",
            a.batch
        )));
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Failure::User(format!("{}: {e}", a.out.display())))?;
    let dev = Device::Cpu;
    let m = Model::load(&a.model, &dev)?;
    let (vae, size) = (&m.vae, m.size);
    let g = size / vae.cfg.factor();
    let grid = (g, g);
    let vm = candle_nn::VarMap::new();
    let model = LayoutModel::new(
        m.base.clone(),
        &a.double,
        &a.single,
        a.rank,
        a.variant,
        zlayer_model::init::seeded(&vm, a.seed, DType::F32, &dev),
    )
    .map_err(|e| Failure::User(e.to_string()))?;
    let lc = loop_config(a.steps, a.lr);
    let splits: Vec<Split> = a.splits.iter().map(|&s| s.into()).collect();
    let split_names: Vec<&str> = splits.iter().map(|s| s.name()).collect();
    let meta = serde_json::json!({"kind": "layout", "variant": a.variant, "model": a.model, "double": a.double, "single": a.single, "rank": a.rank, "splits": split_names, "seed": a.seed, "paired_flips": a.paired_flips, "batch": a.batch, "loop": lc, "image_size": size});
    let bar = Progress::new(a.steps);
    let start = std::time::Instant::now();
    let trainer = train_loop(
        &a.out,
        "layout",
        &vm,
        &lc,
        &meta,
        &dev,
        |step| {
            let first = (step * a.batch) as u64;
            let batch = if a.paired_flips {
                paired_batch(a.seed, first, a.batch / 2, size as u32, &splits)
            } else {
                scenes(a.seed, first, a.batch, size as u32, &splits)
            };
            let x0 = vae.encode_tokens(&to_tensor(&batch, size as u32, &dev)?)?;
            let prompts: Vec<&str> = batch.iter().map(|s| s.scene.prompt.as_str()).collect();
            let ids = model
                .base
                .tokenizer
                .batch(&prompts, model.base.max_len, &dev)
                .map_err(candle_core::Error::wrap)?;
            let layouts = batch
                .iter()
                .map(|s| synth_layout(s, grid, a.variant == Variant::VisibleMasks))
                .collect::<Result<Vec<_>, _>>()
                .map_err(candle_core::Error::msg)?;
            let p = model.prepare(&layouts, grid, &dev)?;
            let seed = a.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let (total, flow, align) = model.loss(&x0, &ids, &p, seed)?;
            Ok((total, vec![("flow".into(), flow), ("align".into(), align)]))
        },
        |log| {
            super::show_step(
                &bar,
                &a.out,
                "layout",
                lc.checkpoint_every,
                log,
                &["flow", "align"],
            )
        },
    )
    .map_err(Failure::Internal)?;
    bar.finish();
    let weights = super::export_run(&a.out, "layout", &trainer, meta.clone(), start)?;
    let mut meta = meta;
    meta["steps"] = trainer.step.into();
    meta["train_minutes"] = (start.elapsed().as_secs_f64() / 60.0).into();
    let ema = trainer.ema();
    if a.tune.scenes > 0 && !a.tune.ratios.is_empty() {
        let t = a.tune.tuning(&splits, a.seed);
        let (best, scores) = tune::grounding(&m, &weights, &t, &a.out.join("tune"), &dev)?;
        for line in tune::describe(&scores) {
            eprintln!("{line}");
        }
        tune::record(&mut meta, best, &scores, &t);
        export_f16(&ema, &weights, &meta).map_err(Failure::Internal)?;
        eprintln!("{}", tune::chosen(best, &weights.with_extension("json")));
    }
    Ok(())
}
