//! Helpers shared by the model crate's integration tests.

#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use zlayer_model::Config;
use zlayer_model::base::BaseModel;
use zlayer_model::init::seeded;
use zlayer_model::layout_model::{LayoutModel, Variant};
use zlayer_model::text::{TextConfig, Tokenizer};

/// A two-instance scene in the toy base's vocabulary.
pub const TOY_SCENE: &str = r#"{"width": 64, "height": 64, "prompt": "a red sphere in front of a blue cube",
  "instances": [
    {"id": "s", "caption": "red sphere", "bbox": [4, 8, 40, 44], "occludes": ["c"]},
    {"id": "c", "caption": "blue cube", "bbox": [24, 4, 60, 40]}]}"#;

/// A toy base (hidden 32, one block of each kind, 4 latent channels) with seeded random
/// weights, frozen as a trained base is: saved to `dir` and reloaded as plain tensors.
pub fn toy_base(dev: &Device, dir: &std::path::Path) -> BaseModel {
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
    let path = dir.join("base.safetensors");
    vm.save(&path).unwrap();
    // SAFETY: written above and not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, dev).unwrap() };
    BaseModel::new(&dit, &text, tok, vb).unwrap()
}

/// The largest absolute difference between two tensors of one shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A rank-4 occlusionformer branch in the first block of each kind of [`toy_base`], its
/// parameters seeded in the returned VarMap.
pub fn toy_branch(dev: &Device, dir: &std::path::Path, seed: u64) -> (LayoutModel, VarMap) {
    let branch = VarMap::new();
    let model = LayoutModel::new(
        toy_base(dev, dir),
        &[0],
        &[0],
        4,
        Variant::Occlusionformer,
        seeded(&branch, seed, DType::F32, dev),
    )
    .unwrap();
    (model, branch)
}
