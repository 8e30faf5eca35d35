//! Stage 2 end to end at toy size: scenes to tensors, the joint loss learns the alignment,
//! sampling with a grounding ratio of 0 is the base model's, and layout guidance extrapolates
//! from the base's velocity through the branch's.

mod common;

use candle_core::Device;
use zlayer_model::base::SampleOptions;
use zlayer_model::layout_model::{Grounding, SceneLayout};
use zlayer_model::optim::{AdamWConfig, Trainer};
use zlayer_model::sampling::noise;

#[test]
fn the_alignment_loss_falls_and_a_zero_grounding_ratio_samples_like_the_base() {
    let dev = Device::Cpu;
    let dir = std::env::temp_dir().join(format!("zlayer-lm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (model, branch) = common::toy_branch(&dev, &dir, 0);
    let scene = zlayer_scene::load_str(common::TOY_SCENE).unwrap().scene;
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
    let p = model.prepare(&[layout.clone()], grid, &dev).unwrap();
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
    let off = model
        .sample(&ids, &p, 4, &opts, Grounding::ratio(0.0))
        .unwrap();
    let on = model
        .sample(&ids, &p, 4, &opts, Grounding::ratio(0.5))
        .unwrap();
    let v = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(v(&plain), v(&off), "ratio 0: the base model's sample");
    assert_ne!(v(&plain), v(&on), "ratio 0.5: the trained branch acts");
    assert_eq!(
        v(&on),
        v(&model
            .sample(&ids, &p, 4, &opts, Grounding::ratio(0.5))
            .unwrap()),
        "deterministic"
    );

    // Layout guidance: λ = 0 on every step is the base model's sample, bit for bit, and on
    // one Euler step λ = 2 lands at 2·(λ = 1) − (λ = 0), the extrapolation it is meant to be.
    let at = |guidance: f64, steps: usize| {
        let o = SampleOptions { steps, ..opts };
        let g = Grounding {
            guidance,
            ..Grounding::ratio(1.0)
        };
        v(&model.sample(&ids, &p, 4, &o, g).unwrap())
    };
    assert_eq!(at(0.0, 4), v(&plain), "λ = 0: the base alone");
    assert_eq!(
        at(1.0, 4),
        v(&model
            .sample(&ids, &p, 4, &opts, Grounding::ratio(1.0))
            .unwrap())
    );
    let (zero, one, two) = (at(0.0, 1), at(1.0, 1), at(2.0, 1));
    let worst = (0..two.len())
        .map(|i| (two[i] - (2.0 * one[i] - zero[i])).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "λ = 2 against 2·v₁ − v₀: {worst}");
    assert!(one != zero, "the branch acts on that step");
    // The guidance interval: the first ⌈guided·steps⌉ steps keep λ and μ, the rest have none.
    let g = Grounding {
        guidance: 3.0,
        order: 1.0,
        guided: 0.3,
        ..Grounding::ratio(1.0)
    };
    let kept: Vec<bool> = (0..20).map(|k| g.at(k, 20) == g).collect();
    assert_eq!(kept, (0..20).map(|k| k < 6).collect::<Vec<_>>());
    assert_eq!(
        g.at(6, 20),
        Grounding {
            guided: 0.3,
            ..Grounding::ratio(1.0)
        }
    );
    assert_eq!(g.at(0, 1), g, "a positive share guides at least one step");

    // Order guidance: the reversed layouts swap every declared occlusion; on one Euler step
    // μ = 1 lands at 2·(declared) − (reversed); a scene without declared occlusions is drawn
    // bit for bit as without it.
    let rev = p.reversed();
    assert_eq!(p.occluders, vec![vec![], vec![0]]);
    assert_eq!(rev.occluders, vec![vec![1], vec![]]);
    let one_step = SampleOptions { steps: 1, ..opts };
    let draw = |p: &zlayer_model::layout_model::Prepared, order: f64, o: &SampleOptions| {
        let g = Grounding {
            order,
            ..Grounding::ratio(1.0)
        };
        v(&model.sample(&ids, p, 4, o, g).unwrap())
    };
    let (declared, reversed, ordered) = (
        draw(&p, 0.0, &one_step),
        draw(&rev, 0.0, &one_step),
        draw(&p, 1.0, &one_step),
    );
    assert_ne!(declared, reversed, "the order acts");
    let worst = (0..ordered.len())
        .map(|i| (ordered[i] - (2.0 * declared[i] - reversed[i])).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "μ = 1 against 2·v − v_reversed: {worst}");
    let mut free = layout.clone();
    for inst in &mut free.instances {
        inst.occluders.clear();
    }
    let pf = model.prepare(&[free], grid, &dev).unwrap();
    assert_eq!(
        draw(&pf, 2.0, &opts),
        draw(&pf, 0.0, &opts),
        "no order, nothing to guide"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
