//! FLUX.1-dev with OcclusionFormer, end to end: find the published files in a folder,
//! estimate the memory each stage needs before anything loads, encode the prompt and
//! captions (then drop the encoders), sample with the layout branch, decode.
//!
//! The stages run one after another and free their weights, so the peak is the largest
//! stage, not the sum: text encoders (T5 + CLIP), transformer (+ branch) with a step's
//! activations, VAE decode.

use crate::checkpoint::{self, Entry, KeyLayout, OcclusionFormer, header};
use crate::config::Config;
use crate::dit::{Flux, FluxInput};
use crate::encoders::{Clip, FluxVae, T5, T5_LEN, pack, unpack};
use crate::layout::LayoutNet;
use crate::layout_model::{Prepared, SceneLayout, Variant};
use crate::sampling::{denoise_steps, noise, schedule};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The official sampling defaults (OcclusionFormer's inference script on FLUX.1-dev).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Euler steps.
    pub steps: usize,
    /// Distilled guidance embedded by FLUX.1-dev.
    pub guidance: f64,
    /// Fraction of the steps that run the layout branch.
    pub grounding_ratio: f64,
    /// Seed of the noise.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            steps: 28,
            guidance: 3.5,
            grounding_ratio: 0.3,
            seed: 0,
        }
    }
}

/// The most instances the official code accepts in one scene.
pub const MAX_INSTANCES: usize = 50;

/// The type FLUX.1-dev runs in on `dev`: bf16 on a GPU, as it was trained; f32 on the CPU,
/// where candle lacks bf16 kernels (its matmul widens to f32 anyway).
pub fn run_dtype(dev: &Device) -> DType {
    if dev.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

/// The files of a FLUX.1-dev download (the Hugging Face repository's layout).
#[derive(Debug, Clone, PartialEq)]
pub struct Files {
    /// `flux1-dev.safetensors` (BFL names) or the diffusers `transformer/` folder.
    pub transformer: PathBuf,
    /// The diffusers `transformer/config.json`, when the transformer comes from there.
    pub transformer_config: Option<PathBuf>,
    /// `ae.safetensors`.
    pub vae: PathBuf,
    /// `text_encoder_2/` (T5).
    pub t5: PathBuf,
    /// T5's `tokenizer.json`.
    pub t5_tokenizer: PathBuf,
    /// `text_encoder/` (CLIP-L).
    pub clip: PathBuf,
    /// CLIP's `tokenizer.json`.
    pub clip_tokenizer: PathBuf,
}

impl Files {
    /// Finds the files in `dir`; a tokenizer given by path wins over the one in `dir`. The
    /// error names every file that is missing and where it was looked for.
    pub fn locate(
        dir: &Path,
        t5_tokenizer: Option<&Path>,
        clip_tokenizer: Option<&Path>,
    ) -> Result<Self, String> {
        let mut missing = Vec::new();
        let mut need = |p: PathBuf, what: &str| {
            if !p.exists() {
                missing.push(format!("{what} ({})", p.display()));
            }
            p
        };
        let bfl = dir.join("flux1-dev.safetensors");
        let (transformer, transformer_config) = if bfl.exists() {
            (bfl, None)
        } else {
            let d = dir.join("transformer");
            (
                need(
                    d.clone(),
                    "the transformer: flux1-dev.safetensors or transformer/",
                ),
                Some(d.join("config.json")),
            )
        };
        let tok = |given: Option<&Path>, sub: &str| {
            given.map_or_else(|| dir.join(sub).join("tokenizer.json"), Path::to_path_buf)
        };
        let files = Self {
            transformer,
            transformer_config,
            vae: need(dir.join("ae.safetensors"), "the VAE in BFL names"),
            t5: need(dir.join("text_encoder_2"), "T5"),
            t5_tokenizer: need(tok(t5_tokenizer, "tokenizer_2"), "T5's tokenizer.json"),
            clip: need(dir.join("text_encoder"), "CLIP-L"),
            clip_tokenizer: need(
                tok(clip_tokenizer, "tokenizer"),
                "CLIP's tokenizer.json (FLUX.1-dev's tokenizer/ has only vocab.json and merges.txt: \
                 pass --clip-tokenizer with openai/clip-vit-large-patch14's tokenizer.json)",
            ),
        };
        if missing.is_empty() {
            Ok(files)
        } else {
            Err(format!(
                "{}: not a complete FLUX.1-dev folder; missing {}",
                dir.display(),
                missing.join("; ")
            ))
        }
    }

    /// The transformer's shapes: its diffusers config, else the FLUX.1-dev preset.
    pub fn config(&self) -> Result<Config, String> {
        let Some(p) = &self.transformer_config else {
            return Ok(Config::flux_dev());
        };
        let v = crate::bundle::read_json(p)?;
        Config::from_diffusers(&v).map_err(|e| format!("{}: {e}", p.display()))
    }
}

/// Bytes each stage needs, estimated from the checkpoints' headers and the scene.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// T5 and CLIP weights with their activations.
    pub text: u64,
    /// Loading the transformer: the file's tensors plus, when they must be renamed or
    /// converted, the converted copies.
    pub load: u64,
    /// The transformer and branch weights with one step's activations.
    pub denoise: u64,
    /// The VAE with its decoder's activations.
    pub decode: u64,
}

impl Estimate {
    /// The peak: the largest stage.
    pub fn peak(&self) -> u64 {
        self.text.max(self.load).max(self.denoise).max(self.decode)
    }
}

/// Bytes in GiB.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{:.1} GiB at the peak (text encoders {:.1}, transformer load {:.1}, denoising {:.1}, VAE decode {:.1})",
            gib(self.peak()),
            gib(self.text),
            gib(self.load),
            gib(self.denoise),
            gib(self.decode)
        )
    }
}

/// Elements and stored bytes of the tensors a header lists.
fn stored_bytes(h: &HashMap<String, Entry>) -> (u64, u64) {
    let size = |d: &str| match d {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        _ => 1,
    };
    let elems: u64 = h.values().map(|e| e.elements() as u64).sum();
    let bytes = h
        .values()
        .map(|e| e.elements() as u64 * size(&e.dtype))
        .sum();
    (elems, bytes)
}

/// Estimates what generating a `width × height` image needs in `dtype`, reading only file
/// headers. `boxes` holds each instance's token count (its packed sequence, less the
/// layout token); `branch` the OcclusionFormer files.
pub fn estimate(
    files: &Files,
    branch: &[PathBuf],
    (width, height): (usize, usize),
    boxes: &[usize],
    dtype: DType,
) -> Result<Estimate, String> {
    let b = dtype.size_in_bytes() as u64;
    let cfg = files.config()?;
    let (t5, _) = stored_bytes(&header(&files.t5)?);
    let (clip, _) = stored_bytes(&header(&files.clip)?);
    let transformer = header(&files.transformer)?;
    let (tr_elems, tr_stored) = stored_bytes(&transformer);
    let mut extra = 0;
    for p in branch {
        // A pickle's header cannot be read without unpickling; its file size stands in.
        extra += match p.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => stored_bytes(&header(p)?).0 * b,
            _ => std::fs::metadata(p).map_or(0, |m| m.len()),
        };
    }
    let vae = header(&files.vae)?;
    let (vae_elems, _) = stored_bytes(&vae);
    let vae_cfg = FluxVae::config_of(&vae)?;
    let f = 1usize << (vae_cfg.ch_mult.len() - 1);
    let (lh, lw) = (height / f, width / f);
    let li = (lh / 2 * (lw / 2)) as u64;
    let (h, heads) = (cfg.hidden_size as u64, cfg.num_heads as u64);
    let l = li + T5_LEN as u64;
    // Attention materialises (heads, L, L) scores, softmax and a copy; the rest of a block
    // holds about 16 hidden-wide rows per token (q, k, v, MLP at 4×, modulated copies).
    let attn = |n: u64| 3 * heads * n * n * b;
    let mut act = attn(l) + 16 * l * h * b + cfg.mlp_hidden() as u64 * l * b;
    if !boxes.is_empty() {
        let n = boxes.len() as u64;
        // Per-instance canvases for composition (Ẑ, weights, σ, products), and each
        // instance's packed attention.
        act += 4 * n * li * h * b + boxes.iter().map(|&k| attn(k as u64 + 1)).sum::<u64>();
    }
    let weights = tr_elems * b;
    let converted =
        tr_stored != weights || checkpoint::detect(&transformer)? == KeyLayout::Diffusers;
    let pixels = (width * height) as u64;
    let top = (vae_cfg.ch * vae_cfg.ch_mult[0]) as u64;
    let cells = (lh * lw) as u64;
    Ok(Estimate {
        text: (t5 + clip) * b + T5_LEN as u64 * 64 * 1024 * b,
        load: tr_stored + if converted { weights } else { 0 } + extra,
        denoise: weights + extra + act,
        decode: vae_elems * b + 4 * top * pixels * b + 3 * cells * cells * b,
    })
}

/// Memory free for tensors on `dev`: the GPU's free memory, or the host's available
/// memory (`MemAvailable`). `None` when it cannot be told.
pub fn available(dev: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        return d
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, _)| free as u64);
    }
    if !dev.is_cpu() {
        return None;
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The prompt and captions, encoded.
pub struct Conditioning {
    /// T5 sequence (1, 512, 4096).
    pub txt: Tensor,
    /// CLIP pooled prompt (1, 768).
    pub y: Tensor,
    /// CLIP pooled captions (N, 768), when there are instances.
    pub pooled: Option<Tensor>,
}

impl Conditioning {
    /// Loads CLIP, then T5, each dropped once used.
    pub fn encode(
        files: &Files,
        prompt: &str,
        captions: &[&str],
        dtype: DType,
        dev: &Device,
    ) -> Result<Self, String> {
        let clip = Clip::load(&files.clip, &files.clip_tokenizer, dtype, dev)?;
        let y = clip.pooled(&[prompt])?;
        let pooled = (!captions.is_empty())
            .then(|| clip.pooled(captions))
            .transpose()?;
        drop(clip);
        let txt = T5::load(&files.t5, &files.t5_tokenizer, dtype, dev)?.encode(prompt)?;
        Ok(Self { txt, y, pooled })
    }
}

/// The transformer, with the layout branch when a checkpoint was given.
pub struct Transformer {
    /// The DiT.
    pub flux: Flux,
    /// Layout tokens from captions and boxes.
    pub net: Option<LayoutNet>,
}

impl Transformer {
    /// Loads FLUX weights in either layout from `files`, applying `branch` (the official
    /// LoRA semantics; its blocks are those its layout weights name).
    pub fn load(
        files: &Files,
        branch: Option<&OcclusionFormer>,
        dtype: DType,
        dev: &Device,
    ) -> Result<Self, String> {
        let cfg = files.config()?;
        let at = |e: String| format!("{}: {e}", files.transformer.display());
        let mut raw = checkpoint::read(&files.transformer, dev)?;
        for p in ["model.diffusion_model.", "transformer."] {
            raw = checkpoint::strip_prefix(raw, p);
        }
        let base = match checkpoint::detect(&raw).map_err(at)? {
            KeyLayout::Bfl => raw,
            KeyLayout::Diffusers => checkpoint::diffusers_to_bfl(&raw, &cfg).map_err(at)?,
        };
        let err = |e: candle_core::Error| at(e.to_string());
        let Some(ckpt) = branch else {
            let vb = VarBuilder::from_tensors(base, dtype, dev);
            let flux = Flux::new(&cfg, vb).map_err(err)?;
            return Ok(Self { flux, net: None });
        };
        let (double, single) = ckpt.branch_blocks();
        let (w, rank) = ckpt.apply(base, &cfg, &double, &single)?;
        let vb = VarBuilder::from_tensors(w, dtype, dev);
        let mut flux = Flux::new(&cfg, vb.clone()).map_err(err)?;
        flux.attach_layout(&double, &single, rank, vb.clone())
            .map_err(err)?;
        let net = LayoutNet::new(cfg.vec_in_dim, cfg.hidden_size, vb.pp("layout_net"))
            .map_err(|e| format!("OcclusionFormer checkpoint: {e}"))?;
        Ok(Self {
            flux,
            net: Some(net),
        })
    }

    /// Samples a latent (1, C, lh, lw) for an image of `lh × lw` latent cells, with the
    /// branch on `layout`'s instances for the first `grounding_ratio` of the steps; calls
    /// `step` after each step.
    pub fn sample(
        &self,
        c: &Conditioning,
        layout: Option<&SceneLayout>,
        (lh, lw): (usize, usize),
        opts: &Options,
        step: &dyn Fn(usize),
    ) -> candle_core::Result<Tensor> {
        let cfg = self.flux.config();
        let dev = c.txt.device();
        let dtype = c.txt.dtype();
        let grid = (lh / 2, lw / 2);
        let channels = cfg.in_channels / 4;
        let img_ids = crate::base::BaseModel::image_ids(1, grid.0, grid.1, dev)?;
        let txt_ids = Tensor::zeros((1, c.txt.dim(1)?, 3), DType::F32, dev)?;
        let g = Tensor::full(opts.guidance as f32, 1, dev)?.to_dtype(dtype)?;
        let prepared = match (layout, &c.pooled, &self.net) {
            (Some(l), Some(pooled), Some(net)) if !l.instances.is_empty() => {
                let p = Prepared::new(std::slice::from_ref(l), grid, pooled.clone(), false)?;
                let tokens = net.forward(&p.pooled, &p.points)?;
                Some((p, tokens))
            }
            _ => None,
        };
        let input = prepared
            .as_ref()
            .map(|(p, t)| p.input(t, Variant::Occlusionformer));
        let grounded = ((opts.grounding_ratio * opts.steps as f64).ceil() as usize).min(opts.steps);
        let field = |x: &Tensor, t: f64, k: usize| {
            let tt = Tensor::full(t as f32, 1, dev)?.to_dtype(dtype)?;
            let x = FluxInput {
                img: x,
                img_ids: &img_ids,
                txt: &c.txt,
                txt_ids: &txt_ids,
                timesteps: &tt,
                y: &c.y,
                guidance: Some(&g),
            };
            let branch = input.as_ref().filter(|_| k < grounded);
            let v = self.flux.forward_layout(&x, branch)?.0;
            step(k);
            Ok(v)
        };
        let x = noise((1, channels, lh, lw), opts.seed, dev)?.to_dtype(dtype)?;
        let times = schedule(opts.steps, grid.0 * grid.1, true);
        unpack(&denoise_steps(field, pack(&x)?, &times)?, lh, lw)
    }
}

/// Decodes a latent with the VAE in `files` (loaded for this and dropped after): an image
/// (1, 3, H, W) in [−1, 1], f32.
pub fn decode(files: &Files, z: &Tensor) -> Result<Tensor, String> {
    // candle's CPU convolutions have no bf16 kernel; the VAE is small, so f32 there.
    let dtype = if z.device().is_cpu() {
        DType::F32
    } else {
        z.dtype()
    };
    let vae = FluxVae::load(&files.vae, dtype, z.device())?;
    z.to_dtype(dtype)
        .and_then(|z| vae.decode(&z))
        .and_then(|x| x.to_dtype(DType::F32))
        .map_err(|e| e.to_string())
}
