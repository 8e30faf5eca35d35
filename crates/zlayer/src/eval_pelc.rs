//! `zlayer eval-pelc`: latent blending methods side by side on held-out pairs.

use candle_core::Device;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use zlayer_app::Failure;
use zlayer_app::pelc::eval::{MethodScore, dit_step_ms, evaluate};
use zlayer_app::pelc::{MASK_KINDS, pair};
use zlayer_composite::annotate::{Series, line_chart};

/// Flags of `zlayer eval-pelc`.
#[derive(Debug, Args)]
pub struct EvalPelcArgs {
    /// A trained DecFormer (pelc.safetensors with its pelc.json); without it only the linear
    /// blend and the pixel ceiling are scored.
    #[arg(long)]
    pelc: Option<PathBuf>,
    /// The VAE; default: the one the DecFormer was trained on, else models/tiny16.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// Held-out pairs (the four mask kinds in turn).
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Data seed of the pairs (training uses 0).
    #[arg(long, default_value_t = 1_000_000)]
    seed: u64,
    /// Output folder: pelc-eval.json, pelc-eval.md and pelc-curve.png.
    #[arg(long, default_value = "pelc-eval")]
    out: PathBuf,
}

fn user(e: impl std::fmt::Display) -> Failure {
    Failure::User(e.to_string())
}

/// Runs the command.
pub fn run(a: EvalPelcArgs) -> Result<(), Failure> {
    if a.n == 0 {
        return Err(user("--n must be positive"));
    }
    let dev = Device::Cpu;
    let (dec, meta) = match &a.pelc {
        Some(path) => {
            let (dec, meta) = zlayer_app::pelc::load(path, &dev)?;
            (Some(dec), Some(meta))
        }
        None => (None, None),
    };
    let vae_path = a
        .vae
        .clone()
        .or_else(|| {
            meta.as_ref()
                .and_then(|m| m["vae"].as_str().map(PathBuf::from))
        })
        .unwrap_or_else(|| PathBuf::from("models/tiny16/vae.safetensors"));
    let src = zlayer_model::bundle::Source::File(vae_path.clone());
    let vae = zlayer_model::bundle::load_vae(&src, &dev).map_err(Failure::User)?;
    let size = src.json().map_err(Failure::User)?["image_size"]
        .as_u64()
        .ok_or_else(|| user(format!("{}: no image_size", src.json_name())))?
        as usize;
    eprintln!(
        "scoring {} held-out pairs ({}) on {}…",
        a.n,
        MASK_KINDS.join(", "),
        vae_path.display()
    );
    let pairs: Vec<_> = (0..a.n as u64)
        .map(|i| pair(a.seed, i, size as u32))
        .collect();
    let scores = evaluate(&vae, dec.as_ref(), &pairs, size, &dev)?;
    let dit = dit_step_ms(&dev)?;
    std::fs::create_dir_all(&a.out).map_err(|e| user(format!("{}: {e}", a.out.display())))?;
    let md = table(&scores, dit, a.n);
    print!("{md}");
    let write = |name: &str, bytes: &[u8]| -> Result<(), Failure> {
        let p = a.out.join(name);
        zlayer_composite::atomic_write(&p, |f| f.write_all(bytes))
            .map_err(|e| user(format!("{}: {e}", p.display())))
    };
    write("pelc-eval.md", md.as_bytes())?;
    let json = serde_json::json!({"pairs": a.n, "seed": a.seed, "vae": vae_path, "pelc": a.pelc, "dit_step_ms": dit, "methods": scores});
    write(
        "pelc-eval.json",
        serde_json::to_string_pretty(&json)
            .expect("plain data")
            .as_bytes(),
    )?;
    let series: Vec<Series> = scores
        .iter()
        .map(|s| Series {
            label: s.method.into(),
            points: s
                .curve
                .iter()
                .filter(|b| b.count > 0)
                .map(|b| (b.distance as f64, b.mean_error))
                .collect(),
        })
        .collect();
    let img = line_chart(
        "error against signed distance to the mask edge (px; < 0 inside)",
        "distance",
        &series,
        720,
        400,
    )
    .ok_or_else(|| Failure::Internal("no canvas".into()))?;
    let png = a.out.join("pelc-curve.png");
    zlayer_composite::write_png(&png, &img, zlayer_composite::BitDepth::Eight).map_err(user)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

/// The Markdown table of the scores.
fn table(scores: &[MethodScore], dit_ms: f64, n: usize) -> String {
    let mut s = format!(
        "| method | PSNR (dB) | SSIM | halo L1 (≤ 2 px) | L1 | ms per pair | × one DiT step ({dit_ms:.1} ms) |\n|---|---|---|---|---|---|---|\n"
    );
    for m in scores {
        s += &format!(
            "| {} | {:.2} | {:.4} | {:.4} | {:.4} | {:.2} | {:.3} |\n",
            m.method,
            m.psnr,
            m.ssim,
            m.halo_l1,
            m.l1,
            m.ms_per_pair,
            m.ms_per_pair / dit_ms
        );
    }
    s + &format!("\n{n} held-out pairs, against the composite of the decoded inputs.\n")
}
