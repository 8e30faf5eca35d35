//! Drawing annotations for people to look at: boxes, hatching, arrows and bitmap text.
//!
//! Shared by `zlayer preview` and the synthetic-data contact sheets. Shapes are anti-aliased
//! by tiny-skia; text uses the public-domain 8×8 bitmap font (font8x8), scaled by whole
//! pixels, so no font file is needed at run time. Characters outside ASCII draw as `?`.

use crate::rgba::{Image, Premul8, Straight};
use tiny_skia::{Color, FillRule, Paint, PathBuilder, Pixmap, Rect, Stroke, Transform};

/// A straight-alpha 8-bit colour.
pub type Rgba = [u8; 4];

/// A rectangle `[x, y, width, height]` in pixels.
pub type Xywh = [f32; 4];

const LEVEL_COLOURS: [Rgba; 8] = [
    [230, 25, 75, 255],
    [245, 130, 48, 255],
    [60, 180, 75, 255],
    [0, 130, 200, 255],
    [145, 30, 180, 255],
    [70, 240, 240, 255],
    [128, 128, 0, 255],
    [0, 0, 128, 255],
];

/// The colour that marks depth level (or rank) `level` in every picture zlayer draws;
/// it cycles after eight.
pub fn level_colour(level: usize) -> Rgba {
    LEVEL_COLOURS[level % LEVEL_COLOURS.len()]
}

/// One line of a [`line_chart`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points (x, y), drawn in order; non-finite ones are skipped.
    pub points: Vec<(f64, f64)>,
}

/// A line chart `width × height` px with a title, axis labels and ranges that fit every
/// finite point (y starts at 0 when all values are positive, as losses and errors are).
/// `None` if the size is unusable.
pub fn line_chart(
    title: &str,
    x_label: &str,
    series: &[Series],
    width: u32,
    height: u32,
) -> Option<Image<Straight>> {
    let mut c = Canvas::new(width, height, [255; 4])?;
    let (w, h, m) = (width as f32, height as f32, 56.0f32);
    let ink = [20, 20, 20, 255];
    c.text(m, 12.0, title, 1.0, ink);
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite())
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts() {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    y0 = y0.min(0.0);
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y1 = y0 + 1.0;
    }
    let px = |x: f64| m + ((x - x0) / (x1 - x0)) as f32 * (w - 2.0 * m);
    let py = |y: f64| h - m - ((y - y0) / (y1 - y0)) as f32 * (h - 2.0 * m);
    c.line((m, h - m), (w - m, h - m), ink, 1.0);
    c.line((m, m), (m, h - m), ink, 1.0);
    let fmt = |v: f64| {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    };
    c.text(4.0, m - 4.0, &fmt(y1), 1.0, ink);
    c.text(4.0, h - m - 4.0, &fmt(y0), 1.0, ink);
    c.text(m, h - m + 8.0, &fmt(x0), 1.0, ink);
    let right = fmt(x1);
    c.text(
        w - m - Canvas::text_width(&right, 1.0),
        h - m + 8.0,
        &right,
        1.0,
        ink,
    );
    c.text(
        w / 2.0 - Canvas::text_width(x_label, 1.0) / 2.0,
        h - m + 24.0,
        x_label,
        1.0,
        ink,
    );
    for (k, s) in series.iter().enumerate() {
        let colour = level_colour(k + 3);
        let finite: Vec<_> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .collect();
        for pair in finite.windows(2) {
            c.line(
                (px(pair[0].0), py(pair[0].1)),
                (px(pair[1].0), py(pair[1].1)),
                colour,
                1.5,
            );
        }
        let ly = m + 4.0 + 14.0 * k as f32;
        c.fill_rect([w - m - 150.0, ly, 12.0, 8.0], colour);
        c.text(w - m - 132.0, ly, &s.label, 1.0, ink);
    }
    Some(c.to_image())
}

/// A drawing surface.
pub struct Canvas {
    pixmap: Pixmap,
}

fn paint(c: Rgba) -> Paint<'static> {
    let mut p = Paint::default();
    p.set_color(Color::from_rgba8(c[0], c[1], c[2], c[3]));
    p.anti_alias = true;
    p
}

impl Canvas {
    /// A canvas filled with `bg`; `None` if a side is 0 or too large.
    pub fn new(width: u32, height: u32, bg: Rgba) -> Option<Self> {
        let mut pixmap = Pixmap::new(width, height)?;
        pixmap.fill(Color::from_rgba8(bg[0], bg[1], bg[2], bg[3]));
        Some(Self { pixmap })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.pixmap.width()
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.pixmap.height()
    }

    /// Fills a rectangle `(x, y, w, h)`.
    pub fn fill_rect(&mut self, [x, y, w, h]: Xywh, c: Rgba) {
        if let Some(r) = Rect::from_xywh(x, y, w, h) {
            self.pixmap
                .fill_rect(r, &paint(c), Transform::identity(), None);
        }
    }

    /// Outlines a rectangle with a stroke of `width` px centred on its edges.
    pub fn stroke_rect(&mut self, [x, y, w, h]: Xywh, c: Rgba, width: f32) {
        if let Some(r) = Rect::from_xywh(x, y, w, h) {
            let path = PathBuilder::from_rect(r);
            let stroke = Stroke {
                width,
                ..Stroke::default()
            };
            self.pixmap
                .stroke_path(&path, &paint(c), &stroke, Transform::identity(), None);
        }
    }

    /// Draws a line segment.
    pub fn line(&mut self, a: (f32, f32), b: (f32, f32), c: Rgba, width: f32) {
        let mut pb = PathBuilder::new();
        pb.move_to(a.0, a.1);
        pb.line_to(b.0, b.1);
        if let Some(path) = pb.finish() {
            let stroke = Stroke {
                width,
                ..Stroke::default()
            };
            self.pixmap
                .stroke_path(&path, &paint(c), &stroke, Transform::identity(), None);
        }
    }

    /// Hatches a rectangle with "/" diagonals `spacing` px apart.
    pub fn hatch_rect(&mut self, [x, y, w, h]: Xywh, c: Rgba, spacing: f32, width: f32) {
        let (x1, y1) = (x + w, y + h);
        // Lines x + y = k; clip each to the rectangle analytically.
        let mut k = ((x + y) / spacing).ceil() * spacing;
        while k < x1 + y1 {
            let xa = x.max(k - y1);
            let xb = x1.min(k - y);
            if xb > xa {
                self.line((xa, k - xa), (xb, k - xb), c, width);
            }
            k += spacing;
        }
    }

    /// Draws an arrow from `a` to `b` with a filled head of `head` px.
    pub fn arrow(&mut self, a: (f32, f32), b: (f32, f32), c: Rgba, width: f32, head: f32) {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let len = (dx * dx + dy * dy).sqrt();
        if len < 1e-3 {
            return;
        }
        let (ux, uy) = (dx / len, dy / len);
        let base = (b.0 - ux * head, b.1 - uy * head);
        self.line(a, base, c, width);
        let mut pb = PathBuilder::new();
        pb.move_to(b.0, b.1);
        pb.line_to(base.0 - uy * head * 0.5, base.1 + ux * head * 0.5);
        pb.line_to(base.0 + uy * head * 0.5, base.1 - ux * head * 0.5);
        pb.close();
        if let Some(path) = pb.finish() {
            self.pixmap.fill_path(
                &path,
                &paint(c),
                FillRule::Winding,
                Transform::identity(),
                None,
            );
        }
    }

    /// Draws a `w`-wide RGB image with its top-left at `(x, y)`, each pixel a `scale`-px square.
    pub fn image_rgb(&mut self, x: f32, y: f32, pixels: &[[u8; 3]], w: usize, scale: f32) {
        for (p, &[r, g, b]) in pixels.iter().enumerate() {
            let (px, py) = ((p % w) as f32, (p / w) as f32);
            self.fill_rect(
                [x + px * scale, y + py * scale, scale, scale],
                [r, g, b, 255],
            );
        }
    }

    /// Draws text with its top-left at `(x, y)`, each font pixel `scale` px; returns the width.
    pub fn text(&mut self, x: f32, y: f32, s: &str, scale: f32, c: Rgba) -> f32 {
        use font8x8::UnicodeFonts;
        let mut cx = x;
        for ch in s.chars() {
            let glyph = font8x8::BASIC_FONTS
                .get(ch)
                .or_else(|| font8x8::BASIC_FONTS.get('?'))
                .unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits >> col & 1 == 1 {
                        let r = Rect::from_xywh(
                            cx + col as f32 * scale,
                            y + row as f32 * scale,
                            scale,
                            scale,
                        );
                        if let Some(r) = r {
                            let mut p = paint(c);
                            p.anti_alias = false;
                            self.pixmap.fill_rect(r, &p, Transform::identity(), None);
                        }
                    }
                }
            }
            cx += 8.0 * scale;
        }
        cx - x
    }

    /// Width of `s` drawn by [`Self::text`] at `scale`.
    pub fn text_width(s: &str, scale: f32) -> f32 {
        s.chars().count() as f32 * 8.0 * scale
    }

    /// The drawing as a straight-alpha image.
    pub fn to_image(&self) -> Image<Straight> {
        let pixels = self
            .pixmap
            .pixels()
            .iter()
            .map(|p| {
                Premul8([p.red(), p.green(), p.blue(), p.alpha()])
                    .unpremultiply()
                    .to_f32()
            })
            .collect();
        Image {
            width: self.pixmap.width() as usize,
            height: self.pixmap.height() as usize,
            pixels,
        }
    }
}
