//! The `global` baselines' regional sequences against a dense per-scene reference.

mod common;
use candle_core::{Device, Tensor};
use common::max_diff;
use zlayer_model::base::BaseModel;
use zlayer_model::layers::{masked_attention, rope, split_qkv};
use zlayer_model::regional::Regional;
use zlayer_model::sampling::noise;
use zlayer_scene::rng::Rng;

/// 1–7 random boxes on a 5×6 grid, each in one of three scenes (a scene may have none).
fn instances(rng: &mut Rng) -> Vec<(usize, Vec<usize>, [f32; 3])> {
    let (h, w) = (5, 6);
    (0..1 + rng.below(7))
        .map(|_| {
            let (x1, y1) = (rng.below(w), rng.below(h));
            let (x2, y2) = (x1 + 1 + rng.below(w - x1), y1 + 1 + rng.below(h - y1));
            let idx = (y1..y2)
                .flat_map(|y| (x1..x2).map(move |x| y * w + x))
                .collect();
            let id = [0.0, (y1 + y2) as f32 / 2.0, (x1 + x2) as f32 / 2.0];
            (rng.below(3), idx, id)
        })
        .collect()
}

#[test]
fn regional_attention_equals_a_dense_reference_per_scene() {
    let dev = Device::Cpu;
    let (b, l, d, heads) = (3, 30, 16, 2);
    let axes = [2, 2, 4];
    for seed in 0..30 {
        let mut rng = Rng::new(seed);
        let boxes = instances(&mut rng);
        let n = boxes.len();
        let img = noise((b, l, d), seed, &dev).unwrap();
        let layout = noise((n, d), seed + 100, &dev).unwrap();
        let wqkv = (noise((d, 3 * d), seed + 200, &dev).unwrap() * 0.25).unwrap();
        let img_ids = BaseModel::image_ids(b, 5, 6, &dev).unwrap();
        let r = Regional::new(&boxes, b, &img_ids).unwrap();
        let seq = r.pack(&layout, &img).unwrap();
        let (q, k, v) = split_qkv(&seq.broadcast_matmul(&wqkv).unwrap(), heads).unwrap();
        let out = r
            .attention(&q, &k, &v, &rope(&r.ids, &axes, 10_000.0).unwrap())
            .unwrap();
        let (canvas, tokens) = r.unpack(&out).unwrap();
        assert_eq!(canvas.dims(), &[b, l, d]);
        assert_eq!(tokens.dims(), &[n, d]);
        for s in 0..b {
            // Dense: exactly this scene's instances, no padding; the mask from the rule.
            let members: Vec<usize> = (0..n).filter(|&i| boxes[i].0 == s).collect();
            let m = members.len();
            let mut rows = vec![img.get(s).unwrap()];
            let mut ids = vec![img_ids.get(s).unwrap()];
            for &i in &members {
                rows.insert(rows.len() - 1, layout.get(i).unwrap().unsqueeze(0).unwrap());
                ids.insert(ids.len() - 1, Tensor::new(&[boxes[i].2], &dev).unwrap());
            }
            let seq = Tensor::cat(&rows, 0).unwrap().unsqueeze(0).unwrap();
            let ids = Tensor::cat(&ids, 0).unwrap().unsqueeze(0).unwrap();
            let inside = |j: usize, p: usize| boxes[members[j]].1.contains(&p);
            let allowed = |a: usize, c: usize| match (a < m, c < m) {
                (true, true) => a == c,
                (true, false) => inside(a, c - m),
                (false, true) => inside(c, a - m),
                (false, false) => true,
            };
            let len = m + l;
            let bias: Vec<f32> = (0..len * len)
                .map(|x| if allowed(x / len, x % len) { 0.0 } else { -1e9 })
                .collect();
            let bias = Tensor::from_vec(bias, (1, 1, len, len), &dev).unwrap();
            let (q, k, v) = split_qkv(&seq.broadcast_matmul(&wqkv).unwrap(), heads).unwrap();
            let pe = rope(&ids, &axes, 10_000.0).unwrap();
            let dense = masked_attention(&q, &k, &v, &pe, Some(&bias))
                .unwrap()
                .squeeze(0)
                .unwrap();
            let diff = max_diff(&dense.narrow(0, m, l).unwrap(), &canvas.get(s).unwrap());
            assert!(diff < 1e-5, "seed {seed}, scene {s}: canvas {diff}");
            for (j, &i) in members.iter().enumerate() {
                let dt = max_diff(&dense.get(j).unwrap(), &tokens.get(i).unwrap());
                assert!(dt < 1e-5, "seed {seed}, layout token {i}: {dt}");
            }
        }
    }
}

#[test]
fn tokens_outside_every_box_attend_as_without_layout() {
    let dev = Device::Cpu;
    let (l, d) = (30, 8);
    let boxes = vec![(0, vec![0, 1, 6, 7], [0.0, 1.0, 1.0])];
    let img = noise((1, l, d), 1, &dev).unwrap();
    let img_ids = BaseModel::image_ids(1, 5, 6, &dev).unwrap();
    let r = Regional::new(&boxes, 1, &img_ids).unwrap();
    let layout = noise((1, d), 2, &dev).unwrap();
    let seq = r.pack(&layout, &img).unwrap();
    let (q, k, v) = split_qkv(&seq.repeat((1, 1, 3)).unwrap(), 1).unwrap();
    let pe = rope(&r.ids, &[2, 2, 4], 10_000.0).unwrap();
    let (canvas, _) = r.unpack(&r.attention(&q, &k, &v, &pe).unwrap()).unwrap();
    let (q, k, v) = split_qkv(&img.repeat((1, 1, 3)).unwrap(), 1).unwrap();
    let plain = masked_attention(
        &q,
        &k,
        &v,
        &rope(&img_ids, &[2, 2, 4], 10_000.0).unwrap(),
        None,
    )
    .unwrap();
    let outside = Tensor::new(&[2u32, 3, 20, 29], &dev).unwrap();
    let diff = max_diff(
        &canvas.index_select(&outside, 1).unwrap(),
        &plain.index_select(&outside, 1).unwrap(),
    );
    assert!(diff < 1e-6, "an uncovered token changed by {diff}");
    let inside = Tensor::new(&[0u32], &dev).unwrap();
    let moved = max_diff(
        &canvas.index_select(&inside, 1).unwrap(),
        &plain.index_select(&inside, 1).unwrap(),
    );
    assert!(moved > 1e-4, "a covered token must see its layout token");
}
