//! The layer model's data and decomposition: box cells, the frames each
//! task trains on, scoring, and what a decomposition guarantees whatever the weights.

use candle_core::{DType, Device};
use zlayer_app::data::{scenes, synth_words};
use zlayer_app::decompose::{
    LayerModel, Layers, Plan, box_cells, decompose, decompose_image, depth_levels, encode, mattes,
    sequences,
};
use zlayer_app::layer_eval::{Decomposition, baseline, score_decompositions};
use zlayer_composite::{Image, Layer, LayerStack, Straight};
use zlayer_model::bundle::VaeBundle;
use zlayer_model::init::seeded;
use zlayer_model::omni::{Omni, OmniConfig, Role, Task};
use zlayer_model::sampling::Rng;
use zlayer_model::text::Tokenizer;
use zlayer_model::vae::{Vae, VaeConfig};
use zlayer_scene::BBox;
use zlayer_synth::Split;

fn rgba_vae(seed: u64) -> VaeBundle {
    let cfg = zlayer_model::alpha::rgba_config(&VaeConfig::tiny());
    let vm = candle_nn::VarMap::new();
    let vae = Vae::new(&cfg, seeded(&vm, seed, DType::F32, &Device::Cpu)).unwrap();
    VaeBundle {
        vae,
        cfg,
        shift: 0.1,
        scale: 1.3,
    }
}

#[test]
fn box_cells_are_the_cells_a_box_overlaps() {
    let mut rng = Rng::new(7);
    for _ in 0..2000 {
        let (size, grid) = [(64u32, 16usize), (100, 25), (48, 6)][(rng.next_u64() % 3) as usize];
        let s = size as f64;
        let (a, b) = (rng.uniform() * s, rng.uniform() * s);
        let (c, d) = (rng.uniform() * s, rng.uniform() * s);
        let bx = BBox {
            x1: a.min(b),
            x2: a.max(b) + 0.01,
            y1: c.min(d),
            y2: c.max(d) + 0.01,
        };
        let f = s / grid as f64;
        let naive: Vec<(usize, usize)> = (0..grid)
            .flat_map(|r| (0..grid).map(move |q| (r, q)))
            .filter(|&(r, q)| {
                let ox = (bx.x2.min((q + 1) as f64 * f) - bx.x1.max(q as f64 * f)) > 0.0;
                let oy = (bx.y2.min((r + 1) as f64 * f) - bx.y1.max(r as f64 * f)) > 0.0;
                ox && oy
            })
            .collect();
        assert_eq!(
            box_cells(bx, size, grid),
            naive,
            "{bx:?} on {grid}² of {size}"
        );
    }
}

#[test]
fn each_task_trains_on_the_frames_it_names_with_the_images_latents() {
    let dev = Device::Cpu;
    let vae = rgba_vae(1);
    let size = 32;
    let grid = size as usize / vae.cfg.factor();
    let tok = Tokenizer::new(synth_words());
    let sc = scenes(5, 0, 8, size, &Split::ALL);
    for (i, s) in sc.iter().enumerate() {
        let n = s.layers.len();
        for task in Task::ALL {
            let plan = Plan::training(s, task, i as u64, &tok, grid).unwrap();
            let seq = sequences(vec![plan], &vae, size, &dev).unwrap().remove(0);
            let roles: Vec<(Role, bool)> = seq.frames.iter().map(|f| (f.role, f.target)).collect();
            match seq.task {
                Task::Decompose => {
                    assert_eq!(roles.len(), n + 2);
                    assert_eq!(&roles[..2], &[(Role::Image, false), (Role::Plate, true)]);
                    assert!(roles[2..].iter().all(|&r| r == (Role::Layer, true)));
                    // Instance frames hold exactly the latents of their own layer's cells.
                    let rgba: Vec<[f32; 4]> = s.layers[n - 1]
                        .iter()
                        .map(|p| p.0.map(|v| v as f32 / 255.0))
                        .collect();
                    let full = encode(&vae, &[rgba], size, &dev).unwrap().remove(0);
                    let f = &seq.frames[n + 1];
                    assert_eq!(
                        f.cells,
                        box_cells(s.scene.instances[n - 1].bbox, size, grid)
                    );
                    let c = vae.cfg.latent;
                    for (k, &(r, q)) in f.cells.iter().enumerate() {
                        assert_eq!(
                            &f.latent[k * c..(k + 1) * c],
                            &full[(r * grid + q) * c..(r * grid + q + 1) * c]
                        );
                    }
                }
                Task::Matte => assert_eq!(roles, [(Role::Image, false), (Role::Matte, true)]),
                Task::Remove => assert_eq!(
                    roles,
                    [
                        (Role::Image, false),
                        (Role::Marker, false),
                        (Role::Removed, true)
                    ]
                ),
                Task::Complete => {
                    assert_eq!(roles[0], (Role::Plate, false));
                    assert_eq!(*roles.last().unwrap(), (Role::Image, true));
                    assert!(
                        roles[1..roles.len() - 1]
                            .iter()
                            .all(|&r| r == (Role::Layer, false))
                    );
                }
            }
            for f in &seq.frames {
                assert_eq!(f.latent.len(), f.cells.len() * vae.cfg.latent);
                if matches!(f.role, Role::Image | Role::Plate | Role::Removed) {
                    assert_eq!(f.cells.len(), grid * grid);
                }
            }
        }
    }
}

#[test]
fn exact_layers_over_the_exact_plate_score_zero_and_recomposite_the_image() {
    let sc = scenes(1_000_000, 0, 12, 64, &[Split::Complex]);
    let decomps: Vec<Decomposition> = sc
        .iter()
        .map(|s| Decomposition {
            layers: baseline("exact", s).unwrap(),
            plate: s
                .background
                .iter()
                .map(|p| p.map(|v| v as f32 / 255.0))
                .collect(),
        })
        .collect();
    let sc_ = score_decompositions("exact", &sc, &decomps);
    assert_eq!(
        (sc_.visible_l1, sc_.hidden_l1, sc_.sad, sc_.mse),
        (0.0, 0.0, 0.0, 0.0)
    );
    // Float source-over against the renderer's 8-bit rounding: within a level or two.
    let psnr = sc_.recomposite_psnr.unwrap();
    assert!(psnr > 45.0, "{psnr}");
    // A plate that is wrong everywhere is seen.
    let mut bad = decomps;
    for d in &mut bad {
        d.plate
            .iter_mut()
            .for_each(|p| *p = [1.0 - p[0], 1.0 - p[1], 1.0 - p[2]]);
    }
    assert!(
        score_decompositions("bad", &sc, &bad)
            .recomposite_psnr
            .unwrap()
            < psnr - 10.0
    );
}

/// A one-block layer model on random weights at 32 px.
fn random_layer_model(dev: &Device) -> LayerModel {
    let vae = rgba_vae(2);
    let words = Tokenizer::new(synth_words());
    let cfg = OmniConfig {
        depth: 1,
        ..OmniConfig::tiny(vae.cfg.latent, words.len())
    };
    let vm = candle_nn::VarMap::new();
    let model = Omni::new(&cfg, seeded(&vm, 4, DType::F32, dev)).unwrap();
    LayerModel {
        model,
        vae,
        words,
        size: 32,
    }
}

#[test]
fn a_decomposition_has_a_plate_and_a_layer_per_instance_transparent_outside_its_box() {
    let dev = Device::Cpu;
    let lm = random_layer_model(&dev);
    for s in scenes(9, 0, 3, 32, &[Split::Complex]) {
        // The matting task, batched over the instances, keeps to the boxes too.
        let m = mattes(&lm, &s.image, &s.scene, 2, 0, &dev).unwrap();
        assert_eq!(m.len(), s.layers.len());
        for (k, a) in m.iter().enumerate() {
            let b = s.scene.instances[k].bbox;
            for (p, &v) in a.iter().enumerate() {
                let (x, y) = ((p % 32) as f64 + 0.5, (p / 32) as f64 + 0.5);
                assert!((0.0..=1.0).contains(&v));
                if x < b.x1 || x >= b.x2 || y < b.y1 || y >= b.y2 {
                    assert_eq!(v, 0.0, "matte {k} pixel {p} outside {b:?}");
                }
            }
        }
        let d = decompose(&lm, &s.image, &s.scene, 2, 0, &dev).unwrap();
        assert_eq!((d.plate.len(), d.layers.len()), (32 * 32, s.layers.len()));
        for (k, l) in d.layers.iter().enumerate() {
            let b = s.scene.instances[k].bbox;
            for (p, px) in l.iter().enumerate() {
                let (x, y) = ((p % 32) as f64 + 0.5, (p / 32) as f64 + 0.5);
                assert!(px.iter().all(|v| (0.0..=1.0).contains(v)));
                if x < b.x1 || x >= b.x2 || y < b.y1 || y >= b.y2 {
                    assert_eq!(px[3], 0.0, "layer {k} pixel {p} outside {b:?}");
                }
            }
        }
    }
}

/// Whatever the model predicts, the reconciled layers composite back to the image (up to
/// its 8-bit rounding) with the model's alphas; observed ones take the segmenter's visible
/// pixels as alpha too; and at any image size.
#[test]
fn observed_layers_composite_back_to_the_image() {
    let dev = Device::Cpu;
    let lm = random_layer_model(&dev);
    let sc = scenes(11, 0, 4, 32, &[Split::Complex]);
    let (mut raw, mut reconciled, mut observed) = (vec![], vec![], vec![]);
    for s in &sc {
        let d = decompose(&lm, &s.image, &s.scene, 2, 0, &dev).unwrap();
        raw.push(d.scored());
        let mut r = Layers {
            plate: d.plate.clone(),
            layers: d.layers.clone(),
        };
        let image: Vec<[f32; 3]> = s
            .image
            .iter()
            .map(|p| p.map(|c| c as f32 / 255.0))
            .collect();
        let left = r.reconcile(&image, &s.back_to_front()).unwrap();
        assert!(left < 1e-4, "{left}");
        for (a, b) in r.layers.iter().zip(&d.layers) {
            assert!(a.iter().zip(b).all(|(p, q)| p[3] == q[3]));
        }
        reconciled.push(r.scored());

        let mut o = d;
        assert_eq!(o.observe(&s.image, 32, &s.scene).unwrap(), None);
        let targets = zlayer_metrics::eval::targets(&s.scene).unwrap();
        let labels = zlayer_metrics::segment::segment(&s.image, 32, 32, &targets);
        let order = s.back_to_front();
        let rank = |k: usize| order.iter().position(|&j| j == k).unwrap();
        for (k, l) in o.layers.iter().enumerate() {
            for (p, label) in labels.iter().enumerate() {
                match *label {
                    Some(j) if j == k && !targets[k].glass => assert_eq!(l[p][3], 1.0),
                    Some(j) if j != k && rank(j) < rank(k) => assert_eq!(l[p][3], 0.0),
                    None => assert!(l[p][3] == 0.0 || l[p][3] >= 0.5),
                    _ => {}
                }
            }
        }
        observed.push(o.scored());
    }
    let psnr = |name, d| score_decompositions(name, &sc, d).recomposite_psnr.unwrap();
    let (raw, rec, obs) = (
        psnr("raw", &raw),
        psnr("reconciled", &reconciled),
        psnr("observed", &observed),
    );
    assert!(
        raw < 30.0 && rec > 60.0 && obs > 60.0,
        "raw {raw} dB, reconciled {rec} dB, observed {obs} dB"
    );

    // At 80 px (the model works at 32), through decompose_image.
    let s = &scenes(12, 0, 1, 80, &[Split::Complex])[0];
    let img = Image {
        width: 80,
        height: 80,
        pixels: s
            .image
            .iter()
            .map(|p| {
                Straight([
                    p[0] as f32 / 255.0,
                    p[1] as f32 / 255.0,
                    p[2] as f32 / 255.0,
                    1.0,
                ])
            })
            .collect(),
    };
    let d = decompose_image(&lm, &img, &s.scene, (2, 0), true, &dev).unwrap();
    assert_eq!(d.note, None, "the segmenter reads synthetic captions");
    let (plate, layers) = (d.plate, d.layers);
    let mut stack = vec![Layer::new("plate", plate)];
    for k in s.back_to_front() {
        stack.push(Layer::new("layer", layers[k].clone()));
    }
    let flat = LayerStack::from_layers(stack).flatten();
    for (p, q) in flat.pixels.iter().zip(&img.pixels) {
        for c in 0..3 {
            assert!((p.0[c] - q.0[c]).abs() < 1e-3, "{p:?} against {q:?}");
        }
    }
}

#[test]
fn depth_levels_follow_the_order_and_name_a_cycle() {
    let s = &scenes(2, 0, 20, 64, &[Split::Complex]);
    for sc in s {
        let lv = depth_levels(&sc.scene).unwrap();
        for inst in &sc.scene.instances {
            let i = sc.scene.index_of(&inst.id).unwrap();
            for o in &inst.occludes {
                let j = sc.scene.index_of(o).unwrap();
                assert!(lv[j] > lv[i], "an occluder sits in front of what it hides");
            }
        }
    }
    // Mutual occlusion is an unordered pair, not a cycle; three in a ring are a cycle.
    let mut sc = s
        .iter()
        .find(|x| x.scene.instances.len() >= 3)
        .unwrap()
        .scene
        .clone();
    let ids: Vec<String> = sc.instances.iter().map(|i| i.id.clone()).collect();
    for (k, inst) in sc.instances.iter_mut().enumerate() {
        inst.occludes = if k < 3 {
            vec![ids[(k + 1) % 3].clone()]
        } else {
            Vec::new()
        };
    }
    let e = depth_levels(&sc).unwrap_err();
    assert!(e.contains("cycle"), "{e}");
}
