//! `insert` on the bundled model: the order it declares, the pixels it keeps, its errors.

use candle_core::{DType, Device};
use candle_nn::VarMap;
use zlayer_app::insert::{InsertRequest, Place, dilate, feather, insert, paste, placed_scene};
use zlayer_app::method::Method;
use zlayer_app::model::ModelDir;
use zlayer_app::pipeline::Pipeline;
use zlayer_composite::{Image, Straight};
use zlayer_model::base::SampleOptions;
use zlayer_model::layout_model::Variant;
use zlayer_model::pelc::{DecConfig, DecFormer};
use zlayer_scene::rng::Rng;
use zlayer_scene::{BBox, Instance, Scene};

fn instance(id: &str, caption: &str, b: [f64; 4], occludes: &[&str]) -> Instance {
    Instance {
        id: id.into(),
        caption: caption.into(),
        category: None,
        bbox: BBox::new(b[0], b[1], b[2], b[3]),
        mask: None,
        occludes: occludes.iter().map(|s| s.to_string()).collect(),
        opacity: None,
    }
}

fn scene(instances: Vec<Instance>) -> Scene {
    Scene {
        width: 512,
        height: 512,
        seed: None,
        prompt: String::new(),
        caption: None,
        instances,
    }
}

/// a in front of b in front of c, all overlapping; d apart from them overlapping c only.
fn chain() -> Scene {
    scene(vec![
        instance("a", "red sphere", [0.0, 0.0, 300.0, 300.0], &["b"]),
        instance("b", "blue cube", [100.0, 100.0, 400.0, 400.0], &["c"]),
        instance("c", "green disk", [150.0, 150.0, 500.0, 500.0], &[]),
        instance("d", "yellow star", [450.0, 0.0, 512.0, 100.0], &[]),
    ])
}

/// Is `front` (transitively) in front of `back` in the placed scene?
fn in_front(s: &zlayer_scene::ValidScene, front: usize, back: usize) -> bool {
    let g = s.graph();
    let mut stack = g.occluders(back).to_vec();
    let mut seen = vec![false; g.len()];
    while let Some(k) = stack.pop() {
        if k == front {
            return true;
        }
        if !std::mem::replace(&mut seen[k], true) {
            stack.extend_from_slice(g.occluders(k));
        }
    }
    false
}

#[test]
fn the_new_instance_takes_its_declared_place_in_the_order() {
    let s = chain();
    let new = instance("n", "orange cone", [120.0, 120.0, 480.0, 480.0], &["a"]);
    let top = placed_scene(&s, &new, &Place::Top).unwrap();
    assert!(
        top.scene().instances[4].occludes.len() == 3,
        "its own occludes are replaced"
    );
    for k in 0..3 {
        assert!(in_front(&top, 4, k));
    }
    let behind = placed_scene(&s, &new, &Place::Behind("b".into())).unwrap();
    assert!(in_front(&behind, 1, 4) && in_front(&behind, 0, 4) && in_front(&behind, 4, 2));
    let front = placed_scene(&s, &new, &Place::InFrontOf("b".into())).unwrap();
    assert!(in_front(&front, 0, 4) && in_front(&front, 4, 1) && in_front(&front, 4, 2));
    // d's box does not meet the new one: no relation either way.
    for p in [&top, &behind, &front] {
        assert!(!in_front(p, 3, 4) && !in_front(p, 4, 3));
    }
}

#[test]
fn placing_in_random_scenes_never_makes_a_cycle_and_keeps_every_declared_pair() {
    let mut rng = Rng::new(5);
    for trial in 0..2000 {
        let n = 1 + rng.below(7);
        let mut inst = Vec::new();
        for k in 0..n {
            let (x, y) = (rng.below(400) as f64, rng.below(400) as f64);
            let (w, h) = (20.0 + rng.below(200) as f64, 20.0 + rng.below(200) as f64);
            // Edges only towards higher indices: acyclic by construction.
            let occ: Vec<String> = (k + 1..n)
                .filter(|_| rng.below(3) == 0)
                .map(|j| format!("i{j}"))
                .collect();
            let mut i = instance(
                &format!("i{k}"),
                "red sphere",
                [x, y, (x + w).min(512.0), (y + h).min(512.0)],
                &[],
            );
            i.occludes = occ;
            inst.push(i);
        }
        let s = scene(inst);
        let old = placed_scene(
            &s,
            &instance("probe", "red sphere", [0.0, 0.0, 1.0, 1.0], &[]),
            &Place::Top,
        )
        .unwrap();
        let (x, y) = (rng.below(300) as f64, rng.below(300) as f64);
        let new = instance(
            "n",
            "blue cube",
            [
                x,
                y,
                x + 50.0 + rng.below(200) as f64,
                y + 50.0 + rng.below(200) as f64,
            ],
            &[],
        );
        let anchor = format!("i{}", rng.below(n));
        let place = match rng.below(3) {
            0 => Place::Top,
            1 => Place::Behind(anchor),
            _ => Place::InFrontOf(anchor),
        };
        let placed = placed_scene(&s, &new, &place)
            .unwrap_or_else(|e| panic!("trial {trial}, {place:?}: {e}"));
        // The old instances' own edges stay as declared (new chains through the new
        // instance may order pairs that were unordered, which is what placing it means).
        let edges = |v: &zlayer_scene::ValidScene| -> Vec<(usize, usize)> {
            v.graph().edges().filter(|&(i, j)| i < n && j < n).collect()
        };
        assert_eq!(edges(&placed), edges(&old), "trial {trial}");
        if let Place::Behind(a) = &place {
            let a = s.index_of(a).unwrap();
            let meets = s.instances[a].bbox.overlaps(new.bbox);
            assert_eq!(in_front(&placed, a, n), meets, "trial {trial}");
        }
    }
}

#[test]
fn placing_names_unknown_and_taken_ids() {
    let s = chain();
    let e = placed_scene(
        &s,
        &instance("n", "red sphere", [0.0, 0.0, 9.0, 9.0], &[]),
        &Place::Behind("zz".into()),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("\"zz\"") && e.contains("a, b, c, d"), "{e}");
    let e = placed_scene(
        &s,
        &instance("b", "red sphere", [0.0, 0.0, 9.0, 9.0], &[]),
        &Place::Top,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("already has an instance \"b\"") && e.contains("--id"),
        "{e}"
    );
}

#[test]
fn dilation_matches_the_square_neighbourhood_definition() {
    let mut rng = Rng::new(9);
    for _ in 0..500 {
        let (w, h, r) = (1 + rng.below(30), 1 + rng.below(30), rng.below(5));
        let m: Vec<bool> = (0..w * h).map(|_| rng.below(12) == 0).collect();
        let got = dilate(&m, (w, h), r);
        for y in 0..h {
            for x in 0..w {
                let want = (y.saturating_sub(r)..(y + r + 1).min(h))
                    .any(|yy| (x.saturating_sub(r)..(x + r + 1).min(w)).any(|xx| m[yy * w + xx]));
                assert_eq!(got[y * w + x], want, "{w}×{h} r {r} at ({x},{y})");
            }
        }
    }
}

#[test]
fn feathering_falls_with_the_square_distance_and_stops_at_the_band() {
    let mut rng = Rng::new(13);
    for _ in 0..300 {
        let (w, h, r) = (1 + rng.below(25), 1 + rng.below(25), rng.below(6));
        let m: Vec<bool> = (0..w * h).map(|_| rng.below(20) == 0).collect();
        let got = feather(&m, (w, h), r);
        for (q, &g) in got.iter().enumerate() {
            let (x, y) = ((q % w) as i64, (q / w) as i64);
            let d = (0..w * h)
                .filter(|&k| m[k])
                .map(|k| ((k % w) as i64 - x).abs().max(((k / w) as i64 - y).abs()))
                .min();
            let want = match d {
                Some(d) if d as usize <= r => 1.0 - d as f32 / (r + 1) as f32,
                _ => 0.0,
            };
            assert!((g - want).abs() < 1e-6, "{w}×{h} r {r} at ({x},{y})");
        }
    }
}

fn noise_image(w: usize, h: usize, seed: u64) -> Image<Straight> {
    let mut rng = Rng::new(seed);
    let mut img = Image::new(w, h);
    for px in &mut img.pixels {
        let c = [0, 1, 2].map(|_| rng.below(256) as f32 / 255.0);
        *px = Straight([c[0], c[1], c[2], 1.0]);
    }
    img
}

#[test]
fn paste_keeps_the_input_at_weight_zero_and_mixes_between() {
    let mut rng = Rng::new(3);
    for seed in 0..200 {
        let (w, h) = (1 + rng.below(50), 1 + rng.below(50));
        let (a, b) = (noise_image(w, h, seed), noise_image(w, h, seed + 1000));
        let weight: Vec<f32> = (0..w * h)
            .map(|_| [0.0, 1.0, rng.f32()][rng.below(3)])
            .collect();
        let out = paste(&a, &b, &weight);
        for (p, &t) in weight.iter().enumerate() {
            let (o, x, y) = (out.pixels[p].0, a.pixels[p].0, b.pixels[p].0);
            match t {
                0.0 => assert_eq!(o, x),
                1.0 => assert_eq!(o, y),
                _ => (0..4).for_each(|c| assert!((o[c] - (x[c] + (y[c] - x[c]) * t)).abs() < 1e-6)),
            }
        }
    }
}

fn request<'a>(image: &'a Image<Straight>, scene: &'a Scene, seed: u64) -> InsertRequest<'a> {
    let b = [40.0 + (seed % 5) as f64 * 30.0, 60.0, 300.0, 330.0];
    InsertRequest {
        image,
        scene,
        instance: instance("n", "green disk", b, &[]),
        place: Place::Behind("a".into()),
        method: Method::Branch(Variant::Occlusionformer),
        opts: SampleOptions {
            steps: 6,
            guidance: 1.0,
            seed,
        },
        grounding_ratio: None,
        refine: 0.4,
        band: 3,
        strict: false,
    }
}

#[test]
fn insert_leaves_every_pixel_outside_the_band_bit_identical_on_random_images() {
    let p = Pipeline::load(&ModelDir::Bundled, Device::Cpu).unwrap();
    let s = scene(vec![instance(
        "a",
        "red sphere",
        [150.0, 150.0, 400.0, 400.0],
        &[],
    )]);
    let vm = VarMap::new();
    let cfg = DecConfig {
        latent: p.model.vae.cfg.latent,
        ..DecConfig::tiny()
    };
    let fresh = DecFormer::new(
        &cfg,
        zlayer_model::init::seeded(&vm, 0, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let mut done = 0;
    for (k, (w, h)) in [(64, 64), (512, 512), (97, 131), (640, 480)]
        .into_iter()
        .enumerate()
    {
        let image = noise_image(w, h, 40 + k as u64);
        for dec in [None, Some(&fresh)] {
            let out = match insert(&p, dec, &request(&image, &s, k as u64)) {
                Ok(out) => out,
                // A noise image can hide the new object from the segmenter; that is an error
                // the user sees, never a changed pixel.
                Err(e) => {
                    assert!(e.to_string().contains("drew nothing"), "{e}");
                    continue;
                }
            };
            done += 1;
            assert_eq!((out.image.width, out.image.height), (w, h));
            let mut kept = 0;
            for q in 0..w * h {
                if !out.band[q] {
                    assert_eq!(out.image.pixels[q], image.pixels[q], "{w}×{h} pixel {q}");
                    kept += 1;
                }
            }
            assert!(kept > w * h / 4, "{w}×{h}: only {kept} pixels kept");
            assert!(out.band.iter().any(|&b| b));
            let new = out.visible.len() - 1;
            assert!(
                out.visible[new]
                    .iter()
                    .zip(&out.band)
                    .all(|(&v, &b)| v == 0.0 || b)
            );
        }
    }
    assert!(done >= 4, "only {done} of 8 insertions drew the object");
}

#[test]
fn a_decformer_for_another_vae_is_refused_with_what_to_do() {
    let p = Pipeline::load(&ModelDir::Bundled, Device::Cpu).unwrap();
    let vm = VarMap::new();
    let cfg = DecConfig {
        latent: p.model.vae.cfg.latent + 8,
        ..DecConfig::tiny()
    };
    let other = DecFormer::new(
        &cfg,
        zlayer_model::init::seeded(&vm, 0, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let s = chain();
    let image = noise_image(64, 64, 1);
    let e = insert(&p, Some(&other), &request(&image, &s, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("train pelc") && e.contains("-channel"), "{e}");
}
