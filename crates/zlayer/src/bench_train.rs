//! `zlayer bench-train`: the tiny model's training step, the peak sgemm on the same threads,
//! and, where a Python with torch can run the PyTorch peer (`shared/tools/peer_train_step.py`),
//! the same step there, in one run. The ratio of the two steps is the figure
//! (docs/performance.md).

use clap::Args;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;
use zlayer_app::Failure;
use zlayer_model::bench::{BATCH, TrainStep, median, sgemm_inputs};

/// Flags of `zlayer bench-train`.
#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Timed training steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// The PyTorch peer script [default: ../shared/tools/peer_train_step.py].
    #[arg(long)]
    peer: Option<PathBuf>,
    /// The Python that runs it (needs torch and numpy).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Leave the peer out.
    #[arg(long)]
    no_peer: bool,
}

/// The first number after `key` on the line that starts with it.
fn figure(out: &str, key: &str) -> Option<f64> {
    let rest = out.lines().find_map(|l| l.strip_prefix(key))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Runs the command.
pub fn run(a: BenchTrainArgs) -> Result<(), Failure> {
    if a.steps == 0 {
        return Err(Failure::User("--steps must be positive".into()));
    }
    let int = |e: candle_core::Error| Failure::Internal(e.to_string());
    let dev = candle_core::Device::Cpu;
    zlayer_model::keep_freed_memory();
    let threads = rayon::current_num_threads();
    let mut step = TrainStep::new(&dev).map_err(int)?;
    eprintln!(
        "zlayer train step: batch {BATCH}, {:.2} GFLOP counted; {} warm-up + {} timed steps on {threads} threads…",
        step.flops / 1e9,
        a.warmup,
        a.steps
    );
    for _ in 0..a.warmup {
        step.run().map_err(int)?;
    }
    let mut times = Vec::new();
    for _ in 0..a.steps {
        let t = Instant::now();
        step.run().map_err(int)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let ours = median(times);
    let (x, y) = sgemm_inputs(1024, &dev).map_err(int)?;
    let mut gemm = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        x.matmul(&y).map_err(int)?;
        gemm.push(t.elapsed().as_secs_f64());
    }
    let peak = 2.0 * 1024f64.powi(3) / median(gemm) / 1e9;
    let rate = step.flops / ours / 1e9;
    let mut table = String::from(
        "| | step (s, median) | GFLOP/s counted | peak sgemm 1024³ (GFLOP/s) | share of peak |\n|---|---|---|---|---|\n",
    );
    table += &format!(
        "| zlayer (candle) | {ours:.3} | {rate:.1} | {peak:.1} | {:.0}% |\n",
        100.0 * rate / peak
    );
    match peer(&a, threads) {
        Ok(out) => {
            let (Some(theirs), Some(their_peak)) = (
                figure(&out, "peer train step:"),
                figure(&out, "peer sgemm:"),
            ) else {
                return Err(Failure::Internal(format!(
                    "the peer ran but printed no `peer train step:` / `peer sgemm:` line:\n{out}"
                )));
            };
            let their_rate = step.flops / theirs / 1e9;
            table += &format!(
                "| PyTorch eager (peer) | {theirs:.3} | {their_rate:.1} | {their_peak:.1} | {:.0}% |\n\nzlayer's step is **{:.2}×** the peer's speed (peer time ÷ zlayer time).\n",
                100.0 * their_rate / their_peak,
                theirs / ours
            );
        }
        Err(why) => table += &format!("\nThe PyTorch peer was left out: {why}\n"),
    }
    crate::args::print_stdout(&table)
}

/// Runs the peer script; its output, or why it could not run.
fn peer(a: &BenchTrainArgs, threads: usize) -> Result<String, String> {
    if a.no_peer {
        return Err("--no-peer".into());
    }
    let script = a
        .peer
        .clone()
        .unwrap_or_else(|| PathBuf::from("../shared/tools/peer_train_step.py"));
    if !script.is_file() {
        return Err(format!(
            "no peer script at {} (--peer PATH names it)",
            script.display()
        ));
    }
    let torch = Command::new(&a.python)
        .args(["-c", "import torch, numpy"])
        .output();
    match torch {
        Ok(o) if o.status.success() => {}
        Ok(_) => {
            return Err(format!(
                "{} cannot import torch and numpy (`{} -m pip install torch numpy`)",
                a.python, a.python
            ));
        }
        Err(e) => return Err(format!("cannot run {}: {e} (--python PATH)", a.python)),
    }
    eprintln!("running the PyTorch peer {}…", script.display());
    let (steps, warmup, threads) = (
        a.steps.to_string(),
        a.warmup.to_string(),
        threads.to_string(),
    );
    let out = Command::new(&a.python)
        .arg(&script)
        .args([
            "--threads",
            &threads,
            "--steps",
            &steps,
            "--warmup",
            &warmup,
            "--no-sample",
        ])
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "the peer failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peers_figures_are_read_from_its_lines() {
        let out = "torch 2.15\npeer train step: 0.6123 s (median of 10; min 0.6)\npeer sgemm: 301.5 GFLOP/s (1024^3)\n";
        assert_eq!(figure(out, "peer train step:"), Some(0.6123));
        assert_eq!(figure(out, "peer sgemm:"), Some(301.5));
        assert_eq!(figure(out, "peer sample:"), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
