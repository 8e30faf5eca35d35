//! The base model: flow loss, deterministic sampling, prompt errors.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use zlayer_model::Config;
use zlayer_model::base::{BaseModel, LossOptions, SampleOptions};
use zlayer_model::init::seeded;
use zlayer_model::text::{TextConfig, Tokenizer};

fn model(dev: &Device) -> candle_core::Result<BaseModel> {
    let tok = Tokenizer::new([
        "a",
        "red",
        "blue",
        "sphere",
        "cube",
        "on",
        "sky",
        "background",
    ]);
    let dit = Config {
        hidden_size: 64,
        num_heads: 2,
        depth: 1,
        depth_single_blocks: 1,
        context_in_dim: 32,
        vec_in_dim: 32,
        ..Config::tiny()
    };
    let text = TextConfig {
        vocab: tok.len(),
        max_len: 12,
        width: 32,
        layers: 1,
        heads: 2,
        pooled: 32,
    };
    let vm = VarMap::new();
    BaseModel::new(&dit, &text, tok, seeded(&vm, 0, DType::F32, dev))
}

#[test]
fn loss_is_finite_and_sampling_is_deterministic() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let m = model(&dev)?;
    let ids = m
        .tokenizer
        .batch(
            &["a red sphere on a sky background", "a blue cube"],
            m.max_len,
            &dev,
        )
        .unwrap();
    let x0 = zlayer_model::sampling::noise((2, 16, 8), 1, &dev)?;
    let l = m.loss(&x0, &ids, (4, 4), 7)?.to_scalar::<f32>()?;
    assert!(l.is_finite() && l > 0.0);
    assert_eq!(
        l,
        m.loss(&x0, &ids, (4, 4), 7)?.to_scalar::<f32>()?,
        "same seed, same loss"
    );
    // Token weights: uniform ones give the plain mean; weight on one sample's tokens alone
    // gives that sample's loss, which the two-sample mean lies between.
    let weighted = |w| LossOptions {
        weights: Some(w),
        time_mu: 0.0,
    };
    let ones = Tensor::ones((2, 16), DType::F32, &dev)?;
    let uniform = m.loss_with(&x0, &ids, (4, 4), 7, &weighted(&ones))?;
    assert!((uniform.to_scalar::<f32>()? - l).abs() < 1e-6 * l);
    let first = Tensor::cat(
        &[
            Tensor::ones((1, 16), DType::F32, &dev)?,
            Tensor::zeros((1, 16), DType::F32, &dev)?,
        ],
        0,
    )?;
    let second = (1.0 - &first)?;
    let (l1, l2) = (
        m.loss_with(&x0, &ids, (4, 4), 7, &weighted(&first))?
            .to_scalar::<f32>()?,
        m.loss_with(&x0, &ids, (4, 4), 7, &weighted(&second))?
            .to_scalar::<f32>()?,
    );
    assert!((0.5 * (l1 + l2) - l).abs() < 1e-5 * l, "{l1} {l2} {l}");
    assert!(l1 != l2);
    // Shifted times draw other times, so another loss, still finite.
    let shifted = LossOptions {
        weights: None,
        time_mu: 3f64.ln(),
    };
    let ls = m
        .loss_with(&x0, &ids, (4, 4), 7, &shifted)?
        .to_scalar::<f32>()?;
    assert!(ls.is_finite() && ls != l);
    let one = m
        .tokenizer
        .batch(&["a red sphere", "a red sphere"], m.max_len, &dev)
        .unwrap();
    let opts = SampleOptions {
        steps: 4,
        guidance: 2.0,
        seed: 11,
    };
    let a = m.sample(&one, (4, 4), 8, &opts)?;
    assert_eq!(a.dims(), &[2, 16, 8]);
    let b = m.sample(&one, (4, 4), 8, &opts)?;
    assert_eq!(
        a.flatten_all()?.to_vec1::<f32>()?,
        b.flatten_all()?.to_vec1::<f32>()?
    );
    assert!(
        m.tokenizer
            .encode("a green sphere")
            .unwrap_err()
            .to_string()
            .contains("\"green\"")
    );
    Ok(())
}
