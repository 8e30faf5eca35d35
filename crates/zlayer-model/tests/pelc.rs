//! DecFormer: both presets build and run; a fresh one is exactly the linear blend with the
//! area-downsampled mask; α stays in [0, 1] and, with the residual gated off, every output
//! lies between its two inputs, whatever the weights; the halo band is the mask's edge; and
//! a few steps on a toy target move it off the baseline towards the target; and a grown one
//! starts as the one it grew from.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use zlayer_model::init::seeded;
use zlayer_model::optim::{AdamWConfig, Trainer};
use zlayer_model::pelc::{DecConfig, DecFormer};
use zlayer_model::sampling::noise;
use zlayer_model::train::parameters;

/// A disk mask (B, 1, s, s), radius r around (cx, cy), anti-aliased by 4×4 supersampling.
fn disk(s: usize, cx: f32, cy: f32, r: f32, dev: &Device) -> Tensor {
    let v: Vec<f32> = (0..s * s)
        .map(|i| {
            let (x, y) = ((i % s) as f32, (i / s) as f32);
            let mut inside = 0;
            for k in 0..16 {
                let (dx, dy) = ((k % 4) as f32 / 4.0 + 0.125, (k / 4) as f32 / 4.0 + 0.125);
                inside += usize::from(((x + dx - cx).powi(2) + (y + dy - cy).powi(2)).sqrt() < r);
            }
            inside as f32 / 16.0
        })
        .collect();
    Tensor::from_vec(v, (1, 1, s, s), dev).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Every weight of `vm` moved by seeded noise of std `s`, so no correction is zero.
fn shake(vm: &VarMap, s: f64) {
    for (k, var) in vm.all_vars().iter().enumerate() {
        let n = noise(var.shape(), 77 + k as u64, &Device::Cpu).unwrap();
        var.set(&(var.as_tensor() + (n * s).unwrap()).unwrap())
            .unwrap();
    }
}

#[test]
fn a_fresh_decformer_is_the_linear_blend_and_its_blend_stays_convex() {
    let dev = Device::Cpu;
    let c = DecConfig::tiny();
    let vm = VarMap::new();
    let dec = DecFormer::new(&c, seeded(&vm, 0, DType::F32, &dev)).unwrap();
    let (h, s) = (16, 64);
    let za = noise((2, 16, h, h), 1, &dev).unwrap();
    let zb = noise((2, 16, h, h), 2, &dev).unwrap();
    let mask = Tensor::cat(
        &[
            disk(s, 30.0, 28.0, 17.3, &dev),
            disk(s, 10.0, 50.0, 9.0, &dev),
        ],
        0,
    )
    .unwrap();
    let out = dec.forward(&za, &zb, &mask, 1.0).unwrap();
    let linear = DecFormer::linear_blend(&za, &zb, &mask, 4).unwrap();
    let gap = values(&(&out.z - &linear).unwrap().abs().unwrap())
        .into_iter()
        .fold(0f32, f32::max);
    assert!(
        gap < 1e-3,
        "a fresh DecFormer differs from the linear blend by {gap}"
    );
    assert_eq!(
        values(&out.residual)
            .iter()
            .fold(0f32, |m, v| m.max(v.abs())),
        0.0
    );

    shake(&vm, 0.05);
    let out = dec.forward(&za, &zb, &mask, 0.0).unwrap();
    let gap = values(&(&out.z - &linear).unwrap().abs().unwrap())
        .into_iter()
        .fold(0f32, f32::max);
    assert!(gap > 1e-3, "shaken weights change the blend");
    let a = values(&out.alpha);
    assert!(a.iter().all(|v| (0.0..=1.0).contains(v)), "α in [0, 1]");
    let (zs, za_, zb_) = (values(&out.z), values(&za), values(&zb));
    for k in 0..zs.len() {
        let (lo, hi) = (za_[k].min(zb_[k]), za_[k].max(zb_[k]));
        assert!(
            zs[k] >= lo - 1e-5 && zs[k] <= hi + 1e-5,
            "element {k}: {} outside [{lo}, {hi}]",
            zs[k]
        );
    }
    // The gate scales the residual, nothing else.
    let on = dec.forward(&za, &zb, &mask, 0.5).unwrap();
    let want = (&out.z + (&on.residual * 0.5).unwrap()).unwrap();
    let gap = values(&(&on.z - &want).unwrap().abs().unwrap())
        .into_iter()
        .fold(0f32, f32::max);
    assert!(gap < 1e-5, "{gap}");
}

#[test]
fn the_halo_band_is_the_masks_edge() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let dec = DecFormer::new(&DecConfig::tiny(), seeded(&vm, 0, DType::F32, &dev)).unwrap();
    // A hard square [20, 40)²: the band is every pixel within 2 (Chebyshev) of the edge.
    let s = 64;
    let sq: Vec<f32> = (0..s * s)
        .map(|i| {
            f32::from(u8::from(
                (20..40).contains(&(i % s)) && (20..40).contains(&(i / s)),
            ))
        })
        .collect();
    let band = values(
        &dec.halo_band(&Tensor::from_vec(sq.clone(), (1, 1, s, s), &dev).unwrap())
            .unwrap(),
    );
    for (i, &b) in band.iter().enumerate() {
        let (x, y) = ((i % s) as i64, (i / s) as i64);
        let near = |p: i64| (18..22).contains(&p) || (38..42).contains(&p);
        let inside = |p: i64| (18..42).contains(&p);
        let want = (near(x) && inside(y)) || (near(y) && inside(x));
        assert_eq!(b == 1.0, want, "pixel ({x}, {y})");
    }
}

#[test]
fn the_flux_preset_has_the_papers_size_and_runs() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let c = DecConfig::flux_dev();
    let dec = DecFormer::new(&c, seeded(&vm, 0, DType::F32, &dev)).unwrap();
    let n = parameters(&vm);
    assert!(
        (7_000_000..8_400_000).contains(&n),
        "{n} parameters, the paper's 7.7M"
    );
    let prior: usize = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("prior"))
        .map(|(_, v)| v.elem_count())
        .sum();
    assert!(
        (500_000..900_000).contains(&prior),
        "mask prior {prior}, the paper's 0.7M"
    );
    eprintln!("DecConfig::flux_dev(): {n} parameters, {prior} in the mask prior");
    // A 256-px image's latents (32×32), the FLUX VAE's 8×.
    let za = noise((1, 16, 32, 32), 3, &dev).unwrap();
    let zb = noise((1, 16, 32, 32), 4, &dev).unwrap();
    let out = dec
        .forward(&za, &zb, &disk(256, 120.0, 130.0, 70.0, &dev), 1.0)
        .unwrap();
    assert_eq!(out.z.dims(), &[1, 16, 32, 32]);
    assert!(values(&out.z).iter().all(|v| v.is_finite()));
    // A mismatched mask is refused with the sizes.
    let e = dec
        .forward(&za, &zb, &disk(128, 1.0, 1.0, 1.0, &dev), 1.0)
        .err()
        .unwrap();
    assert!(e.to_string().contains("8×"), "{e}");
}

#[test]
fn training_moves_it_off_the_baseline_towards_a_target() {
    // A toy target: the blend with the mask dilated in latent space (what a halo-free
    // composite may need), which the linear blend misses at the edge.
    let dev = Device::Cpu;
    let vm = VarMap::new();
    let dec = DecFormer::new(&DecConfig::tiny(), seeded(&vm, 0, DType::F32, &dev)).unwrap();
    let za = noise((2, 16, 16, 16), 5, &dev).unwrap();
    let zb = noise((2, 16, 16, 16), 6, &dev).unwrap();
    let mask = Tensor::cat(
        &[
            disk(64, 32.0, 32.0, 15.0, &dev),
            disk(64, 20.0, 40.0, 11.0, &dev),
        ],
        0,
    )
    .unwrap();
    let wide = mask
        .avg_pool2d(4)
        .unwrap()
        .pad_with_same(2, 1, 1)
        .unwrap()
        .pad_with_same(3, 1, 1)
        .unwrap();
    let wide = wide
        .max_pool2d_with_stride(3, 1)
        .unwrap()
        .broadcast_as(za.shape())
        .unwrap();
    let target = ((&za * (1.0 - &wide).unwrap()).unwrap() + (&zb * &wide).unwrap()).unwrap();
    let loss = |d: &DecFormer| {
        (d.forward(&za, &zb, &mask, 0.0).unwrap().z - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
    };
    let before = loss(&dec).to_scalar::<f32>().unwrap();
    let mut tr = Trainer::new(
        &vm,
        AdamWConfig {
            lr: 3e-3,
            ..Default::default()
        },
        0.0,
    )
    .unwrap();
    for _ in 0..30 {
        tr.step(&loss(&dec), 3e-3, 1.0).unwrap();
    }
    let after = loss(&dec).to_scalar::<f32>().unwrap();
    assert!(after < 0.5 * before, "latent MSE {before} → {after}");
}

#[test]
fn the_flop_count_applies_every_weight_where_it_runs() {
    let dev = Device::Cpu;
    for (cfg, (h, w)) in [
        (DecConfig::tiny(), (16, 16)),
        (DecConfig::flux_dev(), (8, 12)),
    ] {
        let vm = VarMap::new();
        DecFormer::new(&cfg, seeded(&vm, 0, DType::F32, &dev)).unwrap();
        let hw = (h * w) as f64;
        let pooled = hw / (cfg.cross_pool * cfg.cross_pool) as f64;
        let tokens = |k: usize| hw / (cfg.patches[k] * cfg.patches[k]) as f64;
        // Where each weight runs, from its name alone.
        let positions = |name: &str| -> f64 {
            let part: Vec<&str> = name.split('.').collect();
            match part[0] {
                "prior" => {
                    let k: usize = part[1].parse().unwrap();
                    match cfg.prior.len().checked_sub(k + 1) {
                        Some(_) => hw * ((cfg.factor >> (k + 1)).pow(2)) as f64,
                        None => hw,
                    }
                }
                "prior_tokens" => pooled,
                "blocks" if part[2] == "cross" && part[3] == "kv" => pooled,
                "blocks" => tokens(part[1].parse().unwrap()),
                _ => hw,
            }
        };
        let data = vm.data().lock().unwrap();
        let macs: f64 = data
            .iter()
            .filter(|(n, _)| n.ends_with(".weight"))
            .map(|(n, v)| v.as_tensor().elem_count() as f64 * positions(n))
            .sum();
        let width = cfg.width as f64;
        let attention: f64 = (0..cfg.patches.len())
            .map(|k| {
                let l = tokens(k);
                4.0 * l * l * width
                    + if cfg.patches[k] == 1 {
                        4.0 * l * pooled * width
                    } else {
                        0.0
                    }
            })
            .sum();
        let want = 2.0 * macs + attention;
        let got = cfg.flops(h, w);
        assert!((got - want).abs() < 1e-9 * want, "{got} against {want}");
    }
}

#[test]
fn a_grown_decformer_starts_as_the_one_it_grew_from() {
    let dev = Device::Cpu;
    let c = DecConfig::tiny();
    let vm = VarMap::new();
    let dec = DecFormer::new(&c, seeded(&vm, 0, DType::F32, &dev)).unwrap();
    shake(&vm, 0.05);
    let dir = std::env::temp_dir().join(format!("zlayer-pelc-grow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pelc.safetensors");
    vm.save(&path).unwrap();

    let za = noise((2, 16, 16, 16), 3, &dev).unwrap();
    let zb = noise((2, 16, 16, 16), 4, &dev).unwrap();
    let mask = Tensor::cat(
        &[
            disk(64, 20.0, 33.0, 12.5, &dev),
            disk(64, 44.0, 40.0, 20.0, &dev),
        ],
        0,
    )
    .unwrap();
    let want = values(&dec.forward(&za, &zb, &mask, 1.0).unwrap().z);
    assert_ne!(
        want,
        values(&DecFormer::linear_blend(&za, &zb, &mask, 4).unwrap()),
        "the shaken model is not the baseline, so the equalities below mean something"
    );
    for (blocks, features) in [(2, 0), (0, 16), (1, 32)] {
        let grown = c.grown(blocks, features);
        assert_eq!(grown.patches.len(), 4 + blocks);
        assert_eq!(grown.features, 32 + features);
        let big = VarMap::new();
        let dec2 = DecFormer::new(&grown, seeded(&big, 9, DType::F32, &dev)).unwrap();
        let set = zlayer_model::pelc::load_grown(&big, &path, &c, &grown).unwrap();
        assert_eq!(set, vm.all_vars().len());
        assert!(parameters(&big) > parameters(&vm));
        let got = values(&dec2.forward(&za, &zb, &mask, 1.0).unwrap().z);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs())
            .fold(0f32, f32::max);
        // Zero-weighted channels add exact zeros; only the matmuls' summation order moves.
        assert!(
            worst < 1e-5,
            "grown by {blocks} blocks, {features} features: {worst}"
        );
        if features == 0 {
            assert_eq!(got, want, "the added blocks change nothing, bit for bit");
        }
    }

    // Shrinking, or changing anything but blocks and features, is refused by name.
    let vm2 = VarMap::new();
    let narrow = DecConfig {
        width: 64,
        ..c.clone()
    };
    DecFormer::new(&narrow, seeded(&vm2, 9, DType::F32, &dev)).unwrap();
    let err = zlayer_model::pelc::load_grown(&vm2, &path, &c, &narrow).unwrap_err();
    assert!(err.contains("grows only by patch-1 blocks"), "{err}");
    let err = zlayer_model::pelc::load_grown(&vm, &path, &c.grown(0, 8), &c).unwrap_err();
    assert!(err.contains("grows only"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
