//! FLUX transformer checkpoints in the layouts they are published in, mapped onto zlayer's
//! (BFL) key names.
//!
//! - BFL single file: `double_blocks.N.img_attn.qkv.weight`, `single_blocks.N.linear1.weight`,
//!   … — zlayer's own names, taken as they are.
//! - diffusers: `transformer_blocks.N.attn.to_q.weight`, `single_transformer_blocks.N.proj_mlp`,
//!   …, often sharded (`diffusion_pytorch_model.safetensors.index.json`). Separate q/k/v (and,
//!   in single blocks, the MLP input) are stacked into the fused BFL matrices; `norm_out`'s
//!   (scale, shift) halves become the final layer's (shift, scale).
//! - PEFT LoRA inside a diffusers file (`<module>.base_layer.weight`, `<module>.lora_A.default.weight`):
//!   [`split_peft`] separates the frozen weights from the adapters.

use crate::config::Config;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod occlusionformer;
pub use occlusionformer::OcclusionFormer;

/// Named tensors.
pub type Tensors = HashMap<String, Tensor>;

/// How a checkpoint names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// black-forest-labs/flux (zlayer's own names).
    Bfl,
    /// diffusers' `FluxTransformer2DModel`.
    Diffusers,
}

/// Reads a checkpoint: a `.safetensors` file, a diffusers `*.safetensors.index.json`, or a
/// folder holding either (the index wins).
pub fn read(path: &Path, dev: &Device) -> Result<Tensors, String> {
    let shards = Shards::locate(path)?;
    let mut all = Tensors::new();
    for f in &shards.files {
        all.extend(read_file(f, dev)?);
    }
    if let Some((index, keys)) = &shards.index
        && let Some(k) = keys.iter().find(|k| !all.contains_key(*k))
    {
        return Err(format!(
            "{}: lists {k:?}, which its shard does not hold",
            index.display()
        ));
    }
    Ok(all)
}

/// The `.safetensors` files that [`read`] would read for `path`.
pub fn weight_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    Ok(Shards::locate(path)?.files)
}

/// The files of a checkpoint, and the index that lists them (with its keys) if any.
struct Shards {
    files: Vec<PathBuf>,
    index: Option<(PathBuf, Vec<String>)>,
}

impl Shards {
    fn locate(path: &Path) -> Result<Self, String> {
        let single = |f: PathBuf| {
            Ok(Self {
                files: vec![f],
                index: None,
            })
        };
        let index = if path.is_dir() {
            match files_in(path, ".safetensors.index.json")?
                .into_iter()
                .next()
            {
                Some(i) => i,
                None => {
                    let files = files_in(path, ".safetensors")?;
                    return match files.len() {
                        1 => single(files[0].clone()),
                        0 => Err(format!("{}: no .safetensors file or index", path.display())),
                        n => Err(format!(
                            "{}: {n} .safetensors files and no *.safetensors.index.json saying which belong together",
                            path.display()
                        )),
                    };
                }
            }
        } else if path.to_string_lossy().ends_with(".index.json") {
            path.to_path_buf()
        } else {
            return single(path.to_path_buf());
        };
        let text =
            std::fs::read_to_string(&index).map_err(|e| format!("{}: {e}", index.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| format!("{}: no \"weight_map\" object", index.display()))?;
        let mut shards: Vec<&str> = map.values().filter_map(|s| s.as_str()).collect();
        shards.sort_unstable();
        shards.dedup();
        let dir = index.parent().unwrap_or(Path::new("."));
        Ok(Self {
            files: shards.iter().map(|s| dir.join(s)).collect(),
            index: Some((index.clone(), map.keys().cloned().collect())),
        })
    }
}

/// A tensor as a safetensors header describes it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Entry {
    /// Its stored type (`BF16`, `F32`, …).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
}

impl Entry {
    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The tensors a checkpoint holds (as [`read`] finds its files), from the headers alone: no
/// tensor data is read, so a model's size is known before it is loaded.
pub fn header(path: &Path) -> Result<HashMap<String, Entry>, String> {
    use std::io::Read;
    let mut all = HashMap::new();
    for f in weight_files(path)? {
        let err = |e: String| format!("{}: not a safetensors file ({e})", f.display());
        let mut file = std::fs::File::open(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|e| err(e.to_string()))?;
        let len = u64::from_le_bytes(len);
        if len > 100 << 20 {
            return Err(err(format!("a header of {len} bytes")));
        }
        let mut text = vec![0u8; len as usize];
        file.read_exact(&mut text).map_err(|e| err(e.to_string()))?;
        let mut map: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&text).map_err(|e| err(e.to_string()))?;
        map.remove("__metadata__");
        for (k, v) in map {
            let e: Entry = serde_json::from_value(v).map_err(|e| err(format!("{k}: {e}")))?;
            all.insert(k, e);
        }
    }
    Ok(all)
}

/// The files in `dir` whose names end with `suffix`, sorted.
fn files_in(dir: &Path, suffix: &str) -> Result<Vec<PathBuf>, String> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    Ok(found)
}

fn read_file(path: &Path, dev: &Device) -> Result<Tensors, String> {
    candle_core::safetensors::load(path, dev).map_err(|e| format!("{}: {e}", path.display()))
}

/// The layout a set of keys is in (a `transformer.` prefix, as some exports have, is ignored
/// by [`strip_prefix`]).
pub fn detect<V>(t: &HashMap<String, V>) -> Result<KeyLayout, String> {
    let has = |p: &str| t.keys().any(|k| k.starts_with(p));
    if has("double_blocks.") || has("img_in.") {
        Ok(KeyLayout::Bfl)
    } else if has("transformer_blocks.") || has("x_embedder.") {
        Ok(KeyLayout::Diffusers)
    } else {
        let mut some: Vec<&String> = t.keys().collect();
        some.sort();
        some.truncate(3);
        Err(format!(
            "not a FLUX transformer: expected `double_blocks.*` (BFL) or `transformer_blocks.*` (diffusers) keys, found {some:?}…"
        ))
    }
}

/// Drops a leading `prefix` (say `transformer.` or `model.diffusion_model.`) from every key
/// that has it.
pub fn strip_prefix(t: Tensors, prefix: &str) -> Tensors {
    t.into_iter()
        .map(|(k, v)| match k.strip_prefix(prefix) {
            Some(s) => (s.to_string(), v),
            None => (k, v),
        })
        .collect()
}

/// A LoRA adapter: `delta = B·A·x` (official OcclusionFormer scale 1.0).
#[derive(Debug, Clone)]
pub struct Adapter {
    /// A (r, in).
    pub a: Tensor,
    /// B (out, r).
    pub b: Tensor,
}

/// Separates PEFT keys: `<m>.base_layer.{weight,bias}` become `<m>.{weight,bias}`;
/// `<m>.lora_A.default.weight` and `<m>.lora_B.default.weight` become the adapter of `<m>`.
pub fn split_peft(t: Tensors) -> Result<(Tensors, HashMap<String, Adapter>), String> {
    let (mut base, mut a, mut b) = (Tensors::new(), HashMap::new(), HashMap::new());
    for (k, v) in t {
        if let Some(m) = k.strip_suffix(".lora_A.default.weight") {
            a.insert(m.to_string(), v);
        } else if let Some(m) = k.strip_suffix(".lora_B.default.weight") {
            b.insert(m.to_string(), v);
        } else {
            base.insert(k.replace(".base_layer.", "."), v);
        }
    }
    let mut adapters = HashMap::new();
    for (m, a) in a {
        let b = b
            .remove(&m)
            .ok_or_else(|| format!("{m}.lora_A.default.weight has no lora_B"))?;
        adapters.insert(m, Adapter { a, b });
    }
    if let Some(m) = b.keys().next() {
        return Err(format!("{m}.lora_B.default.weight has no lora_A"));
    }
    Ok((base, adapters))
}

/// Adds every adapter's `scale·B·A` into its module's weight (for a pass with LoRA on).
pub fn merge(
    base: &mut Tensors,
    adapters: &HashMap<String, Adapter>,
    scale: f64,
) -> Result<(), String> {
    adapters
        .iter()
        .try_for_each(|(m, ad)| merge_one(base, m, ad, scale))
}

/// Adds `scale·B·A` of `ad` into the weight of module `m`.
pub(crate) fn merge_one(
    base: &mut Tensors,
    m: &str,
    ad: &Adapter,
    scale: f64,
) -> Result<(), String> {
    let key = format!("{m}.weight");
    let w = base
        .get(&key)
        .ok_or_else(|| format!("adapter {m}: no {key}"))?;
    let delta =
        ad.b.matmul(&ad.a)
            .and_then(|d| d * scale)
            .map_err(|e| format!("{m}: {e}"))?;
    let merged = (w + delta).map_err(|e| format!("{m}: {e}"))?;
    base.insert(key, merged);
    Ok(())
}

/// diffusers `FluxTransformer2DModel` weights → zlayer's (BFL) names at `cfg`. Keys outside
/// the base transformer (layout modules) are left out; an error names the first missing key.
pub fn diffusers_to_bfl(t: &Tensors, cfg: &Config) -> Result<Tensors, String> {
    let get = |k: &str| {
        t.get(k)
            .cloned()
            .ok_or_else(|| format!("missing key {k:?} (diffusers layout)"))
    };
    let cat = |keys: &[String]| -> Result<Tensor, String> {
        let parts = keys.iter().map(|k| get(k)).collect::<Result<Vec<_>, _>>()?;
        Tensor::cat(&parts, 0).map_err(|e| format!("{}: {e}", keys[0]))
    };
    let mut out = Tensors::new();
    let copy = |from: &str, to: &str, out: &mut Tensors| -> Result<(), String> {
        for p in ["weight", "bias"] {
            out.insert(format!("{to}.{p}"), get(&format!("{from}.{p}"))?);
        }
        Ok(())
    };
    // QK RMS norms: diffusers' `norm_q.weight` / `norm_k.weight` → BFL's `*_norm.scale`.
    let norms = |to: &str, q: &str, k: &str, out: &mut Tensors| -> Result<(), String> {
        out.insert(
            format!("{to}.query_norm.scale"),
            get(&format!("{q}.weight"))?,
        );
        out.insert(format!("{to}.key_norm.scale"), get(&format!("{k}.weight"))?);
        Ok(())
    };
    copy("x_embedder", "img_in", &mut out)?;
    copy("context_embedder", "txt_in", &mut out)?;
    let embedders = [
        ("timestep_embedder", "time_in"),
        ("text_embedder", "vector_in"),
        ("guidance_embedder", "guidance_in"),
    ];
    for (from, to) in embedders {
        if to == "guidance_in" && !cfg.guidance_embed {
            continue;
        }
        copy(
            &format!("time_text_embed.{from}.linear_1"),
            &format!("{to}.in_layer"),
            &mut out,
        )?;
        copy(
            &format!("time_text_embed.{from}.linear_2"),
            &format!("{to}.out_layer"),
            &mut out,
        )?;
    }
    let fused = |d: &str, names: &[&str], p: &str| -> Vec<String> {
        names.iter().map(|n| format!("{d}.{n}.{p}")).collect()
    };
    for i in 0..cfg.depth {
        let (d, b) = (
            format!("transformer_blocks.{i}"),
            format!("double_blocks.{i}"),
        );
        for (stream, qkv, out_proj, norm_q, norm_k, modul, ff) in [
            (
                "img",
                ["attn.to_q", "attn.to_k", "attn.to_v"],
                "attn.to_out.0",
                "attn.norm_q",
                "attn.norm_k",
                "norm1",
                "ff",
            ),
            (
                "txt",
                ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
                "attn.to_add_out",
                "attn.norm_added_q",
                "attn.norm_added_k",
                "norm1_context",
                "ff_context",
            ),
        ] {
            out.insert(
                format!("{b}.{stream}_attn.qkv.weight"),
                cat(&fused(&d, &qkv, "weight"))?,
            );
            if cfg.qkv_bias {
                out.insert(
                    format!("{b}.{stream}_attn.qkv.bias"),
                    cat(&fused(&d, &qkv, "bias"))?,
                );
            }
            copy(
                &format!("{d}.{out_proj}"),
                &format!("{b}.{stream}_attn.proj"),
                &mut out,
            )?;
            norms(
                &format!("{b}.{stream}_attn.norm"),
                &format!("{d}.{norm_q}"),
                &format!("{d}.{norm_k}"),
                &mut out,
            )?;
            copy(
                &format!("{d}.{modul}.linear"),
                &format!("{b}.{stream}_mod.lin"),
                &mut out,
            )?;
            copy(
                &format!("{d}.{ff}.net.0.proj"),
                &format!("{b}.{stream}_mlp.0"),
                &mut out,
            )?;
            copy(
                &format!("{d}.{ff}.net.2"),
                &format!("{b}.{stream}_mlp.2"),
                &mut out,
            )?;
        }
    }
    for i in 0..cfg.depth_single_blocks {
        let (d, b) = (
            format!("single_transformer_blocks.{i}"),
            format!("single_blocks.{i}"),
        );
        let l1 = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"];
        out.insert(
            format!("{b}.linear1.weight"),
            cat(&fused(&d, &l1, "weight"))?,
        );
        out.insert(format!("{b}.linear1.bias"), cat(&fused(&d, &l1, "bias"))?);
        copy(&format!("{d}.proj_out"), &format!("{b}.linear2"), &mut out)?;
        norms(
            &format!("{b}.norm"),
            &format!("{d}.attn.norm_q"),
            &format!("{d}.attn.norm_k"),
            &mut out,
        )?;
        copy(
            &format!("{d}.norm.linear"),
            &format!("{b}.modulation.lin"),
            &mut out,
        )?;
    }
    // diffusers' AdaLayerNormContinuous emits (scale, shift); BFL's final layer (shift, scale).
    for p in ["weight", "bias"] {
        let w = get(&format!("norm_out.linear.{p}"))?;
        let halves = w
            .chunk(2, 0)
            .map_err(|e| format!("norm_out.linear.{p}: {e}"))?;
        let swapped = Tensor::cat(&[&halves[1], &halves[0]], 0).map_err(|e| e.to_string())?;
        out.insert(format!("final_layer.adaLN_modulation.1.{p}"), swapped);
    }
    copy("proj_out", "final_layer.linear", &mut out)?;
    Ok(out)
}

/// A fused BFL module's adapter: its name, the diffusers parts (module, output rows) it
/// stacks, and its input size.
type Fused<'a> = (&'a str, Vec<(&'a str, usize)>, usize);

/// Stacks adapters of modules whose outputs are concatenated (q, k, v, …) into one adapter
/// of the fused module: A stacked by rows, B block-diagonal, so that `B·A·x` gives each
/// part its own update. A part without an adapter (`None`, `out` rows) gets none. Padded
/// with zeros to `rank`, which must hold every part's rank.
pub(crate) fn fuse(
    parts: &[(Option<&Adapter>, usize)],
    inp: usize,
    rank: usize,
) -> Result<Adapter, String> {
    let dev = parts
        .iter()
        .find_map(|(a, _)| a.map(|a| a.a.device().clone()))
        .unwrap_or(Device::Cpu);
    let e = |e: candle_core::Error| e.to_string();
    let total: usize = parts.iter().map(|p| p.1).sum();
    let mut a = Tensor::zeros((rank, inp), candle_core::DType::F32, &dev).map_err(e)?;
    let mut b = Tensor::zeros((total, rank), candle_core::DType::F32, &dev).map_err(e)?;
    let (mut r0, mut o0) = (0, 0);
    for (ad, out) in parts {
        if let Some(ad) = ad {
            let r = ad.a.dim(0).map_err(e)?;
            if r0 + r > rank {
                return Err(format!("fused LoRA rank over {rank}"));
            }
            a = a.slice_assign(&[r0..r0 + r, 0..inp], &ad.a).map_err(e)?;
            b = b
                .slice_assign(&[o0..o0 + out, r0..r0 + r], &ad.b)
                .map_err(e)?;
            r0 += r;
        }
        o0 += out;
    }
    Ok(Adapter { a, b })
}

/// The official LoRA targets of one block kind, as the fused BFL module each lands in: (BFL
/// module, its diffusers parts with their output rows, input size).
pub(crate) fn targets(cfg: &Config, double: bool) -> Vec<Fused<'static>> {
    let (h, m) = (cfg.hidden_size, cfg.mlp_hidden());
    if double {
        vec![
            ("img_mod.lin", vec![("norm1.linear", 6 * h)], h),
            ("txt_mod.lin", vec![("norm1_context.linear", 6 * h)], h),
            (
                "img_attn.qkv",
                vec![("attn.to_q", h), ("attn.to_k", h), ("attn.to_v", h)],
                h,
            ),
            (
                "txt_attn.qkv",
                vec![
                    ("attn.add_q_proj", h),
                    ("attn.add_k_proj", h),
                    ("attn.add_v_proj", h),
                ],
                h,
            ),
            ("img_attn.proj", vec![("attn.to_out.0", h)], h),
            ("txt_attn.proj", vec![("attn.to_add_out", h)], h),
            ("img_mlp.2", vec![("ff.net.2", h)], m),
            ("txt_mlp.2", vec![("ff_context.net.2", h)], m),
        ]
    } else {
        vec![
            ("modulation.lin", vec![("norm.linear", 3 * h)], h),
            (
                "linear1",
                vec![
                    ("attn.to_q", h),
                    ("attn.to_k", h),
                    ("attn.to_v", h),
                    ("proj_mlp", m),
                ],
                h,
            ),
            ("linear2", vec![("proj_out", h)], h + m),
        ]
    }
}
