//! Flow-GRPO on a toy layout branch: a rollout without SDE steps is the sampler's image, a
//! group shares its start and parts at the SDE steps, and one update moves the policy
//! towards the sample its advantage favours.

mod common;

use candle_core::{DType, Device, Tensor};
use zlayer_model::base::SampleOptions;
use zlayer_model::layout_model::{Grounding, LayoutModel, SceneLayout};
use zlayer_model::optim::{AdamWConfig, Trainer};
use zlayer_model::rollout::{RolloutOptions, policy_loss, rollout};

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.flatten_from(1).unwrap().to_vec2::<f32>().unwrap()
}

#[test]
fn rollouts_sample_as_the_sampler_and_an_update_follows_the_advantage() {
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("zlayer-rollout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (model, branch) = common::toy_branch(&dev, &dir, 1);
    let scene = zlayer_scene::load_str(common::TOY_SCENE).unwrap().scene;
    let grid = (8, 8);
    let layout = SceneLayout::from_scene(&scene, grid);
    let prompt = "a red sphere in front of a blue cube";
    let ids_for = |n: usize| {
        let prompts = vec![prompt; n];
        model.base.tokenizer.batch(&prompts, 16, &dev).unwrap()
    };
    let prep = |n: usize| model.prepare(&vec![layout.clone(); n], grid, &dev).unwrap();

    // The velocity without maps (what the sampler and rollouts use where no maps are kept)
    // is the velocity with them, bit for bit.
    let x = Tensor::randn(0f32, 1.0, (1, 64, 4), &dev).unwrap();
    let tt = Tensor::full(0.6f32, 1, &dev).unwrap();
    let (with, maps) = model.velocity(&x, &tt, &ids_for(1), &prep(1)).unwrap();
    let alone = model.velocity_only(&x, &tt, &ids_for(1), &prep(1)).unwrap();
    assert_eq!(rows(&with), rows(&alone));
    assert!(!maps.logits.is_empty() && maps.logits.len() == maps.weights.len());

    // No SDE step, a group of one: exactly the sampler's image, guidance included.
    let plain = RolloutOptions {
        steps: 5,
        guidance: 2.0,
        noise_level: 0.7,
        sde: vec![],
        group: 1,
        seed: 9,
    };
    let r = rollout(&model, None, &ids_for(1), &prep(1), 4, &plain).unwrap();
    let opts = SampleOptions {
        steps: 5,
        guidance: 2.0,
        seed: 9,
    };
    let sampled = model
        .sample(&ids_for(1), &prep(1), 4, &opts, Grounding::ratio(1.0))
        .unwrap();
    assert_eq!(rows(&r.latents), rows(&sampled));
    assert!(r.stored.is_empty());
    // So does the same branch when it samples with layout and order guidance.
    let (mut lg, _) = common::toy_branch(&dev, &dir, 1);
    lg.layout_guidance = 2.0;
    lg.order_guidance = 1.0;
    let r = rollout(&lg, None, &ids_for(1), &prep(1), 4, &plain).unwrap();
    let g = Grounding {
        ratio: 1.0,
        guidance: 2.0,
        order: 1.0,
        guided: 1.0,
    };
    let sampled_guided = lg.sample(&ids_for(1), &prep(1), 4, &opts, g).unwrap();
    assert_eq!(rows(&r.latents), rows(&sampled_guided));
    assert_ne!(rows(&sampled_guided), rows(&sampled));
    // And with the guidance on the first half of the steps only: the same step count.
    lg.guided_ratio = 0.5;
    let r = rollout(&lg, None, &ids_for(1), &prep(1), 4, &plain).unwrap();
    let half = Grounding { guided: 0.5, ..g };
    let sampled_half = lg.sample(&ids_for(1), &prep(1), 4, &opts, half).unwrap();
    assert_eq!(rows(&r.latents), rows(&sampled_half));
    assert_ne!(rows(&sampled_half), rows(&sampled_guided));
    assert_ne!(rows(&sampled_half), rows(&sampled));

    // A group of 4 with SDE steps 1 and 3: a shared start, four different ends.
    let o = RolloutOptions {
        sde: vec![1, 3],
        group: 4,
        ..plain
    };
    let (ids, p) = (ids_for(4), prep(4));
    let r = rollout(&model, Some(&model), &ids, &p, 4, &o).unwrap();
    assert_eq!(r.stored.iter().map(|s| s.k).collect::<Vec<_>>(), [1, 3]);
    // A pure function of the weights and the seed: what a resumed GRPO run relies on.
    let again = rollout(&model, Some(&model), &ids, &p, 4, &o).unwrap();
    assert_eq!(rows(&again.latents), rows(&r.latents));
    assert_eq!(
        again.stored[1].logp_old.to_vec1::<f32>().unwrap(),
        r.stored[1].logp_old.to_vec1::<f32>().unwrap()
    );
    let start = rows(&r.stored[0].x);
    assert!(
        start.iter().all(|x| *x == start[0]),
        "steps before the first SDE step are shared"
    );
    let ends = rows(&r.latents);
    for i in 0..4 {
        for j in i + 1..4 {
            assert_ne!(ends[i], ends[j]);
        }
    }
    // At the sampling weights the ratio is 1 and the KL to the same model is 0.
    let adv = Tensor::new(&[1f32, -1.0, 0.0, 0.0], &dev).unwrap();
    let (_, stats) = policy_loss(&model, &ids, &p, &r, (0, 4), &adv, (0.2, 0.1), &o).unwrap();
    assert_eq!(stats.kl, 0.0);
    assert_eq!(stats.clipped, 0.0);
    assert!(
        stats.surrogate.abs() < 1e-5,
        "−mean(A·1) = 0: {}",
        stats.surrogate
    );

    // Updates on sample 0 favoured over sample 1 raise its log-probability against 1's.
    let logp_gap = |m: &LayoutModel| -> f32 {
        let mut gap = 0.0;
        for s in &r.stored {
            let x = &s.x;
            let tt = Tensor::full(s.t as f32, 4, &dev).unwrap();
            let (vc, _) = m.velocity(x, &tt, &ids, &p).unwrap();
            let v = zlayer_model::sampling::guided(&vc, s.uncond.as_ref().unwrap(), 2.0).unwrap();
            let step = zlayer_model::grpo::sde_step(x, &v, s.t, s.next, 0.7, r.t_cap).unwrap();
            let lp = step.log_prob(&s.x_next).unwrap().to_vec1::<f32>().unwrap();
            gap += lp[0] - lp[1];
        }
        gap
    };
    let before = logp_gap(&model);
    let mut tr = Trainer::new(
        &branch,
        AdamWConfig {
            lr: 1e-3,
            ..Default::default()
        },
        0.0,
    )
    .unwrap();
    for _ in 0..3 {
        let (loss, _) = policy_loss(&model, &ids, &p, &r, (0, 4), &adv, (1.0, 0.0), &o).unwrap();
        tr.step(&loss, 1e-3, 0.0).unwrap();
    }
    let after = logp_gap(&model);
    assert!(after > before, "log p(0) − log p(1): {before} → {after}");
    // A minibatch of rows 2..4 trains on those rows alone: equal advantages, a zero loss.
    let (ids2, p2) = (ids_for(2), prep(2));
    let zero = Tensor::zeros(2, DType::F32, &dev).unwrap();
    let (loss, _) = policy_loss(&model, &ids2, &p2, &r, (2, 2), &zero, (0.2, 0.0), &o).unwrap();
    assert_eq!(loss.to_scalar::<f32>().unwrap(), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}
