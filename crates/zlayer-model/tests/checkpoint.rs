//! FLUX checkpoints in their published key layouts load onto one model: the official
//! OcclusionFormer parity run's diffusers weights reproduce its transformer output, and a
//! random checkpoint gives the same output from its BFL, diffusers and sharded forms.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::max_diff;
use std::collections::HashMap;
use zlayer_model::branch::{BranchMaps, LayoutInput};
use zlayer_model::checkpoint::{self, KeyLayout, Tensors};
use zlayer_model::config::Config;
use zlayer_model::dit::{Flux, FluxInput};

/// The parity fixture's transformer (meta.json).
fn fixture_config() -> Config {
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

fn flux(t: Tensors, cfg: &Config) -> Flux {
    Flux::new(cfg, VarBuilder::from_tensors(t, DType::F32, &Device::Cpu)).unwrap()
}

/// The fixture's inputs through `model`, with the layout branch when `layout` is given.
fn run_fixture(
    model: &Flux,
    io: &HashMap<String, Tensor>,
    layout: Option<&LayoutInput>,
) -> (Tensor, BranchMaps) {
    let g = |k: &str| io[k].clone();
    let ids = |k: &str| g(k).unsqueeze(0).unwrap();
    let (img_ids, txt_ids) = (ids("img_ids"), ids("txt_ids"));
    let t = g("timestep").reshape(1).unwrap();
    let guidance = g("guidance").reshape(1).unwrap();
    let x = FluxInput {
        img: &g("latents"),
        img_ids: &img_ids,
        txt: &g("encoder_hidden_states"),
        txt_ids: &txt_ids,
        timesteps: &t,
        y: &g("pooled_projections"),
        guidance: Some(&guidance),
    };
    model.forward_layout(&x, layout).unwrap()
}

/// The parity fixture's folder and its inputs and outputs (`io.safetensors`).
fn parity_fixture() -> Option<(std::path::PathBuf, HashMap<String, Tensor>)> {
    let dir = zlayer_testkit::fixtures("official-parity")?;
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    Some((dir, io))
}

/// Whether a diffusers module sits in a block that has the layout branch (the fixture's
/// double block 0 and single block 0).
fn in_layout_block(module: &str) -> bool {
    module.starts_with("transformer_blocks.0.")
        || module.starts_with("single_transformer_blocks.0.")
}

#[test]
fn the_official_parity_weights_reproduce_the_transformer_without_its_layout_branch() {
    let Some((dir, io)) = parity_fixture() else {
        return;
    };
    let dev = Device::Cpu;
    let raw = checkpoint::read(&dir.join("weights.safetensors"), &dev).unwrap();
    assert_eq!(checkpoint::detect(&raw).unwrap(), KeyLayout::Diffusers);
    let (base, adapters) = checkpoint::split_peft(raw).unwrap();
    // 11 LoRA targets in each double block, 5 in each single block (meta.json's list).
    assert_eq!(adapters.len(), 2 * 11 + 2 * 5);
    let cfg = fixture_config();
    let want = &io["out_layout_disabled"];
    let output = |keep: &dyn Fn(&str) -> bool| {
        let chosen: HashMap<_, _> = adapters
            .iter()
            .filter(|(m, _)| keep(m))
            .map(|(m, a)| (m.clone(), a.clone()))
            .collect();
        let mut w = base.clone();
        checkpoint::merge(&mut w, &chosen, 1.0).unwrap();
        let model = flux(checkpoint::diffusers_to_bfl(&w, &cfg).unwrap(), &cfg);
        run_fixture(&model, &io, None).0
    };
    // The official toggling: once the branch has run, LoRA is off in the global pass of the
    // blocks that have a branch, and stays on (scale 1, no alpha/r) everywhere else.
    let official = max_diff(&output(&|m| !in_layout_block(m)), want);
    let (off, on) = (
        max_diff(&output(&|_| false), want),
        max_diff(&output(&|_| true), want),
    );
    eprintln!(
        "out_layout_disabled: max |Δ| {official:.1e} (official LoRA state); {off:.1e} with LoRA off, {on:.1e} with LoRA on everywhere"
    );
    assert!(official < 1e-5, "{official}");
    assert!(
        off > 1e-2 && on > 1e-2,
        "the LoRA state must matter: {off} {on}"
    );
}

/// A random BFL checkpoint at `cfg`: the model's own initialisation.
fn random_bfl(cfg: &Config) -> Tensors {
    let vm = candle_nn::VarMap::new();
    Flux::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    let data = vm.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| {
            // Biases start at zero; give every tensor values so that every path counts.
            let r = Tensor::randn(0f32, 0.1, v.shape(), &Device::Cpu).unwrap();
            (k.clone(), (v.as_tensor() + r).unwrap())
        })
        .collect()
}

/// The same weights under diffusers' names: the inverse of the mapping under test, written
/// out key by key.
fn to_diffusers(t: &Tensors, cfg: &Config) -> Tensors {
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

#[test]
fn one_checkpoint_gives_one_output_from_the_bfl_diffusers_and_sharded_files() {
    let cfg = fixture_config();
    let dev = Device::Cpu;
    let bfl = random_bfl(&cfg);
    let diff = to_diffusers(&bfl, &cfg);
    assert_eq!(checkpoint::detect(&bfl).unwrap(), KeyLayout::Bfl);
    assert_eq!(checkpoint::detect(&diff).unwrap(), KeyLayout::Diffusers);
    let dir = std::env::temp_dir().join(format!("zlayer-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("sharded")).unwrap();
    candle_core::safetensors::save(&bfl, dir.join("flux1-dev.safetensors")).unwrap();
    // diffusers' sharded form: two files and the index that maps each key to its file.
    let mut keys: Vec<&String> = diff.keys().collect();
    keys.sort();
    let (a, b) = keys.split_at(keys.len() / 2);
    let mut map = serde_json::Map::new();
    for (name, part) in [
        ("model-00001-of-00002.safetensors", a),
        ("model-00002-of-00002.safetensors", b),
    ] {
        let shard: HashMap<String, Tensor> =
            part.iter().map(|&k| (k.clone(), diff[k].clone())).collect();
        candle_core::safetensors::save(&shard, dir.join("sharded").join(name)).unwrap();
        for k in part {
            map.insert((*k).clone(), name.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.join("sharded/diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    // A `transformer.`-prefixed single file, as some exports write.
    let prefixed: Tensors = diff
        .iter()
        .map(|(k, v)| (format!("transformer.{k}"), v.clone()))
        .collect();
    candle_core::safetensors::save(&prefixed, dir.join("prefixed.safetensors")).unwrap();

    let x = Tensor::randn(0f32, 1.0, (2, 36, 16), &dev).unwrap();
    let img_ids = Tensor::stack(
        &(0..36u32)
            .map(|p| Tensor::new(&[0f32, (p / 6) as f32, (p % 6) as f32], &dev).unwrap())
            .collect::<Vec<_>>(),
        0,
    )
    .unwrap()
    .unsqueeze(0)
    .unwrap()
    .repeat((2, 1, 1))
    .unwrap();
    let txt = Tensor::randn(0f32, 1.0, (2, 5, 24), &dev).unwrap();
    let txt_ids = Tensor::zeros((2, 5, 3), DType::F32, &dev).unwrap();
    let (t, y) = (
        Tensor::new(&[0.3f32, 0.8], &dev).unwrap(),
        Tensor::randn(0f32, 1.0, (2, 16), &dev).unwrap(),
    );
    let g = Tensor::new(&[3.5f32, 3.5], &dev).unwrap();
    let out = |w: Tensors| {
        flux(w, &cfg)
            .forward(&FluxInput {
                img: &x,
                img_ids: &img_ids,
                txt: &txt,
                txt_ids: &txt_ids,
                timesteps: &t,
                y: &y,
                guidance: Some(&g),
            })
            .unwrap()
    };
    let reference = out(checkpoint::read(&dir.join("flux1-dev.safetensors"), &dev).unwrap());
    for source in [dir.join("sharded"), dir.join("prefixed.safetensors")] {
        let raw =
            checkpoint::strip_prefix(checkpoint::read(&source, &dev).unwrap(), "transformer.");
        let w = checkpoint::diffusers_to_bfl(&raw, &cfg).unwrap();
        assert_eq!(w.len(), bfl.len(), "{}", source.display());
        let d = max_diff(&out(w), &reference);
        assert!(d < 1e-6, "{}: {d}", source.display());
    }
    // A missing tensor is named.
    let mut broken = diff.clone();
    broken.remove("single_transformer_blocks.1.proj_mlp.weight");
    let err = checkpoint::diffusers_to_bfl(&broken, &cfg).unwrap_err();
    assert!(
        err.contains("single_transformer_blocks.1.proj_mlp.weight"),
        "{err}"
    );
    // So is a shard that does not hold what the index says.
    std::fs::remove_file(dir.join("sharded/model-00002-of-00002.safetensors")).unwrap();
    let err = checkpoint::read(&dir.join("sharded"), &dev).unwrap_err();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_official_parity_run_is_reproduced_with_its_layout_branch() {
    let Some((dir, io)) = parity_fixture() else {
        return;
    };
    let dev = Device::Cpu;
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let cfg = fixture_config();
    let raw = checkpoint::read(&dir.join("weights.safetensors"), &dev).unwrap();
    let (w, rank) = checkpoint::official_layout(raw, &cfg, &[0], &[0]).unwrap();
    let vb = VarBuilder::from_tensors(w, DType::F32, &dev);
    let mut model = Flux::new(&cfg, vb.clone()).unwrap();
    model.attach_layout(&[0], &[0], rank, vb.clone()).unwrap();
    let net = zlayer_model::layout::LayoutNet::new(16, 32, vb.pp("layout_net")).unwrap();
    let g = |k: &str| io[k].clone();
    let tokens = net
        .forward(&g("instance_pooled"), &g("layout_boxes_dense"))
        .unwrap();
    let lists: Vec<Vec<usize>> = serde_json::from_value(meta["token_index_lists"].clone()).unwrap();
    let occluders: Vec<Vec<usize>> =
        serde_json::from_value(meta["occluder_sets_0_based"].clone()).unwrap();
    let text_ids: Vec<Vec<f32>> = g("instance_text_ids").to_vec2().unwrap();
    let boxes: Vec<(usize, Vec<usize>, [f32; 3])> = lists
        .into_iter()
        .zip(&text_ids)
        .map(|(idx, id)| (0, idx, [id[0], id[1], id[2]]))
        .collect();
    let img_ids = g("img_ids").unsqueeze(0).unwrap();
    let packing = zlayer_model::layout::Packing::new(&boxes, 1, &img_ids).unwrap();
    let input = LayoutInput {
        packing: &packing,
        tokens: &tokens,
        pooled: &g("instance_pooled"),
        masks: &g("bbox_mask_soft"),
        occluders: &occluders,
        grid: (6, 6),
        static_sigma: false,
        regional: None,
        attention_maps: false,
    };
    let (out, maps) = run_fixture(&model, &io, Some(&input));
    let d = max_diff(&out, &io["out_steady"]);
    let logits: Vec<f32> = (0..2)
        .map(|b| max_diff(&maps.logits[b], &io[&format!("align_logits_block{b}")]))
        .collect();
    eprintln!(
        "out_steady max |Δ| {d:.1e}; align logits {:.1e}, {:.1e}",
        logits[0], logits[1]
    );
    assert!(d < 1e-4, "{d}");
    assert!(logits.iter().all(|&l| l < 1e-4), "{logits:?}");
}
