//! `zlayer eval --suite seeds --runs A,B,C`: several `--suite paper` runs, one per training
//! seed of the same recipe, summed up as mean ± standard deviation over the seeds, with each
//! method's difference to occlusionformer and its bootstrap interval over scenes.

use std::io::Write;
use std::path::{Path, PathBuf};
use zlayer_app::Failure;
use zlayer_app::method::Method;
use zlayer_app::protocol::{REAL_RENDERS, report_folder};
use zlayer_composite::atomic_write;
use zlayer_metrics::seeds::{Measure, SceneTable, mean_std, paired_difference};
use zlayer_synth::Split;

/// Bootstrap resamplings of the scenes per interval.
const DRAWS: usize = 2000;

fn user(e: impl std::fmt::Display) -> Failure {
    Failure::User(e.to_string())
}

/// One method's tables on one split, one per run (`None` where that run lacks it).
struct MethodRuns {
    name: String,
    /// The real renders scored as predictions (the ceiling), not a method.
    truth: bool,
    tables: Vec<Option<SceneTable>>,
}

/// Summarises `runs` (each a `--suite paper` output folder) into `out/results-seeds.md`, and
/// into `report` too when given.
pub fn run(runs: &[PathBuf], out: &Path, report: Option<&Path>) -> Result<(), Failure> {
    if runs.len() < 2 {
        return Err(user(
            "--suite seeds needs --runs with two or more `eval --suite paper` output folders, one per training seed",
        ));
    }
    if let Some(r) = runs.iter().find(|r| !r.is_dir()) {
        return Err(user(format!(
            "--runs {}: not a folder (give the --out folders of `eval --suite paper`)",
            r.display()
        )));
    }
    let mut md = format!(
        "# Results over {} training seeds\n\n\
         Written by `zlayer eval --suite seeds` from {} runs of `zlayer eval --suite paper`, one per \
         training seed of every branch, on the same held-out scenes and noise: {}. Each value is the \
         mean ± standard deviation over the seeds that have the method. Δ is the method's \
         difference to occlusionformer, averaged over the seeds, with a 95% percentile bootstrap \
         interval from {DRAWS} resamplings of the scenes (the same scenes for every seed and both \
         methods). The interval reflects which scenes were held out, given these seeds; how the \
         seeds themselves spread is the ± beside each value.\n",
        runs.len(),
        runs.len(),
        runs.iter()
            .map(|r| format!("`{}`", r.display()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut any = false;
    for split in [Split::Simple, Split::Regular, Split::Complex] {
        let methods = read_split(runs, split)?;
        if methods.is_empty() {
            continue;
        }
        any = true;
        md += &split_table(split, &methods)?;
    }
    if !any {
        return Err(user(format!(
            "no scores under {}: each run needs SPLIT/eval/METHOD/per_scene.csv, as `eval --suite paper` writes",
            runs[0].display()
        )));
    }
    let mut targets = vec![out];
    targets.extend(report);
    for t in targets {
        std::fs::create_dir_all(t).map_err(|e| user(format!("{}: {e}", t.display())))?;
        let path = t.join("results-seeds.md");
        atomic_write(&path, |f| f.write_all(md.as_bytes())).map_err(user)?;
        eprintln!("wrote {}", path.display());
    }
    crate::args::print_stdout(&md)
}

/// Every method scored on `split` in any run, the real renders first, then in the tables'
/// order.
fn read_split(runs: &[PathBuf], split: Split) -> Result<Vec<MethodRuns>, Failure> {
    let mut names: Vec<String> = Vec::new();
    for r in runs {
        let dir = r.join(split.name()).join("eval");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if e.path().join("per_scene.csv").is_file() && !names.contains(&n) {
                names.push(n);
            }
        }
    }
    let truth = report_folder(REAL_RENDERS);
    let rank = |n: &str| {
        if n == truth {
            return 0;
        }
        Method::all()
            .position(|m| m.name() == n)
            .map_or(usize::MAX, |k| k + 1)
    };
    names.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    names
        .into_iter()
        .map(|name| {
            let tables = runs
                .iter()
                .map(|r| {
                    let p = r
                        .join(split.name())
                        .join("eval")
                        .join(&name)
                        .join("per_scene.csv");
                    if !p.is_file() {
                        return Ok(None);
                    }
                    let text = std::fs::read_to_string(&p)
                        .map_err(|e| user(format!("{}: {e}", p.display())))?;
                    SceneTable::parse(&text)
                        .map(Some)
                        .map_err(|e| user(format!("{}: {e}", p.display())))
                })
                .collect::<Result<_, Failure>>()?;
            Ok(MethodRuns {
                truth: name == truth,
                name,
                tables,
            })
        })
        .collect()
}

/// One split's table.
fn split_table(split: Split, methods: &[MethodRuns]) -> Result<String, Failure> {
    let full = methods.iter().find(|m| m.name == "occlusionformer");
    let scenes = methods
        .iter()
        .flat_map(|m| m.tables.iter().flatten())
        .map(|t| t.scenes().len())
        .next()
        .unwrap_or(0);
    let mut s = format!(
        "\n## {} ({scenes} scenes)\n\n| method | seeds |",
        split.name()
    );
    for m in Measure::ALL {
        s += &format!(" {} |", m.label());
    }
    s += " Δ Occ. F1 (95% interval) | Δ order acc. (95% interval) |\n|---|---|";
    s += &"---|".repeat(Measure::ALL.len() + 2);
    s += "\n";
    for m in methods {
        let label = if m.truth {
            "real renders (ceiling)"
        } else {
            &m.name
        };
        let have: Vec<&SceneTable> = m.tables.iter().flatten().collect();
        s += &format!("| {label} | {} |", have.len());
        for measure in Measure::ALL {
            let v: Vec<f64> = have.iter().filter_map(|t| t.whole(measure)).collect();
            let digits = if measure == Measure::Whdr { 1 } else { 3 };
            s += &match mean_std(&v) {
                Some((mu, sd)) if v.len() > 1 => format!(" {mu:.digits$} ± {sd:.digits$} |"),
                Some((mu, _)) => format!(" {mu:.digits$} |"),
                None => " – |".into(),
            };
        }
        for measure in [Measure::OccF1, Measure::OrderAccuracy] {
            s += &match full.filter(|f| f.name != m.name && !m.truth) {
                Some(f) => delta(m, f, measure)?,
                None => " – |".into(),
            };
        }
        s += "\n";
    }
    Ok(s)
}

/// `m − full` over the seeds both have, with its interval.
fn delta(m: &MethodRuns, full: &MethodRuns, measure: Measure) -> Result<String, Failure> {
    let (a, b): (Vec<&SceneTable>, Vec<&SceneTable>) = m
        .tables
        .iter()
        .zip(&full.tables)
        .filter_map(|(a, b)| Some((a.as_ref()?, b.as_ref()?)))
        .unzip();
    if a.is_empty() {
        return Ok(" no common seed |".into());
    }
    let d = paired_difference(&a, &b, measure, DRAWS, 0)
        .map_err(|e| user(format!("{} against occlusionformer: {e}", m.name)))?;
    Ok(match d {
        Some(d) => format!(" {:+.3} ({:+.3}, {:+.3}) |", d.mean, d.low, d.high),
        None => " – |".into(),
    })
}
