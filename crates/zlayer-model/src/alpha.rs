//! The alpha-aware VAE (DESIGN.md §4.5, AlphaVAE): RGBA in and out, straight alpha, all
//! four channels in [−1, 1].
//!
//! It starts from a trained RGB VAE ("opaque initialisation", OmniAlpha A.1): the RGB
//! weights are copied, the encoder reads alpha through weights that start at zero, and the
//! decoder's alpha output starts as the constant 1 (weights 0, bias 1). An opaque image then
//! encodes to exactly the RGB VAE's latents and decodes to its colours with alpha 1, so a
//! base model trained on the RGB latents keeps working. Training minimises the expected
//! squared error of the composite over a random background ([`composite_loss`]).

use crate::vae::{Vae, VaeConfig, kl_to_normal};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarMap;
use std::collections::HashMap;

/// The RGBA shape of an RGB VAE: the same but for four image channels.
pub fn rgba_config(rgb: &VaeConfig) -> VaeConfig {
    VaeConfig {
        image_channels: 4,
        ..rgb.clone()
    }
}

/// The tensors that differ in shape between an RGB VAE and its RGBA version.
const ENC_IN: &str = "encoder.conv_in.weight";
const DEC_OUT_W: &str = "decoder.conv_out.weight";
const DEC_OUT_B: &str = "decoder.conv_out.bias";

/// Opaque initialisation of `vm`, which holds an RGBA VAE built from [`rgba_config`], from
/// the RGB VAE's tensors `rgb` (by name): every tensor copied, the alpha input's encoder
/// weights zero, the alpha output's decoder weights zero and its bias 1.
pub fn opaque_init(vm: &VarMap, rgb: &HashMap<String, Tensor>) -> std::result::Result<(), String> {
    let data = vm.data().lock().expect("var map lock");
    let get = |name: &str| {
        rgb.get(name)
            .ok_or_else(|| format!("the RGB VAE has no tensor {name:?}"))
    };
    for (name, var) in data.iter() {
        let src = get(name)?
            .to_dtype(var.dtype())
            .map_err(|e| e.to_string())?;
        let t = widened(name, src).map_err(|e| format!("{name}: {e}"))?;
        var.set(&t).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// An RGB VAE's tensor as its RGBA version's: alpha read and written through zeros, and
/// the alpha output's bias 1; every other tensor as it is.
fn widened(name: &str, src: Tensor) -> Result<Tensor> {
    let zero_slice = |dim: usize| src.narrow(dim, 0, 1)?.zeros_like();
    match name {
        // (O, 3, k, k) → (O, 4, k, k).
        ENC_IN => Tensor::cat(&[&src, &zero_slice(1)?], 1),
        // (3, I, k, k) → (4, I, k, k).
        DEC_OUT_W => Tensor::cat(&[&src, &zero_slice(0)?], 0),
        // (3,) → (4,).
        DEC_OUT_B => Tensor::cat(&[&src, &zero_slice(0)?.ones_like()?], 0),
        _ => Ok(src),
    }
}

/// An RGBA VAE in `vm`, opaque-initialised from the RGB VAE file `rgb_file` of shape `rgb`.
pub fn from_rgb(
    vm: &VarMap,
    rgb: &VaeConfig,
    rgb_file: &std::path::Path,
    dev: &Device,
) -> std::result::Result<Vae, String> {
    let vae = Vae::new(
        &rgba_config(rgb),
        candle_nn::VarBuilder::from_varmap(vm, DType::F32, dev),
    )
    .map_err(|e| e.to_string())?;
    let tensors = candle_core::safetensors::load(rgb_file, dev)
        .map_err(|e| format!("{}: {e}", rgb_file.display()))?;
    opaque_init(vm, &tensors).map_err(|e| format!("{}: {e}", rgb_file.display()))?;
    Ok(vae)
}

/// The expected squared error of the composite over a background b uniform in [0, 1] per
/// channel, for RGBA images (B, 4, H, W) in [−1, 1]: with a = (A + 1)/2, colours
/// c = (C + 1)/2, d_c = c_t·a_t − c_p·a_p and d_a = a_t − a_p, the composite's error is
/// d_c − b·d_a, whose mean square over b is d_c² − 2·E[b]·d_c·d_a + E[b²]·d_a² with E[b] = ½
/// and E[b²] = ⅓. Averaged over colour channels and pixels.
pub fn composite_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let unit = |t: &Tensor| t.affine(0.5, 0.5);
    let (p, t) = (unit(pred)?, unit(target)?);
    let (cp, ap) = (p.narrow(1, 0, 3)?, p.narrow(1, 3, 1)?);
    let (ct, at) = (t.narrow(1, 0, 3)?, t.narrow(1, 3, 1)?);
    let dc = (ct.broadcast_mul(&at)? - cp.broadcast_mul(&ap)?)?;
    let da = (at - ap)?.broadcast_as(dc.shape())?;
    let cross = (&dc * &da)?;
    (dc.sqr()? - cross)?.add(&(da.sqr()? / 3.0)?)?.mean_all()
}

/// Training loss of an RGBA VAE on images `x` (B, 4, H, W): [`composite_loss`] of a
/// posterior sample (noise `eps`) plus `beta`·KL. Returns (total, composite, kl).
pub fn loss(vae: &Vae, x: &Tensor, eps: &Tensor, beta: f64) -> Result<(Tensor, Tensor, Tensor)> {
    let (mean, logvar) = vae.posterior(x)?;
    let z = (&mean + (&logvar * 0.5)?.exp()?.mul(eps)?)?;
    let comp = composite_loss(&vae.decode(&z)?, x)?;
    let kl = kl_to_normal(&mean, &logvar)?;
    Ok(((&comp + kl.affine(beta, 0.0)?)?, comp, kl))
}

/// How far the RGBA encoder has moved from the RGB one on opaque images `x` (B, 4, H, W):
/// the mean squared difference of their posterior means, the frozen RGB VAE's detached.
/// Weighted into the loss, it keeps the latents that base models were trained on.
pub fn opaque_drift(vae: &Vae, rgb: &Vae, x: &Tensor) -> Result<Tensor> {
    let want = rgb.encode(&x.narrow(1, 0, 3)?)?.detach();
    (vae.encode(x)? - want)?.sqr()?.mean_all()
}
