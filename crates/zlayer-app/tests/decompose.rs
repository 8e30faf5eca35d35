//! The layer model's data and decomposition: box cells, the frames each
//! task trains on, scoring, and what a decomposition guarantees whatever the weights.

use candle_core::{DType, Device};
use zlayer_app::data::{scenes, synth_words};
use zlayer_app::decompose::{
    LayerModel, Plan, box_cells, decompose, depth_levels, encode, sequences,
};
use zlayer_app::layer_eval::{Decomposition, baseline, score_decompositions};
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

#[test]
fn a_decomposition_has_a_plate_and_a_layer_per_instance_transparent_outside_its_box() {
    let dev = Device::Cpu;
    let vae = rgba_vae(2);
    let words = Tokenizer::new(synth_words());
    let cfg = OmniConfig {
        depth: 1,
        ..OmniConfig::tiny(vae.cfg.latent, words.len())
    };
    let vm = candle_nn::VarMap::new();
    let model = Omni::new(&cfg, seeded(&vm, 4, DType::F32, &dev)).unwrap();
    let lm = LayerModel {
        model,
        vae,
        words,
        size: 32,
    };
    for s in scenes(9, 0, 3, 32, &[Split::Complex]) {
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
