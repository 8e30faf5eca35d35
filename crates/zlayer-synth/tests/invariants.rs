//! Ground-truth invariants on thousands of random scenes per split.
// Pixel loops index several parallel rasters at once; an index reads clearest.
#![allow(clippy::needless_range_loop)]

use std::collections::HashSet;
use zlayer_composite::rgba::{Premul8, over_stack8};
use zlayer_synth::render::min_overlap_px;
use zlayer_synth::vocab::{Look, vocabulary};
use zlayer_synth::{Params, Split, SynthScene, scene_at};

const SCENES_PER_SPLIT: u64 = 2000;

fn check(s: &SynthScene) {
    let spec = &s.spec;
    let n = spec.instances.len();
    let size = spec.params.size as usize;
    let px = size * size;
    let ctx = format!(
        "seed {} index {} {:?}",
        spec.seed, spec.index, spec.params.split
    );

    // Colours are distinct; captions parse back into the vocabulary look.
    let colours: HashSet<_> = spec.instances.iter().map(|i| i.look.colour).collect();
    assert_eq!(colours.len(), n, "{ctx}: colours repeat");
    for (inst, native) in spec.instances.iter().zip(&s.scene.instances) {
        assert_eq!(Look::parse(&native.caption), Ok(inst.look), "{ctx}");
    }

    // The least visible object's area, summed in integers.
    let least = (0..n)
        .map(|k| s.visible[k].iter().map(|&a| a as u64).sum::<u64>())
        .min();
    let want = least.map_or(px as f32, |v| v as f32 / 255.0);
    assert_eq!(s.min_visible_px(), want, "{ctx}: least visible area");

    // visible ⊆ amodal, and the layer lives inside the amodal mask.
    for k in 0..n {
        for p in 0..px {
            assert!(
                s.visible[k][p] <= s.amodal[k][p],
                "{ctx}: visible exceeds amodal"
            );
            // Layer alpha = coverage × material alpha: never above the amodal coverage.
            assert!(
                s.layers[k][p].0[3] <= s.amodal[k][p],
                "{ctx}: alpha outside the amodal mask"
            );
        }
    }

    // Recomposing the stored layers in Z-order reproduces the image exactly...
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(spec.instances[i].rank));
    let bg: Vec<Premul8> = s
        .background
        .iter()
        .map(|&[r, g, b]| Premul8([r, g, b, 255]))
        .collect();
    let premul: Vec<Vec<Premul8>> = s
        .layers
        .iter()
        .map(|l| l.iter().map(|p| p.premultiply()).collect())
        .collect();
    let mut stack: Vec<&[Premul8]> = vec![&bg];
    stack.extend(order.iter().map(|&i| premul[i].as_slice()));
    let mut out = vec![Premul8::default(); px];
    over_stack8(&stack, &mut out);
    for p in 0..px {
        assert_eq!(
            [out[p].0[0], out[p].0[1], out[p].0[2]],
            s.image[p],
            "{ctx}: pixel {p}"
        );
        assert_eq!(out[p].0[3], 255);
    }
    // ...and agrees with straight-alpha "over" in f64 to within the 8-bit rounding of each step.
    for p in (0..px).step_by(7) {
        let mut c = s.background[p].map(|v| v as f64);
        for &i in &order {
            let [r, g, b, a] = s.layers[i][p].0.map(|v| v as f64 / 255.0);
            c = [r, g, b]
                .iter()
                .zip(c)
                .map(|(&v, d)| v * 255.0 * a + d * (1.0 - a))
                .collect::<Vec<_>>()
                .try_into()
                .unwrap();
        }
        for k in 0..3 {
            assert!(
                (c[k] - s.image[p][k] as f64).abs() <= 1.0 + 0.5 * n as f64,
                "{ctx}: pixel {p} {c:?} vs {:?}",
                s.image[p]
            );
        }
    }

    // `SynthScene::composite` is the recomposition above, of every layer and of none.
    assert_eq!(s.back_to_front(), order, "{ctx}");
    let all: Vec<usize> = (0..n).collect();
    assert_eq!(
        s.composite(&all),
        s.image,
        "{ctx}: composite of every layer"
    );
    assert_eq!(s.composite(&[]), s.background, "{ctx}: composite of none");

    // occludes: front rank, a real overlap, and the back one's visible mask is empty under
    // the front one's full coverage.
    let min = min_overlap_px(spec.params.size);
    for (i, inst) in s.scene.instances.iter().enumerate() {
        for j in inst.occludes.iter().map(|id| id.parse::<usize>().unwrap()) {
            assert!(spec.instances[i].rank < spec.instances[j].rank, "{ctx}");
            let overlap = (0..px)
                .filter(|&p| s.amodal[i][p] >= 128 && s.amodal[j][p] >= 128)
                .count();
            assert!(overlap >= min, "{ctx}: {i} occludes {j} over {overlap} px");
            for p in 0..px {
                if s.amodal[i][p] == 255 {
                    assert_eq!(s.visible[j][p], 0, "{ctx}: {j} visible under {i}");
                }
            }
        }
    }

    // The native scene validates and its boxes are the tight amodal boxes.
    let text = zlayer_scene::export(&s.scene, zlayer_scene::Format::Native).unwrap();
    let loaded = zlayer_scene::load_str(&text).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    assert!(loaded.warnings.is_empty(), "{ctx}: {:?}", loaded.warnings);
    for (k, inst) in s.scene.instances.iter().enumerate() {
        let b = inst.bbox;
        for p in 0..px {
            let (x, y) = ((p % size) as f64, (p / size) as f64);
            if s.amodal[k][p] > 0 {
                assert!(
                    x >= b.x1 && x < b.x2 && y >= b.y1 && y < b.y2,
                    "{ctx}: mask outside box"
                );
            }
        }
    }
}

fn run_split(split: Split) {
    let params = Params::new(split, 64);
    for i in 0..SCENES_PER_SPLIT {
        check(&scene_at(11, i, &params));
    }
}

#[test]
fn simple_split_invariants() {
    run_split(Split::Simple);
}

#[test]
fn regular_split_invariants() {
    run_split(Split::Regular);
}

#[test]
fn complex_split_invariants() {
    run_split(Split::Complex);
}

#[test]
fn same_seed_and_index_give_the_same_bytes() {
    for split in Split::ALL {
        for size in [64, 128] {
            let p = Params::new(split, size);
            for i in [0, 1, 999] {
                assert_eq!(scene_at(5, i, &p), scene_at(5, i, &p));
            }
            assert_ne!(scene_at(5, 0, &p).image, scene_at(6, 0, &p).image);
        }
    }
}

#[test]
fn prompts_use_only_vocabulary_words() {
    let v = vocabulary();
    let mut words: HashSet<&str> = HashSet::new();
    words.extend(v.colours.iter().map(|c| c.0));
    words.extend(v.shapes.iter().copied());
    words.extend(v.patterns.iter().copied());
    words.extend(v.materials.iter().copied());
    words.extend(v.prompt_words.iter().copied());
    for b in &v.backgrounds {
        words.extend(b.split(' '));
    }
    for split in Split::ALL {
        for i in 0..300 {
            let s = scene_at(2, i, &Params::new(split, 32));
            for w in s.scene.prompt.replace(',', " , ").split_whitespace() {
                assert!(words.contains(w), "{w:?} in {:?}", s.scene.prompt);
            }
        }
    }
}

#[test]
fn every_shape_pattern_and_background_occurs() {
    let mut shapes = HashSet::new();
    let mut patterns = HashSet::new();
    let mut backgrounds = HashSet::new();
    let mut glass = 0;
    for i in 0..500 {
        let s = zlayer_synth::sample(3, i, &Params::new(Split::Complex, 64));
        backgrounds.insert(s.background);
        for inst in &s.instances {
            shapes.insert(inst.look.shape);
            patterns.insert(inst.look.pattern);
            if inst.alpha < 1.0 {
                assert!((0.3..=0.7).contains(&inst.alpha));
                glass += 1;
            }
        }
    }
    assert_eq!(shapes.len(), 10);
    assert_eq!(patterns.len(), 4);
    assert_eq!(backgrounds.len(), 5);
    assert!(glass > 100, "{glass}");
}
