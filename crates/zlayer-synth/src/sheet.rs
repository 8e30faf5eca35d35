//! Contact sheets: a grid of rendered scenes. Each cell shows the image, beside it a faded copy
//! with every amodal outline in its depth-rank colour (hidden parts included), and below a
//! legend listing the instances front to back.

use crate::render::SynthScene;
use zlayer_composite::annotate::{Canvas, level_colour};
use zlayer_composite::{Image, Straight};

/// Draws scenes in a grid; each cell shows the image scaled to `cell` px with outlines.
pub fn contact_sheet(scenes: &[SynthScene], cell: u32) -> Option<Image<Straight>> {
    let n = scenes.len().max(1);
    let cols = (n as f32).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let legend = 8 * 10 + 14;
    let (cw, ch) = (2 * cell as usize + 16, cell as usize + legend);
    let mut c = Canvas::new((cols * cw) as u32, (rows * ch) as u32, [250, 250, 250, 255])?;
    for (k, s) in scenes.iter().enumerate() {
        let (ox, oy) = ((k % cols * cw + 4) as f32, (k / cols * ch + 4) as f32);
        draw_cell(&mut c, s, ox, oy, cell as f32);
    }
    Some(c.to_image())
}

fn draw_cell(c: &mut Canvas, s: &SynthScene, ox: f32, oy: f32, cell: f32) {
    let size = s.spec.params.size as usize;
    let f = cell / size as f32;
    let right = ox + cell + 4.0;
    c.image_rgb(ox, oy, &s.image, size, f);
    let fade = |v: u8| ((v as u16 + 3 * 255) / 4) as u8;
    let faded: Vec<[u8; 3]> = s.image.iter().map(|p| p.map(fade)).collect();
    c.image_rgb(right, oy, &faded, size, f);
    let mut order: Vec<usize> = (0..s.amodal.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(s.spec.instances[i].rank));
    for &i in &order {
        let colour = level_colour(s.spec.instances[i].rank);
        let m = &s.amodal[i];
        let inside = |x: isize, y: isize| {
            x >= 0
                && y >= 0
                && (x as usize) < size
                && (y as usize) < size
                && m[y as usize * size + x as usize] >= 128
        };
        for p in 0..size * size {
            let (x, y) = ((p % size) as isize, (p / size) as isize);
            if inside(x, y)
                && !(inside(x - 1, y) && inside(x + 1, y) && inside(x, y - 1) && inside(x, y + 1))
            {
                c.fill_rect(
                    [
                        right + x as f32 * f,
                        oy + y as f32 * f,
                        f.max(1.0),
                        f.max(1.0),
                    ],
                    colour,
                );
            }
        }
    }
    order.reverse();
    let mut y = oy + cell + 4.0;
    let max_chars = ((2.0 * cell - 12.0) / 8.0) as usize;
    for &i in &order {
        let inst = &s.spec.instances[i];
        c.fill_rect([ox, y, 8.0, 8.0], level_colour(inst.rank));
        let label: String = format!("{} {}", inst.rank, inst.look.caption())
            .chars()
            .take(max_chars)
            .collect();
        c.text(ox + 11.0, y, &label, 1.0, [20, 20, 20, 255]);
        y += 10.0;
    }
}
