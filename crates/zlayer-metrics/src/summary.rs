//! Scene results summed up: means over scenes ([`Summary`]), the Markdown report and the
//! per-scene CSV that `zlayer eval` writes.

use crate::boundary::{DistanceBin, DistanceHistogram};
use crate::eval::{CURVE_MAX, SceneResult};
use crate::layout::mean;
use crate::matting::Matting;
use crate::occlusion::OcclusionScore;
use serde::Serialize;

/// Means over scenes.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Scenes evaluated.
    pub scenes: usize,
    /// Scenes not scored because their order is cyclic.
    pub cyclic: usize,
    /// Ordered pairs scored.
    pub pairs: usize,
    /// Pairs declared both ways, left out.
    pub ambiguous_pairs: usize,
    /// Pairs whose order the ground-truth image cannot show, left out.
    pub hidden_pairs: usize,
    /// Pairwise order accuracy over all pairs (micro average).
    pub order_accuracy: Option<f64>,
    /// Occ. F1, averaged over images.
    pub occ_f1: Option<f64>,
    /// Dep. WHDR (percent), averaged over images with pairs.
    pub whdr: Option<f64>,
    /// Mask mIoU.
    pub mask_miou: Option<f64>,
    /// Mask O-mIoU.
    pub mask_o_miou: Option<f64>,
    /// OverLayBench box mIoU.
    pub box_miou: Option<f64>,
    /// OverLayBench box O-mIoU.
    pub box_o_miou: Option<f64>,
    /// DAVIS boundary F.
    pub boundary_f: Option<f64>,
    /// Boundary IoU.
    pub boundary_iou: Option<f64>,
    /// Halo L1 (mean absolute error in [0, 1] within 2 px of the silhouette).
    pub halo_l1: Option<f64>,
    /// Image error against signed distance to the silhouette, pooled over scenes.
    pub error_curve: Vec<DistanceBin>,
    /// Matting errors in the unknown band, mean over scenes with predicted layers.
    pub matting: Option<Matting>,
    /// Matting errors over whole images.
    pub matting_whole: Option<Matting>,
}

fn mean_matting<'a>(ms: impl Iterator<Item = &'a Matting>) -> Option<Matting> {
    let (sum, n) = ms.fold(([0.0; 4], 0usize), |(a, n), m| {
        (
            [a[0] + m.sad, a[1] + m.mse, a[2] + m.grad, a[3] + m.conn],
            n + 1,
        )
    });
    (n > 0).then(|| {
        let k = n as f64;
        Matting {
            sad: sum[0] / k,
            mse: sum[1] / k,
            grad: sum[2] / k,
            conn: sum[3] / k,
        }
    })
}

/// Pools per-scene curves: each bin's mean weighted by its pixel count.
fn pool_curves(rs: &[SceneResult]) -> Vec<DistanceBin> {
    let mut hist = DistanceHistogram::new(CURVE_MAX);
    for b in rs.iter().flat_map(|r| &r.curve) {
        hist.add(b.distance, b.mean_error * b.count as f64, b.count);
    }
    hist.bins()
}

/// Averages per-scene results (per image, then over images, as the definitions say).
pub fn summarize(rs: &[SceneResult]) -> Summary {
    let occ: Vec<&OcclusionScore> = rs.iter().filter_map(|r| r.occlusion.as_ref()).collect();
    let (pairs, correct) = occ
        .iter()
        .fold((0, 0), |(p, c), o| (p + o.pairs, c + o.correct));
    Summary {
        scenes: rs.len(),
        cyclic: rs.iter().filter(|r| r.status == "cyclic").count(),
        pairs,
        ambiguous_pairs: rs.iter().map(|r| r.ambiguous_pairs).sum(),
        hidden_pairs: rs.iter().map(|r| r.hidden_pairs).sum(),
        order_accuracy: (pairs > 0).then(|| correct as f64 / pairs as f64),
        occ_f1: mean(occ.iter().map(|o| Some(o.occ_f1))),
        whdr: mean(occ.iter().map(|o| o.whdr)),
        mask_miou: mean(rs.iter().map(|r| r.mask_miou)),
        mask_o_miou: mean(rs.iter().map(|r| r.mask_o_miou)),
        box_miou: mean(rs.iter().map(|r| r.boxes.and_then(|b| b.miou))),
        box_o_miou: mean(rs.iter().map(|r| r.boxes.and_then(|b| b.o_miou))),
        boundary_f: mean(rs.iter().map(|r| r.boundary_f)),
        boundary_iou: mean(rs.iter().map(|r| r.boundary_iou)),
        halo_l1: mean(rs.iter().map(|r| r.halo_l1)),
        error_curve: pool_curves(rs),
        matting: mean_matting(rs.iter().filter_map(|r| r.matting.as_ref())),
        matting_whole: mean_matting(rs.iter().filter_map(|r| r.matting_whole.as_ref())),
    }
}

fn cell(v: Option<f64>) -> String {
    v.map_or("–".into(), |x| format!("{x:.4}"))
}

/// The summary as a Markdown table.
pub fn markdown(s: &Summary, title: &str) -> String {
    format!(
        "# {title}\n\n{} scenes ({} cyclic, not scored), {} ordered pairs scored ({} ambiguous and {} hidden pairs left out).\n\n\
         | order acc. | Occ. F1 | WHDR (%) | mIoU (mask) | O-mIoU (mask) | mIoU (box) | O-mIoU (box) | boundary F | boundary IoU |\n\
         |---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
        s.scenes,
        s.cyclic,
        s.pairs,
        s.ambiguous_pairs,
        s.hidden_pairs,
        cell(s.order_accuracy),
        cell(s.occ_f1),
        cell(s.whdr),
        cell(s.mask_miou),
        cell(s.mask_o_miou),
        cell(s.box_miou),
        cell(s.box_o_miou),
        cell(s.boundary_f),
        cell(s.boundary_iou)
    ) + &extra_tables(s)
}

fn extra_tables(s: &Summary) -> String {
    let mut out = format!(
        "\nHalo L1 (within 2 px of the silhouette): {}\n",
        cell(s.halo_l1)
    );
    if !s.error_curve.is_empty() {
        out += "\n| signed distance (px) | mean abs. error | pixels |\n|---|---|---|\n";
        for b in &s.error_curve {
            out += &format!("| {} | {:.5} | {} |\n", b.distance, b.mean_error, b.count);
        }
    }
    for (name, m) in [
        ("unknown band", s.matting),
        ("whole image", s.matting_whole),
    ] {
        if let Some(m) = m {
            out += &format!(
                "\nMatting ({name}): SAD {:.5}, MSE {:.6}, Grad {:.5}, Conn {:.5}\n",
                m.sad, m.mse, m.grad, m.conn
            );
        }
    }
    out
}

/// Per-scene results as CSV.
pub fn csv(rs: &[SceneResult]) -> String {
    let mut out = String::from(
        "scene,status,instances,pairs,correct,ambiguous_pairs,hidden_pairs,order_accuracy,occ_f1,whdr,mask_miou,mask_o_miou,box_miou,box_o_miou,boundary_f,boundary_iou,halo_l1,sad,mse,grad,conn\n",
    );
    let f = |v: Option<f64>| v.map_or(String::new(), |x| format!("{x:.6}"));
    for r in rs {
        let o = r.occlusion.as_ref();
        out += &format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.name,
            r.status,
            r.instances,
            o.map_or(0, |o| o.pairs),
            o.map_or(0, |o| o.correct),
            r.ambiguous_pairs,
            r.hidden_pairs,
            f(o.and_then(|o| o.accuracy)),
            f(o.map(|o| o.occ_f1)),
            f(o.and_then(|o| o.whdr)),
            f(r.mask_miou),
            f(r.mask_o_miou),
            f(r.boxes.and_then(|b| b.miou)),
            f(r.boxes.and_then(|b| b.o_miou)),
            f(r.boundary_f),
            f(r.boundary_iou),
            f(r.halo_l1),
            f(r.matting.map(|m| m.sad)),
            f(r.matting.map(|m| m.mse)),
            f(r.matting.map(|m| m.grad)),
            f(r.matting.map(|m| m.conn))
        );
    }
    out
}
