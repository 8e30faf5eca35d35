//! Model shapes as plain data, with named presets (`tiny` for CPU, `flux_dev` for the real
//! weights). `validate` checks the invariants and names both values when they disagree.

/// The shape of a Flux-style MM-DiT.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// Channels of an image token (latent channels × patch²).
    pub in_channels: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Double-stream (separate image/text weights) blocks.
    pub depth: usize,
    /// Single-stream (joint) blocks.
    pub depth_single_blocks: usize,
    /// MLP width ÷ hidden size.
    pub mlp_ratio: f64,
    /// Width of the text encoder's sequence output.
    pub context_in_dim: usize,
    /// Width of the pooled text vector.
    pub vec_in_dim: usize,
    /// RoPE dimensions per axis (layer, row, col); they sum to the head dimension.
    pub axes_dim: [usize; 3],
    /// RoPE base.
    pub theta: f64,
    /// Bias on the fused q/k/v projections.
    pub qkv_bias: bool,
    /// Whether a distilled guidance scale is embedded (Flux.1-dev).
    pub guidance_embed: bool,
}

/// A config whose numbers do not fit together.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid model config: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// The CPU preset: 16×16 latent tokens of 8 channels, trains on 2 cores.
    pub fn tiny() -> Self {
        Self {
            in_channels: 8,
            hidden_size: 128,
            num_heads: 4,
            depth: 2,
            depth_single_blocks: 4,
            mlp_ratio: 4.0,
            context_in_dim: 128,
            vec_in_dim: 128,
            axes_dim: [8, 12, 12],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: false,
        }
    }

    /// FLUX.1-dev's shapes (black-forest-labs/flux, `configs["flux-dev"]`).
    pub fn flux_dev() -> Self {
        Self {
            in_channels: 64,
            hidden_size: 3072,
            num_heads: 24,
            depth: 19,
            depth_single_blocks: 38,
            mlp_ratio: 4.0,
            context_in_dim: 4096,
            vec_in_dim: 768,
            axes_dim: [16, 56, 56],
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: true,
        }
    }

    /// The transformer's config from a diffusers `transformer/config.json`
    /// (`FluxTransformer2DModel`: `num_layers`, `attention_head_dim`, `axes_dims_rope`, …).
    pub fn from_diffusers(json: &serde_json::Value) -> Result<Self, ConfigError> {
        let num = |k: &str| {
            json.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| {
                    ConfigError(format!(
                        "diffusers config: `{k}` is missing or not a number"
                    ))
                })
        };
        let patch = json.get("patch_size").and_then(|v| v.as_u64()).unwrap_or(1) as usize;
        let heads = num("num_attention_heads")?;
        let axes: Vec<usize> = json
            .get("axes_dims_rope")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| ConfigError("diffusers config: `axes_dims_rope` is missing".into()))?;
        let Ok(axes_dim) = <[usize; 3]>::try_from(axes) else {
            return Err(ConfigError(
                "diffusers config: `axes_dims_rope` must have 3 entries (layer, row, col)".into(),
            ));
        };
        let cfg = Self {
            in_channels: num("in_channels")? * patch * patch,
            hidden_size: heads * num("attention_head_dim")?,
            num_heads: heads,
            depth: num("num_layers")?,
            depth_single_blocks: num("num_single_layers")?,
            mlp_ratio: 4.0,
            context_in_dim: num("joint_attention_dim")?,
            vec_in_dim: num("pooled_projection_dim")?,
            axes_dim,
            theta: 10_000.0,
            qkv_bias: true,
            guidance_embed: json
                .get("guidance_embeds")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Head dimension.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// MLP hidden width.
    pub fn mlp_hidden(&self) -> usize {
        (self.hidden_size as f64 * self.mlp_ratio) as usize
    }

    /// Parameters of the transformer built from this config (no layout branch), counted from
    /// the shapes, so a model's size is known before anything is allocated.
    pub fn parameters(&self) -> usize {
        let (h, m) = (self.hidden_size, self.mlp_hidden());
        let lin = |i: usize, o: usize, bias: bool| i * o + if bias { o } else { 0 };
        let embed = |i: usize| lin(i, h, true) + lin(h, h, true);
        let attn = lin(h, 3 * h, self.qkv_bias) + 2 * self.head_dim() + lin(h, h, true);
        let double = 2 * (lin(h, 6 * h, true) + attn + lin(h, m, true) + lin(m, h, true));
        let single = lin(h, 3 * h + m, true)
            + lin(h + m, h, true)
            + 2 * self.head_dim()
            + lin(h, 3 * h, true);
        lin(self.in_channels, h, true)
            + lin(self.context_in_dim, h, true)
            + embed(256)
            + embed(self.vec_in_dim)
            + if self.guidance_embed { embed(256) } else { 0 }
            + self.depth * double
            + self.depth_single_blocks * single
            + lin(h, self.in_channels, true)
            + lin(h, 2 * h, true)
    }

    /// Checks that the numbers fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = |m: String| Err(ConfigError(m));
        if self.num_heads == 0 || !self.hidden_size.is_multiple_of(self.num_heads) {
            return e(format!(
                "hidden {} is not divisible by {} heads",
                self.hidden_size, self.num_heads
            ));
        }
        let sum: usize = self.axes_dim.iter().sum();
        if sum != self.head_dim() {
            return e(format!(
                "RoPE axes {:?} sum to {sum}, but the head dimension is {}",
                self.axes_dim,
                self.head_dim()
            ));
        }
        if let Some(a) = self.axes_dim.iter().find(|a| !a.is_multiple_of(2)) {
            return e(format!(
                "RoPE axis dimension {a} is odd; each axis rotates pairs"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_count_matches_the_built_model_and_flux_dev() {
        for cfg in [
            Config::tiny(),
            Config {
                guidance_embed: true,
                qkv_bias: false,
                ..Config::tiny()
            },
        ] {
            let vm = candle_nn::VarMap::new();
            let vb = candle_nn::VarBuilder::from_varmap(
                &vm,
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            );
            crate::dit::Flux::new(&cfg, vb).unwrap();
            let built: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
            assert_eq!(cfg.parameters(), built);
        }
        // FLUX.1-dev's transformer as diffusers counts it.
        assert_eq!(Config::flux_dev().parameters(), 11_901_408_320);
    }

    #[test]
    fn diffusers_configs_give_the_presets_shapes() {
        // FLUX.1-dev's transformer/config.json as published.
        let dev = serde_json::json!({
            "_class_name": "FluxTransformer2DModel", "attention_head_dim": 128,
            "axes_dims_rope": [16, 56, 56], "guidance_embeds": true, "in_channels": 64,
            "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
            "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768
        });
        assert_eq!(Config::from_diffusers(&dev).unwrap(), Config::flux_dev());
        let mut bad = dev.clone();
        bad["axes_dims_rope"] = serde_json::json!([16, 56]);
        assert!(
            Config::from_diffusers(&bad)
                .unwrap_err()
                .to_string()
                .contains("3 entries")
        );
        bad = dev;
        bad.as_object_mut().unwrap().remove("num_layers");
        assert!(
            Config::from_diffusers(&bad)
                .unwrap_err()
                .to_string()
                .contains("`num_layers` is missing")
        );
    }

    #[test]
    fn presets_are_valid_and_errors_name_both_values() {
        Config::tiny().validate().unwrap();
        Config::flux_dev().validate().unwrap();
        let bad = Config {
            num_heads: 5,
            ..Config::tiny()
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "invalid model config: hidden 128 is not divisible by 5 heads"
        );
        let bad = Config {
            axes_dim: [8, 12, 10],
            ..Config::tiny()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("sum to 30, but the head dimension is 32")
        );
    }
}
