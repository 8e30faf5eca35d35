//! Stage 2 end to end at toy size: scenes to tensors, the joint loss learns the alignment,
//! and sampling with a grounding ratio of 0 is the base model's.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use zlayer_model::Config;
use zlayer_model::base::{BaseModel, SampleOptions};
use zlayer_model::init::seeded;
use zlayer_model::layout_model::{LayoutModel, SceneLayout, Variant};
use zlayer_model::optim::{AdamWConfig, Trainer};
use zlayer_model::sampling::noise;
use zlayer_model::text::{TextConfig, Tokenizer};

const SCENE: &str = r#"{"width": 64, "height": 64, "prompt": "a red sphere in front of a blue cube",
  "instances": [
    {"id": "s", "caption": "red sphere", "bbox": [4, 8, 40, 44], "occludes": ["c"]},
    {"id": "c", "caption": "blue cube", "bbox": [24, 4, 60, 40]}]}"#;

fn base(dev: &Device, dir: &std::path::Path) -> BaseModel {
    let tok = Tokenizer::new(["a", "red", "blue", "sphere", "cube", "in", "front", "of"]);
    let text = TextConfig {
        vocab: tok.len(),
        max_len: 16,
        width: 32,
        layers: 1,
        heads: 2,
        pooled: 16,
    };
    let dit = Config {
        in_channels: 4,
        hidden_size: 32,
        num_heads: 2,
        depth: 1,
        depth_single_blocks: 1,
        context_in_dim: 32,
        vec_in_dim: 16,
        axes_dim: [4, 6, 6],
        ..Config::tiny()
    };
    let vm = VarMap::new();
    BaseModel::new(&dit, &text, tok.clone(), seeded(&vm, 0, DType::F32, dev)).unwrap();
    // Frozen, as a trained base is: reloaded from a file as plain tensors.
    let path = dir.join("base.safetensors");
    vm.save(&path).unwrap();
    // SAFETY: written above and not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, dev).unwrap() };
    BaseModel::new(&dit, &text, tok, vb).unwrap()
}

#[test]
fn the_alignment_loss_falls_and_a_zero_grounding_ratio_samples_like_the_base() {
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("zlayer-lm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let branch = VarMap::new();
    let model = LayoutModel::new(
        base(&dev, &dir),
        &[0],
        &[0],
        4,
        Variant::Occlusionformer,
        seeded(&branch, 0, DType::F32, &dev),
    )
    .unwrap();
    let scene = zlayer_scene::load_str(SCENE).unwrap().scene;
    let grid = (8, 8);
    let mut layout = SceneLayout::from_scene(&scene, grid);
    assert_eq!(
        layout.instances[1].occluders,
        vec![0],
        "the sphere is in front of the cube"
    );
    for inst in &mut layout.instances {
        // The box as the amodal target: enough to check that the head learns.
        inst.amodal = Some(inst.soft.iter().map(|&s| (s > 0.5) as u8 as f32).collect());
    }
    let p = model.prepare(&[layout], grid, &dev).unwrap();
    let ids = model
        .base
        .tokenizer
        .batch(&["a red sphere in front of a blue cube"], 16, &dev)
        .unwrap();
    let x0 = noise((1, 64, 4), 1, &dev).unwrap();
    let mut tr = Trainer::new(
        &branch,
        AdamWConfig {
            lr: 3e-3,
            ..Default::default()
        },
        0.0,
    )
    .unwrap();
    let mut aligns = Vec::new();
    for s in 0..40 {
        let (total, flow, align) = model.loss(&x0, &ids, &p, s % 4).unwrap();
        assert!(flow.is_finite() && align.is_finite());
        aligns.push(align);
        tr.step(&total, 3e-3, 1.0).unwrap();
    }
    let (first, last) = (aligns[0], aligns[aligns.len() - 1]);
    assert!(last < 0.5 * first, "alignment loss {first} → {last}");

    let opts = SampleOptions {
        steps: 4,
        guidance: 1.0,
        seed: 3,
    };
    let plain = model.base.sample(&ids, grid, 4, &opts).unwrap();
    let off = model.sample(&ids, &p, 4, &opts, 0.0).unwrap();
    let on = model.sample(&ids, &p, 4, &opts, 0.5).unwrap();
    let v = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v(&plain), v(&off), "ratio 0: the base model's sample");
    assert_ne!(v(&plain), v(&on), "ratio 0.5: the trained branch acts");
    assert_eq!(
        v(&on),
        v(&model.sample(&ids, &p, 4, &opts, 0.5).unwrap()),
        "deterministic"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
