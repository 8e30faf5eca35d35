//! Rasterisation of boxes and masks to pixel grids and token grids.
//!
//! Two grids, two types: a [`Mask`] lives on the canvas pixel grid, a [`TokenMask`] on the
//! model's token grid (DESIGN.md §2). Two kinds of token box mask:
//! - the *hard* box mask covers tokens `floor(x1/W·w) .. max(floor(x2/W·w), floor(x1/W·w)+1)`,
//!   so every box gets at least one token (the official code's rule);
//! - the *soft* box mask is the box's exact area coverage of each token cell, which equals the
//!   pixel box mask area-averaged to the token grid.

use crate::bbox::BBox;
use crate::scene::RleCounts;

/// A model token grid of `w × h` tokens over a `width × height` canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenGrid {
    /// Tokens per row.
    pub w: usize,
    /// Tokens per column.
    pub h: usize,
}

/// A coverage mask in [0, 1] on the canvas pixel grid, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width · height` coverages, row-major.
    pub data: Vec<f32>,
}

/// A mask in [0, 1] on a token grid, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenMask {
    /// The grid it lives on.
    pub grid: TokenGrid,
    /// `w · h` values, row-major.
    pub data: Vec<f32>,
}

/// Why a mask could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MaskError {
    /// The RLE size disagrees with the canvas.
    #[error("RLE size is {found:?} ([height, width]) but the canvas is {expected:?}")]
    SizeMismatch {
        /// `[height, width]` of the canvas.
        expected: [u32; 2],
        /// `[height, width]` in the file.
        found: [u32; 2],
    },
    /// The run lengths do not add up to height × width.
    #[error("RLE counts cover {found} pixels, but the mask has {expected}")]
    RleLength {
        /// height × width.
        expected: u64,
        /// Sum of the runs.
        found: u64,
    },
    /// The compressed RLE string is malformed.
    #[error("compressed RLE string is malformed at character {0}")]
    RleString(usize),
    /// A polygon has an odd number of coordinates, fewer than 3 points, or a non-finite one.
    #[error(
        "polygon {0} must be [x0, y0, x1, y1, ...] with at least 3 finite points, got {1} numbers"
    )]
    Polygon(usize, usize),
}

impl TokenGrid {
    /// A grid of `w × h` tokens.
    pub fn new(w: usize, h: usize) -> Self {
        Self { w, h }
    }

    /// Number of tokens.
    pub fn len(self) -> usize {
        self.w * self.h
    }

    /// Whether the grid has no tokens.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Token columns and rows a box covers under the at-least-one-token rule, as half-open
    /// ranges. The box must lie in the canvas.
    pub fn box_span(
        self,
        bbox: BBox,
        width: u32,
        height: u32,
    ) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        (
            span(bbox.x1, bbox.x2, width as f64, self.w),
            span(bbox.y1, bbox.y2, height as f64, self.h),
        )
    }

    /// Row-major token indices a box covers (hard rule), in increasing order.
    pub fn box_tokens(self, bbox: BBox, width: u32, height: u32) -> Vec<usize> {
        let (xs, ys) = self.box_span(bbox, width, height);
        ys.flat_map(|y| xs.clone().map(move |x| y * self.w + x))
            .collect()
    }

    /// Hard box mask: 1 on the tokens of [`Self::box_tokens`], 0 elsewhere.
    pub fn box_mask(self, bbox: BBox, width: u32, height: u32) -> TokenMask {
        let mut data = vec![0.0; self.len()];
        for t in self.box_tokens(bbox, width, height) {
            data[t] = 1.0;
        }
        TokenMask { grid: self, data }
    }

    /// Soft box mask: the fraction of each token cell the box covers.
    pub fn soft_box_mask(self, bbox: BBox, width: u32, height: u32) -> TokenMask {
        let (cw, ch) = (width as f64 / self.w as f64, height as f64 / self.h as f64);
        let cov_x: Vec<f64> = (0..self.w)
            .map(|x| overlap(bbox.x1, bbox.x2, x as f64 * cw, (x + 1) as f64 * cw) / cw)
            .collect();
        let mut data = Vec::with_capacity(self.len());
        for y in 0..self.h {
            let cy = overlap(bbox.y1, bbox.y2, y as f64 * ch, (y + 1) as f64 * ch) / ch;
            data.extend(cov_x.iter().map(|cx| (cx * cy) as f32));
        }
        TokenMask { grid: self, data }
    }
}

fn span(a: f64, b: f64, extent: f64, n: usize) -> std::ops::Range<usize> {
    let to_token = |v: f64| ((v / extent * n as f64).floor().max(0.0) as usize).min(n);
    let start = to_token(a).min(n.saturating_sub(1));
    let end = to_token(b).max(start + 1).min(n);
    start..end
}

fn overlap(a1: f64, a2: f64, b1: f64, b2: f64) -> f64 {
    (a2.min(b2) - a1.max(b1)).max(0.0)
}

impl Mask {
    /// An all-zero mask.
    pub fn zeros(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0.0; width * height],
        }
    }

    /// The exact area coverage of a box in each pixel (1 inside, fractional on edges).
    pub fn from_box(bbox: BBox, width: usize, height: usize) -> Self {
        let grid = TokenGrid::new(width, height);
        let TokenMask { data, .. } = grid.soft_box_mask(bbox, width as u32, height as u32);
        Self {
            width,
            height,
            data,
        }
    }

    /// Decodes COCO RLE (column-major runs, starting with zeros) for a `width × height` canvas.
    pub fn from_rle(
        size: [u32; 2],
        counts: &RleCounts,
        width: usize,
        height: usize,
    ) -> Result<Self, MaskError> {
        let expected = [height as u32, width as u32];
        if size != expected {
            return Err(MaskError::SizeMismatch {
                expected,
                found: size,
            });
        }
        let runs = rle_runs(counts)?;
        let total: u64 = runs.iter().fold(0u64, |a, &r| a.saturating_add(r));
        let n = (width * height) as u64;
        if total != n {
            return Err(MaskError::RleLength {
                expected: n,
                found: total,
            });
        }
        let mut m = Self::zeros(width, height);
        let mut k = 0usize;
        for (r, &run) in runs.iter().enumerate() {
            if r % 2 == 1 {
                for p in k..k + run as usize {
                    // Column-major index p → (x = p / h, y = p % h).
                    m.data[(p % height) * width + p / height] = 1.0;
                }
            }
            k += run as usize;
        }
        Ok(m)
    }

    /// Encodes as uncompressed COCO RLE counts (pixels with coverage ≥ 0.5 are set).
    pub fn to_rle(&self) -> Vec<u64> {
        let mut runs = Vec::new();
        let (mut cur, mut len) = (false, 0u64);
        for x in 0..self.width {
            for y in 0..self.height {
                let v = self.data[y * self.width + x] >= 0.5;
                if v != cur {
                    runs.push(len);
                    cur = v;
                    len = 0;
                }
                len += 1;
            }
        }
        runs.push(len);
        runs
    }

    /// Fills the union of polygons, sampling each pixel at its centre (even-odd rule).
    pub fn from_polygons(
        polys: &[Vec<f64>],
        width: usize,
        height: usize,
    ) -> Result<Self, MaskError> {
        for (i, p) in polys.iter().enumerate() {
            if p.len() % 2 != 0 || p.len() < 6 || !p.iter().all(|v| v.is_finite()) {
                return Err(MaskError::Polygon(i, p.len()));
            }
        }
        let mut m = Self::zeros(width, height);
        let mut xs = Vec::new();
        for poly in polys {
            let pts: Vec<(f64, f64)> = poly.chunks_exact(2).map(|c| (c[0], c[1])).collect();
            for y in 0..height {
                let sy = y as f64 + 0.5;
                xs.clear();
                for (k, &(x0, y0)) in pts.iter().enumerate() {
                    let (x1, y1) = pts[(k + 1) % pts.len()];
                    if (y0 <= sy) != (y1 <= sy) {
                        xs.push(x0 + (sy - y0) / (y1 - y0) * (x1 - x0));
                    }
                }
                xs.sort_by(f64::total_cmp);
                for pair in xs.chunks_exact(2) {
                    // Pixel x is inside when its centre x+0.5 lies in [pair[0], pair[1]).
                    let a = (pair[0] - 0.5).ceil().max(0.0) as usize;
                    let b = ((pair[1] - 0.5).ceil().max(0.0) as usize).min(width);
                    for x in a..b {
                        m.data[y * width + x] = 1.0;
                    }
                }
            }
        }
        Ok(m)
    }

    /// A mask from 8-bit coverage values (255 = fully covered), e.g. a decoded grey PNG.
    pub fn from_u8(width: usize, height: usize, values: &[u8]) -> Self {
        Self {
            width,
            height,
            data: values.iter().map(|&v| v as f32 / 255.0).collect(),
        }
    }

    /// Area-averages to a token grid; each token cell is the mean of the pixels it covers,
    /// with fractional pixels weighted by the part inside the cell.
    pub fn to_tokens(&self, grid: TokenGrid) -> TokenMask {
        let (cw, ch) = (
            self.width as f64 / grid.w as f64,
            self.height as f64 / grid.h as f64,
        );
        let weights = |n: usize, cell: f64, t: usize| -> Vec<(usize, f64)> {
            let (a, b) = (t as f64 * cell, (t + 1) as f64 * cell);
            (a.floor() as usize..(b.ceil() as usize).min(n))
                .map(|p| (p, overlap(a, b, p as f64, p as f64 + 1.0) / cell))
                .filter(|&(_, w)| w > 0.0)
                .collect()
        };
        let wx: Vec<_> = (0..grid.w).map(|t| weights(self.width, cw, t)).collect();
        let mut data = Vec::with_capacity(grid.len());
        for ty in 0..grid.h {
            let wy = weights(self.height, ch, ty);
            for wxt in &wx {
                let mut acc = 0.0;
                for &(y, fy) in &wy {
                    for &(x, fx) in wxt {
                        acc += self.data[y * self.width + x] as f64 * fx * fy;
                    }
                }
                data.push(acc as f32);
            }
        }
        TokenMask { grid, data }
    }
}

/// The smallest integer box holding every pixel of a row-major mask for which `on` holds.
pub fn tight_box<T: Copy>(mask: &[T], width: usize, on: impl Fn(T) -> bool) -> Option<BBox> {
    let mut b: Option<[usize; 4]> = None;
    for (p, _) in mask.iter().enumerate().filter(|&(_, &m)| on(m)) {
        let (x, y) = (p % width, p / width);
        b = Some(match b {
            None => [x, y, x + 1, y + 1],
            Some([x1, y1, x2, y2]) => [x1.min(x), y1.min(y), x2.max(x + 1), y2.max(y + 1)],
        });
    }
    b.map(|[x1, y1, x2, y2]| BBox::new(x1 as f64, y1 as f64, x2 as f64, y2 as f64))
}

/// The run lengths of either spelling of COCO RLE counts.
pub fn rle_runs(counts: &RleCounts) -> Result<Vec<u64>, MaskError> {
    match counts {
        RleCounts::List(v) => Ok(v.clone()),
        RleCounts::Compressed(s) => decode_rle_string(s),
    }
}

/// pycocotools' compressed counts: 5 bits per char (offset 48), continuation bit 0x20, sign
/// bit 0x10 on the last char, and runs from the third on stored as deltas to the run two back.
fn decode_rle_string(s: &str) -> Result<Vec<u64>, MaskError> {
    let bytes = s.as_bytes();
    let mut runs: Vec<i64> = Vec::new();
    let mut p = 0;
    while p < bytes.len() {
        let (mut x, mut k, mut more) = (0i64, 0u32, true);
        while more {
            let c = *bytes.get(p).ok_or(MaskError::RleString(p))? as i64 - 48;
            if !(0..64).contains(&c) || k >= 12 {
                return Err(MaskError::RleString(p));
            }
            x |= (c & 0x1f) << (5 * k);
            more = c & 0x20 != 0;
            p += 1;
            k += 1;
            if !more && c & 0x10 != 0 {
                x |= -1i64 << (5 * k);
            }
        }
        if runs.len() > 2 {
            x = x
                .checked_add(runs[runs.len() - 2])
                .ok_or(MaskError::RleString(p))?;
        }
        if x < 0 {
            return Err(MaskError::RleString(p));
        }
        runs.push(x);
    }
    Ok(runs.into_iter().map(|r| r as u64).collect())
}

/// Encodes runs in pycocotools' compressed string form (the inverse of the decoder).
pub fn encode_rle_string(runs: &[u64]) -> String {
    let mut out = String::new();
    for (i, &r) in runs.iter().enumerate() {
        let mut x = r as i64;
        if i > 2 {
            x -= runs[i - 2] as i64;
        }
        let mut more = true;
        while more {
            let mut c = x & 0x1f;
            x >>= 5;
            more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                c |= 0x20;
            }
            out.push((c as u8 + 48) as char);
        }
    }
    out
}
