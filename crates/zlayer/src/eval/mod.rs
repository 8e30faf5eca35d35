//! `zlayer eval`: score generated images of synthetic scenes against their ground truth.

use zlayer_app::report::write_report;
pub mod seeds;
pub mod suite;

use clap::Args;
use std::path::{Path, PathBuf};
use zlayer_app::Failure;
use zlayer_composite::annotate::{Canvas, Series, level_colour, line_chart};
use zlayer_composite::{BitDepth, write_png};
use zlayer_metrics::eval::{Summary, evaluate_dirs, summarize};

/// Flags of `zlayer eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Predicted images: `<name>.png` or `<name>/image.png` per ground-truth scene.
    #[arg(long, required_unless_present = "suite")]
    pred: Option<PathBuf>,
    /// Ground truth: one folder per scene, as `zlayer synth --format png` writes them.
    #[arg(long, required_unless_present = "suite")]
    gt: Option<PathBuf>,
    /// Evaluate only this split's subfolder (`GT/<split>`, `PRED/<split>`).
    #[arg(long)]
    split: Option<String>,
    /// Where to write summary.json, summary.md and per_scene.csv (default: PRED/eval); with
    /// --suite, the working folder of images and reports (default: paper-eval).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also draw the summary (metrics.png) and the error-vs-distance curve (halo.png).
    #[arg(long)]
    plot: bool,
    /// Generate and score a whole benchmark instead of one folder: `paper` runs every method
    /// on held-out scenes of every split and writes results.md (hours on a CPU; resumable);
    /// `seeds` sums up several `paper` runs, one per training seed (--runs), into
    /// results-seeds.md: mean ± std over seeds and bootstrap intervals.
    #[arg(long, value_enum, conflicts_with_all = ["pred", "gt", "split", "plot"])]
    suite: Option<suite::Suite>,
    #[command(flatten)]
    suite_args: suite::SuiteArgs,
}

fn user(e: impl std::fmt::Display) -> Failure {
    Failure::User(e.to_string())
}

/// Runs the command.
pub fn run(a: EvalArgs) -> Result<(), Failure> {
    if let Some(which) = a.suite {
        let out = a.out.clone().unwrap_or_else(|| "paper-eval".into());
        return match which {
            suite::Suite::Paper => suite::run(&a.suite_args, &out),
            suite::Suite::Seeds => {
                seeds::run(&a.suite_args.runs, &out, a.suite_args.report.as_deref())
            }
        };
    }
    let (Some(mut pred), Some(mut gt)) = (a.pred.clone(), a.gt.clone()) else {
        return Err(user("give --pred and --gt, or --suite"));
    };
    if let Some(s) = &a.split {
        if !["simple", "regular", "complex"].contains(&s.as_str()) {
            return Err(user(format!(
                "--split {s:?}: use simple, regular or complex"
            )));
        }
        gt = gt.join(s);
        if pred.join(s).is_dir() {
            pred = pred.join(s);
        }
        if !gt.is_dir() {
            return Err(user(format!("{}: no such split folder", gt.display())));
        }
    }
    for (flag, d) in [("--pred", &pred), ("--gt", &gt)] {
        if !d.is_dir() {
            return Err(user(format!("{flag} {}: not a folder", d.display())));
        }
    }
    let start = std::time::Instant::now();
    let results = evaluate_dirs(&pred, &gt).map_err(user)?;
    let summary = summarize(&results);
    let out = a.out.unwrap_or_else(|| pred.join("eval"));
    let title = format!("zlayer eval: {} against {}", pred.display(), gt.display());
    let md = write_report(&out, &summary, &results, &title)?;
    if a.plot {
        plot(&summary, &out.join("metrics.png"))?;
        plot_curve(&summary, &out.join("halo.png"))?;
    }
    crate::args::print_stdout(&md)?;
    eprintln!(
        "evaluated {} scenes in {:.2} s; wrote {}",
        summary.scenes,
        start.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(())
}

/// A horizontal bar chart of the summary's [0, 1] metrics.
fn plot(s: &Summary, path: &Path) -> Result<(), Failure> {
    let bars = [
        ("order accuracy", s.order_accuracy),
        ("Occ. F1", s.occ_f1),
        ("mIoU (mask)", s.mask_miou),
        ("O-mIoU (mask)", s.mask_o_miou),
        ("mIoU (box)", s.box_miou),
        ("O-mIoU (box)", s.box_o_miou),
        ("boundary F", s.boundary_f),
        ("boundary IoU", s.boundary_iou),
    ];
    let (w, row) = (640.0, 28.0);
    let mut c = Canvas::new(w as u32, (row * bars.len() as f32 + 40.0) as u32, [255; 4])
        .ok_or_else(|| Failure::Internal("no canvas".into()))?;
    c.text(
        10.0,
        8.0,
        &format!("{} scenes, {} pairs", s.scenes, s.pairs),
        1.0,
        [20, 20, 20, 255],
    );
    for (k, (name, v)) in bars.iter().enumerate() {
        let y = 30.0 + k as f32 * row;
        c.text(10.0, y + 6.0, name, 1.0, [20, 20, 20, 255]);
        c.fill_rect([140.0, y, 400.0, row - 8.0], [235, 235, 235, 255]);
        if let Some(v) = v {
            c.fill_rect([140.0, y, 400.0 * *v as f32, row - 8.0], level_colour(k));
            c.text(550.0, y + 6.0, &format!("{v:.3}"), 1.0, [20, 20, 20, 255]);
        }
    }
    write_png(path, &c.to_image(), BitDepth::Eight).map_err(user)
}

/// The image error against signed distance to the silhouette (PELC's halo curve).
fn plot_curve(s: &Summary, path: &Path) -> Result<(), Failure> {
    let series = Series {
        label: "mean abs. error".into(),
        points: s
            .error_curve
            .iter()
            .map(|b| (b.distance as f64, b.mean_error))
            .collect(),
    };
    let img = line_chart(
        "mean abs. image error vs signed distance to the silhouette",
        "distance to the edge in px (negative: inside)",
        &[series],
        640,
        360,
    )
    .ok_or_else(|| Failure::Internal("no canvas".into()))?;
    write_png(path, &img, BitDepth::Eight).map_err(user)
}
