//! The alpha-aware VAE's data and scores on the real 16-channel VAE (`models/tiny16`).

use candle_core::Device;
use zlayer_app::alpha::{batch, evaluate};
use zlayer_app::data::scenes;
use zlayer_synth::Split;

#[test]
fn batches_alternate_opaque_images_and_exact_layers() {
    let dev = Device::Cpu;
    let (seed, first, n, size) = (4, 10, 6, 32);
    let x = batch(seed, first, n, size, &dev).unwrap();
    let v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    let sc = scenes(seed, first, n, size, &Split::ALL);
    let px = (size * size) as usize;
    let unit = |b: u8| b as f32 / 127.5 - 1.0;
    for (k, s) in sc.iter().enumerate() {
        let at = |c: usize, p: usize| v[(k * 4 + c) * px + p];
        let i = first + k as u64;
        for p in 0..px {
            if i.is_multiple_of(2) {
                assert_eq!(at(3, p), 1.0);
                (0..3).for_each(|c| assert_eq!(at(c, p), unit(s.image[p][c])));
            } else {
                let layer = &s.layers[(i / 2) as usize % s.layers.len()];
                (0..4).for_each(|c| assert_eq!(at(c, p), unit(layer[p].0[c])));
            }
        }
    }
}

#[test]
fn the_opaque_initialised_vae_scores_as_the_rgb_vae_on_opaque_images() {
    let dev = Device::Cpu;
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/tiny16/vae.safetensors");
    let (rgb, size) = zlayer_app::model::vae_file(&file, &dev).unwrap();
    let vm = candle_nn::VarMap::new();
    let rgba = zlayer_model::alpha::from_rgb(&vm, &rgb.cfg, &file, &dev).unwrap();
    let s = evaluate(&rgba, Some(&rgb.vae), 1_000_000, 6, size, &dev).unwrap();
    let p = s.rgb_vae_psnr.unwrap();
    assert!(
        (s.opaque_psnr - p).abs() < 1e-3,
        "{} against {p}",
        s.opaque_psnr
    );
    assert!(p > 20.0, "{p}");
    // At step 0 every alpha is 1: transparent pixels are all wrong.
    assert!(s.layers > 6 && s.alpha_mse > 0.3, "{s:?}");
}
