//! A tiny model folder: the VAE, the base and their metadata.

use crate::Failure;
use candle_core::{Device, Tensor};
use std::path::Path;
use zlayer_model::base::{BaseModel, SampleOptions};
use zlayer_model::bundle::{VaeBundle, load_base, load_vae};

/// The tiny model: VAE, base, and the image side they were trained at.
pub struct Model {
    /// The autoencoder.
    pub vae: VaeBundle,
    /// The text-to-image model.
    pub base: BaseModel,
    /// Image side in pixels.
    pub size: usize,
    /// base.json: the configs, how the base was trained, tuned settings (null if unreadable).
    pub meta: serde_json::Value,
}

impl Model {
    /// Loads `DIR/vae.safetensors` and `DIR/base.safetensors` with their JSON.
    pub fn load(dir: &Path, dev: &Device) -> Result<Self, Failure> {
        let (vae_path, base_path) = (dir.join("vae.safetensors"), dir.join("base.safetensors"));
        for p in [&vae_path, &base_path] {
            if !p.is_file() {
                return Err(Failure::User(format!(
                    "{}: no such model file; train one with `zlayer train vae` and `zlayer train base`, or pass --model DIR",
                    p.display()
                )));
            }
        }
        let vae = load_vae(&vae_path, dev).map_err(Failure::User)?;
        let base = load_base(&base_path, dev).map_err(Failure::User)?;
        let meta = std::fs::read_to_string(base_path.with_extension("json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .unwrap_or_default();
        let size = meta["image_size"].as_u64().unwrap_or(64) as usize;
        Ok(Self {
            vae,
            base,
            size,
            meta,
        })
    }

    /// Guidance when none is asked for: base.json's tuned `guidance`, else 1 (off).
    pub fn guidance(&self) -> f64 {
        self.meta["guidance"].as_f64().unwrap_or(1.0)
    }

    /// Images (B, 3, S, S) in [−1, 1], one per row of prompt ids.
    pub fn generate(&self, ids: &Tensor, opts: &SampleOptions) -> candle_core::Result<Tensor> {
        let g = self.size / self.vae.cfg.factor();
        let tokens = self.base.sample(ids, (g, g), self.vae.cfg.latent, opts)?;
        self.vae.decode_tokens(&tokens, g, g)
    }
}
