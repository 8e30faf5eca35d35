//! `recompose --harmonise`: what an edit reveals, and a denoise that redraws only that.

use candle_core::Device;
use std::path::PathBuf;
use zlayer_app::harmonise::{HarmoniseRequest, harmonise, revealed};
use zlayer_app::insert::dilate;
use zlayer_app::method::Method;
use zlayer_app::model::ModelDir;
use zlayer_app::pipeline::Pipeline;
use zlayer_app::recompose::{Edit, Layered};
use zlayer_model::base::SampleOptions;
use zlayer_model::layout_model::Variant;
use zlayer_scene::rng::Rng;
use zlayer_synth::{Params, Split, scene_at, store::write_png_folder};

fn folder(name: &str, index: u64, size: u32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zlayer-harmonise-{}-{name}", std::process::id()));
    let s = scene_at(3, index, &Params::new(Split::Complex, size));
    write_png_folder(&dir, &s).unwrap();
    dir
}

#[test]
fn revealed_pixels_are_those_showing_what_no_pixel_showed_before() {
    let mut rng = Rng::new(11);
    let mut some = 0;
    for trial in 0..2000 {
        let n = 1 + rng.below(60);
        let draw = |rng: &mut Rng| -> Vec<Option<(usize, usize)>> {
            (0..n)
                .map(|_| (rng.below(5) > 0).then(|| (rng.below(3), rng.below(8))))
                .collect()
        };
        let (before, after) = (draw(&mut rng), draw(&mut rng));
        let got = revealed(&before, &after);
        for p in 0..n {
            let want = match after[p] {
                Some(x) => before.iter().all(|b| *b != Some(x)),
                None => before[p].is_some(),
            };
            assert_eq!(got[p], want, "trial {trial} pixel {p}");
            some += usize::from(want);
        }
        assert!(revealed(&before, &before).iter().all(|&r| !r));
    }
    assert!(some > 1000, "{some}");
}

fn options(seed: u64) -> SampleOptions {
    SampleOptions {
        steps: 10,
        guidance: 1.0,
        seed,
    }
}

#[test]
fn harmonising_a_move_redraws_what_it_revealed_with_a_band_and_nothing_else() {
    let p = Pipeline::load(&ModelDir::Bundled, Device::Cpu).unwrap();
    let mut redrawn_somewhere = 0;
    for (k, (size, dx, dy, band)) in [(64, 5, -3, 1), (256, 30, 12, 6), (256, -20, 25, 3)]
        .into_iter()
        .enumerate()
    {
        let dir = folder(&format!("move-{k}"), k as u64 + 7, size);
        let mut l = Layered::read_synth(&dir).unwrap();
        let before = l.shown();
        let id = l.scene.instances[l.refs.last().unwrap().instance]
            .id
            .clone();
        l.apply(&Edit {
            moves: vec![(id, dx, dy)],
            ..Edit::default()
        })
        .unwrap();
        let after = l.composite();
        let n = (size * size) as usize;
        let cut = revealed(&before, &l.shown());
        assert!(
            cut.iter().any(|&c| c),
            "scene {k}: a move reveals something"
        );
        let out = harmonise(
            &p,
            &HarmoniseRequest {
                image: &after,
                redraw: &cut,
                scene: &l.scene,
                method: Method::Branch(Variant::Occlusionformer),
                grounding_ratio: None,
                opts: options(k as u64),
                refine: 0.4,
                band,
                strict: false,
            },
        )
        .unwrap();
        let reach = dilate(&cut, (size as usize, size as usize), band);
        for q in 0..n {
            if cut[q] {
                assert!(out.band[q], "scene {k}: revealed pixel {q} not redrawn");
            }
            if !reach[q] {
                assert!(!out.band[q], "scene {k}: pixel {q} beyond the band redrawn");
            }
            if !out.band[q] {
                assert_eq!(out.image.pixels[q], after.pixels[q], "scene {k}: pixel {q}");
            }
        }
        redrawn_somewhere += (0..n)
            .filter(|&q| out.image.pixels[q].to_u8() != after.pixels[q].to_u8())
            .count();
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(redrawn_somewhere > 0, "the model changed no pixel");
}

#[test]
fn an_edit_that_reveals_nothing_is_returned_as_it_was_and_said() {
    let p = Pipeline::load(&ModelDir::Bundled, Device::Cpu).unwrap();
    let dir = folder("same", 2, 64);
    let l = Layered::read_synth(&dir).unwrap();
    let image = l.composite();
    let cut = revealed(&l.shown(), &l.shown());
    let out = harmonise(
        &p,
        &HarmoniseRequest {
            image: &image,
            redraw: &cut,
            scene: &l.scene,
            method: Method::Base,
            grounding_ratio: None,
            opts: options(0),
            refine: 0.3,
            band: 2,
            strict: false,
        },
    )
    .unwrap();
    assert_eq!(out.image.pixels, image.pixels);
    assert!(out.band.iter().all(|&b| !b));
    assert!(out.notes.iter().any(|n| n.contains("nothing to harmonise")));
    for refine in [0.0, -0.1, 1.5] {
        let e = harmonise(
            &p,
            &HarmoniseRequest {
                image: &image,
                redraw: &cut,
                scene: &l.scene,
                method: Method::Branch(Variant::Occlusionformer),
                grounding_ratio: None,
                opts: options(0),
                refine,
                band: 2,
                strict: false,
            },
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("(0, 1]"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
