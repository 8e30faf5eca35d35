//! Evaluating generated images of synthetic scenes against their ground truth.
//!
//! Ground truth is a folder per scene as `zlayer synth --format png` writes it (`scene.json`,
//! `image.png`, `amodal-K.png`, `visible-K.png`, `layer-K.png`). Predictions are images named
//! after those folders: `PRED/<name>.png` or `PRED/<name>/image.png`. A prediction folder may
//! also hold per-instance masks, which are then used instead of segmenting the image:
//! `visible-K.png` (who owns each pixel), `amodal-K.png` (the boxes), `layer-K.png` (alpha,
//! for the matting errors). Otherwise the image is segmented ([`crate::segment`]) with the
//! ground-truth boxes and caption colours. Then:
//!
//! - occlusion: for every declared (ordered) overlapping pair, the front is the instance
//!   owning more of the ground-truth amodal overlap; accuracy, Occ. F1, WHDR;
//! - layout: visible-mask IoU per instance (mIoU), the same inside each pair's amodal overlap
//!   (O-mIoU), and OverLayBench's box mIoU / O-mIoU from the segmented masks' boxes;
//! - boundary: DAVIS boundary F and Boundary IoU of each mask; the image error against signed
//!   distance to the foreground silhouette (PELC's curve) and within 2 px of it (halo L1);
//! - matting (with predicted layers): SAD, MSE, Grad, Conn of each instance's alpha, over the
//!   ground-truth alpha's unknown band and over the whole image.
//!
//! A scene whose declared order is cyclic is reported as `cyclic` and not scored; pairs
//! declared in both directions are counted as `ambiguous`, and pairs whose order even the
//! ground-truth image cannot show as `hidden`; both are left out of the order scores. A pair
//! is hidden when the front instance is visible in fewer than max(10, 10%) of their amodal
//! overlap pixels (a third instance covers the rest, or only an anti-aliased sliver shows),
//! or when both are glass (a mix of two translucent colours reads the same in either order).

use crate::boundary::{boundary_f, boundary_iou, error_by_distance, halo_l1};
use crate::layout::{BoxScore, LabeledBox, box_scores, mask_iou, mean, region_iou};
use crate::matting::{Matting, Region, matting_regions};
use crate::occlusion::{OcclusionScore, front_by_ownership, score};
use crate::segment::{Target, segment};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use zlayer_scene::raster::tight_box;
use zlayer_scene::{Scene, SceneError};
use zlayer_synth::vocab::{Look, Material};

pub use crate::summary::{Summary, csv, markdown, summarize};

/// Why an evaluation could not run; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file is missing or unreadable.
    #[error("{0}: {1}")]
    File(PathBuf, String),
    /// A ground-truth scene is invalid for a reason other than a cycle.
    #[error("{0}: invalid scene:\n{1}")]
    Scene(PathBuf, SceneError),
    /// Prediction and ground truth differ in size.
    #[error("{0}: the image is {1}×{2}, the ground truth {3}×{4}")]
    Size(PathBuf, usize, usize, usize, usize),
    /// A folder holds nothing to evaluate.
    #[error("{0}: no ground-truth scenes (folders with scene.json) found")]
    Empty(PathBuf),
}

/// One ground-truth scene in memory.
#[derive(Debug, Clone)]
pub struct GtScene {
    /// Folder name.
    pub name: String,
    /// The scene (boxes, captions, order).
    pub scene: Scene,
    /// Ordered pairs (front, back); `None` if the order is cyclic.
    pub pairs: Option<Vec<(usize, usize)>>,
    /// Pairs declared both ways.
    pub ambiguous: usize,
    /// Amodal masks, 0–255.
    pub amodal: Vec<Vec<u8>>,
    /// Visible masks, 0–255.
    pub visible: Vec<Vec<u8>>,
    /// Width and height.
    pub size: (usize, usize),
    /// The ground-truth image.
    pub image: Vec<[u8; 3]>,
    /// Per-instance layer alpha (0–255), loaded only when predictions have layers.
    pub alpha: Option<Vec<Vec<u8>>>,
}

/// A prediction: the image, and per-instance masks when the model wrote them.
#[derive(Debug, Clone, Default)]
pub struct Prediction {
    /// RGB image.
    pub image: Vec<[u8; 3]>,
    /// Visible masks (0–255), used instead of segmenting.
    pub visible: Option<Vec<Vec<u8>>>,
    /// Amodal masks (0–255), whose boxes are compared with the ground-truth boxes.
    pub amodal: Option<Vec<Vec<u8>>>,
    /// Layer alphas (0–255), for the matting errors.
    pub alpha: Option<Vec<Vec<u8>>>,
}

/// The scores of one scene.
#[derive(Debug, Clone, Serialize)]
pub struct SceneResult {
    /// Folder name.
    pub name: String,
    /// `scored` or `cyclic`.
    pub status: &'static str,
    /// Instances.
    pub instances: usize,
    /// Pairs declared both ways (not scored for order).
    pub ambiguous_pairs: usize,
    /// Pairs whose order the ground-truth image cannot show (not scored for order).
    pub hidden_pairs: usize,
    /// Order scores.
    pub occlusion: Option<OcclusionScore>,
    /// Mean visible-mask IoU.
    pub mask_miou: Option<f64>,
    /// Mean visible-mask IoU inside the pairs' amodal overlaps.
    pub mask_o_miou: Option<f64>,
    /// OverLayBench box scores.
    pub boxes: Option<BoxScore>,
    /// Mean DAVIS boundary F.
    pub boundary_f: Option<f64>,
    /// Mean Boundary IoU.
    pub boundary_iou: Option<f64>,
    /// Mean absolute image error within 2 px of the foreground silhouette.
    pub halo_l1: Option<f64>,
    /// Image error binned by signed distance to the silhouette (summed into the summary).
    #[serde(skip)]
    pub curve: Vec<crate::boundary::DistanceBin>,
    /// Mean matting errors over instances, in the ground-truth alpha's unknown band.
    pub matting: Option<crate::matting::Matting>,
    /// The same over the whole image.
    pub matting_whole: Option<crate::matting::Matting>,
}

fn file_err(p: &Path, e: impl std::fmt::Display) -> EvalError {
    EvalError::File(p.to_path_buf(), e.to_string())
}

fn read_mask(path: &Path) -> Result<(usize, usize, Vec<u8>), EvalError> {
    let m = zlayer_composite::io::read_mask_png(path).map_err(|e| file_err(path, e))?;
    Ok((
        m.width,
        m.height,
        m.data
            .iter()
            .map(|&v| zlayer_composite::rgba::quantize8(v))
            .collect(),
    ))
}

/// Loads a ground-truth folder.
pub fn load_gt(dir: &Path) -> Result<GtScene, EvalError> {
    let sp = dir.join("scene.json");
    let text = std::fs::read_to_string(&sp).map_err(|e| file_err(&sp, e))?;
    let scene = zlayer_scene::import_str(&text)
        .map_err(|e| EvalError::Scene(sp.clone(), e))?
        .scene;
    let (mut amodal, mut visible, mut size) = (
        Vec::new(),
        Vec::new(),
        (scene.width as usize, scene.height as usize),
    );
    for k in 0..scene.instances.len() {
        let (w, h, a) = read_mask(&dir.join(format!("amodal-{k}.png")))?;
        let (_, _, v) = read_mask(&dir.join(format!("visible-{k}.png")))?;
        size = (w, h);
        amodal.push(a);
        visible.push(v);
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let image = read_rgb(&dir.join("image.png"))?.2;
    GtScene::new(name, scene, (amodal, visible), size, image).map_err(|e| EvalError::Scene(sp, e))
}

impl GtScene {
    /// A ground-truth scene from its parts (`masks` = amodal, visible), its order read from
    /// the scene; a cyclic order leaves `pairs` empty, any other invalid scene is an error.
    pub fn new(
        name: String,
        scene: Scene,
        (amodal, visible): (Vec<Vec<u8>>, Vec<Vec<u8>>),
        size: (usize, usize),
        image: Vec<[u8; 3]>,
    ) -> Result<Self, SceneError> {
        let imported = zlayer_scene::Imported {
            scene: scene.clone(),
            format: zlayer_scene::Format::Native,
            warnings: Vec::new(),
        };
        let (pairs, ambiguous) = match zlayer_scene::validate(imported) {
            Ok(l) => (
                Some(l.scene.graph().edges().collect()),
                l.scene.graph().unordered_pairs().len(),
            ),
            Err(e) if e.errors().all(|d| d.message.starts_with("occlusion cycle")) => (None, 0),
            Err(e) => return Err(e),
        };
        Ok(Self {
            name,
            scene,
            pairs,
            ambiguous,
            amodal,
            visible,
            size,
            image,
            alpha: None,
        })
    }
}

/// Per-instance ground-truth layer alphas, for the matting errors.
pub fn load_gt_alpha(dir: &Path, n: usize) -> Result<Vec<Vec<u8>>, EvalError> {
    (0..n)
        .map(|k| read_alpha(&dir.join(format!("layer-{k}.png"))))
        .collect()
}

fn read_alpha(path: &Path) -> Result<Vec<u8>, EvalError> {
    let img = zlayer_composite::read_png(path).map_err(|e| file_err(path, e))?;
    Ok(img
        .pixels
        .iter()
        .map(|p| zlayer_composite::rgba::quantize8(p.0[3]))
        .collect())
}

/// Segmenter targets from a scene's boxes and caption colours.
pub fn targets(scene: &Scene) -> Result<Vec<Target>, String> {
    scene
        .instances
        .iter()
        .map(|i| {
            let look = Look::parse(&i.caption).map_err(|e| format!("instance {:?}: {e}", i.id))?;
            Ok(Target {
                bbox: i.bbox.to_array(),
                rgb: look.colour.rgb(),
                glass: look.material == Material::Glass,
            })
        })
        .collect()
}

/// Pixel owners from predicted visible masks: the instance with the highest coverage, if ≥ 0.5.
fn owners(visible: &[Vec<u8>], px: usize) -> Vec<Option<usize>> {
    (0..px)
        .map(|p| {
            (0..visible.len())
                .filter(|&k| visible[k][p] >= 128)
                .max_by_key(|&k| visible[k][p])
        })
        .collect()
}

/// Who owns each pixel of a prediction: its visible masks where it has them, else the
/// segmenter's reading of its image.
pub fn pixel_owners(gt: &GtScene, pred: &Prediction, targets: &[Target]) -> Vec<Option<usize>> {
    let (w, h) = gt.size;
    match &pred.visible {
        Some(v) => owners(v, w * h),
        None => segment(&pred.image, w, h, targets),
    }
}

/// The declared pairs `(front, back)` whose order the ground-truth image shows, each with its
/// amodal overlap; the rest are hidden (see the module notes).
pub fn shown_pairs(
    gt: &GtScene,
    pairs: &[(usize, usize)],
    targets: &[Target],
) -> Vec<((usize, usize), Vec<bool>)> {
    let mut shown = Vec::new();
    for &(i, j) in pairs {
        let region: Vec<bool> = gt.amodal[i]
            .iter()
            .zip(&gt.amodal[j])
            .map(|(&a, &b)| a >= 128 && b >= 128)
            .collect();
        let area = region.iter().filter(|&&x| x).count();
        let front = region
            .iter()
            .zip(&gt.visible[i])
            .filter(|&(&r, &v)| r && v >= 128)
            .count();
        let translucent = targets[i].glass && targets[j].glass;
        if front >= (area / 10).max(10) && !translucent {
            shown.push(((i, j), region));
        }
    }
    shown
}

/// Scores a prediction of a ground-truth scene.
pub fn evaluate(gt: &GtScene, pred: &Prediction, targets: &[Target]) -> SceneResult {
    let (w, h) = gt.size;
    let n = gt.scene.instances.len();
    let mut r = SceneResult {
        name: gt.name.clone(),
        status: "cyclic",
        instances: n,
        ambiguous_pairs: gt.ambiguous,
        hidden_pairs: 0,
        occlusion: None,
        mask_miou: None,
        mask_o_miou: None,
        boxes: None,
        boundary_f: None,
        boundary_iou: None,
        halo_l1: None,
        curve: Vec::new(),
        matting: None,
        matting_whole: None,
    };
    let Some(pairs) = &gt.pairs else { return r };
    r.status = "scored";
    let labels = pixel_owners(gt, pred, targets);
    let mask: Vec<Vec<bool>> = (0..n)
        .map(|k| labels.iter().map(|&l| l == Some(k)).collect())
        .collect();
    let truth: Vec<Vec<bool>> = gt
        .visible
        .iter()
        .map(|v| v.iter().map(|&x| x >= 128).collect())
        .collect();
    let (shown, regions): (Vec<_>, Vec<_>) = shown_pairs(gt, pairs, targets).into_iter().unzip();
    r.hidden_pairs = pairs.len() - shown.len();
    let fronts: Vec<Option<usize>> = shown
        .iter()
        .zip(&regions)
        .map(|(&(i, j), reg)| front_by_ownership(&labels, reg, i, j))
        .collect();
    r.occlusion = Some(score(&shown, &fronts));
    r.mask_miou = mean((0..n).map(|k| mask_iou(&mask[k], &truth[k])));
    r.mask_o_miou = mean(shown.iter().zip(&regions).map(|(&(i, j), reg)| {
        mean([
            region_iou(&mask[i], &truth[i], reg),
            region_iou(&mask[j], &truth[j], reg),
        ])
    }));
    let category = |k: usize| {
        gt.scene.instances[k]
            .category
            .clone()
            .unwrap_or_else(|| gt.scene.instances[k].caption.clone())
    };
    let gt_boxes: Vec<LabeledBox> = (0..n)
        .map(|k| LabeledBox {
            bbox: gt.scene.instances[k].bbox,
            category: category(k),
        })
        .collect();
    let pred_box = |k: usize| match &pred.amodal {
        Some(a) => tight_box(&a[k], w, |v| v > 0),
        None => tight_box(&mask[k], w, |on| on),
    };
    let pred_boxes: Vec<LabeledBox> = (0..n)
        .filter_map(|k| {
            pred_box(k).map(|b| LabeledBox {
                bbox: b,
                category: category(k),
            })
        })
        .collect();
    r.boxes = Some(box_scores(&gt_boxes, &pred_boxes));
    let present: Vec<usize> = (0..n).filter(|&k| truth[k].iter().any(|&t| t)).collect();
    r.boundary_f = mean(
        present
            .iter()
            .map(|&k| Some(boundary_f(&mask[k], &truth[k], w, h))),
    );
    r.boundary_iou = mean(
        present
            .iter()
            .map(|&k| Some(boundary_iou(&mask[k], &truth[k], w, h))),
    );
    // Image error around the foreground silhouette.
    let fg: Vec<bool> = (0..w * h)
        .map(|p| gt.amodal.iter().any(|a| a[p] >= 128))
        .collect();
    let err: Vec<f64> = pred
        .image
        .iter()
        .zip(&gt.image)
        .map(|(a, b)| {
            (0..3)
                .map(|c| (a[c] as f64 - b[c] as f64).abs())
                .sum::<f64>()
                / (3.0 * 255.0)
        })
        .collect();
    r.halo_l1 = halo_l1(&err, &fg, w, h, 2.0);
    r.curve = error_by_distance(&err, &fg, w, h, CURVE_MAX);
    if let (Some(pa), Some(ga)) = (&pred.alpha, &gt.alpha) {
        let f = |v: &[u8]| v.iter().map(|&x| x as f64 / 255.0).collect::<Vec<f64>>();
        let per: Vec<(Matting, Matting)> = (0..n)
            .map(|k| {
                let (p, g) = (f(&pa[k]), f(&ga[k]));
                let trimap: Vec<u8> = ga[k]
                    .iter()
                    .map(|&a| match a {
                        0 => 0,
                        255 => 255,
                        _ => 128,
                    })
                    .collect();
                let m = matting_regions(&p, &g, w, h, &[Region::Unknown(&trimap), Region::Whole]);
                (m[0], m[1])
            })
            .collect();
        let avg = |pick: fn(&(Matting, Matting)) -> Matting| {
            let k = per.len().max(1) as f64;
            let sum = per.iter().map(pick).fold([0.0; 4], |a, m| {
                [a[0] + m.sad, a[1] + m.mse, a[2] + m.grad, a[3] + m.conn]
            });
            Matting {
                sad: sum[0] / k,
                mse: sum[1] / k,
                grad: sum[2] / k,
                conn: sum[3] / k,
            }
        };
        r.matting = Some(avg(|m| m.0));
        r.matting_whole = Some(avg(|m| m.1));
    }
    r
}

/// Signed distances (px) the error curve spans on either side of the silhouette.
pub const CURVE_MAX: i32 = 8;

/// The predicted image for a scene: `PRED/<name>.png` or `PRED/<name>/image.png`.
pub fn pred_path(pred: &Path, name: &str) -> Result<PathBuf, EvalError> {
    let a = pred.join(format!("{name}.png"));
    let b = pred.join(name).join("image.png");
    if a.is_file() {
        Ok(a)
    } else if b.is_file() {
        Ok(b)
    } else {
        Err(file_err(
            &a,
            format!(
                "no prediction for scene {name:?} (looked for {} and {})",
                a.display(),
                b.display()
            ),
        ))
    }
}

/// An image file as 8-bit RGB with its width and height.
pub fn read_rgb(path: &Path) -> Result<(usize, usize, Vec<[u8; 3]>), EvalError> {
    let img = zlayer_composite::read_png(path).map_err(|e| file_err(path, e))?;
    let px = img.pixels.iter().map(|p| {
        let [r, g, b, _] = p.to_u8().0;
        [r, g, b]
    });
    Ok((img.width, img.height, px.collect()))
}

/// Evaluates every ground-truth scene folder under `gt` against `pred`, in parallel.
pub fn evaluate_dirs(pred: &Path, gt: &Path) -> Result<Vec<SceneResult>, EvalError> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(gt)
        .map_err(|e| file_err(gt, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("scene.json").is_file())
        .collect();
    if dirs.is_empty() {
        return Err(EvalError::Empty(gt.to_path_buf()));
    }
    dirs.sort();
    dirs.par_iter()
        .map(|d| {
            let mut g = load_gt(d)?;
            let pred = load_prediction(pred, &g)?;
            if pred.alpha.is_some() {
                g.alpha = Some(load_gt_alpha(d, g.scene.instances.len())?);
            }
            let t = targets(&g.scene).map_err(|m| file_err(&d.join("scene.json"), m))?;
            Ok(evaluate(&g, &pred, &t))
        })
        .collect()
}

/// Reads a scene's prediction: the image, and the per-instance masks its folder holds.
pub fn load_prediction(pred: &Path, g: &GtScene) -> Result<Prediction, EvalError> {
    let path = pred_path(pred, &g.name)?;
    let (w, h, image) = read_rgb(&path)?;
    if (w, h) != g.size {
        return Err(EvalError::Size(path, w, h, g.size.0, g.size.1));
    }
    let dir = pred.join(&g.name);
    let n = g.scene.instances.len();
    let masks = |stem: &str| -> Result<Option<Vec<Vec<u8>>>, EvalError> {
        if n == 0 || !dir.join(format!("{stem}-0.png")).is_file() {
            return Ok(None);
        }
        (0..n)
            .map(|k| {
                let p = dir.join(format!("{stem}-{k}.png"));
                let (mw, mh, m) = read_mask(&p)?;
                if (mw, mh) != g.size {
                    return Err(EvalError::Size(p, mw, mh, g.size.0, g.size.1));
                }
                Ok(m)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    };
    let alpha = if n > 0 && dir.join("layer-0.png").is_file() {
        Some(
            (0..n)
                .map(|k| read_alpha(&dir.join(format!("layer-{k}.png"))))
                .collect::<Result<Vec<_>, _>>()?,
        )
    } else {
        None
    };
    Ok(Prediction {
        image,
        visible: masks("visible")?,
        amodal: masks("amodal")?,
        alpha,
    })
}
