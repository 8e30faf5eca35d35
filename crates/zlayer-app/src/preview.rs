//! The preview: a picture of what the user declared, before any generation.
//!
//! Boxes are filled and outlined in their depth level's colour and drawn back to front, so
//! the picture already shows the intended stacking. Overlaps are hatched — grey where an
//! order is declared, magenta where it is not (those regions will be averaged). Arrows run
//! from each occluder to what it covers. A legend below explains the colours.

use zlayer_composite::annotate::{Canvas, Rgba, level_colour};
use zlayer_scene::ValidScene;

const ORDERED: Rgba = [60, 60, 60, 110];
const UNORDERED: Rgba = [255, 0, 200, 220];
const INK: Rgba = [20, 20, 20, 255];

/// Draws the preview with its longest side `size` px, plus a legend strip below.
pub fn draw(valid: &ValidScene, size: u32) -> Option<Canvas> {
    let scene = valid.scene();
    let graph = valid.graph();
    let s = size as f32 / scene.width.max(scene.height) as f32;
    let (w, h) = (
        (scene.width as f32 * s).round(),
        (scene.height as f32 * s).round(),
    );
    let ts = if size >= 512 { 2.0 } else { 1.0 };
    let line_h = 10.0 * ts;
    let levels = graph.level_count().max(1);
    let legend_h = line_h * 3.0 + 12.0;
    let mut c = Canvas::new(w as u32, (h + legend_h) as u32, [235, 235, 235, 255])?;
    c.fill_rect([0.0, 0.0, w, h], [255, 255, 255, 255]);
    let rect = |i: usize| {
        let b = scene.instances[i].bbox;
        (
            b.x1 as f32 * s,
            b.y1 as f32 * s,
            b.width() as f32 * s,
            b.height() as f32 * s,
        )
    };
    let lv = graph.depth_levels();
    for i in graph.draw_order() {
        let (x, y, bw, bh) = rect(i);
        let [r, g, b, _] = level_colour(lv[i]);
        c.fill_rect([x, y, bw, bh], [r, g, b, 70]);
        c.stroke_rect([x, y, bw, bh], level_colour(lv[i]), 2.0 * ts);
    }
    let n = scene.instances.len();
    let ordered =
        |i: usize, j: usize| graph.occludees(i).contains(&j) || graph.occludees(j).contains(&i);
    for i in 0..n {
        for j in i + 1..n {
            if let Some(o) = scene.instances[i].bbox.intersect(scene.instances[j].bbox) {
                let colour = if ordered(i, j) { ORDERED } else { UNORDERED };
                let (x, y) = (o.x1 as f32 * s, o.y1 as f32 * s);
                c.hatch_rect(
                    [x, y, o.width() as f32 * s, o.height() as f32 * s],
                    colour,
                    7.0 * ts,
                    ts,
                );
            }
        }
    }
    let centre = |i: usize| {
        let (x, y, bw, bh) = rect(i);
        (x + bw / 2.0, y + bh / 2.0)
    };
    // Arrows stop short of the centre so heads pointing at one box stay apart.
    for (front, back) in graph.edges() {
        let (a, b) = (centre(front), centre(back));
        let end = (a.0 + 0.85 * (b.0 - a.0), a.1 + 0.85 * (b.1 - a.1));
        c.arrow(a, end, [20, 20, 20, 200], ts, 7.0 * ts);
    }
    for i in 0..n {
        let inst = &scene.instances[i];
        let (x, y, bw, _) = rect(i);
        let max_chars = ((bw - 4.0) / (8.0 * ts)).floor().max(6.0) as usize;
        let label: String = format!("{}: {}", inst.id, inst.caption)
            .chars()
            .take(max_chars)
            .collect();
        let tw = Canvas::text_width(&label, ts);
        let (lx, ly) = ((x + 2.0 * ts).min(w - tw - 2.0).max(0.0), y + 2.0 * ts);
        c.fill_rect(
            [lx - 1.0, ly - 1.0, tw + 2.0, 8.0 * ts + 2.0],
            [255, 255, 255, 210],
        );
        c.text(lx, ly, &label, ts, INK);
    }
    // Legend.
    let mut x = 6.0;
    let y0 = h + 6.0;
    x += c.text(x, y0, "depth:", ts, INK) + 6.0;
    for l in 0..levels.min(8) {
        c.fill_rect([x, y0, 8.0 * ts, 8.0 * ts], level_colour(l));
        x += 10.0 * ts;
        let name = match l {
            0 => "L0 front".to_string(),
            l if l + 1 == levels => format!("L{l} back"),
            l => format!("L{l}"),
        };
        x += c.text(x, y0, &name, ts, INK) + 8.0 * ts;
    }
    let y1 = y0 + line_h;
    c.hatch_rect([6.0, y1, 8.0 * ts, 8.0 * ts], ORDERED, 3.0 * ts, ts);
    let mut x = 6.0 + 10.0 * ts;
    x += c.text(x, y1, "ordered overlap", ts, INK) + 8.0 * ts;
    c.hatch_rect([x, y1, 8.0 * ts, 8.0 * ts], UNORDERED, 3.0 * ts, ts);
    c.text(x + 10.0 * ts, y1, "no order (averaged)", ts, INK);
    let y2 = y1 + line_h;
    c.arrow(
        (6.0, y2 + 4.0 * ts),
        (6.0 + 16.0 * ts, y2 + 4.0 * ts),
        INK,
        1.5 * ts,
        6.0 * ts,
    );
    c.text(6.0 + 20.0 * ts, y2, "occluder -> occluded", ts, INK);
    Some(c)
}
