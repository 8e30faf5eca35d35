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
