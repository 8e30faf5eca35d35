//! `zlayer eval-layout`: the layout variants side by side on held-out synthetic scenes.
//!
//! Every variant generates the same scenes from the same noise (one batch at a time, in the
//! same order), so the comparison is paired. The ground truth goes to `OUT/gt`, each
//! variant's images to `OUT/<variant>`, and the metrics crate scores them as `zlayer eval`
//! does. Two reference rows frame the table: the real renders (`OUT/render`) scored as
//! predictions, the measure's ceiling; and the base model without the branch, the floor.

use crate::args::SplitArg;
use crate::args::ratio;
use zlayer_app::Failure;
use zlayer_app::data::scenes;
use zlayer_app::method::SceneSampler;
use zlayer_app::model::Model;
use zlayer_app::model::ModelDir;
use zlayer_app::protocol::{Protocol, Row, name, score, write_grid, write_truth};

use candle_core::Device;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use zlayer_composite::atomic_write;

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
    /// Model folder with the vae and base the branches were trained on, or `bundled` (the
    /// built-in models/tiny16).
    #[arg(long, default_value = ModelDir::BUNDLED, value_parser = ModelDir::parse)]
    model: ModelDir,
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
    let p = Protocol {
        m: &m,
        dev: &dev,
        seed: a.seed,
        steps: a.steps,
        batch: a.batch,
        ratio: a.grounding_ratio,
        score_only: false,
    };
    let split: zlayer_synth::Split = a.split.into();
    let held = scenes(a.seed, 0, a.n, m.size as u32, &[split]);
    let (gt, render) = write_truth(&held, &a.out, m.size)?;
    let evals = a.out.join("eval");
    // The real renders, segmented like any prediction: the ceiling of the measure.
    let mut rows = vec![score(&evals, "ground truth", &render, &gt, 0.0, None)?];
    let mut dirs = vec![render];
    if !a.no_base {
        let base = a.out.join("base");
        let secs = p.generate(None, &held, &base)?.seconds();
        rows.push(score(&evals, "base (no branch)", &base, &gt, secs, None)?);
        dirs.push(base);
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
        let dir = a.out.join(&label);
        let secs = p.generate(Some(s), &held, &dir)?.seconds();
        rows.push(score(
            &evals,
            &label,
            &dir,
            &gt,
            secs,
            s.ratio(a.grounding_ratio),
        )?);
        dirs.push(dir);
    }
    let md = table(&a, &rows);
    let json = serde_json::to_string_pretty(&rows).expect("plain data serialises");
    for (file, text) in [("summary.md", md.as_str()), ("summary.json", json.as_str())] {
        atomic_write(&a.out.join(file), |f| f.write_all(text.as_bytes())).map_err(user)?;
    }
    let labelled: Vec<(String, &Path)> = rows
        .iter()
        .map(|r| r.name.clone())
        .zip(dirs.iter().map(PathBuf::as_path))
        .collect();
    let names: Vec<String> = (0..a.n.min(8)).map(name).collect();
    write_grid(&a.out.join("grid.png"), &labelled, &names, m.size)?;
    crate::args::print_stdout(&md)?;
    eprintln!("wrote {}", a.out.join("summary.md").display());
    Ok(())
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
                format!("{:.2}", r.seconds)
            } else {
                "–".into()
            },
        );
    }
    s
}
