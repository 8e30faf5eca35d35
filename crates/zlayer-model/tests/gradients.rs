//! Training must reach every parameter: candle's fused ops without backward would silently
//! cut gradients (DESIGN.md §6). Also: a short overfit proves the model can learn at all.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use zlayer_model::init::seeded;
use zlayer_model::sampling::noise;
use zlayer_model::{Config, Flux, FluxInput};

struct Batch {
    img: Tensor,
    img_ids: Tensor,
    txt: Tensor,
    txt_ids: Tensor,
    t: Tensor,
    y: Tensor,
    g: Tensor,
    target: Tensor,
}

fn batch(cfg: &Config, dev: &Device) -> candle_core::Result<Batch> {
    let (b, side, lt) = (2, 4, 5);
    let li = side * side;
    let ids: Vec<f32> = (0..li)
        .flat_map(|p| [0.0, (p / side) as f32, (p % side) as f32])
        .collect();
    let img_ids = Tensor::from_vec(ids, (1, li, 3), dev)?.repeat((b, 1, 1))?;
    Ok(Batch {
        img: noise((b, li, cfg.in_channels), 1, dev)?,
        img_ids,
        txt: noise((b, lt, cfg.context_in_dim), 2, dev)?,
        txt_ids: Tensor::zeros((b, lt, 3), DType::F32, dev)?,
        t: Tensor::new(&[0.3f32, 0.8], dev)?,
        y: noise((b, cfg.vec_in_dim), 3, dev)?,
        g: Tensor::new(&[3.5f32, 3.5], dev)?,
        target: noise((b, li, cfg.in_channels), 4, dev)?,
    })
}

fn loss(model: &Flux, x: &Batch) -> candle_core::Result<Tensor> {
    let out = model.forward(&FluxInput {
        img: &x.img,
        img_ids: &x.img_ids,
        txt: &x.txt,
        txt_ids: &x.txt_ids,
        timesteps: &x.t,
        y: &x.y,
        guidance: Some(&x.g),
    })?;
    (out - &x.target)?.sqr()?.mean_all()
}

#[test]
fn every_parameter_receives_a_gradient() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    // The tiny preset with guidance on, so the guidance embedder is covered too.
    let cfg = Config {
        guidance_embed: true,
        ..Config::tiny()
    };
    let vm = VarMap::new();
    let model = Flux::new(&cfg, seeded(&vm, 0, DType::F32, &dev))?;
    let x = batch(&cfg, &dev)?;
    let grads = loss(&model, &x)?.backward()?;
    assert!(
        vm.all_vars().len() > 50,
        "{} parameters",
        vm.all_vars().len()
    );
    let missing = zlayer_model::optim::params_without_gradient(&vm, &grads);
    assert!(missing.is_empty(), "no gradient reaches: {missing:?}");
    Ok(())
}

#[test]
fn thirty_steps_on_one_batch_halve_the_loss() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let cfg = Config {
        hidden_size: 64,
        num_heads: 2,
        depth: 1,
        depth_single_blocks: 1,
        context_in_dim: 32,
        vec_in_dim: 32,
        ..Config::tiny()
    };
    let vm = VarMap::new();
    let model = Flux::new(&cfg, seeded(&vm, 0, DType::F32, &dev))?;
    let x = batch(&cfg, &dev)?;
    let vars: Vec<Var> = vm.all_vars();
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: 3e-3,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let first = loss(&model, &x)?.to_scalar::<f32>()?;
    let mut last = first;
    for _ in 0..30 {
        let l = loss(&model, &x)?;
        last = l.to_scalar::<f32>()?;
        opt.backward_step(&l)?;
    }
    let end = loss(&model, &x)?.to_scalar::<f32>()?;
    assert!(
        end <= 0.5 * first,
        "loss {first} → {end} (last step {last})"
    );
    Ok(())
}
