//! The synthetic world as training and evaluation data: scenes by index, batches, tensors,
//! layouts and the vocabulary the text encoder is built from.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use zlayer_model::layout_model::SceneLayout;
use zlayer_scene::{TokenGrid, validate_native};
use zlayer_synth::{Params, Split, SynthScene, scene_at};

/// Scenes `first..first + n` of `seed`, cycling through `splits`, rendered in parallel.
pub fn scenes(seed: u64, first: u64, n: usize, size: u32, splits: &[Split]) -> Vec<SynthScene> {
    (0..n as u64)
        .into_par_iter()
        .map(|i| {
            let split = splits[((first + i) % splits.len() as u64) as usize];
            scene_at(seed, first + i, &Params::new(split, size))
        })
        .collect()
}

/// Candidate chunks of `batch` scenes a filtered base batch may draw before it settles.
const OVERDRAW: usize = 4;

/// The scenes of base-training step `step`. With `min_visible` > 0 they are the first `batch`
/// of candidates `step·batch·4 ..` whose every object shows at least that many pixels (the
/// least hidden of the rest fill a shortfall), so that a prompt names only what its image
/// shows; with 0, scenes `step·batch ..` as drawn.
pub fn base_batch(
    seed: u64,
    step: usize,
    batch: usize,
    size: u32,
    splits: &[Split],
    min_visible: f32,
) -> Vec<SynthScene> {
    if min_visible <= 0.0 {
        return scenes(seed, (step * batch) as u64, batch, size, splits);
    }
    let first = (step * batch * OVERDRAW) as u64;
    let (mut kept, mut rest) = (Vec::with_capacity(batch), Vec::new());
    for chunk in 0..OVERDRAW {
        let drawn = scenes(seed, first + (chunk * batch) as u64, batch, size, splits);
        for s in drawn {
            let px = s.min_visible_px();
            if kept.len() < batch && px >= min_visible {
                kept.push(s);
            } else {
                rest.push((px, s));
            }
        }
        if kept.len() == batch {
            return kept;
        }
    }
    // Stable, so equally visible candidates keep their drawing order.
    rest.sort_by(|a, b| b.0.total_cmp(&a.0));
    let short = batch - kept.len();
    kept.extend(rest.into_iter().take(short).map(|(_, s)| s));
    kept
}

/// Their images as (B, 3, S, S) in [−1, 1] (HWC u8 → CHW).
pub fn to_tensor(scenes: &[SynthScene], size: u32, dev: &Device) -> candle_core::Result<Tensor> {
    let data: Vec<f32> = scenes
        .iter()
        .flat_map(|s| {
            (0..3).flat_map(move |c| s.image.iter().map(move |p| p[c] as f32 / 127.5 - 1.0))
        })
        .collect();
    Tensor::from_vec(data, (scenes.len(), 3, size as usize, size as usize), dev)
}

/// Every word of the synthetic world's captions and prompts.
pub fn synth_words() -> Vec<String> {
    let v = zlayer_synth::vocab::vocabulary();
    let mut words: Vec<String> = Vec::new();
    words.extend(v.colours.iter().map(|c| c.0.to_string()));
    words.extend(v.shapes.iter().map(|s| s.to_string()));
    words.extend(v.patterns.iter().map(|s| s.to_string()));
    words.extend(v.materials.iter().map(|s| s.to_string()));
    words.extend(
        v.backgrounds
            .iter()
            .flat_map(|b| b.split(' '))
            .map(str::to_string),
    );
    words.extend(v.prompt_words.iter().map(|s| s.to_string()));
    words
}

/// A synthetic scene on the token grid, with its amodal (or, for `visible`, visible) masks
/// as alignment targets: a token is inside when its cell is at least half covered.
pub fn synth_layout(
    s: &SynthScene,
    grid: (usize, usize),
    visible: bool,
) -> Result<SceneLayout, String> {
    let loaded = validate_native(s.scene.clone()).map_err(|e| e.to_string())?;
    let mut layout = SceneLayout::from_scene(&loaded.scene, grid);
    let size = s.spec.params.size as usize;
    let g = TokenGrid::new(grid.1, grid.0);
    let (cw, ch) = (size / grid.1, size / grid.0);
    let targets = if visible { &s.visible } else { &s.amodal };
    for (inst, amodal) in layout.instances.iter_mut().zip(targets) {
        let mut m = vec![0f32; g.len()];
        for (t, v) in m.iter_mut().enumerate() {
            let (tx, ty) = (t % grid.1, t / grid.1);
            let mut sum = 0u32;
            for y in ty * ch..(ty + 1) * ch {
                for x in tx * cw..(tx + 1) * cw {
                    sum += amodal[y * size + x] as u32;
                }
            }
            *v = (sum as f32 / (255 * cw * ch) as f32 >= 0.5) as u8 as f32;
        }
        inst.amodal = Some(m);
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filtered_batches_show_every_object_and_stay_reproducible() {
        let splits = [Split::Simple, Split::Regular];
        let plain = base_batch(7, 3, 8, 32, &splits, 0.0);
        assert_eq!(
            plain,
            scenes(7, 24, 8, 32, &splits),
            "0 keeps the stream as drawn"
        );
        let min = 10.0;
        let kept = base_batch(7, 3, 8, 32, &splits, min);
        assert_eq!(kept.len(), 8);
        assert!(kept.iter().all(|s| s.min_visible_px() >= min));
        assert_eq!(
            kept,
            base_batch(7, 3, 8, 32, &splits, min),
            "a step's batch is fixed"
        );
        let drawn = scenes(7, 3 * 8 * OVERDRAW as u64, 8 * OVERDRAW, 32, &splits);
        let passing: Vec<_> = drawn.iter().filter(|s| s.min_visible_px() >= min).collect();
        assert!(
            kept.iter().zip(&passing).all(|(k, p)| k == *p),
            "first passing, in order"
        );
        // Nothing passes an impossible bar: the least hidden candidates fill the batch.
        let best = base_batch(7, 3, 8, 32, &splits, 1e9);
        let mut order: Vec<f32> = drawn.iter().map(SynthScene::min_visible_px).collect();
        order.sort_by(|a, b| b.total_cmp(a));
        let got: Vec<f32> = best.iter().map(SynthScene::min_visible_px).collect();
        assert_eq!(got, order[..8]);
    }
}
