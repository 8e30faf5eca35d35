//! Random FLUX and OcclusionFormer checkpoints in the published key layouts, for the tests
//! that load them.

use candle_core::{DType, Device, Tensor};
use zlayer_model::checkpoint::Tensors;
use zlayer_model::config::Config;
use zlayer_model::dit::Flux;
use zlayer_model::init::{name_seed, seeded};
use zlayer_model::sampling::noise;

/// The seed of every random checkpoint here, so that a test's figures repeat run after run.
pub const SEED: u64 = 2024;

/// N(0, `std`²) values for the tensor `name`, seeded apart from its initialisation's draws.
pub fn perturbation(shape: impl Into<candle_core::Shape>, std: f64, name: &str) -> Tensor {
    (noise(shape, name_seed(SEED + 1, name), &Device::Cpu).unwrap() * std).unwrap()
}

/// The parity fixture's transformer (meta.json).
pub fn fixture_config() -> Config {
    Config {
        in_channels: 16,
        hidden_size: 32,
        num_heads: 2,
        depth: 2,
        depth_single_blocks: 2,
        mlp_ratio: 4.0,
        context_in_dim: 24,
        vec_in_dim: 16,
        axes_dim: [4, 6, 6],
        theta: 10_000.0,
        qkv_bias: true,
        guidance_embed: true,
    }
}

/// A random BFL checkpoint at `cfg`: the model's own initialisation.
pub fn random_bfl(cfg: &Config) -> Tensors {
    let vm = candle_nn::VarMap::new();
    Flux::new(cfg, seeded(&vm, SEED, DType::F32, &Device::Cpu)).unwrap();
    let data = vm.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| {
            // Biases start at zero; give every tensor values so that every path counts.
            let r = perturbation(v.shape(), 0.1, k);
            (k.clone(), (v.as_tensor() + r).unwrap())
        })
        .collect()
}

/// The same weights under diffusers' names: the inverse of the mapping under test, written
/// out key by key.
pub fn to_diffusers(t: &Tensors, cfg: &Config) -> Tensors {
    let mut out = Tensors::new();
    let h = cfg.hidden_size;
    let mut put = |k: String, v: Tensor| {
        out.insert(k, v);
    };
    let rows = |v: &Tensor, sizes: &[usize]| -> Vec<Tensor> {
        let mut at = 0;
        sizes
            .iter()
            .map(|&n| {
                at += n;
                v.narrow(0, at - n, n).unwrap()
            })
            .collect()
    };
    for (k, v) in t {
        let parts: Vec<&str> = k.split('.').collect();
        let (stem, param) = k.rsplit_once('.').unwrap();
        let renamed = match parts.as_slice() {
            ["img_in", ..] => Some(format!("x_embedder.{param}")),
            ["txt_in", ..] => Some(format!("context_embedder.{param}")),
            [e @ ("time_in" | "vector_in" | "guidance_in"), l, _] => {
                let e = match *e {
                    "time_in" => "timestep_embedder",
                    "vector_in" => "text_embedder",
                    _ => "guidance_embedder",
                };
                let l = if *l == "in_layer" {
                    "linear_1"
                } else {
                    "linear_2"
                };
                Some(format!("time_text_embed.{e}.{l}.{param}"))
            }
            ["final_layer", "linear", _] => Some(format!("proj_out.{param}")),
            ["final_layer", "adaLN_modulation", "1", _] => {
                let c = v.chunk(2, 0).unwrap();
                put(
                    format!("norm_out.linear.{param}"),
                    Tensor::cat(&[&c[1], &c[0]], 0).unwrap(),
                );
                None
            }
            ["double_blocks", i, s, rest @ ..] => {
                let d = format!("transformer_blocks.{i}");
                let img = s.starts_with("img");
                match (s.split_once('_').unwrap().1, rest) {
                    ("attn", ["qkv", _]) => {
                        let names = if img {
                            ["to_q", "to_k", "to_v"]
                        } else {
                            ["add_q_proj", "add_k_proj", "add_v_proj"]
                        };
                        for (n, p) in names.iter().zip(rows(v, &[h, h, h])) {
                            put(format!("{d}.attn.{n}.{param}"), p);
                        }
                        None
                    }
                    ("attn", ["proj", _]) => Some(format!(
                        "{d}.attn.{}.{param}",
                        if img { "to_out.0" } else { "to_add_out" }
                    )),
                    ("attn", ["norm", n, _]) => {
                        let a = if img { "" } else { "added_" };
                        Some(format!("{d}.attn.norm_{a}{}.weight", &n[..1]))
                    }
                    ("mod", ["lin", _]) => Some(format!(
                        "{d}.{}.linear.{param}",
                        if img { "norm1" } else { "norm1_context" }
                    )),
                    ("mlp", [l, _]) => {
                        let ff = if img { "ff" } else { "ff_context" };
                        Some(format!(
                            "{d}.{ff}.net.{}.{param}",
                            if *l == "0" { "0.proj" } else { "2" }
                        ))
                    }
                    _ => panic!("unmapped {k}"),
                }
            }
            ["single_blocks", i, rest @ ..] => {
                let d = format!("single_transformer_blocks.{i}");
                match rest {
                    ["linear1", _] => {
                        let names = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"];
                        for (n, p) in names.iter().zip(rows(v, &[h, h, h, cfg.mlp_hidden()])) {
                            put(format!("{d}.{n}.{param}"), p);
                        }
                        None
                    }
                    ["linear2", _] => Some(format!("{d}.proj_out.{param}")),
                    ["norm", n, _] => Some(format!("{d}.attn.norm_{}.weight", &n[..1])),
                    ["modulation", "lin", _] => Some(format!("{d}.norm.linear.{param}")),
                    _ => panic!("unmapped {k}"),
                }
            }
            _ => panic!("unmapped {k} ({stem})"),
        };
        if let Some(r) = renamed {
            put(r, v.clone());
        }
    }
    out
}

/// A random official OcclusionFormer checkpoint for diffusers weights `diff` at `cfg`: LoRA
/// (rank 4) on every target of every block, as `(module.lora_A|lora_B, tensor)`, and the
/// layout modules of double blocks `double` and single blocks `single` plus `layout_net`,
/// under diffusers names, sorted.
#[allow(clippy::type_complexity)]
pub fn random_branch(
    cfg: &Config,
    diff: &Tensors,
    double: &[usize],
    single: &[usize],
) -> (Vec<(String, Tensor)>, Vec<(String, Tensor)>) {
    let dev = Device::Cpu;
    let targets = [
        "attn.to_q",
        "attn.to_k",
        "attn.to_v",
        "attn.add_q_proj",
        "attn.add_k_proj",
        "attn.add_v_proj",
        "attn.to_out.0",
        "attn.to_add_out",
        "norm1.linear",
        "norm1_context.linear",
        "ff.net.2",
        "norm.linear",
        "proj_mlp",
    ];
    let mut lora: Vec<(String, Tensor)> = Vec::new();
    for (k, w) in diff {
        let Some(m) = k.strip_suffix(".weight") else {
            continue;
        };
        if !targets.iter().any(|t| m.ends_with(&format!(".{t}"))) || w.rank() != 2 {
            continue;
        }
        let (out, inp) = w.dims2().unwrap();
        lora.push((
            format!("{m}.lora_A"),
            perturbation((4, inp), 0.1, &format!("{m}.lora_A")),
        ));
        lora.push((
            format!("{m}.lora_B"),
            perturbation((out, 4), 0.1, &format!("{m}.lora_B")),
        ));
    }
    let vm = candle_nn::VarMap::new();
    let vb = || seeded(&vm, SEED, DType::F32, &dev);
    let mut with_branch = Flux::new(cfg, vb()).unwrap();
    with_branch.attach_layout(double, single, 4, vb()).unwrap();
    zlayer_model::layout::LayoutNet::new(cfg.vec_in_dim, cfg.hidden_size, vb().pp("layout_net"))
        .unwrap();
    let mut layout: Vec<(String, Tensor)> = Vec::new();
    for (k, v) in vm.data().lock().unwrap().iter() {
        let r = (v.as_tensor() + perturbation(v.shape(), 0.1, k)).unwrap();
        let k = k
            .replace("double_blocks.", "transformer_blocks.")
            .replace("single_blocks.", "single_transformer_blocks.");
        if k.starts_with("layout_net.")
            || ["layout_forward", "norm1_layout", "mask_predictor"]
                .iter()
                .any(|p| k.contains(p))
        {
            layout.push((k, r));
        }
    }
    layout.sort_by(|a, b| a.0.cmp(&b.0));
    (lora, layout)
}
