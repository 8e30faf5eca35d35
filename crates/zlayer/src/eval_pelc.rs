//! `zlayer eval-pelc`: latent blending methods side by side on held-out pairs.

use candle_core::Device;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use zlayer_app::Failure;
use zlayer_app::pelc::eval::{MethodScore, Panels, dit_step_ms, evaluate};
use zlayer_app::pelc::{MASK_KINDS, pair};
use zlayer_composite::annotate::{Canvas, Series, line_chart};
use zlayer_composite::{Image, Straight};

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
    /// Pairs shown in pelc-grid.png (the first ones: the mask kinds in turn).
    #[arg(long, default_value_t = 8)]
    show: usize,
    /// Output folder: pelc-eval.json, pelc-eval.md, pelc-curve.png and pelc-grid.png.
    #[arg(long, default_value = "pelc-eval")]
    out: PathBuf,
    /// Also score an oracle: per pair, the ceiling's latent moved by this many Adam steps on
    /// its decoded image's L1 against x*. It estimates the best any latent decodes to, so it
    /// shows how much of the gap to x* a latent blend could close (slow: a decode and its
    /// backward pass per step). 0: no oracle.
    #[arg(long, default_value_t = 0)]
    oracle_steps: usize,
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
            let (dec, meta) =
                zlayer_app::pelc::load(&zlayer_model::bundle::Source::File(path.clone()), &dev)?;
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
    let (scores, shown) = evaluate(
        &vae,
        dec.as_ref(),
        &pairs,
        (size, a.show, a.oracle_steps),
        &dev,
    )?;
    let dit = dit_step_ms(&dev)?;
    std::fs::create_dir_all(&a.out).map_err(|e| user(format!("{}: {e}", a.out.display())))?;
    let latent_side = size / vae.cfg.factor();
    let flops = dec.as_ref().map(|d| flop_table(d.config(), latent_side));
    let md = table(&scores, dit, a.n) + flops.as_ref().map_or("", |f| f.0.as_str());
    print!("{md}");
    let write = |name: &str, bytes: &[u8]| -> Result<(), Failure> {
        let p = a.out.join(name);
        zlayer_composite::atomic_write(&p, |f| f.write_all(bytes))
            .map_err(|e| user(format!("{}: {e}", p.display())))
    };
    write("pelc-eval.md", md.as_bytes())?;
    let json = serde_json::json!({"pairs": a.n, "seed": a.seed, "vae": vae_path, "pelc": a.pelc, "dit_step_ms": dit, "flops": flops.map(|f| f.1), "methods": scores});
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
    if !shown.is_empty() {
        let png = a.out.join("pelc-grid.png");
        zlayer_composite::write_png(
            &png,
            &grid(&shown, size)?,
            zlayer_composite::BitDepth::Eight,
        )
        .map_err(user)?;
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}

/// The shown pairs, one per row, their panels in labelled columns, at twice their size.
fn grid(shown: &[Panels], size: usize) -> Result<Image<Straight>, Failure> {
    let scale = 2.0;
    let cell = size as f32 * scale + 6.0;
    let names: Vec<&str> = shown[0].iter().map(|p| p.0.as_str()).collect();
    let header = 30.0;
    let mut c = Canvas::new(
        (names.len() as f32 * cell + 6.0) as u32,
        (header + shown.len() as f32 * cell) as u32,
        [250, 250, 250, 255],
    )
    .ok_or_else(|| Failure::Internal("no canvas".into()))?;
    for (k, n) in names.iter().enumerate() {
        // Kind names differ by row; the header names what the column is.
        let label = n.split(" (").next().unwrap_or(n);
        c.text(6.0 + k as f32 * cell, 8.0, label, 1.0, [20, 20, 20, 255]);
    }
    for (r, panels) in shown.iter().enumerate() {
        for (k, (_, px)) in panels.iter().enumerate() {
            c.image_rgb(
                6.0 + k as f32 * cell,
                header + r as f32 * cell,
                px,
                size,
                scale,
            );
        }
    }
    Ok(c.to_image())
}

/// The DiT's matmul FLOPs for one forward at `img` latent tokens, without the text encoder.
fn dit_flops(dit: &zlayer_model::Config, img: usize, txt: usize) -> f64 {
    let mut text = zlayer_model::text::TextConfig::tiny(1);
    text.layers = 0;
    zlayer_model::base::BaseModel::forward_flops(dit, &text, 1, img, txt)
}

/// FLOPs of one blend beside one DiT step: this DecFormer at this size, and the FLUX preset
/// at 1024² beside FLUX.1-dev's transformer (512 T5 tokens), as Markdown and JSON.
fn flop_table(cfg: &zlayer_model::pelc::DecConfig, side: usize) -> (String, serde_json::Value) {
    let tiny = (
        cfg.flops(side, side),
        dit_flops(
            &zlayer_model::Config::tiny(),
            side * side,
            zlayer_model::bench::PROMPT.split(' ').count(),
        ),
    );
    let flux_cfg = zlayer_model::pelc::DecConfig::flux_dev();
    let flux = (
        flux_cfg.flops(128, 128),
        dit_flops(&zlayer_model::Config::flux_dev(), 4096, 512),
    );
    let row = |name: &str, (d, t): (f64, f64)| {
        format!(
            "| {name} | {:.3} | {:.1} | {:.1}% |\n",
            d / 1e9,
            t / 1e9,
            100.0 * d / t
        )
    };
    let md = format!(
        "\nFLOPs (matmuls and convolutions, 2 per multiply-add) of one blend beside one DiT forward:\n\n| DecFormer | GFLOPs | DiT step GFLOPs | ratio |\n|---|---|---|---|\n{}{}",
        row(&format!("this one, {side}×{side} latents"), tiny),
        row(
            "the FLUX preset, 1024² (128×128 latents) beside FLUX.1-dev",
            flux
        )
    );
    let json = serde_json::json!({"decformer": tiny.0, "dit_step": tiny.1, "flux_decformer": flux.0, "flux_dit_step": flux.1});
    (md, json)
}

/// The Markdown table of the scores.
fn table(scores: &[MethodScore], dit_ms: f64, n: usize) -> String {
    let mut s = format!(
        "| method | PSNR (dB) | SSIM | halo L1 (≤ 2 px) | edge L1 (≤ 8 px) | L1 | ms per pair | × one DiT step ({dit_ms:.1} ms) |\n|---|---|---|---|---|---|---|---|\n"
    );
    for m in scores {
        s += &format!(
            "| {} | {:.2} | {:.4} | {:.4} | {:.4} | {:.4} | {:.2} | {:.3} |\n",
            m.method,
            m.psnr,
            m.ssim,
            m.halo_l1,
            m.bands.edge_l1,
            m.l1,
            m.ms_per_pair,
            m.ms_per_pair / dit_ms
        );
    }
    s += &format!("\n{n} held-out pairs, against the composite of the decoded inputs x*.\n\n");
    s += "Edge L1 (≤ 8 px) by mask kind, against x* / against x_T = D(E(x*)) (the training target; the ceiling's error there is 0), with the change from the linear blend:\n\n| method |";
    let kinds: Vec<&str> = scores
        .first()
        .map_or(Vec::new(), |m| m.by_kind.iter().map(|k| k.0).collect());
    for k in &kinds {
        s += &format!(" {k} |");
    }
    s += " all |\n|---|";
    s += &"---|".repeat(kinds.len() + 1);
    s += "\n";
    let linear = scores.iter().find(|m| m.method == "linear");
    for m in scores {
        s += &format!("| {} |", m.method);
        let cells = m.by_kind.iter().map(|k| k.1).chain([m.bands]);
        let base = linear.map(|l| {
            l.by_kind
                .iter()
                .map(|k| k.1)
                .chain([l.bands])
                .collect::<Vec<_>>()
        });
        for (i, b) in cells.enumerate() {
            let change = |now: f64, was: f64| {
                if m.method == "linear" || was == 0.0 {
                    String::new()
                } else {
                    format!(" ({:+.0}%)", 100.0 * (now / was - 1.0))
                }
            };
            let (was, was_t) = base
                .as_ref()
                .map_or((0.0, 0.0), |v| (v[i].edge_l1, v[i].edge_l1_target));
            s += &format!(
                " {:.4}{} / {:.4}{} |",
                b.edge_l1,
                change(b.edge_l1, was),
                b.edge_l1_target,
                change(b.edge_l1_target, was_t)
            );
        }
        s += "\n";
    }
    s
}
