//! The segmenter on clean SA-Z-synth images, against the exact visible masks.

use zlayer_metrics::segment::{Target, segment};
use zlayer_synth::vocab::{Look, Material};
use zlayer_synth::{Params, Split, SynthScene, scene_at};

pub fn targets(s: &SynthScene) -> Vec<Target> {
    s.scene
        .instances
        .iter()
        .map(|i| {
            let look = Look::parse(&i.caption).unwrap();
            Target {
                bbox: i.bbox.to_array(),
                rgb: look.colour.rgb(),
                glass: look.material == Material::Glass,
            }
        })
        .collect()
}

/// (correct, total) over box pixels, and over box pixels away from anti-aliased edges.
fn accuracy(s: &SynthScene) -> [(usize, usize); 2] {
    let size = s.spec.params.size as usize;
    let labels = segment(&s.image, size, size, &targets(s));
    let mut acc = [(0, 0); 2];
    for p in 0..size * size {
        let (x, y) = ((p % size) as f64 + 0.5, (p / size) as f64 + 0.5);
        if !s
            .scene
            .instances
            .iter()
            .any(|i| x >= i.bbox.x1 && x < i.bbox.x2 && y >= i.bbox.y1 && y < i.bbox.y2)
        {
            continue;
        }
        let truth = (0..s.visible.len())
            .filter(|&k| s.visible[k][p] >= 128)
            .max_by_key(|&k| s.visible[k][p]);
        let ok = (labels[p] == truth) as usize;
        acc[0].0 += ok;
        acc[0].1 += 1;
        if s.amodal.iter().all(|m| m[p] == 0 || m[p] == 255) {
            acc[1].0 += ok;
            acc[1].1 += 1;
        }
    }
    acc
}

#[test]
fn segmenter_accuracy_on_clean_images() {
    for split in Split::ALL {
        let mut total = [(0, 0); 2];
        for i in 0..200 {
            let a = accuracy(&scene_at(21, i, &Params::new(split, 64)));
            for k in 0..2 {
                total[k].0 += a[k].0;
                total[k].1 += a[k].1;
            }
        }
        let [all, clean] = total.map(|(c, n)| c as f64 / n as f64);
        eprintln!(
            "{split:?}: pixel accuracy {all:.4} in boxes, {clean:.4} away from anti-aliased edges"
        );
        assert!(clean >= 0.99, "{split:?}: {clean:.4}");
    }
}
