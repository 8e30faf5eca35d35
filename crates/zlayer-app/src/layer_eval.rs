//! How good are a method's RGBA layers? Scored on held-out synthetic scenes against
//! SA-Z-synth's exact amodal layers (the layer issue's protocol).
//!
//! Each instance's predicted layer (colour, alpha) is compared with its true amodal layer:
//! the RGB L1 of premultiplied colour over its visible pixels and, separately, over its hidden
//! ones (inside the amodal mask, behind others), and alpha SAD, MSE, Grad and Conn over the
//! whole image (`zlayer_metrics::matting`). Methods without a model are the baselines:
//!
//! - `segmenter-cutout`: today's hard cut-out, the metrics segmenter's pixels of the instance
//!   (alpha 0 or 1) with the image's colour;
//! - `visible-cutout`: the exact visible coverage as alpha with the image's colour, the best a
//!   method that leaves the hidden part empty can do;
//! - `exact`: the true layers, a check of the scoring (every error 0).

use rayon::prelude::*;
use zlayer_metrics::matting::{Region, matting};
use zlayer_metrics::segment::segment;
use zlayer_synth::{Params, Split, SynthScene, scene_at};

/// The layer sources scored without a model.
pub const BASELINES: [&str; 3] = ["segmenter-cutout", "visible-cutout", "exact"];

/// One method's scores, pooled over every instance layer.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LayerScores {
    /// The method.
    pub method: String,
    /// Mean |premultiplied RGB error| over visible pixels, in [0, 1].
    pub visible_l1: f64,
    /// The same over hidden pixels (amodal, not visible).
    pub hidden_l1: f64,
    /// Mean alpha SAD per layer (/1000).
    pub sad: f64,
    /// Mean alpha MSE per layer.
    pub mse: f64,
    /// Mean alpha gradient error per layer (/1000).
    pub grad: f64,
    /// Mean alpha connectivity error per layer (/1000).
    pub conn: f64,
    /// Layers scored.
    pub layers: usize,
    /// PSNR (dB) of the layers re-composited over the method's plate in the scene's order,
    /// against the input image; methods without a plate have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recomposite_psnr: Option<f64>,
}

/// A predicted layer: premultiplied colour and alpha per pixel, in [0, 1].
pub struct Predicted {
    /// Colour × alpha.
    pub premul: Vec<[f32; 3]>,
    /// Alpha.
    pub alpha: Vec<f32>,
}

/// A baseline's layers for scene `s`, one per instance.
pub fn baseline(name: &str, s: &SynthScene) -> Result<Vec<Predicted>, String> {
    let n = s.layers.len();
    let cut = |alpha: &dyn Fn(usize) -> f32| Predicted {
        premul: (0..s.image.len())
            .map(|p| s.image[p].map(|c| c as f32 / 255.0 * alpha(p)))
            .collect(),
        alpha: (0..s.image.len()).map(alpha).collect(),
    };
    Ok(match name {
        "exact" => s
            .layers
            .iter()
            .map(|l| Predicted {
                premul: l
                    .iter()
                    .map(|p| {
                        let a = p.0[3] as f32 / 255.0;
                        [0, 1, 2].map(|c| p.0[c] as f32 / 255.0 * a)
                    })
                    .collect(),
                alpha: l.iter().map(|p| p.0[3] as f32 / 255.0).collect(),
            })
            .collect(),
        "visible-cutout" => (0..n)
            .map(|k| cut(&|p| s.visible[k][p] as f32 / 255.0))
            .collect(),
        "segmenter-cutout" => {
            let size = (s.image.len() as f64).sqrt() as usize;
            let targets = zlayer_metrics::eval::targets(&s.scene)?;
            let labels = segment(&s.image, size, size, &targets);
            (0..n)
                .map(|k| cut(&|p| f32::from(u8::from(labels[p] == Some(k)))))
                .collect()
        }
        other => {
            return Err(format!(
                "unknown layer method {other:?}: use {}",
                BASELINES.join(", ")
            ));
        }
    })
}

/// Sums over layers, merged across scenes.
#[derive(Default, Clone, Copy)]
struct Sums {
    visible: (f64, usize),
    hidden: (f64, usize),
    sad: f64,
    mse: f64,
    grad: f64,
    conn: f64,
    layers: usize,
}

impl Sums {
    fn add(mut self, o: Sums) -> Sums {
        self.visible = (self.visible.0 + o.visible.0, self.visible.1 + o.visible.1);
        self.hidden = (self.hidden.0 + o.hidden.0, self.hidden.1 + o.hidden.1);
        self.sad += o.sad;
        self.mse += o.mse;
        self.grad += o.grad;
        self.conn += o.conn;
        self.layers += o.layers;
        self
    }
}

/// Scores `pred` (one layer per instance) against scene `s`'s exact layers.
fn score(s: &SynthScene, pred: &[Predicted]) -> Sums {
    let size = (s.image.len() as f64).sqrt() as usize;
    let mut sums = Sums::default();
    for (k, p) in pred.iter().enumerate() {
        let truth = &s.layers[k];
        for (q, t) in truth.iter().enumerate() {
            let a = t.0[3] as f32 / 255.0;
            let err = (0..3)
                .map(|c| (p.premul[q][c] - t.0[c] as f32 / 255.0 * a).abs() as f64)
                .sum::<f64>()
                / 3.0;
            if s.visible[k][q] >= 128 {
                sums.visible = (sums.visible.0 + err, sums.visible.1 + 1);
            } else if s.amodal[k][q] >= 128 {
                sums.hidden = (sums.hidden.0 + err, sums.hidden.1 + 1);
            }
        }
        // Both alphas go through f32, as the predictions do.
        let gt: Vec<f64> = truth
            .iter()
            .map(|t| (t.0[3] as f32 / 255.0) as f64)
            .collect();
        let pa: Vec<f64> = p.alpha.iter().map(|&a| a as f64).collect();
        let m = matting(&pa, &gt, size, size, Region::Whole);
        sums.sad += m.sad;
        sums.mse += m.mse;
        sums.grad += m.grad;
        sums.conn += m.conn;
        sums.layers += 1;
    }
    sums
}

/// Scores each of `methods` (baseline names) on scenes `0..n` of `seed` in `split`.
pub fn evaluate(
    methods: &[&str],
    seed: u64,
    n: usize,
    size: u32,
    split: Split,
) -> Result<Vec<LayerScores>, String> {
    let scenes: Vec<SynthScene> = (0..n as u64)
        .into_par_iter()
        .map(|i| scene_at(seed, i, &Params::new(split, size)))
        .collect();
    methods
        .iter()
        .map(|&m| {
            let sums = scenes
                .par_iter()
                .map(|s| baseline(m, s).map(|p| score(s, &p)))
                .try_reduce(Sums::default, |a, b| Ok(a.add(b)))?;
            Ok(pooled(m, sums, None))
        })
        .collect()
}

fn pooled(method: &str, sums: Sums, recomposite_psnr: Option<f64>) -> LayerScores {
    let mean = |(t, c): (f64, usize)| t / c.max(1) as f64;
    let per = sums.layers.max(1) as f64;
    LayerScores {
        method: method.to_string(),
        visible_l1: mean(sums.visible),
        hidden_l1: mean(sums.hidden),
        sad: sums.sad / per,
        mse: sums.mse / per,
        grad: sums.grad / per,
        conn: sums.conn / per,
        layers: sums.layers,
        recomposite_psnr,
    }
}

/// Scores a model's decompositions of `scenes` (one [`Decomposition`] each, in order): its
/// layers as [`evaluate`] scores them, and the re-composite of its layers over its plate in
/// each scene's painter's order against the image.
pub fn score_decompositions(
    method: &str,
    scenes: &[SynthScene],
    decomps: &[Decomposition],
) -> LayerScores {
    let (mut sums, mut se, mut count) = (Sums::default(), 0.0, 0usize);
    for (s, d) in scenes.iter().zip(decomps) {
        sums = sums.add(score(s, &d.layers));
        let order = s.back_to_front();
        for (p, px) in s.image.iter().enumerate() {
            let mut c = d.plate[p];
            for &k in &order {
                let (l, a) = (&d.layers[k], d.layers[k].alpha[p]);
                c = [0, 1, 2].map(|ch| l.premul[p][ch] + c[ch] * (1.0 - a));
            }
            for ch in 0..3 {
                let e = (c[ch] - px[ch] as f32 / 255.0) as f64;
                se += e * e;
            }
            count += 3;
        }
    }
    let mse = se / count.max(1) as f64;
    pooled(method, sums, Some(10.0 * (1.0 / mse.max(1e-12)).log10()))
}

/// A method's layers for one scene, with the background plate they go over.
pub struct Decomposition {
    /// One layer per instance.
    pub layers: Vec<Predicted>,
    /// The plate, RGB in [0, 1].
    pub plate: Vec<[f32; 3]>,
}
