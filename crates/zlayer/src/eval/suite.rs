//! `zlayer eval --suite paper`: the paper's main table, ablation table and order-flip test,
//! on the tiny model and held-out synthetic scenes.
//!
//! Every method draws the same scenes from the same noise (see [`Protocol`]). Images land in
//! `OUT/<split>/<method>/` with a `progress.json`, so a stopped run resumes where it left off
//! and a finished method is not generated again; `results.md` is rewritten from everything
//! present at the end of every run.

use crate::args::SplitArg;
use candle_core::Device;
use clap::{Args, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};
use zlayer_app::Failure;
use zlayer_app::data::scenes;
use zlayer_app::flip::{FlipScore, flip};
use zlayer_app::method::{Method, SceneSampler};
use zlayer_app::model::Model;
use zlayer_app::model::ModelDir;
use zlayer_app::protocol::{
    Generated, Protocol, REAL_RENDERS, Row, generated, name, score, write_grid, write_truth,
};
use zlayer_composite::atomic_write;
use zlayer_synth::Split;

/// A benchmark `zlayer eval --suite` runs.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Suite {
    /// OcclusionFormer's main and ablation tables and the order-flip test (docs/results.md).
    Paper,
    /// Several `paper` runs, one per training seed, summed up (docs/results-seeds.md).
    Seeds,
}

/// Flags of `zlayer eval --suite paper`.
#[derive(Debug, Args)]
pub struct SuiteArgs {
    /// With --suite: model folder (vae, base, the bundled branch, variants/NAME/), or
    /// `bundled` (the built-in models/tiny16).
    #[arg(long, default_value = ModelDir::BUNDLED, value_parser = ModelDir::parse)]
    model: ModelDir,
    /// With --suite: held-out scenes per split.
    #[arg(long, default_value_t = 300)]
    n: usize,
    /// With --suite: the main table's splits.
    #[arg(long, value_delimiter = ',', default_value = "simple,regular,complex")]
    splits: Vec<SplitArg>,
    /// With --suite: the split of the ablation table and the order-flip test.
    #[arg(long, default_value = "complex")]
    focus: SplitArg,
    /// With --suite: the methods to run (main: base, larender, global, global-rank,
    /// occlusionformer, grpo; ablations: static-sigma, no-align, visible-masks,
    /// attn-map-loss). A method without trained weights is skipped with a notice.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "base,larender,global,global-rank,occlusionformer,grpo,static-sigma,no-align,visible-masks,attn-map-loss",
        value_parser = Method::parse
    )]
    methods: Vec<Method>,
    /// With --suite: the methods of the order-flip test (empty: none).
    #[arg(long, value_delimiter = ',', default_value = "base,occlusionformer")]
    flip: Vec<String>,
    /// With --suite: data seed of the held-out scenes (training uses seed 0).
    #[arg(long, default_value_t = 1_000_000)]
    seed: u64,
    /// With --suite: Euler steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// With --suite: scenes per batch (each batch has its own noise seed).
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// With --suite: also write results.md and its pictures to this folder (say, docs).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// With --suite seeds: the `--suite paper` output folders to sum up, one per training
    /// seed of the same recipe, scored on the same held-out scenes.
    #[arg(long, value_delimiter = ',')]
    pub runs: Vec<PathBuf>,
    /// With --suite: generate nothing; report what earlier (or concurrent) runs finished and
    /// mark the rest as partial.
    #[arg(long)]
    score_only: bool,
}

fn user(e: impl std::fmt::Display) -> Failure {
    Failure::User(e.to_string())
}

/// A method's result on one split, or why it has none ("not trained").
type Cell = Result<Row, String>;

/// A method's flip-test counts, or why it has none.
type FlipCell = Result<FlipScore, String>;

/// One split's rows.
struct SplitRows {
    split: Split,
    /// The real renders scored as predictions.
    truth: Row,
    cells: Vec<(String, Cell)>,
}

/// Everything measured, for the report.
struct Results {
    splits: Vec<SplitRows>,
    /// Per flip-test method.
    flips: Vec<(String, FlipCell)>,
}

/// Runs the suite into `out`.
pub fn run(a: &SuiteArgs, out: &Path) -> Result<(), Failure> {
    if a.n == 0 || a.batch == 0 || a.steps == 0 {
        return Err(user("--n, --batch and --steps must be positive"));
    }
    // `--flip ''` turns the test off.
    let flips: Vec<Method> = a
        .flip
        .iter()
        .filter(|m| !m.is_empty())
        .map(|m| Method::parse(m).map_err(|e| user(format!("--flip: {e}"))))
        .collect::<Result<_, _>>()?;
    if let Some(m) = flips.iter().find(|m| !a.methods.contains(m)) {
        return Err(user(format!(
            "--flip {m}: also list it in --methods (the test compares with its images of the focus split)"
        )));
    }
    let dev = Device::Cpu;
    let m = Model::load(&a.model, &dev)?;
    let p = Protocol {
        m: &m,
        dev: &dev,
        seed: a.seed,
        steps: a.steps,
        batch: a.batch,
        ratio: None,
        score_only: a.score_only,
    };
    let focus: Split = a.focus.into();
    let mut splits: Vec<Split> = a.splits.iter().map(|&s| s.into()).collect();
    if !splits.contains(&focus) {
        splits.push(focus);
    }
    let mut res = Results {
        splits: Vec::new(),
        flips: Vec::new(),
    };
    for &split in &splits {
        let dir = out.join(split.name());
        let held = scenes(a.seed, 0, a.n, m.size as u32, &[split]);
        let (gt, render) = write_truth(&held, &dir, m.size)?;
        let evals = dir.join("eval");
        let truth = score(&evals, REAL_RENDERS, &render, &gt, 0.0, None)?;
        let mut cells = Vec::new();
        let mut rows = vec![(REAL_RENDERS.to_string(), render.clone())];
        for &method in &a.methods {
            if method.is_ablation() && split != focus {
                continue;
            }
            let Some(sampler) = sampler_for(a, &p, method) else {
                cells.push((method.to_string(), Err("not trained".into())));
                continue;
            };
            let pred = dir.join(method.name());
            let secs = match p.generate(sampler.as_ref(), &held, &pred)? {
                Generated::All(s) => s,
                Generated::Partial(k) => {
                    cells.push((method.to_string(), Err(format!("{k} of {} generated", a.n))));
                    continue;
                }
            };
            let ratio = sampler.as_ref().and_then(|s| s.ratio(None));
            let row = score(&evals, method.name(), &pred, &gt, secs, ratio)?;
            cells.push((method.to_string(), Ok(row)));
            rows.push((method.to_string(), pred));
        }
        let names: Vec<String> = (0..6.min(a.n)).map(name).collect();
        let rows: Vec<(String, &Path)> =
            rows.iter().map(|(l, d)| (l.clone(), d.as_path())).collect();
        write_grid(
            &out.join(format!("results-grid-{}.png", split.name())),
            &rows,
            &names,
            m.size,
        )?;
        res.splits.push(SplitRows {
            split,
            truth,
            cells,
        });
        if split == focus && !flips.is_empty() {
            res.flips = flip_test(a, &flips, &p, &held, out, &dir)?;
        }
    }
    let md = report(a, &res, focus);
    let mut targets = vec![out.to_path_buf()];
    targets.extend(a.report.clone());
    for t in &targets {
        std::fs::create_dir_all(t).map_err(|e| user(format!("{}: {e}", t.display())))?;
        atomic_write(&t.join("results.md"), |f| f.write_all(md.as_bytes())).map_err(user)?;
        if t.as_path() != out {
            for s in splits
                .iter()
                .map(|s| format!("results-grid-{}.png", s.name()))
                .chain(["results-flip.png".into()])
            {
                if out.join(&s).is_file() {
                    std::fs::copy(out.join(&s), t.join(&s))
                        .map_err(|e| user(format!("{}: {e}", t.join(&s).display())))?;
                }
            }
        }
        eprintln!("wrote {}", t.join("results.md").display());
    }
    crate::args::print_stdout(&md)
}

/// The order-flip test on the focus split's scenes; `dir` holds their images per method.
fn flip_test(
    a: &SuiteArgs,
    methods: &[Method],
    p: &Protocol,
    held: &[zlayer_synth::SynthScene],
    out: &Path,
    dir: &Path,
) -> Result<Vec<(String, FlipCell)>, Failure> {
    // A scene without an adjacent overlapping pair stays as it is, so that every scene keeps
    // its place in its batch and so its noise.
    let flipped: Vec<_> = held.iter().map(flip).collect();
    let pairs: Vec<Option<(usize, usize)>> =
        flipped.iter().map(|f| f.as_ref().map(|f| f.1)).collect();
    let scenes: Vec<_> = held
        .iter()
        .zip(&flipped)
        .map(|(s, f)| f.as_ref().map_or_else(|| s.clone(), |f| f.0.clone()))
        .collect();
    let fdir = out.join("flip");
    let (flip_gt, flip_render) = write_truth(&scenes, &fdir, p.m.size)?;
    let mut rows = vec![
        ("declared".to_string(), dir.join("render")),
        ("swapped".to_string(), flip_render),
    ];
    // The real renders scored as predictions: the test's ceiling.
    let truth = zlayer_app::flip::score(&dir.join("gt"), &flip_gt, &rows[0].1, &rows[1].1, &pairs)?;
    let mut scores = vec![("real renders (ceiling)".to_string(), Ok(truth))];
    for &method in methods {
        let name = method.name();
        let Some(sampler) = sampler_for(a, p, method) else {
            scores.push((name.to_string(), Err("not trained".into())));
            continue;
        };
        let pred = fdir.join(name);
        let orig = generated(&dir.join(name));
        if let Generated::Partial(k) = p.generate(sampler.as_ref(), &scenes, &pred)? {
            scores.push((
                name.to_string(),
                Err(format!("{k} of {} generated", scenes.len())),
            ));
            continue;
        }
        if orig < scenes.len() {
            scores.push((
                name.to_string(),
                Err(format!("{orig} of {} generated", scenes.len())),
            ));
            continue;
        }
        let s = zlayer_app::flip::score(&dir.join("gt"), &flip_gt, &dir.join(name), &pred, &pairs)?;
        scores.push((name.to_string(), Ok(s)));
        rows.push((name.to_string(), dir.join(name)));
        rows.push((format!("{name}, swapped"), pred));
    }
    let shown: Vec<String> = (0..held.len())
        .filter(|&k| pairs[k].is_some())
        .take(6)
        .map(name)
        .collect();
    let rows: Vec<(String, &Path)> = rows.iter().map(|(l, d)| (l.clone(), d.as_path())).collect();
    write_grid(&out.join("results-flip.png"), &rows, &shown, p.m.size)?;
    Ok(scores)
}

/// The method's sampler, `Some(None)` for the base alone; `None` (with a notice) when it has
/// no trained weights.
fn sampler_for(a: &SuiteArgs, p: &Protocol, method: Method) -> Option<Option<SceneSampler>> {
    match SceneSampler::for_method(&a.model, method, p.m.base.clone(), p.dev) {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!("skipping {method}: {e}");
            None
        }
    }
}

/// How a method was trained, from its model file's JSON.
fn budget(model: &ModelDir, method: &str) -> String {
    match method {
        "base" => return "none (base only)".into(),
        "larender" => return "training-free".into(),
        _ => {}
    }
    let v = model.layout(method).and_then(|src| src.json().ok());
    if let Some(g) = v.as_ref().and_then(|v| v.get("grpo")) {
        let c = &g["config"];
        return format!(
            "occlusionformer + {} GRPO iterations × {} scenes × {}",
            c["iterations"], c["scenes"], c["group"]
        );
    }
    match v {
        Some(v) => format!(
            "{} × {} {} scenes, {:.0} min",
            v["steps"],
            v["batch"],
            v["splits"].as_array().map_or("?".into(), |s| s
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join("+")),
            v["train_minutes"].as_f64().unwrap_or(f64::NAN)
        ),
        None => "?".into(),
    }
}

fn f3(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3}"))
}

fn row_of<'a>(cells: &'a [(String, Cell)], method: &str) -> Option<&'a Row> {
    cells.iter().find_map(|(m, c)| match c {
        Ok(r) if m == method => Some(r),
        _ => None,
    })
}

/// The full scores of one split, one line per method.
fn full_table(a: &SuiteArgs, truth: &Row, cells: &[(String, Cell)]) -> String {
    let mut s = format!(
        "| method | training | grounding ratio | mIoU | O-mIoU | order acc. | Occ. F1 | WHDR (%) |\n\
         |---|---|---|---|---|---|---|---|\n{}",
        line("real renders (ceiling)", "–", Some(truth))
    );
    for (m, c) in cells {
        match c {
            Ok(r) => s += &line(m, &budget(&a.model, m), Some(r)),
            Err(why) => s += &format!("| {m} | **{why}** | – | – | – | – | – | – |\n"),
        }
    }
    s
}

fn line(label: &str, budget: &str, r: Option<&Row>) -> String {
    let Some(r) = r else { return String::new() };
    let m = &r.summary;
    format!(
        "| {label} | {budget} | {} | {} | {} | {} | {} | {} |\n",
        r.grounding_ratio.map_or("–".into(), |v| format!("{v}")),
        f3(m.mask_miou),
        f3(m.mask_o_miou),
        f3(m.order_accuracy),
        f3(m.occ_f1),
        m.whdr.map_or("–".into(), |v| format!("{v:.1}")),
    )
}

/// results.md.
fn report(a: &SuiteArgs, res: &Results, focus: Split) -> String {
    let model = match &a.model {
        ModelDir::Bundled => "the bundled model (models/tiny16)".to_string(),
        ModelDir::Dir(d) => format!("`{}`", d.display()),
    };
    let mut s = format!(
        "# Results: OcclusionFormer's tables on the tiny model\n\n\
         Model: {model}.\n\n\
         Written by `zlayer eval --suite paper` ({} held-out scenes per split, data seed {}: \
         training uses seed 0; {} Euler steps, no guidance; every method draws the same noise \
         for the same scene). Each branch samples with the grounding ratio and layout guidance \
         stored in its model file (guidance 1, none, where it records none), tuned on \
         validation scenes (seed 2,000,000). Order accuracy, Occ. F1 and WHDR \
         count the declared overlapping pairs whose order the real render shows; mIoU and \
         O-mIoU compare segmented visible masks (docs/metrics.md). Every trained branch of a \
         table had the same budget, given in its row as steps × scenes per step (the minutes \
         are wall-clock on a shared 2-core machine, so they vary with its load).\n\n## Main table\n\n",
        a.n, a.seed, a.steps
    );
    let main: Vec<&str> = Method::MAIN
        .into_iter()
        .filter(|m| a.methods.contains(m))
        .map(Method::name)
        .collect();
    let mains: Vec<_> = res
        .splits
        .iter()
        .filter(|r| a.splits.iter().any(|&x| Split::from(x) == r.split))
        .collect();
    s += "| method | training |";
    for r in &mains {
        s += &format!(" {0} O-mIoU | {0} Occ. F1 |", r.split.name());
    }
    s += "\n|---|---|";
    s += &"---|---|".repeat(mains.len());
    s += "\n";
    for m in &main {
        s += &format!("| {m} | {} |", budget(&a.model, m));
        for sr in &mains {
            let r = row_of(&sr.cells, m);
            s += &format!(
                " {} | {} |",
                f3(r.and_then(|r| r.summary.mask_o_miou)),
                f3(r.and_then(|r| r.summary.occ_f1))
            );
        }
        s += "\n";
    }
    s += "\n";
    // The targets, checked.
    let occ_gap = |cells: &[(String, Cell)], other: &str| -> Option<(f64, f64)> {
        let (o, b) = (row_of(cells, "occlusionformer")?, row_of(cells, other)?);
        Some((
            o.summary.mask_o_miou? - b.summary.mask_o_miou?,
            o.summary.occ_f1? - b.summary.occ_f1?,
        ))
    };
    for other in ["global", "larender"] {
        let gaps: Vec<String> = mains
            .iter()
            .map(|sr| match occ_gap(&sr.cells, other) {
                Some((d1, d2)) => format!("{} {d1:+.3} / {d2:+.3}", sr.split.name()),
                None => format!("{} –", sr.split.name()),
            })
            .collect();
        s += &format!(
            "- occlusionformer − {other} (O-mIoU / Occ. F1): {}\n",
            gaps.join("; ")
        );
    }
    s += "\n## Every measure, per split\n";
    for sr in &res.splits {
        s += &format!(
            "\n### {} ({} scored pairs)\n\n{}\n![{0} grid](results-grid-{0}.png)\n",
            sr.split.name(),
            sr.truth.summary.pairs,
            full_table(a, &sr.truth, &sr.cells)
        );
    }
    if let Some(sr) = res.splits.iter().find(|r| r.split == focus) {
        let cells = &sr.cells;
        let full = row_of(cells, "occlusionformer");
        s += &format!(
            "\n## Ablations ({} split)\n\n| variant | what changes | training | mIoU | O-mIoU | order acc. | Occ. F1 | Δ Occ. F1 | WHDR (%) |\n|---|---|---|---|---|---|---|---|---|\n",
            focus.name()
        );
        let mut ab = vec![("occlusionformer", "the full model")];
        ab.extend(
            Method::ABLATIONS
                .into_iter()
                .filter(|(m, _)| a.methods.contains(m))
                .map(|(m, what)| (m.name(), what)),
        );
        for (m, what) in ab {
            match (cells.iter().find(|(x, _)| x == m).map(|c| &c.1), full) {
                (Some(Ok(r)), f) => {
                    let d = f.and_then(|f| Some(r.summary.occ_f1? - f.summary.occ_f1?));
                    s += &format!(
                        "| {m} | {what} | {} | {} | {} | {} | {} | {} | {} |\n",
                        budget(&a.model, m),
                        f3(r.summary.mask_miou),
                        f3(r.summary.mask_o_miou),
                        f3(r.summary.order_accuracy),
                        f3(r.summary.occ_f1),
                        d.map_or("–".into(), |d| format!("{d:+.3}")),
                        r.summary.whdr.map_or("–".into(), |v| format!("{v:.1}")),
                    );
                }
                (c, _) => {
                    let why = c
                        .and_then(|c| c.as_ref().err())
                        .map_or("not run", |w| w.as_str());
                    s += &format!("| {m} | {what} | **{why}** | – | – | – | – | – | – |\n")
                }
            }
        }
    }
    if !res.flips.is_empty() {
        s += &format!(
            "\n## Order flip ({} split)\n\nIn each scene, the declared order of one overlapping pair adjacent in depth \
             (the one with the largest overlap) is swapped, and the scene generated again from the \
             same noise. A pair counts when both real renders show its order.\n\n\
             | method | pairs | generated order flipped | rate | in the declared order both times |\n|---|---|---|---|---|\n",
            focus.name()
        );
        for (m, r) in &res.flips {
            match r {
                Ok(f) => {
                    s += &format!(
                        "| {m} | {} | {} | {} | {} |\n",
                        f.pairs,
                        f.flipped,
                        f3(f.rate()),
                        f.both_right
                    )
                }
                Err(why) => s += &format!("| {m} | **{why}** | – | – | – |\n"),
            }
        }
        s += "\nRows: the declared scene and its swapped version (real renders), then each method on both.\n\n![order flip](results-flip.png)\n";
    }
    s
}
