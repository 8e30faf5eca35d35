//! A checkpoint round-trips exactly: resuming gives the same next losses, bit for bit.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use zlayer_model::init::seeded;
use zlayer_model::optim::{AdamWConfig, Trainer, lr_at};
use zlayer_model::sampling::noise;
use zlayer_model::{Config, Flux, FluxInput};

fn setup(dev: &Device) -> candle_core::Result<(VarMap, Flux)> {
    let cfg = Config {
        hidden_size: 64,
        num_heads: 2,
        depth: 1,
        depth_single_blocks: 1,
        context_in_dim: 16,
        vec_in_dim: 16,
        ..Config::tiny()
    };
    let vm = VarMap::new();
    let model = Flux::new(&cfg, seeded(&vm, 0, DType::F32, dev))?;
    Ok((vm, model))
}

fn loss(model: &Flux, step: usize, dev: &Device) -> candle_core::Result<Tensor> {
    // Data is a function of the step, as the real loaders are.
    let seed = step as u64;
    let img = noise((2, 16, 8), seed, dev)?;
    let ids: Vec<f32> = (0..16)
        .flat_map(|p| [0.0, (p / 4) as f32, (p % 4) as f32])
        .collect();
    let img_ids = Tensor::from_vec(ids, (1, 16, 3), dev)?.repeat((2, 1, 1))?;
    let txt = noise((2, 3, 16), seed + 100, dev)?;
    let out = model.forward(&FluxInput {
        img: &img,
        img_ids: &img_ids,
        txt: &txt,
        txt_ids: &Tensor::zeros((2, 3, 3), DType::F32, dev)?,
        timesteps: &Tensor::new(&[0.2f32, 0.7], dev)?,
        y: &noise((2, 16), seed + 200, dev)?,
        guidance: None,
    })?;
    (out - noise((2, 16, 8), seed + 300, dev)?)?
        .sqr()?
        .mean_all()
}

#[test]
fn resume_gives_the_same_next_losses() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("zlayer-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let ckpt = dir.join("ckpt.safetensors");
    let cfg = AdamWConfig {
        lr: 2e-3,
        weight_decay: 0.01,
        ..Default::default()
    };

    let (vm, model) = setup(&dev)?;
    let mut tr = Trainer::new(&vm, cfg, 0.99)?;
    for s in 0..3 {
        tr.step(&loss(&model, s, &dev)?, lr_at(s, cfg.lr, 2, 10), 1.0)?;
    }
    tr.save(&ckpt, &serde_json::json!({"note": "test"}))
        .unwrap();
    let mut a = Vec::new();
    for s in 3..6 {
        let l = loss(&model, s, &dev)?;
        a.push(l.to_scalar::<f32>()?);
        tr.step(&l, lr_at(s, cfg.lr, 2, 10), 1.0)?;
    }

    let (vm2, model2) = setup(&dev)?; // a different random init, overwritten by the load
    let mut tr2 = Trainer::new(&vm2, cfg, 0.99)?;
    let meta = tr2.load(&ckpt, &dev).unwrap();
    assert_eq!((tr2.step, meta["note"].as_str()), (3, Some("test")));
    let mut b = Vec::new();
    for s in 3..6 {
        let l = loss(&model2, s, &dev)?;
        b.push(l.to_scalar::<f32>()?);
        tr2.step(&l, lr_at(s, cfg.lr, 2, 10), 1.0)?;
    }
    assert_eq!(a, b, "resumed losses differ");
    let (e1, e2) = (tr.ema(), tr2.ema());
    for (k, t) in &e1 {
        let d = (t - &e2[k])?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(d, 0.0, "EMA {k} differs");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn learning_rate_warms_up_then_decays_to_a_tenth() {
    assert!((lr_at(0, 1.0, 10, 100) - 0.1).abs() < 1e-12);
    assert!((lr_at(9, 1.0, 10, 100) - 1.0).abs() < 1e-12);
    assert!((lr_at(10, 1.0, 10, 100) - 1.0).abs() < 1e-12);
    assert!((lr_at(100, 1.0, 10, 100) - 0.1).abs() < 1e-12);
    assert!(lr_at(50, 1.0, 10, 100) < 1.0 && lr_at(50, 1.0, 10, 100) > 0.1);
}

#[test]
fn an_interrupted_run_resumes_with_each_step_logged_once() {
    use zlayer_model::train::{LoopConfig, train_loop};
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("zlayer-loop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let lc = |steps| LoopConfig {
        steps,
        lr: 1e-3,
        warmup: 1,
        checkpoint_every: 3,
        clip: 1.0,
        ema: 0.9,
        weight_decay: 0.0,
    };
    let run = |steps| {
        let (vm, model) = setup(&dev).unwrap();
        let meta = serde_json::json!({});
        train_loop(
            &dir,
            "t",
            &vm,
            &lc(steps),
            &meta,
            &dev,
            |s| Ok((loss(&model, s, &dev)?, Vec::new())),
            |_| {},
        )
        .unwrap();
    };
    let csv = dir.join("t-loss.csv");
    run(3);
    // A run that died after step 5, between checkpoints, left rows 4 and 5 behind.
    let mut text = std::fs::read_to_string(&csv).unwrap();
    // A loss no real step can log (it is a mean of squares), so finding it means a stale row.
    text.push_str("4,-77.5,0.001\n5,-77.5,0.001\n");
    std::fs::write(&csv, text).unwrap();
    run(5);
    let text = std::fs::read_to_string(&csv).unwrap();
    let steps: Vec<&str> = text.lines().map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(steps, ["step", "1", "2", "3", "4", "5"], "{text}");
    assert!(!text.contains("-77.5"), "stale rows kept: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}
