//! What long work shows and leaves behind: progress, loss curves, evaluation reports.

use crate::{Failure, user};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::Path;
use zlayer_composite::annotate::{Series, line_chart};
use zlayer_composite::{BitDepth, atomic_write, write_png};
use zlayer_metrics::eval::{SceneResult, Summary, csv, markdown};

/// A progress bar on a terminal; in a log file (`nohup`), a line every 25 steps instead.
pub struct Progress {
    bar: ProgressBar,
    start: std::time::Instant,
}

impl Progress {
    /// A bar for `steps` steps.
    pub fn new(steps: usize) -> Self {
        let bar = ProgressBar::new(steps as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        Self {
            bar,
            start: std::time::Instant::now(),
        }
    }

    /// Shows step `step` with a message; without a terminal, a line whenever the count
    /// passes a multiple of 25 (callers may advance by more than one) or ends.
    pub fn update(&self, step: usize, msg: String) {
        let before = self.bar.position() as usize;
        self.bar.set_position(step as u64);
        let len = self.bar.length().unwrap_or(0) as usize;
        if self.bar.is_hidden() && (step / 25 > before / 25 || (step == len && before < len)) {
            let secs = self.start.elapsed().as_secs_f64();
            eprintln!("step {step}/{len} {msg} ({secs:.0} s)");
        }
        self.bar.set_message(msg);
    }

    /// Ends the bar.
    pub fn finish(&self) {
        self.bar.finish();
    }
}

/// Draws `DIR/NAME-loss.csv` (step, loss, …) as `DIR/NAME-loss.png`, with a 50-step moving
/// average over the raw curve.
pub fn plot_loss(dir: &Path, name: &str) -> Result<(), Failure> {
    plot_column(dir, name, "loss", &format!("{name} training loss"))
}

/// Draws column `column` of `DIR/NAME-loss.csv` against the step as `DIR/NAME-COLUMN.png`
/// (`NAME-loss.png` for the loss), with a 50-step moving average over the raw curve.
pub fn plot_column(dir: &Path, name: &str, column: &str, title: &str) -> Result<(), Failure> {
    let csv = dir.join(format!("{name}-loss.csv"));
    let text = std::fs::read_to_string(&csv)
        .map_err(|e| Failure::Internal(format!("{}: {e}", csv.display())))?;
    let col = text
        .lines()
        .next()
        .and_then(|h| h.split(',').position(|c| c == column))
        .ok_or_else(|| Failure::Internal(format!("{}: no column {column:?}", csv.display())))?;
    let raw: Vec<(f64, f64)> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f.first()?.parse().ok()?, f.get(col)?.parse().ok()?))
        })
        .collect();
    let window = 50.min(raw.len().max(1));
    let smooth = raw
        .windows(window)
        .map(|w| {
            (
                w[w.len() - 1].0,
                w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64,
            )
        })
        .collect();
    let series = [
        Series {
            label: column.into(),
            points: raw,
        },
        Series {
            label: format!("mean of {window}"),
            points: smooth,
        },
    ];
    let img = line_chart(title, "step", &series, 720, 400)
        .ok_or_else(|| Failure::Internal("no canvas".into()))?;
    write_png(
        &dir.join(format!("{name}-{column}.png")),
        &img,
        BitDepth::Eight,
    )
    .map_err(|e| Failure::Internal(e.to_string()))
}

/// Writes summary.json, summary.md and per_scene.csv to `out`; returns the Markdown.
pub fn write_report(
    out: &Path,
    summary: &Summary,
    results: &[SceneResult],
    title: &str,
) -> Result<String, Failure> {
    std::fs::create_dir_all(out).map_err(|e| user(format!("{}: {e}", out.display())))?;
    let md = markdown(summary, title);
    let json =
        serde_json::to_string_pretty(&serde_json::json!({"summary": summary, "scenes": results}))
            .expect("plain data serialises");
    for (name, text) in [
        ("summary.json", json.as_str()),
        ("summary.md", md.as_str()),
        ("per_scene.csv", csv(results).as_str()),
    ] {
        atomic_write(&out.join(name), |f| f.write_all(text.as_bytes())).map_err(user)?;
    }
    Ok(md)
}
