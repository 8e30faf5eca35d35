//! `zlayer generate`: images from a prompt with the tiny model.

use crate::cli::Failure;
use candle_core::{Device, Tensor};
use clap::Args;
use std::path::PathBuf;
use zlayer_composite::{BitDepth, Image, Straight, write_png};
use zlayer_model::base::SampleOptions;
use zlayer_model::bundle::{load_base, load_vae};

/// Flags of `zlayer generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The global prompt, in the model's vocabulary (see `zlayer synth --vocab`).
    #[arg(long)]
    prompt: String,
    /// Output PNG (a row of --n samples).
    #[arg(short, long)]
    output: PathBuf,
    /// Model folder with vae.safetensors and base.safetensors (and their .json).
    #[arg(long, default_value = "models/tiny")]
    model: PathBuf,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Euler steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Classifier-free guidance scale (1 disables it).
    #[arg(long, default_value_t = 3.0)]
    guidance: f64,
    /// Number of samples.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    n: u32,
}

/// Runs the command.
pub fn run(a: GenerateArgs) -> Result<(), Failure> {
    let start = std::time::Instant::now();
    let dev = Device::Cpu;
    let (vae_path, base_path) = (
        a.model.join("vae.safetensors"),
        a.model.join("base.safetensors"),
    );
    for p in [&vae_path, &base_path] {
        if !p.is_file() {
            return Err(Failure::User(format!(
                "{}: no such model file; train one with `zlayer train vae` and `zlayer train base`, or pass --model DIR",
                p.display()
            )));
        }
    }
    let vae = load_vae(&vae_path, &dev).map_err(Failure::User)?;
    let base = load_base(&base_path, &dev).map_err(Failure::User)?;
    let ids = base
        .tokenizer
        .batch(&[a.prompt.as_str()], base.max_len, &dev)
        .map_err(|e| Failure::User(e.to_string()))?;
    let size = std::fs::read_to_string(base_path.with_extension("json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["image_size"].as_u64())
        .unwrap_or(64) as usize;
    let (h, w) = (size / 4, size / 4);
    let n = a.n as usize;
    let tokens = base
        .sample(
            &ids,
            (h, w),
            vae.cfg.latent,
            &SampleOptions {
                n,
                steps: a.steps,
                guidance: a.guidance,
                seed: a.seed,
            },
        )
        .map_err(|e| Failure::Internal(e.to_string()))?;
    let images = vae
        .decode_tokens(&tokens, h, w)
        .map_err(|e| Failure::Internal(e.to_string()))?;
    let img = row(&images, n, size).map_err(|e| Failure::Internal(e.to_string()))?;
    write_png(&a.output, &img, BitDepth::Eight).map_err(|e| Failure::User(e.to_string()))?;
    eprintln!(
        "generated {n} image(s) in {:.2} s; wrote {}",
        start.elapsed().as_secs_f64(),
        a.output.display()
    );
    Ok(())
}

/// Images (n, 3, S, S) in [−1, 1] side by side.
fn row(images: &Tensor, n: usize, s: usize) -> candle_core::Result<Image<Straight>> {
    let v: Vec<f32> = images.flatten_all()?.to_vec1()?;
    let mut img = Image::<Straight>::new(n * s, s);
    for k in 0..n {
        for y in 0..s {
            for x in 0..s {
                let c = |ch: usize| (v[((k * 3 + ch) * s + y) * s + x] + 1.0) / 2.0;
                img.pixels[y * n * s + k * s + x] = Straight([c(0), c(1), c(2), 1.0]);
            }
        }
    }
    Ok(img)
}
