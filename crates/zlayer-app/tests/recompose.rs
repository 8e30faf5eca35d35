//! `recompose` on exact synthetic layers: the original order gives back the rendered image
//! bit for bit, a new order puts the named instance in front, and files keep their edits.

use std::path::PathBuf;
use zlayer_app::recompose::{Edit, Layered};
use zlayer_synth::{Params, Split, scene_at, store::write_png_folder};

fn folder(name: &str, split: Split, index: u64, size: u32) -> (PathBuf, zlayer_synth::SynthScene) {
    let dir = std::env::temp_dir().join(format!("zlayer-recompose-{}-{name}", std::process::id()));
    let s = scene_at(3, index, &Params::new(split, size));
    write_png_folder(&dir, &s).unwrap();
    (dir, s)
}

fn bytes(img: &zlayer_composite::Image<zlayer_composite::Straight>) -> Vec<[u8; 3]> {
    img.pixels
        .iter()
        .map(|p| {
            let q = p.to_u8().0;
            [q[0], q[1], q[2]]
        })
        .collect()
}

#[test]
fn the_original_order_gives_back_the_rendered_image_bit_for_bit() {
    for (k, split) in Split::ALL.iter().cycle().take(24).enumerate() {
        let (dir, s) = folder(&format!("same-{k}"), *split, k as u64, 64);
        let l = Layered::read_synth(&dir).unwrap();
        assert_eq!(bytes(&l.composite()), s.image, "scene {k} ({split:?})");
    }
}

#[test]
fn a_new_order_draws_the_named_instance_in_front() {
    let (dir, s) = folder("order", Split::Complex, 5, 64);
    let mut l = Layered::read_synth(&dir).unwrap();
    let ids: Vec<String> = s.scene.instances.iter().map(|i| i.id.clone()).collect();
    // The back-most instance first, the rest after.
    let back = l.refs[0].instance;
    let mut order = vec![ids[back].clone()];
    order.extend(ids.iter().filter(|id| **id != ids[back]).cloned());
    l.apply(&Edit {
        order: Some(order),
        ..Edit::default()
    })
    .unwrap();
    let out = bytes(&l.composite());
    let mut covered = 0;
    for (p, px) in s.layers[back].iter().enumerate() {
        if px.0[3] == 255 {
            assert_eq!(out[p], [px.0[0], px.0[1], px.0[2]], "pixel {p}");
            covered += 1;
        }
    }
    assert!(covered > 20, "{covered}");
    // The scene now says so: it occludes every instance its box meets.
    let placed = &l.scene.instances[back];
    for (j, other) in l.scene.instances.iter().enumerate() {
        if j != back && other.bbox.overlaps(placed.bbox) {
            assert!(placed.occludes.contains(&other.id), "{:?}", placed.occludes);
        }
    }
}

#[test]
fn edits_survive_a_round_trip_through_ora_and_psd() {
    let (dir, s) = folder("files", Split::Regular, 2, 64);
    let mut l = Layered::read_synth(&dir).unwrap();
    let (first, second) = (
        s.scene.instances[0].id.clone(),
        s.scene.instances[1].id.clone(),
    );
    l.apply(&Edit {
        hide: vec![first.clone()],
        moves: vec![(second.clone(), 5, -3)],
        ..Edit::default()
    })
    .unwrap();
    let want = bytes(&l.composite());
    for ext in ["ora", "psd"] {
        let path = dir.join(format!("edited.{ext}"));
        let stack = l.to_stack();
        match ext {
            "ora" => {
                zlayer_composite::ora::write_ora(&path, &stack, zlayer_composite::BitDepth::Eight)
                    .unwrap()
            }
            _ => zlayer_composite::psd::write_psd(&path, &stack).unwrap(),
        }
        let back = Layered::read_file(&path).unwrap();
        assert_eq!(bytes(&back.composite()), want, "{ext}");
        assert_eq!(
            back.scene.instances[1].bbox.x1,
            s.scene.instances[1].bbox.x1 + 5.0
        );
        assert_eq!(back.refs, l.refs);
    }
}

#[test]
fn bad_edits_and_files_say_what_is_wrong() {
    let (dir, s) = folder("errors", Split::Regular, 4, 64);
    let mut l = Layered::read_synth(&dir).unwrap();
    let id = s.scene.instances[0].id.clone();
    let e = l
        .apply(&Edit {
            order: Some(vec![id.clone()]),
            ..Edit::default()
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("every instance") && e.contains("missing"), "{e}");
    let e = l
        .apply(&Edit {
            hide: vec!["nope".into()],
            ..Edit::default()
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("no instance \"nope\""), "{e}");
    let e = l
        .apply(&Edit {
            order: Some(vec![id.clone(), id]),
            ..Edit::default()
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("twice"), "{e}");
    let plain = dir.join("plain.ora");
    zlayer_composite::ora::write_ora(
        &plain,
        &zlayer_composite::LayerStack::from_layers(vec![zlayer_composite::Layer::new(
            "only",
            zlayer_composite::Image::new(4, 4),
        )]),
        zlayer_composite::BitDepth::Eight,
    )
    .unwrap();
    let e = Layered::read_file(&plain).unwrap_err().to_string();
    assert!(e.contains("no zlayer metadata"), "{e}");
}

#[test]
fn recolouring_sets_the_base_colour_keeps_shading_and_alpha_and_renames() {
    use zlayer_app::recompose::{Recolour, recolour};
    use zlayer_composite::{Image, Straight};
    // A flat layer takes the colour exactly; luma ratios and alpha stay, over random layers.
    let mut rng = zlayer_scene::rng::Rng::new(5);
    for _ in 0..500 {
        let target = [
            rng.uniform() as f32,
            rng.uniform() as f32,
            rng.uniform() as f32,
        ];
        let base = [
            rng.uniform() as f32 * 0.8 + 0.1,
            rng.uniform() as f32 * 0.8 + 0.1,
            rng.uniform() as f32 * 0.8 + 0.1,
        ];
        let shade: Vec<f32> = (0..16).map(|_| 0.5 + rng.uniform() as f32).collect();
        let alpha: Vec<f32> = (0..16).map(|_| rng.uniform() as f32).collect();
        let px = |k: &[f32]| Image {
            width: 4,
            height: 4,
            pixels: (0..16)
                .map(|i| Straight([base[0] * k[i], base[1] * k[i], base[2] * k[i], alpha[i]]))
                .collect(),
        };
        let mut flat = px(&[1.0; 16]);
        recolour(&mut flat, target);
        for (p, a) in flat.pixels.iter().zip(&alpha) {
            for c in 0..3 {
                assert!(
                    (p.0[c] - target[c]).abs() < 1e-5,
                    "{:?} against {target:?}",
                    p.0
                );
            }
            assert_eq!(p.0[3], *a);
        }
        let mut shaded = px(&shade);
        recolour(&mut shaded, target);
        let l = |p: &Straight| 0.2126 * p.0[0] + 0.7152 * p.0[1] + 0.0722 * p.0[2];
        let (a, b) = (&shaded.pixels[0], &shaded.pixels[1]);
        let unclamped = shaded
            .pixels
            .iter()
            .all(|p| p.0[..3].iter().all(|&v| v < 1.0));
        if unclamped && l(b) > 1e-3 {
            assert!((l(a) / l(b) - shade[0] / shade[1]).abs() < 1e-3);
        }
    }
    // Through an edit: only that layer changes, and the caption takes the colour word.
    let (dir, s) = folder("recolour", Split::Regular, 4, 64);
    let mut l = Layered::read_synth(&dir).unwrap();
    let id = s.scene.instances[0].id.clone();
    let before = l.stack.clone();
    l.apply(&Edit {
        recolours: vec![(id.clone(), Recolour::parse("blue").unwrap())],
        ..Edit::default()
    })
    .unwrap();
    let k = l.refs.iter().find(|r| r.instance == 0).unwrap().layer;
    for (j, (a, b)) in before.layers.iter().zip(&l.stack.layers).enumerate() {
        assert_eq!(a.image.pixels == b.image.pixels, j != k, "layer {j}");
    }
    assert!(
        l.scene.instances[0].caption.starts_with("blue "),
        "{}",
        l.scene.instances[0].caption
    );
    assert!(
        l.stack.layers[k]
            .name
            .ends_with(&l.scene.instances[0].caption)
    );
    assert_eq!(
        Recolour::parse("#3366cc").unwrap().rgb,
        [
            0x33 as f32 / 255.0,
            0x66 as f32 / 255.0,
            0xcc as f32 / 255.0
        ]
    );
    let e = Recolour::parse("mauve").unwrap_err();
    assert!(e.contains("#rrggbb") && e.contains("colour word"), "{e}");
}
