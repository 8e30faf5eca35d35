//! FLUX checkpoints in their published key layouts load onto one model: the official
//! OcclusionFormer parity run's diffusers weights reproduce its transformer output, and a
//! random checkpoint gives the same output from its BFL, diffusers and sharded forms.

mod ckpt;
mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use ckpt::{fixture_config, random_bfl, to_diffusers};
use common::max_diff;
use std::collections::HashMap;
use zlayer_model::branch::{BranchMaps, LayoutInput};
use zlayer_model::checkpoint::{self, KeyLayout, Tensors};
use zlayer_model::config::Config;
use zlayer_model::dit::{Flux, FluxInput};
use zlayer_model::sampling::noise;

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

/// The RoPE ids (1, 36, 3) of a 6 × 6 token grid.
fn grid_ids() -> Tensor {
    let ids: Vec<f32> = (0..36u32)
        .flat_map(|p| [0.0, (p / 6) as f32, (p % 6) as f32])
        .collect();
    Tensor::from_vec(ids, (1, 36, 3), &Device::Cpu).unwrap()
}

/// A random checkpoint at `cfg` under BFL and diffusers names.
fn random_checkpoint(cfg: &Config) -> (Tensors, Tensors) {
    let bfl = random_bfl(cfg);
    let diff = to_diffusers(&bfl, cfg);
    (bfl, diff)
}

#[test]
fn one_checkpoint_gives_one_output_from_the_bfl_diffusers_and_sharded_files() {
    let (cfg, dev) = (fixture_config(), Device::Cpu);
    let (bfl, diff) = random_checkpoint(&cfg);
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

    let x = noise((2, 36, 16), 1, &dev).unwrap();
    let img_ids = grid_ids().repeat((2, 1, 1)).unwrap();
    let txt = noise((2, 5, 24), 2, &dev).unwrap();
    let txt_ids = Tensor::zeros((2, 5, 3), DType::F32, &dev).unwrap();
    let (t, y) = (
        Tensor::new(&[0.3f32, 0.8], &dev).unwrap(),
        noise((2, 16), 3, &dev).unwrap(),
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
    // The official run's diffusers config reads as the same shapes.
    assert_eq!(Config::from_diffusers(&meta["config"]).unwrap(), cfg);
    let raw = checkpoint::read(&dir.join("weights.safetensors"), &dev).unwrap();
    let (base, _) = checkpoint::split_peft(raw.clone()).unwrap();
    let base = checkpoint::diffusers_to_bfl(&base, &cfg).unwrap();
    let ckpt = checkpoint::OcclusionFormer::from_tensors(raw).unwrap();
    assert_eq!((ckpt.adapters.len(), ckpt.layout.len()), (32, 8 + 2 * 12));
    let (w, rank) = ckpt.apply(base, &cfg, &[0], &[0]).unwrap();
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
        maps: true,
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

/// A PyTorch `torch.save` file of f32 tensors, as the official `occ.pth` is stored: a zip
/// with the pickled state dict (`archive/data.pkl`, protocol 2, each tensor rebuilt by
/// `torch._utils._rebuild_tensor_v2` from a persistent storage id) and one raw little-endian
/// file per storage (`archive/data/K`).
fn write_pth(path: &std::path::Path, tensors: &[(String, Tensor)]) {
    use std::io::Write;
    let text = |p: &mut Vec<u8>, s: &str| {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    };
    let int = |p: &mut Vec<u8>, n: usize| {
        p.push(b'J');
        p.extend((n as i32).to_le_bytes());
    };
    let mut p = vec![0x80, 2, b'}', b'('];
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (k, (name, t)) in tensors.iter().enumerate() {
        let dims = t.dims().to_vec();
        let strides: Vec<usize> = (0..dims.len())
            .map(|d| dims[d + 1..].iter().product())
            .collect();
        text(&mut p, name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        text(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        text(&mut p, &k.to_string());
        text(&mut p, "cpu");
        int(&mut p, t.elem_count());
        p.extend(b"tQ");
        int(&mut p, 0);
        for v in [&dims, &strides] {
            p.push(b'(');
            for &x in v {
                int(&mut p, x);
            }
            p.push(b't');
        }
        p.extend([0x89, b'}', b't', b'R']);
        let data: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        zip.start_file(format!("archive/data/{k}"), stored).unwrap();
        for x in data {
            zip.write_all(&x.to_le_bytes()).unwrap();
        }
    }
    p.extend(b"u.");
    zip.start_file("archive/data.pkl", stored).unwrap();
    zip.write_all(&p).unwrap();
    zip.start_file("archive/version", stored).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap();
}

#[test]
fn the_three_published_occlusionformer_forms_load_to_one_model() {
    let cfg = fixture_config();
    let dev = Device::Cpu;
    // A random official checkpoint: every LoRA target of every block, and the layout modules
    // of double block 0 and single block 1, under diffusers names.
    let bfl = random_bfl(&cfg);
    let diff = to_diffusers(&bfl, &cfg);
    let (lora, layout) = ckpt::random_branch(&cfg, &diff, &[0], &[1]);
    let dir = std::env::temp_dir().join(format!("zlayer-occ-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let save = |name: &str, t: Vec<(String, Tensor)>| {
        let map: HashMap<String, Tensor> = t.into_iter().collect();
        candle_core::safetensors::save(&map, dir.join(name)).unwrap();
        dir.join(name)
    };
    // 1. diffusers LoRA keys with the `transformer.` prefix, and the layout weights pickled.
    let lora_diffusers = save(
        "lora.safetensors",
        lora.iter()
            .map(|(k, v)| (format!("transformer.{k}.weight"), v.clone()))
            .collect(),
    );
    let pth = dir.join("occ.pth");
    write_pth(&pth, &layout);
    // 2. PEFT keys, no prefix.
    let lora_peft = save(
        "lora-peft.safetensors",
        lora.iter()
            .map(|(k, v)| (format!("{k}.default.weight"), v.clone()))
            .collect(),
    );
    // 3. One bundle with `lora::` and `layout::` prefixes.
    let bundle = save(
        "bundle_weights.safetensors",
        lora.iter()
            .map(|(k, v)| (format!("lora::transformer.{k}.weight"), v.clone()))
            .chain(
                layout
                    .iter()
                    .map(|(k, v)| (format!("layout::{k}"), v.clone())),
            )
            .collect(),
    );
    let forms: [Vec<&std::path::Path>; 3] = [
        vec![&lora_diffusers, &pth],
        vec![&lora_peft, &pth],
        vec![&bundle],
    ];
    let mut outputs = Vec::new();
    for files in &forms {
        let ckpt = checkpoint::OcclusionFormer::read(files, &dev).unwrap();
        assert_eq!(ckpt.adapters.len(), lora.len() / 2, "{files:?}");
        assert_eq!(ckpt.layout.len(), layout.len(), "{files:?}");
        let (w, rank) = ckpt.apply(bfl.clone(), &cfg, &[0], &[1]).unwrap();
        let vb = VarBuilder::from_tensors(w, DType::F32, &dev);
        let mut model = Flux::new(&cfg, vb.clone()).unwrap();
        model.attach_layout(&[0], &[1], rank, vb.clone()).unwrap();
        outputs.push(model);
    }
    // The branch on a two-instance scene (the parity fixture's shapes, own values).
    let img_ids = grid_ids();
    let boxes = vec![
        (0, vec![0, 1, 6, 7, 8, 14], [0f32, 1.0, 1.0]),
        (0, vec![7, 8, 9, 13, 14, 15, 20], [0f32, 2.0, 2.0]),
    ];
    let packing = zlayer_model::layout::Packing::new(&boxes, 1, &img_ids).unwrap();
    let pooled = noise((2, 16), 4, &dev).unwrap();
    let masks = Tensor::rand(0f32, 1.0, (2, 36), &dev).unwrap();
    let tokens = noise((2, 32), 5, &dev).unwrap();
    let occluders = vec![vec![1], vec![]];
    let input = LayoutInput {
        packing: &packing,
        tokens: &tokens,
        pooled: &pooled,
        masks: &masks,
        occluders: &occluders,
        grid: (6, 6),
        static_sigma: false,
        regional: None,
        attention_maps: false,
        maps: true,
    };
    let io: HashMap<String, Tensor> = [
        ("latents", noise((1, 36, 16), 6, &dev).unwrap()),
        ("img_ids", img_ids.squeeze(0).unwrap()),
        ("encoder_hidden_states", noise((1, 5, 24), 7, &dev).unwrap()),
        ("txt_ids", Tensor::zeros((5, 3), DType::F32, &dev).unwrap()),
        ("timestep", Tensor::new(&[0.6f32], &dev).unwrap()),
        ("guidance", Tensor::new(&[3.5f32], &dev).unwrap()),
        ("pooled_projections", noise((1, 16), 8, &dev).unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (first, maps) = run_fixture(&outputs[0], &io, Some(&input));
    assert_eq!(maps.logits.len(), 2);
    for m in &outputs[1..] {
        let (o, _) = run_fixture(m, &io, Some(&input));
        assert!(max_diff(&o, &first) < 1e-6);
    }
    // The LoRA and layout weights matter: without them the output moves.
    let plain = flux(bfl, &cfg);
    assert!(max_diff(&run_fixture(&plain, &io, None).0, &first) > 1e-3);
    let err = checkpoint::OcclusionFormer::read(&[&dir.join("flux1-dev-free.safetensors")], &dev)
        .unwrap_err();
    assert!(err.contains("flux1-dev-free.safetensors"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
