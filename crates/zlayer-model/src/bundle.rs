//! Model files on disk: f16 safetensors with a JSON description beside each
//! (`vae.safetensors` + `vae.json`, `base.safetensors` + `base.json`).

use crate::base::BaseModel;
use crate::config::Config;
use crate::text::{TextConfig, Tokenizer};
use crate::train::load_weights;
use crate::vae::{Vae, VaeConfig};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

/// A trained VAE with its latent normalisation.
pub struct VaeBundle {
    /// The autoencoder.
    pub vae: Vae,
    /// Its shape.
    pub cfg: VaeConfig,
    /// Latent mean, subtracted before scaling.
    pub shift: f64,
    /// 1 / latent std.
    pub scale: f64,
}

impl VaeBundle {
    /// Images (B, 3, H, W) in [−1, 1] → normalised latent tokens (B, h·w, C), detached.
    pub fn encode_tokens(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let z = self
            .vae
            .encode(x)?
            .detach()
            .affine(self.scale, -self.shift * self.scale)?; // (B, C, h, w)
        let (b, c, h, w) = z.dims4()?;
        z.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
    }

    /// Normalised latent tokens (B, h·w, C) on an h×w grid → images (B, 3, H, W) in [−1, 1].
    pub fn decode_tokens(
        &self,
        tokens: &Tensor,
        h: usize,
        w: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, _, c) = tokens.dims3()?;
        let z = tokens
            .transpose(1, 2)?
            .reshape((b, c, h, w))?
            .affine(1.0 / self.scale, self.shift)?;
        self.vae.decode(&z)?.clamp(-1.0, 1.0)
    }
}

/// A model file: its weights and the JSON beside them, from disk or built into the binary.
#[derive(Debug, Clone)]
pub enum Source {
    /// `<stem>.safetensors` on disk, with `<stem>.json` beside it.
    File(std::path::PathBuf),
    /// Bytes built into the binary (`include_bytes!`), so an installed or copied binary
    /// carries its default model.
    Embedded {
        /// What messages call it, e.g. "bundled models/tiny/base.safetensors".
        name: &'static str,
        /// The safetensors bytes.
        weights: &'static [u8],
        /// The JSON description.
        json: &'static str,
    },
}

impl Source {
    /// Its name in messages.
    pub fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Embedded { name, .. } => name.to_string(),
        }
    }

    /// Its JSON description's name in messages.
    pub fn json_name(&self) -> String {
        match self {
            Source::File(p) => p.with_extension("json").display().to_string(),
            Source::Embedded { name, .. } => format!("{name} (JSON)"),
        }
    }

    /// The JSON description, parsed.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        match self {
            Source::File(p) => read_json(&p.with_extension("json")),
            Source::Embedded { name, json, .. } => {
                serde_json::from_str(json).map_err(|e| format!("{name} (JSON): {e}"))
            }
        }
    }

    /// The weights as f32 on `dev`.
    pub fn weights(&self, dev: &Device) -> Result<VarBuilder<'static>, String> {
        match self {
            Source::File(p) => load_weights(p, dev),
            Source::Embedded { name, weights, .. } => {
                let t = candle_core::safetensors::load_buffer(weights, dev)
                    .map_err(|e| format!("{name}: {e}"))?;
                Ok(VarBuilder::from_tensors(t, DType::F32, dev))
            }
        }
    }
}

/// A JSON file; errors name the file.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn field<T: serde::de::DeserializeOwned>(
    v: &serde_json::Value,
    key: &str,
    src: &Source,
) -> Result<T, String> {
    serde_json::from_value(
        v.get(key)
            .cloned()
            .ok_or_else(|| format!("{}: missing {key:?}", src.json_name()))?,
    )
    .map_err(|e| format!("{}: {key}: {e}", src.json_name()))
}

/// Loads a VAE (`vae.safetensors` and `vae.json`).
pub fn load_vae(src: &Source, dev: &Device) -> Result<VaeBundle, String> {
    let meta = src.json()?;
    let cfg: VaeConfig = field(&meta, "config", src)?;
    let vae = Vae::new(&cfg, src.weights(dev)?).map_err(|e| format!("{}: {e}", src.name()))?;
    Ok(VaeBundle {
        vae,
        shift: field(&meta, "latent_shift", src)?,
        scale: field(&meta, "latent_scale", src)?,
        cfg,
    })
}

/// Loads a base model (`base.safetensors` and `base.json`: configs and vocabulary).
pub fn load_base(src: &Source, dev: &Device) -> Result<BaseModel, String> {
    let meta = src.json()?;
    let dit: Config = field(&meta, "dit", src)?;
    let text: TextConfig = field(&meta, "text", src)?;
    let words: Vec<String> = field(&meta, "vocabulary", src)?;
    BaseModel::new(
        &dit,
        &text,
        Tokenizer::new(words.iter().skip(1)),
        src.weights(dev)?,
    )
    .map_err(|e| format!("{}: {e}", src.name()))
}

/// The layout branch in `src` (`layout.safetensors` + `layout.json`, from
/// `zlayer train layout`) on `base`.
pub fn load_layout(
    src: &Source,
    base: BaseModel,
    dev: &Device,
) -> Result<crate::layout_model::LayoutModel, String> {
    layout_with(src, base, src.weights(dev)?)
}

/// The branch `src`'s JSON describes, on `base`, with its parameters from `vb`: the file's
/// own weights, or a trainable `VarMap` that a fine-tune then fills from the file.
pub fn layout_with(
    src: &Source,
    base: BaseModel,
    vb: VarBuilder,
) -> Result<crate::layout_model::LayoutModel, String> {
    let meta = src.json()?;
    let double: Vec<usize> = field(&meta, "double", src)?;
    let single: Vec<usize> = field(&meta, "single", src)?;
    let rank: usize = field(&meta, "rank", src)?;
    let variant = match meta.get("variant") {
        Some(_) => field(&meta, "variant", src)?,
        None => crate::layout_model::Variant::Occlusionformer,
    };
    let mut model =
        crate::layout_model::LayoutModel::new(base, &double, &single, rank, variant, vb)
            .map_err(|e| format!("{}: {e}", src.name()))?;
    if meta.get("grounding_ratio").is_some() {
        model.grounding_ratio = field(&meta, "grounding_ratio", src)?;
    }
    for (key, slot, none) in [
        ("layout_guidance", &mut model.layout_guidance, 1),
        ("order_guidance", &mut model.order_guidance, 0),
    ] {
        if meta.get(key).is_some() {
            let v: f64 = field(&meta, key, src)?;
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!(
                    "{}: {key} {v}: must be a number ≥ 0 ({none}: none)",
                    src.json_name()
                ));
            }
            *slot = v;
        }
    }
    if meta.get("guided_ratio").is_some() {
        let v: f64 = field(&meta, "guided_ratio", src)?;
        if !(v > 0.0 && v <= 1.0) {
            return Err(format!(
                "{}: guided_ratio {v}: must be in (0, 1] (the share of the steps with layout and order guidance; 1: every grounded step)",
                src.json_name()
            ));
        }
        model.guided_ratio = v;
    }
    Ok(model)
}
