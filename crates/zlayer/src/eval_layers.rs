//! `zlayer eval-layers`: RGBA layers scored against SA-Z-synth's exact amodal layers.

use crate::args::SplitArg;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use zlayer_app::Failure;
use zlayer_app::decompose::{LayerModel, heldout};
use zlayer_app::layer_eval::{BASELINES, LayerScores, evaluate};

/// Flags of `zlayer eval-layers`.
#[derive(Debug, Args)]
pub struct EvalLayersArgs {
    /// Methods to score, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = BASELINES.map(String::from))]
    methods: Vec<String>,
    /// Held-out scenes.
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// Their split.
    #[arg(long, value_enum, default_value_t = SplitArg::Complex)]
    split: SplitArg,
    /// Image side in pixels.
    #[arg(long, default_value_t = 64)]
    size: u32,
    /// Data seed of the held-out scenes.
    #[arg(long, default_value_t = 1_000_000)]
    seed: u64,
    /// Also decompose the scenes with this layer model (`bundled`, or a `zlayer train
    /// layers` folder) and score it, raw and with what the image shows taken from it, beside
    /// the cut-outs and its VAE's round trip of the exact layers.
    #[arg(long)]
    layer_model: Option<PathBuf>,
    /// Sampling steps of the layer model [default: the model's].
    #[arg(long, requires = "layer_model")]
    steps: Option<usize>,
    /// Output folder: layers-eval.md and layers-eval.json.
    #[arg(long, default_value = "layers-eval")]
    out: PathBuf,
}

fn user(e: impl std::fmt::Display) -> Failure {
    Failure::User(e.to_string())
}

/// Runs the command.
pub fn run(a: EvalLayersArgs) -> Result<(), Failure> {
    if a.n == 0 || a.size < 16 {
        return Err(user("--n must be positive and --size at least 16"));
    }
    let methods: Vec<&str> = a.methods.iter().map(String::as_str).collect();
    let mut scores = evaluate(&methods, a.seed, a.n, a.size, a.split.into()).map_err(user)?;
    if let Some(dir) = &a.layer_model {
        let dev = candle_core::Device::Cpu;
        let (lm, meta) = LayerModel::open(dir, &dev)?;
        if lm.size != a.size {
            return Err(user(format!(
                "{}: the layer model works at {} px; pass --size {}",
                dir.display(),
                lm.size,
                lm.size
            )));
        }
        let steps = a.steps.unwrap_or(meta.steps).max(1);
        let more =
            heldout(&lm, (a.seed, a.n, a.split.into()), steps, &dev).map_err(Failure::Internal)?;
        scores.extend(
            more.into_iter()
                .filter(|m| !methods.contains(&m.method.as_str())),
        );
    }
    let md = table(&scores, a.n, a.split);
    print!("{md}");
    std::fs::create_dir_all(&a.out).map_err(|e| user(format!("{}: {e}", a.out.display())))?;
    let write = |name: &str, bytes: &[u8]| -> Result<(), Failure> {
        let p = a.out.join(name);
        zlayer_composite::atomic_write(&p, |f| f.write_all(bytes))
            .map_err(|e| user(format!("{}: {e}", p.display())))
    };
    write("layers-eval.md", md.as_bytes())?;
    let json = serde_json::json!({"scenes": a.n, "split": format!("{:?}", a.split).to_lowercase(), "size": a.size, "seed": a.seed, "methods": scores});
    write(
        "layers-eval.json",
        serde_json::to_string_pretty(&json)
            .expect("plain data")
            .as_bytes(),
    )?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

fn table(scores: &[LayerScores], n: usize, split: SplitArg) -> String {
    let mut s = String::from(
        "| method | RGB L1, visible | RGB L1, hidden | alpha SAD | alpha MSE | alpha Grad | alpha Conn | re-composite PSNR |\n|---|---|---|---|---|---|---|---|\n",
    );
    for m in scores {
        s += &format!(
            "| {} | {:.4} | {:.4} | {:.3} | {:.5} | {:.3} | {:.3} | {} |\n",
            m.method,
            m.visible_l1,
            m.hidden_l1,
            m.sad,
            m.mse,
            m.grad,
            m.conn,
            m.recomposite_psnr
                .map_or("—".into(), |p| format!("{p:.2} dB"))
        );
    }
    s + &format!(
        "\n{} instance layers of {n} held-out {:?} scenes, against their exact amodal layers.\n",
        scores.first().map_or(0, |m| m.layers),
        split
    )
}
