//! Model outputs as pictures: tensors to pixels, canvas-size resampling, memory figures.

use candle_core::Tensor;
use zlayer_composite::{Image, Straight};

/// Images (B, 3, S, S) in [−1, 1] as 8-bit RGB pixel rows, one `Vec` per image.
pub fn to_rgb8(images: &Tensor) -> candle_core::Result<Vec<Vec<[u8; 3]>>> {
    let (b, _, h, w) = images.dims4()?;
    let v: Vec<f32> = images.flatten_all()?.to_vec1()?;
    let q = |x: f32| ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
    Ok((0..b)
        .map(|k| {
            (0..h * w)
                .map(|p| [0, 1, 2].map(|c| q(v[(k * 3 + c) * h * w + p])))
                .collect()
        })
        .collect())
}

/// 8-bit RGB pixels as an opaque image.
pub fn rgb_image(pixels: &[[u8; 3]], width: usize, height: usize) -> Image<Straight> {
    Image {
        width,
        height,
        pixels: pixels
            .iter()
            .map(|p| {
                let c = p.map(|v| v as f32 / 255.0);
                Straight([c[0], c[1], c[2], 1.0])
            })
            .collect(),
    }
}

/// Images (B, 3, H, W) in [−1, 1] as opaque images, resized to `canvas` (width, height)
/// when given.
pub fn at_canvas(
    images: &Tensor,
    canvas: Option<(usize, usize)>,
) -> candle_core::Result<Vec<Image<Straight>>> {
    let (_, _, h, w) = images.dims4()?;
    Ok(to_rgb8(images)?
        .iter()
        .map(|px| {
            let img = rgb_image(px, w, h);
            match canvas {
                Some((cw, ch)) if (cw, ch) != (w, h) => img.resized(cw, ch),
                _ => img,
            }
        })
        .collect())
}

/// Images of one size side by side.
pub fn row(images: &[Image<Straight>]) -> Image<Straight> {
    let (w, h) = images.first().map_or((0, 0), |i| (i.width, i.height));
    let n = images.len();
    let mut out = Image::<Straight>::new(n * w, h);
    for (k, img) in images.iter().enumerate() {
        for (p, px) in img.pixels.iter().enumerate() {
            out.pixels[(p / w) * n * w + k * w + p % w] = *px;
        }
    }
    out
}

/// The process's peak resident memory in MB (Linux's VmHWM; `None` elsewhere).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
