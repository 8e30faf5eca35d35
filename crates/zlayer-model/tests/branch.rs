//! The layout branch in the DiT blocks: what learns, what stays frozen, what it changes.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use zlayer_model::branch::{BranchMaps, LayoutInput};
use zlayer_model::init::seeded;
use zlayer_model::layout::{LayoutNet, Packing, align_loss};
use zlayer_model::regional::Regional;
use zlayer_model::sampling::noise;
use zlayer_model::{Config, Flux, FluxInput};

fn config() -> Config {
    Config {
        in_channels: 4,
        hidden_size: 32,
        num_heads: 2,
        depth: 2,
        depth_single_blocks: 2,
        context_in_dim: 16,
        vec_in_dim: 16,
        axes_dim: [4, 6, 6],
        ..Config::tiny()
    }
}

struct Batch {
    img: Tensor,
    img_ids: Tensor,
    txt: Tensor,
    txt_ids: Tensor,
    t: Tensor,
    y: Tensor,
    packing: Packing,
    regional: Regional,
    pooled: Tensor,
    points: Tensor,
    masks: Tensor,
    occluders: Vec<Vec<usize>>,
    amodal: Tensor,
}

/// Two scenes on a 4×4 grid: three instances in scene 0 (1 in front of 0, 2 in front of 1),
/// one in scene 1.
fn batch(dev: &Device) -> Batch {
    let boxes: Vec<(usize, [usize; 4])> = vec![
        (0, [0, 0, 3, 3]),
        (0, [1, 1, 4, 4]),
        (0, [2, 0, 4, 2]),
        (1, [0, 1, 2, 4]),
    ];
    let img_ids = zlayer_model::base::BaseModel::image_ids(2, 4, 4, dev).unwrap();
    let mut masks = vec![0f32; boxes.len() * 16];
    let packed: Vec<(usize, Vec<usize>, [f32; 3])> = boxes
        .iter()
        .enumerate()
        .map(|(k, &(s, [x1, y1, x2, y2]))| {
            let idx: Vec<usize> = (y1..y2)
                .flat_map(|y| (x1..x2).map(move |x| y * 4 + x))
                .collect();
            for &p in &idx {
                masks[k * 16 + p] = 1.0;
            }
            (
                s,
                idx,
                [0.0, (y1 + y2) as f32 / 2.0, (x1 + x2) as f32 / 2.0],
            )
        })
        .collect();
    let points: Vec<f32> = boxes
        .iter()
        .flat_map(|(_, b)| zlayer_model::layout::box_points(b.map(|v| v as f32 / 4.0)))
        .collect();
    let masks = Tensor::from_vec(masks, (4, 16), dev).unwrap();
    Batch {
        img: noise((2, 16, 4), 1, dev).unwrap(),
        txt: noise((2, 3, 16), 2, dev).unwrap(),
        txt_ids: Tensor::zeros((2, 3, 3), DType::F32, dev).unwrap(),
        t: Tensor::new(&[0.3f32, 0.8], dev).unwrap(),
        y: noise((2, 16), 3, dev).unwrap(),
        packing: Packing::new(&packed, 2, &img_ids).unwrap(),
        regional: Regional::new(&packed, 2, &img_ids).unwrap(),
        img_ids,
        pooled: noise((4, 16), 4, dev).unwrap(),
        points: Tensor::from_vec(points, (4, 72), dev).unwrap(),
        amodal: masks.clone(),
        masks,
        occluders: vec![vec![1], vec![2], vec![], vec![]],
    }
}

/// A random frozen base and a trainable branch on double block 1 and single block 0.
fn model(dev: &Device) -> (VarMap, VarMap, Flux, LayoutNet) {
    let base = VarMap::new();
    let mut flux = Flux::new(&config(), seeded(&base, 0, DType::F32, dev)).unwrap();
    let branch = VarMap::new();
    let vb = seeded(&branch, 0, DType::F32, dev);
    flux.attach_layout(&[1], &[0], 4, vb.clone()).unwrap();
    let net = LayoutNet::new(16, 32, vb.pp("layout_net")).unwrap();
    (base, branch, flux, net)
}

fn forward(flux: &Flux, net: &LayoutNet, b: &Batch, layout: bool) -> (Tensor, Vec<Tensor>) {
    let (out, maps) = forward_route(flux, net, b, layout, None);
    (out, maps.logits)
}

fn forward_route(
    flux: &Flux,
    net: &LayoutNet,
    b: &Batch,
    layout: bool,
    regional: Option<&Regional>,
) -> (Tensor, BranchMaps) {
    let tokens = net.forward(&b.pooled, &b.points).unwrap();
    let input = LayoutInput {
        packing: &b.packing,
        tokens: &tokens,
        pooled: &b.pooled,
        masks: &b.masks,
        occluders: &b.occluders,
        grid: (4, 4),
        static_sigma: false,
        regional,
        attention_maps: true,
        maps: true,
    };
    let x = FluxInput {
        img: &b.img,
        img_ids: &b.img_ids,
        txt: &b.txt,
        txt_ids: &b.txt_ids,
        timesteps: &b.t,
        y: &b.y,
        guidance: None,
    };
    let (out, maps) = flux.forward_layout(&x, layout.then_some(&input)).unwrap();
    if layout && regional.is_none() {
        check_attention_maps(&maps.attention, b);
    }
    (out, maps)
}

fn grad_norm(g: &candle_core::backprop::GradStore, t: &Tensor) -> f32 {
    g.get(t)
        .map(|g| {
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .unwrap_or(0.0)
}

#[test]
fn the_branch_trains_lora_and_layout_modules_and_leaves_the_base_frozen() {
    let dev = Device::Cpu;
    let (base, branch, flux, net) = model(&dev);
    // Zero-initialised parts (LoRA B, layout_forward) pass no gradient upstream at first, as
    // intended; make every path live to check that each parameter is reached.
    for v in branch.all_vars() {
        let r = (noise(v.shape(), 9, &dev).unwrap() * 0.1).unwrap();
        v.set(&r).unwrap();
    }
    let b = batch(&dev);
    let (out, logits) = forward(&flux, &net, &b, true);
    assert_eq!(out.dims(), &[2, 16, 4]);
    assert_eq!(logits.len(), 2, "one alignment map per layout block");
    let align = logits
        .iter()
        .map(|l| align_loss(l, &b.amodal).unwrap())
        .reduce(|a, c| (a + c).unwrap())
        .unwrap();
    let loss = (out.sqr().unwrap().mean_all().unwrap() + (align * 0.5).unwrap()).unwrap();
    let g = loss.backward().unwrap();
    let data = branch.data().lock().unwrap();
    assert!(data.len() > 20);
    for (name, v) in data.iter() {
        let n = grad_norm(&g, v.as_tensor());
        assert!(n > 0.0 && n.is_finite(), "{name}: gradient {n}");
    }
    drop(base);
}

/// Each layout token's attention map: one per layout block, inside its box only, positive
/// there, and at most 1 in all (the rest went to the token itself).
fn check_attention_maps(maps: &[Tensor], b: &Batch) {
    assert_eq!(maps.len(), 2, "one map per layout block");
    let masks: Vec<Vec<f32>> = b.masks.to_vec2().unwrap();
    for m in maps {
        let rows: Vec<Vec<f32>> = m.to_vec2().unwrap();
        for (i, (row, mask)) in rows.iter().zip(&masks).enumerate() {
            for (p, (&a, &inside)) in row.iter().zip(mask).enumerate() {
                if inside > 0.0 {
                    assert!(
                        a > 0.0,
                        "instance {i}, token {p}: no attention inside the box"
                    );
                } else {
                    assert_eq!(a, 0.0, "instance {i}, token {p}: attention outside the box");
                }
            }
            let sum: f32 = row.iter().sum();
            assert!(
                sum > 0.0 && sum <= 1.0 + 1e-5,
                "instance {i}: attention sums to {sum}"
            );
        }
    }
}

#[test]
fn the_attention_map_loss_reaches_the_lora_of_the_attention() {
    use zlayer_model::layout::attention_map_loss;
    let dev = Device::Cpu;
    let (_base, branch, flux, net) = model(&dev);
    for v in branch.all_vars() {
        let r = (noise(v.shape(), 9, &dev).unwrap() * 0.1).unwrap();
        v.set(&r).unwrap();
    }
    let b = batch(&dev);
    let (_, maps) = forward_route(&flux, &net, &b, true, None);
    // A target smaller than the boxes, so that some attention falls outside.
    let target = (b.masks.clone() * 0.0).unwrap().narrow(1, 0, 16).unwrap();
    let loss = attention_map_loss(&maps.attention[0], &target).unwrap();
    assert!(
        (loss.to_scalar::<f32>().unwrap() - 1.0).abs() < 1e-5,
        "all outside: loss 1"
    );
    let loss = attention_map_loss(&maps.attention[0], &b.amodal).unwrap();
    assert!(
        loss.to_scalar::<f32>().unwrap().abs() < 1e-5,
        "all inside: loss 0"
    );
    let target = b.amodal.narrow(1, 0, 8).unwrap();
    let target = Tensor::cat(&[&target, &target.zeros_like().unwrap()], 1).unwrap();
    let loss = attention_map_loss(&maps.attention[0], &target).unwrap();
    let g = loss.backward().unwrap();
    let data = branch.data().lock().unwrap();
    for (name, v) in data.iter() {
        let n = grad_norm(&g, v.as_tensor());
        if name.starts_with("double_blocks.1.lora") && name.contains("attn.qkv") {
            assert!(n > 0.0, "{name}: no gradient from the attention-map loss");
        }
    }
}

#[test]
fn the_global_route_trains_the_shared_modules_and_leaves_the_z_order_head_alone() {
    let dev = Device::Cpu;
    let (base, branch, flux, net) = model(&dev);
    for v in branch.all_vars() {
        let r = (noise(v.shape(), 9, &dev).unwrap() * 0.1).unwrap();
        v.set(&r).unwrap();
    }
    let b = batch(&dev);
    let (out, maps) = forward_route(&flux, &net, &b, true, Some(&b.regional));
    assert_eq!(out.dims(), &[2, 16, 4]);
    assert!(
        maps.logits.is_empty(),
        "no instance layers, no alignment maps"
    );
    let (local, _) = forward(&flux, &net, &b, true);
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_ne!(values(&out), values(&local), "the routes differ");
    let g = out.sqr().unwrap().mean_all().unwrap().backward().unwrap();
    let data = branch.data().lock().unwrap();
    for (name, v) in data.iter() {
        let n = grad_norm(&g, v.as_tensor());
        let head = name.contains("norm1_layout") || name.contains("mask_predictor");
        if head {
            assert_eq!(
                n, 0.0,
                "{name}: the Z-order head is unused by the global route"
            );
        } else {
            assert!(n > 0.0 && n.is_finite(), "{name}: gradient {n}");
        }
    }
    drop(base);
}

#[test]
fn a_base_loaded_from_a_file_stays_frozen_while_the_branch_trains() {
    use zlayer_model::optim::{AdamWConfig, Trainer};
    let dev = Device::Cpu;
    let (base, _, _, _) = model(&dev);
    let dir = std::env::temp_dir().join(format!("zlayer-branch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("base.safetensors");
    base.save(&path).unwrap();
    // As a real base: plain tensors from a file, not variables.
    // SAFETY: the file was just written by this test and is not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &dev).unwrap() };
    let mut flux = Flux::new(&config(), vb).unwrap();
    let branch = VarMap::new();
    let bvb = seeded(&branch, 0, DType::F32, &dev);
    flux.attach_layout(&[1], &[0], 4, bvb.clone()).unwrap();
    let net = LayoutNet::new(16, 32, bvb.pp("layout_net")).unwrap();
    let b = batch(&dev);
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (plain_before, none) = forward(&flux, &net, &b, false);
    assert!(none.is_empty(), "no layout, no alignment maps");
    let (with_before, _) = forward(&flux, &net, &b, true);
    let mut tr = Trainer::new(&branch, AdamWConfig::default(), 0.0).unwrap();
    for _ in 0..3 {
        let (out, logits) = forward(&flux, &net, &b, true);
        let loss = (out.sqr().unwrap().mean_all().unwrap()
            + align_loss(&logits[0], &b.amodal).unwrap())
        .unwrap();
        tr.step(&loss, 1e-2, 1.0).unwrap();
    }
    let (plain_after, _) = forward(&flux, &net, &b, false);
    let (with_after, _) = forward(&flux, &net, &b, true);
    assert_eq!(
        values(&plain_before),
        values(&plain_after),
        "the base changed"
    );
    assert_ne!(
        values(&with_before),
        values(&with_after),
        "the branch did not learn"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
