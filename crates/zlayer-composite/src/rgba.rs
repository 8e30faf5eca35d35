//! RGBA pixels and images. Straight and premultiplied alpha are different types.
//!
//! Files hold straight alpha (PNG's convention); compositing needs premultiplied. The
//! conversions and their rounding:
//! - f32 straight → premultiplied: `c·a`, exact up to one f32 rounding.
//! - f32 premultiplied → straight: `c/a` clamped to [0, 1]; a = 0 gives transparent black
//!   (the colour of a fully transparent pixel is undefined, so it is not invented).
//! - u8 straight → premultiplied: `round(c·a/255)`, computed exactly with integers.
//! - u8 premultiplied → straight: `round(c·255/a)` clamped to 255; a = 0 gives 0.
//! - f32 → u8/u16: `round(clamp(v, 0, 1)·255)` (or 65535), halves away from zero; u8/u16 → f32
//!   is `v/255` (or `v/65535`), so an 8- or 16-bit value survives a round trip exactly.

/// A straight-alpha RGBA pixel, each channel in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(transparent)]
pub struct Straight(pub [f32; 4]);

/// A premultiplied RGBA pixel: colour channels already multiplied by alpha (so ≤ alpha).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(transparent)]
pub struct Premul(pub [f32; 4]);

/// A straight-alpha 8-bit RGBA pixel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Straight8(pub [u8; 4]);

/// A premultiplied 8-bit RGBA pixel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(transparent)]
pub struct Premul8(pub [u8; 4]);

/// A row-major image of pixels of one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Image<P> {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width · height` pixels, row-major.
    pub pixels: Vec<P>,
}

impl<P: Copy + Default> Image<P> {
    /// An image filled with the default (transparent) pixel.
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![P::default(); width * height],
        }
    }

    /// Applies `f` to every pixel.
    pub fn map<Q>(&self, f: impl Fn(P) -> Q) -> Image<Q> {
        Image {
            width: self.width,
            height: self.height,
            pixels: self.pixels.iter().map(|&p| f(p)).collect(),
        }
    }
}

impl Straight {
    /// Premultiplies.
    pub fn premultiply(self) -> Premul {
        let [r, g, b, a] = self.0;
        Premul([r * a, g * a, b * a, a])
    }

    /// Quantises to 8 bits.
    pub fn to_u8(self) -> Straight8 {
        Straight8(self.0.map(quantize8))
    }
}

impl Premul {
    /// Un-premultiplies; a = 0 gives transparent black.
    pub fn unpremultiply(self) -> Straight {
        let [r, g, b, a] = self.0;
        if a <= 0.0 {
            return Straight([0.0; 4]);
        }
        let u = |c: f32| (c / a).clamp(0.0, 1.0);
        Straight([u(r), u(g), u(b), a.min(1.0)])
    }

    /// Porter-Duff source-over: `self` over `dst`.
    #[inline(always)]
    pub fn over(self, dst: Premul) -> Premul {
        let k = 1.0 - self.0[3];
        Premul([
            self.0[0] + dst.0[0] * k,
            self.0[1] + dst.0[1] * k,
            self.0[2] + dst.0[2] * k,
            self.0[3] + dst.0[3] * k,
        ])
    }

    /// Scales all four channels, e.g. by a layer's opacity.
    pub fn scale(self, s: f32) -> Premul {
        Premul(self.0.map(|c| c * s))
    }
}

impl Straight8 {
    /// Premultiplies with exact rounding.
    pub fn premultiply(self) -> Premul8 {
        let [r, g, b, a] = self.0;
        let m = |c: u8| div255(c as u32 * a as u32);
        Premul8([m(r), m(g), m(b), a])
    }

    /// To f32.
    pub fn to_f32(self) -> Straight {
        Straight(self.0.map(|c| c as f32 / 255.0))
    }
}

impl Premul8 {
    /// Un-premultiplies with rounding; a = 0 gives transparent black.
    pub fn unpremultiply(self) -> Straight8 {
        let [r, g, b, a] = self.0;
        if a == 0 {
            return Straight8([0; 4]);
        }
        let a32 = a as u32;
        let u = |c: u8| ((c as u32 * 255 + a32 / 2) / a32).min(255) as u8;
        Straight8([u(r), u(g), u(b), a])
    }

    /// Porter-Duff source-over with exact rounding: `c_s + round(c_d·(255 − a_s)/255)`.
    /// For valid premultiplied `self` (every colour ≤ alpha) no channel exceeds 255.
    #[inline(always)]
    pub fn over(self, dst: Premul8) -> Premul8 {
        Premul8(over_packed(u32::from_le_bytes(self.0), u32::from_le_bytes(dst.0)).to_le_bytes())
    }
}

/// Source-over on pixels packed little-endian as `r | g << 8 | b << 16 | a << 24`.
///
/// Two channels per multiply (red/blue, then green/alpha, in 16-bit halves), each rounded
/// exactly like [`div255`]: a half never exceeds 255·255 + 128 + 254 < 2^16, so no carry
/// crosses into its neighbour.
#[inline(always)]
fn over_packed(src: u32, dst: u32) -> u32 {
    const M: u32 = 0x00FF_00FF;
    let ia = 255 - (src >> 24);
    let rb = (dst & M) * ia + 0x0080_0080;
    let rb = ((rb + ((rb >> 8) & M)) >> 8) & M;
    let ag = ((dst >> 8) & M) * ia + 0x0080_0080;
    let ag = (ag + ((ag >> 8) & M)) & !M;
    src.wrapping_add(rb | ag)
}

/// `round(x / 255)` for `x ≤ 255·255`, exact (the classic shift form).
#[inline(always)]
pub fn div255(x: u32) -> u8 {
    let t = x + 128;
    ((t + (t >> 8)) >> 8) as u8
}

/// `round(clamp(v, 0, 1) · 255)`. Adding 0.5 and truncating equals `round` on non-negative
/// values and avoids a libm call on CPUs without SSE4.1.
#[inline]
pub fn quantize8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
}

/// `round(clamp(v, 0, 1) · 65535)`, computed like [`quantize8`].
#[inline]
pub fn quantize16(v: f32) -> u16 {
    (v.clamp(0.0, 1.0) * 65535.0 + 0.5) as u16
}

/// Composes same-size layers, bottom first, by source-over. Each layer is read once.
pub fn over_stack(layers: &[&[Premul]], out: &mut [Premul]) {
    for l in layers {
        assert_eq!(
            l.len(),
            out.len(),
            "over_stack: layers must match the output size"
        );
    }
    for (p, o) in out.iter_mut().enumerate() {
        let mut acc = Premul::default();
        for l in layers {
            acc = l[p].over(acc);
        }
        *o = acc;
    }
}

/// [`over_stack`] on 8-bit premultiplied pixels, with [`Premul8::over`]'s exact rounding.
pub fn over_stack8(layers: &[&[Premul8]], out: &mut [Premul8]) {
    for l in layers {
        assert_eq!(
            l.len(),
            out.len(),
            "over_stack8: layers must match the output size"
        );
    }
    crate::with_avx2_fma(
        #[inline(always)]
        || over_stack8_kernel(layers, out),
    )
}

/// Folds blocks of 64 pixels through all layers; the packed form lets the compiler keep
/// eight pixels per AVX2 register.
#[inline(always)]
fn over_stack8_kernel(layers: &[&[Premul8]], out: &mut [Premul8]) {
    const B: usize = 64;
    for (bi, o) in out.chunks_mut(B).enumerate() {
        let n = o.len();
        let mut acc = [0u32; B];
        for l in layers {
            let src = &l[bi * B..][..n];
            for k in 0..n {
                acc[k] = over_packed(u32::from_le_bytes(src[k].0), acc[k]);
            }
        }
        for (p, &a) in o.iter_mut().zip(&acc) {
            p.0 = a.to_le_bytes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn div255_is_exact_rounding() {
        for x in 0..=255 * 255u32 {
            assert_eq!(div255(x) as u32, (x * 2 + 255) / 510, "{x}");
        }
    }

    #[test]
    fn u8_premultiply_round_trips_for_opaque_and_is_exact() {
        for a in 0..=255u8 {
            for c in 0..=255u8 {
                let p = Straight8([c, 0, 0, a]).premultiply();
                let exact = (c as f64 * a as f64 / 255.0).round() as u8;
                assert_eq!(p.0[0], exact);
                if a == 255 {
                    assert_eq!(p.unpremultiply().0[0], c);
                }
            }
        }
    }

    #[test]
    fn u8_over_matches_f64_within_rounding() {
        for sa in (0..=255u8).step_by(5) {
            for d in (0..=255u8).step_by(3) {
                let src = Straight8([200, 10, 90, sa]).premultiply();
                let dst = Premul8([d, d / 2, 0, d]);
                let got = src.over(dst);
                for c in 0..4 {
                    let exact = src.0[c] as f64 + dst.0[c] as f64 * (255 - sa) as f64 / 255.0;
                    assert!(
                        (got.0[c] as f64 - exact).abs() <= 0.5 + 1e-9,
                        "{sa} {d} {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn block_kernel_equals_the_pixel_fold() {
        let mut seed = 1u32;
        let mut next = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 24) as u8
        };
        for n in [1, 15, 16, 17, 100] {
            let layers: Vec<Vec<Premul8>> = (0..5)
                .map(|_| {
                    (0..n)
                        .map(|_| Straight8([next(), next(), next(), next()]).premultiply())
                        .collect()
                })
                .collect();
            let refs: Vec<&[Premul8]> = layers.iter().map(Vec::as_slice).collect();
            let mut out = vec![Premul8::default(); n];
            over_stack8(&refs, &mut out);
            for p in 0..n {
                let want = layers
                    .iter()
                    .fold(Premul8::default(), |acc, l| l[p].over(acc));
                assert_eq!(out[p], want, "n={n} pixel {p}");
            }
        }
    }

    #[test]
    fn opaque_source_hides_destination() {
        let src = Straight([0.2, 0.4, 0.6, 1.0]).premultiply();
        let dst = Straight([1.0, 1.0, 1.0, 1.0]).premultiply();
        assert_eq!(src.over(dst), src);
        let clear = Premul::default();
        assert_eq!(clear.over(dst), dst);
    }

    #[test]
    fn quantize_round_trips_every_code() {
        for v in 0..=255u8 {
            assert_eq!(quantize8(v as f32 / 255.0), v);
        }
        for v in (0..=65535u16).step_by(7) {
            assert_eq!(quantize16(v as f32 / 65535.0), v);
        }
    }
}
