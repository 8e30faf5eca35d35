//! The layout branch's block-independent pieces: box embedding against the official fixture,
//! packed attention against a dense masked reference, composition against zlayer-composite.

mod common;
use candle_core::{DType, Device, Tensor, Var};
use common::max_diff;
use zlayer_model::base::BaseModel;
use zlayer_model::init::seeded;
use zlayer_model::layers::{masked_attention, rope, split_qkv};
use zlayer_model::layout::{BOX_EMBED, Packing, box_points, compose, fourier};
use zlayer_model::sampling::noise;
use zlayer_scene::rng::Rng;

#[test]
fn box_points_match_the_official_layout_boxes() {
    let Some(dir) = zlayer_testkit::fixtures("official-parity") else {
        return;
    };
    let io = candle_core::safetensors::load(dir.join("io.safetensors"), &Device::Cpu).unwrap();
    let want: Vec<Vec<f32>> = io["layout_boxes_dense"].to_vec2().unwrap();
    let scene: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("scene.json")).unwrap()).unwrap();
    let (w, h) = (
        scene["width"].as_f64().unwrap(),
        scene["height"].as_f64().unwrap(),
    );
    for (k, a) in scene["annos"].as_array().unwrap().iter().enumerate() {
        let b: Vec<f64> = a["bbox"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let norm = [b[0] / w, b[1] / h, b[2] / w, b[3] / h].map(|v| v as f32);
        let got = box_points(norm);
        for (g, e) in got.iter().zip(&want[k]) {
            assert!(
                (g - e).abs() < 1e-6,
                "instance {k}: {got:?} vs {:?}",
                want[k]
            );
        }
    }
}

#[test]
fn fourier_features_are_frequency_major_sines_then_cosines() {
    let pts: Vec<f32> = box_points([0.1, 0.2, 0.7, 0.9]).to_vec();
    let x = Tensor::from_vec(pts.clone(), (1, 72), &Device::Cpu).unwrap();
    let f: Vec<f32> = fourier(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(f.len(), BOX_EMBED);
    for k in 0..8 {
        let freq = 100f64.powf(k as f64 / 8.0);
        for (c, &p) in pts.iter().enumerate() {
            let arg = freq * p as f64;
            assert!((f[(2 * k) * 72 + c] as f64 - arg.sin()).abs() < 1e-4);
            assert!((f[(2 * k + 1) * 72 + c] as f64 - arg.cos()).abs() < 1e-4);
        }
    }
}

/// Random boxes on a 5×6 token grid, in two scenes.
fn instances(rng: &mut Rng) -> Vec<(usize, Vec<usize>, [f32; 3])> {
    let (h, w) = (5, 6);
    (0..5)
        .map(|k| {
            let (x1, y1) = (rng.below(w), rng.below(h));
            let (x2, y2) = (x1 + 1 + rng.below(w - x1), y1 + 1 + rng.below(h - y1));
            let idx = (y1..y2)
                .flat_map(|y| (x1..x2).map(move |x| y * w + x))
                .collect();
            let id = [0.0, (y1 + y2) as f32 / 2.0, (x1 + x2) as f32 / 2.0];
            (k % 2, idx, id)
        })
        .collect()
}

#[test]
fn packed_attention_equals_a_dense_masked_reference() {
    let dev = Device::Cpu;
    let (b, l, d, heads) = (2, 30, 16, 2);
    let axes = [2, 2, 4];
    for seed in 0..20 {
        let mut rng = Rng::new(seed);
        let boxes = instances(&mut rng);
        let n = boxes.len();
        let img = noise((b, l, d), seed, &dev).unwrap();
        let layout = noise((n, d), seed + 100, &dev).unwrap();
        // Unit-scale projections, so 1e-5 is a tight bound in f32.
        let wqkv = (noise((d, 3 * d), seed + 200, &dev).unwrap() * 0.25).unwrap();
        let img_ids = BaseModel::image_ids(b, 5, 6, &dev).unwrap();
        let pk = Packing::new(&boxes, b, &img_ids).unwrap();
        let seq = pk.pack(&layout, &img).unwrap();
        let (q, k, v) = split_qkv(&seq.broadcast_matmul(&wqkv).unwrap(), heads).unwrap();
        let pe = rope(&pk.ids, &axes, 10_000.0).unwrap();
        let out = pk.attention(&q, &k, &v, &pe).unwrap();
        let (canvas, tokens) = pk.unpack(&out).unwrap();
        for (i, (scene, idx, id)) in boxes.iter().enumerate() {
            // Dense: the layout token and the whole canvas, keys outside the box masked.
            let seq = Tensor::cat(
                &[
                    layout.get(i).unwrap().unsqueeze(0).unwrap(),
                    img.get(*scene).unwrap(),
                ],
                0,
            )
            .unwrap()
            .unsqueeze(0)
            .unwrap();
            let mut bias = vec![-1e9f32; l + 1];
            bias[0] = 0.0;
            for &p in idx {
                bias[p + 1] = 0.0;
            }
            let bias = Tensor::from_vec(bias, (1, 1, 1, l + 1), &dev).unwrap();
            let ids = Tensor::cat(
                &[
                    Tensor::new(&[*id], &dev).unwrap(),
                    img_ids.get(*scene).unwrap(),
                ],
                0,
            )
            .unwrap()
            .unsqueeze(0)
            .unwrap();
            let (q, k, v) = split_qkv(&seq.broadcast_matmul(&wqkv).unwrap(), heads).unwrap();
            let pe = rope(&ids, &axes, 10_000.0).unwrap();
            let dense = masked_attention(&q, &k, &v, &pe, Some(&bias))
                .unwrap()
                .squeeze(0)
                .unwrap();
            let dt = max_diff(&dense.get(0).unwrap(), &tokens.get(i).unwrap());
            assert!(dt < 1e-5, "seed {seed}, layout token {i}: {dt}");
            let mut want = vec![0f32; l * d];
            let dense: Vec<Vec<f32>> = dense.to_vec2().unwrap();
            for &p in idx {
                want[p * d..(p + 1) * d].copy_from_slice(&dense[p + 1]);
            }
            let want = Tensor::from_vec(want, (l, d), &dev).unwrap();
            let diff = max_diff(&want, &canvas.get(i).unwrap());
            assert!(diff < 1e-5, "seed {seed}, instance {i}: {diff}");
        }
    }
}

#[test]
fn composition_matches_zlayer_composite() {
    use zlayer_composite::volume::{VolumeInputs, compose as reference};
    let dev = Device::Cpu;
    for seed in 0..200u64 {
        let mut rng = Rng::new(seed);
        let (k, l, d) = (1 + rng.below(5), 1 + rng.below(20), 1 + rng.below(9));
        let layers: Vec<f32> = (0..k * l * d).map(|_| rng.range(-2.0, 2.0)).collect();
        let sigma: Vec<f32> = (0..k * d).map(|_| rng.range(0.0, 6.0)).collect();
        let masks: Vec<f32> = (0..k * l)
            .map(|_| match rng.below(3) {
                0 => 0.0,
                1 => 1.0,
                _ => rng.f32(),
            })
            .collect();
        // A random DAG: j may occlude i only when j > i.
        let occ: Vec<Vec<usize>> = (0..k)
            .map(|i| (i + 1..k).filter(|_| rng.below(2) == 0).collect())
            .collect();
        let mut want = vec![0f32; l * d];
        reference(
            &VolumeInputs::new(l, d, &layers, &sigma, &masks, &occ).unwrap(),
            &mut want,
        );
        let t = |v: &[f32], s: &[usize]| Tensor::from_vec(v.to_vec(), s, &dev).unwrap();
        let (z, _) = compose(
            &t(&layers, &[k, l, d]),
            &t(&sigma, &[k, d]),
            &t(&masks, &[k, l]),
            &occ,
            &vec![0; k],
            1,
        )
        .unwrap();
        let diff = max_diff(&z.squeeze(0).unwrap(), &t(&want, &[l, d]));
        assert!(diff < 1e-5, "seed {seed} (K={k}, L={l}, D={d}): {diff}");
    }
}

#[test]
fn a_dense_front_instance_takes_its_whole_overlap() {
    let dev = Device::Cpu;
    // Two instances on 3 tokens; they overlap on token 1; instance 1 occludes instance 0.
    let layers = Tensor::new(
        &[
            [[1f32, 1.0], [1.0, 1.0], [1.0, 1.0]],
            [[5.0, 5.0], [5.0, 5.0], [5.0, 5.0]],
        ],
        &dev,
    )
    .unwrap();
    let masks = Tensor::new(&[[1f32, 1.0, 0.0], [0.0, 1.0, 1.0]], &dev).unwrap();
    let sigma = Tensor::new(&[[2f32, 2.0], [60.0, 60.0]], &dev).unwrap();
    let (z, w) = compose(&layers, &sigma, &masks, &[vec![1], vec![]], &[0, 0], 1).unwrap();
    let z: Vec<Vec<f32>> = z.squeeze(0).unwrap().to_vec2().unwrap();
    assert_eq!(z[1], [5.0, 5.0], "the front instance owns the overlap");
    assert_eq!(z[0], [1.0, 1.0]);
    assert_eq!(z[2], [5.0, 5.0]);
    let w: Vec<Vec<Vec<f32>>> = w.to_vec3().unwrap();
    assert!(
        w[0][1][0] < 1e-20,
        "the back instance's weight in the overlap: {}",
        w[0][1][0]
    );
}

#[test]
fn gradients_reach_tokens_layers_and_densities_through_packing_and_composition() {
    let dev = Device::Cpu;
    let mut rng = Rng::new(3);
    let boxes: Vec<_> = instances(&mut rng)
        .into_iter()
        .filter(|b| b.0 == 0)
        .collect();
    let n = boxes.len();
    let img = Var::from_tensor(&noise((2, 30, 4), 1, &dev).unwrap()).unwrap();
    let layout = Var::from_tensor(&noise((n, 4), 2, &dev).unwrap()).unwrap();
    let sigma = Var::from_tensor(&noise((n, 4), 3, &dev).unwrap().abs().unwrap()).unwrap();
    let pk = Packing::new(&boxes, 2, &BaseModel::image_ids(2, 5, 6, &dev).unwrap()).unwrap();
    let seq = pk.pack(layout.as_tensor(), img.as_tensor()).unwrap();
    let (canvas, _) = pk.unpack(&(seq.sqr().unwrap())).unwrap();
    let masks = Tensor::ones((n, 30), DType::F32, &dev).unwrap();
    let occ: Vec<Vec<usize>> = (0..n).map(|i| (i + 1..n).collect()).collect();
    let (z, _) = compose(&canvas, sigma.as_tensor(), &masks, &occ, &vec![0; n], 1).unwrap();
    let g = z.sum_all().unwrap().backward().unwrap();
    for (name, v) in [("image tokens", &img), ("densities", &sigma)] {
        let norm = g
            .get(v.as_tensor())
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name} get no gradient");
    }
}

#[test]
fn lora_starts_as_the_identity_and_only_its_factors_learn() {
    use candle_nn::VarMap;
    use zlayer_model::layers::LoraLinear;
    let dev = Device::Cpu;
    // The frozen base: plain tensors, as loaded from a checkpoint.
    let w = noise((6, 5), 1, &dev).unwrap();
    let bias = noise(6, 2, &dev).unwrap();
    let base = candle_nn::Linear::new(w.clone(), Some(bias.clone()));
    let vm = VarMap::new();
    let lora = LoraLinear::new(base, 4, seeded(&vm, 0, DType::F32, &dev)).unwrap();
    let x = noise((3, 5), 3, &dev).unwrap();
    let plain = lora.forward_lora(&x, false).unwrap();
    assert_eq!(
        max_diff(&lora.forward_lora(&x, true).unwrap(), &plain),
        0.0,
        "B starts at zero"
    );
    // One gradient step on B makes the update non-zero; the base never gets a gradient.
    let loss = lora
        .forward_lora(&x, true)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let g = loss.backward().unwrap();
    assert!(
        g.get(&w).is_none() && g.get(&bias).is_none(),
        "the base must stay frozen"
    );
    let vars = vm.all_vars();
    assert_eq!(vars.len(), 2);
    let grads: Vec<f32> = vars
        .iter()
        .map(|v| {
            g.get(v.as_tensor())
                .map(|t| {
                    t.abs()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap()
                })
                .unwrap_or(0.0)
        })
        .collect();
    // With B = 0, only B's gradient is non-zero (A's is Bᵀ·…); after a step both are.
    assert!(grads.iter().any(|&n| n > 0.0), "{grads:?}");
    for v in &vars {
        if let Some(gv) = g.get(v.as_tensor()) {
            v.set(&(v.as_tensor() - (gv * 0.1).unwrap()).unwrap())
                .unwrap();
        }
    }
    assert!(max_diff(&lora.forward_lora(&x, true).unwrap(), &plain) > 0.0);
    assert_eq!(
        max_diff(&lora.forward_lora(&x, false).unwrap(), &plain),
        0.0
    );
}

#[test]
fn the_alignment_head_learns_through_every_parameter_and_its_loss_is_cross_entropy() {
    use candle_nn::VarMap;
    use zlayer_model::layout::{ZHead, align_loss};
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let head = ZHead::new(8, seeded(&vm, 0, DType::F32, &dev)).unwrap();
    let (n, h, w) = (3, 4, 5);
    let e = noise((n, 8), 1, &dev).unwrap();
    let canvases = noise((n, h * w, 8), 2, &dev).unwrap();
    let masks = Tensor::ones((n, h * w), DType::F32, &dev).unwrap();
    let (sigma, q) = head.sigma_query(&e).unwrap();
    let sig: Vec<f32> = sigma.flatten_all().unwrap().to_vec1().unwrap();
    assert!(sig.iter().all(|&s| s > 0.0 && s.is_finite()));
    let logits = head.align_logits(&canvases, &q, &masks, (h, w)).unwrap();
    assert_eq!(logits.dims(), &[n, h * w, 2]);
    let target: Vec<f32> = (0..n * h * w).map(|p| (p % 3 == 0) as u8 as f32).collect();
    let target = Tensor::from_vec(target.clone(), (n, h * w), &dev).unwrap();
    let loss = align_loss(&logits, &target).unwrap();
    // Naive cross-entropy.
    let l: Vec<Vec<Vec<f32>>> = logits.to_vec3().unwrap();
    let t: Vec<Vec<f32>> = target.to_vec2().unwrap();
    let mut ce = 0f64;
    for i in 0..n {
        for p in 0..h * w {
            let (a, b) = (l[i][p][0] as f64, l[i][p][1] as f64);
            let lse = a.max(b) + ((a - a.max(b)).exp() + (b - a.max(b)).exp()).ln();
            ce -= if t[i][p] == 1.0 { b - lse } else { a - lse };
        }
    }
    ce /= (n * h * w) as f64;
    assert!((loss.to_scalar::<f32>().unwrap() as f64 - ce).abs() < 1e-5);
    let total = (loss + sigma.sum_all().unwrap()).unwrap();
    let g = total.backward().unwrap();
    let data = vm.data().lock().unwrap();
    assert_eq!(data.len(), 10, "sigma, query and three convs, with biases");
    for (name, v) in data.iter() {
        let norm = g
            .get(v.as_tensor())
            .map(|t| {
                t.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .unwrap_or(0.0);
        assert!(norm > 0.0, "{name} gets no gradient");
    }
}

#[test]
fn composing_a_batch_equals_composing_each_scene() {
    let dev = Device::Cpu;
    let (l, d) = (7, 3);
    let layers = noise((5, l, d), 1, &dev).unwrap();
    let sigma = noise((5, d), 2, &dev).unwrap().abs().unwrap();
    let masks = noise((5, l), 3, &dev)
        .unwrap()
        .abs()
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap();
    // Instances 0, 2, 4 in scene 0 (4 in front of 2, 2 in front of 0); 1, 3 in scene 1.
    let scene = [0, 1, 0, 1, 0];
    let occ = vec![vec![2], vec![3], vec![4], vec![], vec![]];
    let (z, _) = compose(&layers, &sigma, &masks, &occ, &scene, 2).unwrap();
    for (s, members) in [(0usize, vec![0u32, 2, 4]), (1, vec![1, 3])] {
        let pick = |t: &Tensor| {
            t.index_select(&Tensor::new(members.as_slice(), &dev).unwrap(), 0)
                .unwrap()
        };
        let local: Vec<Vec<usize>> = members
            .iter()
            .map(|&i| {
                occ[i as usize]
                    .iter()
                    .map(|j| members.iter().position(|&m| m as usize == *j).unwrap())
                    .collect()
            })
            .collect();
        let (alone, _) = compose(
            &pick(&layers),
            &pick(&sigma),
            &pick(&masks),
            &local,
            &vec![0; members.len()],
            1,
        )
        .unwrap();
        assert!(max_diff(&alone.squeeze(0).unwrap(), &z.get(s).unwrap()) < 1e-6);
    }
}
