//! A small convolutional KL autoencoder: 2^(stages − 1)× downsampling to `latent` channels.
//!
//! Upsampling is nearest-neighbour by 2 followed by a convolution, because candle's
//! transposed convolution has no backward (DESIGN.md §6). Group norm is written with plain
//! ops for the same reason. `encode` returns the posterior mean (deterministic); sampling
//! the posterior is only for training. Latents are normalised like Flux's VAE,
//! `(z − shift)·scale`, with statistics measured after training and stored with the weights.

use candle_core::{D, Result, Tensor};
use candle_nn::{Conv2dConfig, Module, VarBuilder};

/// VAE shape: resolution stages, each after the first at half the side of the one before.
///
/// The bundled `tiny` VAE has three stages (4×); `tiny8` has four (8×, FLUX's geometry).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VaeConfig {
    /// Image channels.
    pub image_channels: usize,
    /// Channels of each stage, full resolution first: few at full resolution, where
    /// convolutions cost the most. At least two stages.
    pub channels: Vec<usize>,
    /// Latent channels.
    pub latent: usize,
    /// Groups of the group norms (divides every stage's channels).
    pub groups: usize,
    /// Residual blocks per stage below full resolution, in encoder and decoder alike. Files
    /// written before this field existed have one.
    #[serde(default = "one_block")]
    pub blocks: usize,
}

fn one_block() -> usize {
    1
}

impl VaeConfig {
    /// The bundled CPU preset: RGB, stages of 16/32/64 channels (4×), 8 latent channels.
    pub fn tiny() -> Self {
        Self {
            image_channels: 3,
            channels: vec![16, 32, 64],
            latent: 8,
            groups: 8,
            blocks: 1,
        }
    }

    /// FLUX's VAE geometry at CPU size: 8× downsampling to 16 latent channels, stages of
    /// 32/64/128/128 channels with two residual blocks each.
    pub fn tiny8() -> Self {
        Self {
            image_channels: 3,
            channels: vec![32, 64, 128, 128],
            latent: 16,
            groups: 8,
            blocks: 2,
        }
    }

    /// Spatial reduction: 2 per stage after the first.
    pub fn factor(&self) -> usize {
        1 << (self.channels.len().max(1) - 1)
    }

    /// Checks the shape, naming what is wrong.
    pub fn check(&self) -> std::result::Result<(), String> {
        if self.channels.len() < 2 || self.channels.len() > 6 {
            return Err(format!(
                "a VAE needs 2 to 6 stages (4× needs 3, 8× needs 4), got {}",
                self.channels.len()
            ));
        }
        if let Some(c) = self
            .channels
            .iter()
            .find(|&&c| self.groups == 0 || c == 0 || c % self.groups != 0)
        {
            return Err(format!(
                "stage channels {c} are not divisible by {} norm groups",
                self.groups
            ));
        }
        if self.latent == 0 || self.image_channels == 0 || self.blocks == 0 {
            return Err(format!(
                "latent ({}), image channels ({}) and blocks per stage ({}) must be positive",
                self.latent, self.image_channels, self.blocks
            ));
        }
        Ok(())
    }
}

/// A `k × k` convolution with padding k/2 (keys `weight`, `bias`), initialised like candle's.
pub(crate) fn conv(i: usize, o: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Conv> {
    let cfg = Conv2dConfig {
        padding: k / 2,
        stride,
        ..Default::default()
    };
    let inner = candle_nn::conv2d(i, o, k, cfg, vb)?;
    Ok(Conv {
        weight: inner.weight().clone(),
        bias: inner.bias().cloned(),
        k,
        stride,
    })
}

/// A "same"-padded convolution computed as im2col + one matmul, from plain ops.
///
/// candle's CPU convolution backward runs through slow dot-product loops (most of a VAE
/// step); shifted slices, a concatenation and a matmul all have fast backward passes.
/// Same weights and keys (`weight`, `bias`) as `candle_nn::Conv2d`.
#[derive(Debug, Clone)]
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
    k: usize,
    stride: usize,
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let (k, p, st) = (self.k, self.k / 2, self.stride);
        let xp = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
        let (ho, wo) = ((h + 2 * p - k) / st + 1, (w + 2 * p - k) / st + 1);
        let mut cols = Vec::with_capacity(k * k);
        for i in 0..k {
            for j in 0..k {
                let s = xp
                    .narrow(2, i, st * (ho - 1) + 1)?
                    .narrow(3, j, st * (wo - 1) + 1)?;
                let s = if st == 1 {
                    s
                } else {
                    // Every st-th row and column: pad to a multiple of st, fold, take index 0.
                    let s = s
                        .pad_with_zeros(2, 0, st - 1)?
                        .pad_with_zeros(3, 0, st - 1)?;
                    s.reshape((b, c, ho, st, wo, st))?
                        .narrow(3, 0, 1)?
                        .narrow(5, 0, 1)?
                        .reshape((b, c, ho, wo))?
                };
                cols.push(s);
            }
        }
        let col = Tensor::cat(&cols, 1)?.reshape((b, k * k * c, ho * wo))?; // (B, k²C, HoWo), (i, j) major
        let o = self.weight.dim(0)?;
        let wmat = self.weight.permute((0, 2, 3, 1))?.reshape((o, k * k * c))?; // same (i, j, c) order
        let out = wmat.broadcast_matmul(&col)?.reshape((b, o, ho, wo))?;
        match &self.bias {
            Some(bias) => out.broadcast_add(&bias.reshape((1, o, 1, 1))?),
            None => Ok(out),
        }
    }
}

/// Group norm with a learned affine (`weight`, `bias`), composed from plain ops.
#[derive(Debug, Clone)]
struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
}

impl GroupNorm {
    fn new(c: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(c, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(c, "bias", candle_nn::Init::Const(0.0))?,
            groups,
        })
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let g = x.reshape((b, self.groups, c / self.groups * h * w))?;
        let g = g.broadcast_sub(&g.mean_keepdim(D::Minus1)?)?;
        let var = g.sqr()?.mean_keepdim(D::Minus1)?;
        let x = g
            .broadcast_div(&(var + 1e-6)?.sqrt()?)?
            .reshape((b, c, h, w))?;
        x.broadcast_mul(&self.weight.reshape((1, c, 1, 1))?)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)
    }
}

/// norm → SiLU → conv, twice, plus the input.
#[derive(Debug, Clone)]
struct ResBlock {
    n1: GroupNorm,
    c1: Conv,
    n2: GroupNorm,
    c2: Conv,
}

impl ResBlock {
    fn new(c: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            n1: GroupNorm::new(c, groups, vb.pp("norm1"))?,
            c1: conv(c, c, 3, 1, vb.pp("conv1"))?,
            n2: GroupNorm::new(c, groups, vb.pp("norm2"))?,
            c2: conv(c, c, 3, 1, vb.pp("conv2"))?,
        })
    }
}

impl Module for ResBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.c1.forward(&self.n1.forward(x)?.silu()?)?;
        x + self.c2.forward(&self.n2.forward(&h)?.silu()?)?
    }
}

/// A downsampling or upsampling step and the residual blocks after it.
#[derive(Debug, Clone)]
struct Stage {
    conv: Conv,
    blocks: Vec<ResBlock>,
}

impl Stage {
    /// `conv` then `n` blocks; the first block keeps the key `block` of the one-block files.
    fn new(conv: Conv, c: usize, n: usize, groups: usize, vb: &VarBuilder) -> Result<Self> {
        let blocks = (0..n)
            .map(|k| match k {
                0 => ResBlock::new(c, groups, vb.pp("block")),
                _ => ResBlock::new(c, groups, vb.pp(format!("block{k}"))),
            })
            .collect::<Result<_>>()?;
        Ok(Self { conv, blocks })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv.forward(x)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        Ok(h)
    }
}

/// KL(N(μ, σ²) ‖ N(0, 1)) = ½ (μ² + σ² − 1 − log σ²), averaged per element.
pub fn kl_to_normal(mean: &Tensor, logvar: &Tensor) -> Result<Tensor> {
    ((mean.sqr()? + logvar.exp()?)?.affine(1.0, -1.0)? - logvar)?
        .mean_all()?
        .affine(0.5, 0.0)
}

/// Encoder and decoder.
#[derive(Debug, Clone)]
pub struct Vae {
    enc_in: Conv,
    enc: Vec<Stage>,
    enc_norm: GroupNorm,
    enc_out: Conv,
    dec_in: Conv,
    dec_mid: ResBlock,
    dec: Vec<Stage>,
    dec_norm: GroupNorm,
    dec_out: Conv,
}

impl Vae {
    /// Builds both halves (`encoder.*`, `decoder.*`).
    pub fn new(cfg: &VaeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check().map_err(candle_core::Error::msg)?;
        let ch = &cfg.channels;
        let (g, n) = (cfg.groups, cfg.blocks);
        let (e, d) = (vb.pp("encoder"), vb.pp("decoder"));
        let last = *ch.last().expect("checked: at least two stages");
        let enc = (0..ch.len() - 1)
            .map(|i| {
                let v = e.pp(format!("down.{i}"));
                Stage::new(
                    conv(ch[i], ch[i + 1], 3, 2, v.pp("conv"))?,
                    ch[i + 1],
                    n,
                    g,
                    &v,
                )
            })
            .collect::<Result<_>>()?;
        // The decoder mirrors the encoder: up.0 leaves the latent stage.
        let dec = (0..ch.len() - 1)
            .map(|i| {
                let (from, to) = (ch[ch.len() - 1 - i], ch[ch.len() - 2 - i]);
                let v = d.pp(format!("up.{i}"));
                Stage::new(conv(from, to, 3, 1, v.pp("conv"))?, to, n, g, &v)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            enc_in: conv(cfg.image_channels, ch[0], 3, 1, e.pp("conv_in"))?,
            enc,
            enc_norm: GroupNorm::new(last, g, e.pp("norm_out"))?,
            enc_out: conv(last, 2 * cfg.latent, 3, 1, e.pp("conv_out"))?,
            dec_in: conv(cfg.latent, last, 3, 1, d.pp("conv_in"))?,
            dec_mid: ResBlock::new(last, g, d.pp("mid"))?,
            dec,
            dec_norm: GroupNorm::new(ch[0], g, d.pp("norm_out"))?,
            dec_out: conv(ch[0], cfg.image_channels, 3, 1, d.pp("conv_out"))?,
        })
    }

    /// Posterior mean and log-variance of images (B, C, H, W) in [−1, 1]: each
    /// (B, latent, H/f, W/f) for the config's factor f.
    pub fn posterior(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut h = self.enc_in.forward(x)?;
        for stage in &self.enc {
            h = stage.forward(&h)?;
        }
        let h = self.enc_out.forward(&self.enc_norm.forward(&h)?.silu()?)?;
        let parts = h.chunk(2, 1)?;
        Ok((parts[0].clone(), parts[1].clamp(-30.0, 20.0)?))
    }

    /// The posterior mean: deterministic latents.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.posterior(x)?.0)
    }

    /// Images (B, C, H, W) from latents (B, latent, h, w).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.dec_mid.forward(&self.dec_in.forward(z)?)?;
        for stage in &self.dec {
            let (_, _, hh, ww) = h.dims4()?;
            h = stage.forward(&h.upsample_nearest2d(2 * hh, 2 * ww)?)?;
        }
        self.dec_out.forward(&self.dec_norm.forward(&h)?.silu()?)
    }

    /// Training loss: reconstruction MSE of a posterior sample plus `beta`·KL to N(0, 1),
    /// with the noise `eps` given (so a step is reproducible). Returns (total, mse, kl).
    pub fn loss(&self, x: &Tensor, eps: &Tensor, beta: f64) -> Result<(Tensor, Tensor, Tensor)> {
        let (mean, logvar) = self.posterior(x)?;
        let mse = self.reconstruction(x, &mean, &logvar, eps, None)?;
        let kl = kl_to_normal(&mean, &logvar)?;
        let total = (&mse + kl.affine(beta, 0.0)?)?;
        Ok((total, mse, kl))
    }

    /// Reconstruction MSE of the posterior sample `mean + exp(logvar / 2)·eps`, plus `shake`.
    fn reconstruction(
        &self,
        x: &Tensor,
        mean: &Tensor,
        logvar: &Tensor,
        eps: &Tensor,
        shake: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut z = (mean + (logvar * 0.5)?.exp()?.mul(eps)?)?;
        if let Some(s) = shake {
            z = (z + s)?;
        }
        (self.decode(&z)? - x)?.sqr()?.mean_all()
    }

    /// [`Self::loss`]'s reconstruction term with the encoder held fixed: no gradient reaches
    /// it, so the latents a base model was trained on stay what they were. `shake` (raw
    /// latent units), added to the sample, teaches the decoder to read latents that a
    /// generator drew slightly off as the clean image they are near.
    pub fn decoder_loss(&self, x: &Tensor, eps: &Tensor, shake: Option<&Tensor>) -> Result<Tensor> {
        let (mean, logvar) = self.posterior(x)?;
        self.reconstruction(x, &mean.detach(), &logvar.detach(), eps, shake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};

    #[test]
    fn im2col_convolution_equals_candles() -> Result<()> {
        let dev = Device::Cpu;
        for (stride, size) in [(1, 7), (2, 8), (2, 9)] {
            let vm = VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
            let ours = conv(5, 6, 3, stride, vb.pp("c"))?;
            let theirs = candle_nn::conv2d(
                5,
                6,
                3,
                Conv2dConfig {
                    padding: 1,
                    stride,
                    ..Default::default()
                },
                vb.pp("c"),
            )?;
            let x = Tensor::randn(0f32, 1.0, (2, 5, size, size), &dev)?;
            let (a, b) = (ours.forward(&x)?, theirs.forward(&x)?);
            assert_eq!(a.dims(), b.dims());
            let d = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(d < 1e-4, "stride {stride} size {size}: {d}");
        }
        Ok(())
    }

    #[test]
    fn shapes_gradients_and_a_short_overfit() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = VaeConfig {
            channels: vec![8, 16, 16],
            ..VaeConfig::tiny()
        };
        let vm = VarMap::new();
        let vae = Vae::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &dev))?;
        let x = Tensor::rand(0f32, 1.0, (2, 3, 16, 16), &dev)?.affine(2.0, -1.0)?;
        let z = vae.encode(&x)?;
        assert_eq!(z.dims(), &[2, 8, 4, 4]);
        assert_eq!(vae.decode(&z)?.dims(), &[2, 3, 16, 16]);
        let eps = crate::sampling::noise((2, 8, 4, 4), 1, &dev)?;
        let (total, _, _) = vae.loss(&x, &eps, 1e-3)?;
        let grads = total.backward()?;
        let missing = crate::optim::params_without_gradient(&vm, &grads);
        assert!(missing.is_empty(), "no gradient reaches {missing:?}");
        let mut opt = AdamW::new(
            vm.all_vars(),
            ParamsAdamW {
                lr: 2e-3,
                weight_decay: 0.0,
                ..Default::default()
            },
        )?;
        let first = vae.loss(&x, &eps, 1e-3)?.1.to_scalar::<f32>()?;
        for _ in 0..30 {
            opt.backward_step(&vae.loss(&x, &eps, 1e-3)?.0)?;
        }
        let end = vae.loss(&x, &eps, 1e-3)?.1.to_scalar::<f32>()?;
        assert!(end < 0.5 * first, "reconstruction {first} → {end}");
        Ok(())
    }

    #[test]
    fn eight_times_with_two_blocks_per_stage() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = VaeConfig {
            channels: vec![8, 8, 16, 16],
            latent: 4,
            blocks: 2,
            ..VaeConfig::tiny8()
        };
        assert_eq!(cfg.factor(), 8);
        let vm = VarMap::new();
        let vae = Vae::new(&cfg, crate::init::seeded(&vm, 1, DType::F32, &dev))?;
        let x = crate::sampling::noise((2, 3, 32, 24), 4, &dev)?.tanh()?;
        let z = vae.encode(&x)?;
        assert_eq!(z.dims(), &[2, 4, 4, 3]);
        assert_eq!(vae.decode(&z)?.dims(), &[2, 3, 32, 24]);
        let eps = crate::sampling::noise(z.dims4()?, 2, &dev)?;
        let grads = vae.loss(&x, &eps, 1e-3)?.0.backward()?;
        let missing = crate::optim::params_without_gradient(&vm, &grads);
        assert!(missing.is_empty(), "no gradient reaches {missing:?}");
        // One block per stage keeps the key names of the files written before `blocks`.
        let keys = vm.data().lock().expect("varmap lock").len();
        let one = VarMap::new();
        Vae::new(
            &VaeConfig {
                blocks: 1,
                ..cfg.clone()
            },
            crate::init::seeded(&one, 1, DType::F32, &dev),
        )?;
        let data = one.data().lock().expect("varmap lock");
        assert!(data.contains_key("encoder.down.2.block.conv2.weight"));
        assert!(data.contains_key("decoder.up.2.block.norm1.bias"));
        assert!(!data.keys().any(|k| k.contains("block1")));
        // Each extra block has two norms and two convolutions, with weight and bias each.
        assert_eq!(keys - data.len(), 2 * 3 * 8);
        Ok(())
    }

    #[test]
    fn a_bad_shape_is_named() {
        let bad = |c: VaeConfig| c.check().expect_err("accepted");
        let one_stage = bad(VaeConfig {
            channels: vec![8],
            ..VaeConfig::tiny()
        });
        assert!(one_stage.contains("2 to 6 stages"), "{one_stage}");
        let groups = bad(VaeConfig {
            channels: vec![8, 12],
            ..VaeConfig::tiny()
        });
        assert!(
            groups.contains("12") && groups.contains("8 norm groups"),
            "{groups}"
        );
        let blocks = bad(VaeConfig {
            blocks: 0,
            ..VaeConfig::tiny()
        });
        assert!(blocks.contains("blocks per stage (0)"), "{blocks}");
        assert!(VaeConfig::tiny().check().is_ok() && VaeConfig::tiny8().check().is_ok());
        // Files written before `blocks` existed parse with one block per stage.
        let old: VaeConfig = serde_json::from_str(
            r#"{"channels": [16, 32, 64], "factor": 4, "groups": 8, "image_channels": 3, "latent": 8}"#,
        )
        .expect("old config");
        assert_eq!(old, VaeConfig::tiny());
    }

    #[test]
    fn decoder_fine_tune_leaves_the_encoder_alone() -> Result<()> {
        let dev = Device::Cpu;
        let cfg = VaeConfig {
            channels: vec![8, 16, 16],
            ..VaeConfig::tiny()
        };
        let vm = VarMap::new();
        let vae = Vae::new(&cfg, crate::init::seeded(&vm, 3, DType::F32, &dev))?;
        let x = Tensor::rand(0f32, 1.0, (2, 3, 16, 16), &dev)?.affine(2.0, -1.0)?;
        let eps = crate::sampling::noise((2, 8, 4, 4), 1, &dev)?;
        let dec = vae.decoder_loss(&x, &eps, None)?;
        let (_, mse, _) = vae.loss(&x, &eps, 1e-3)?;
        assert_eq!(dec.to_scalar::<f32>()?, mse.to_scalar::<f32>()?);
        // A shake is added to the sample the decoder reads: zeros change nothing, and any
        // shake gives the loss of decoding the shifted sample by hand.
        let zeros = eps.zeros_like()?;
        let still = vae.decoder_loss(&x, &eps, Some(&zeros))?;
        assert_eq!(still.to_scalar::<f32>()?, dec.to_scalar::<f32>()?);
        let shake = crate::sampling::noise((2, 8, 4, 4), 2, &dev)?.affine(0.3, 0.0)?;
        let shaken = vae
            .decoder_loss(&x, &eps, Some(&shake))?
            .to_scalar::<f32>()?;
        let (mean, logvar) = vae.posterior(&x)?;
        let z = ((mean + (logvar * 0.5)?.exp()?.mul(&eps)?)? + &shake)?;
        let by_hand = (vae.decode(&z)? - &x)?
            .sqr()?
            .mean_all()?
            .to_scalar::<f32>()?;
        assert!(
            (shaken - by_hand).abs() <= 1e-6 * by_hand,
            "{shaken} vs {by_hand}"
        );
        assert_ne!(shaken, dec.to_scalar::<f32>()?);
        let missing = crate::optim::params_without_gradient(&vm, &dec.backward()?);
        let encoder: Vec<String> = {
            let data = vm.data().lock().expect("varmap lock");
            let mut e: Vec<String> = data
                .keys()
                .filter(|n| n.starts_with("encoder."))
                .cloned()
                .collect();
            e.sort();
            e
        };
        assert!(!encoder.is_empty());
        assert_eq!(missing, encoder, "exactly the encoder is held fixed");

        // A fine-tune starts from the saved weights, as f32, whatever their file dtype.
        let path = std::env::temp_dir().join(format!("zlayer-load-into-{}.st", std::process::id()));
        let half: std::collections::HashMap<String, Tensor> = vm
            .data()
            .lock()
            .expect("varmap lock")
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().to_dtype(DType::F16)?)))
            .collect::<Result<_>>()?;
        candle_core::safetensors::save(&half, &path)?;
        let fresh = VarMap::new();
        Vae::new(&cfg, crate::init::seeded(&fresh, 9, DType::F32, &dev))?;
        let n = crate::init::load_into(&fresh, &path).map_err(candle_core::Error::msg)?;
        assert_eq!(n, half.len());
        for (name, var) in fresh.data().lock().expect("varmap lock").iter() {
            let want = half[name].to_dtype(DType::F32)?;
            let d = (var.as_tensor() - want)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?;
            assert_eq!(d, 0.0, "{name}");
        }
        std::fs::remove_file(&path).ok();
        Ok(())
    }
}
