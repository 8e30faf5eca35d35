//! Raster tools the metrics share: distance transforms, connected components, boundaries.
//! Rasters are row-major `w × h`; outside the image counts as background.

/// Exact squared Euclidean distance from every pixel to the nearest pixel where `seed` is
/// true (Felzenszwalb & Huttenlocher's separable transform). `f64::INFINITY` if none.
pub fn sq_distance_to(seed: &[bool], w: usize, h: usize) -> Vec<f64> {
    const INF: f64 = 1e20;
    let mut d: Vec<f64> = seed.iter().map(|&s| if s { 0.0 } else { INF }).collect();
    let mut f = vec![0.0; w.max(h)];
    let mut out = vec![0.0; w.max(h)];
    for x in 0..w {
        for y in 0..h {
            f[y] = d[y * w + x];
        }
        edt_1d(&f[..h], &mut out[..h]);
        for y in 0..h {
            d[y * w + x] = out[y];
        }
    }
    for y in 0..h {
        f[..w].copy_from_slice(&d[y * w..(y + 1) * w]);
        edt_1d(&f[..w], &mut out[..w]);
        d[y * w..(y + 1) * w].copy_from_slice(&out[..w]);
    }
    d.iter()
        .map(|&v| if v >= INF { f64::INFINITY } else { v })
        .collect()
}

/// 1-D squared distance transform of a sampled function (lower envelope of parabolas).
fn edt_1d(f: &[f64], out: &mut [f64]) {
    let n = f.len();
    if n == 0 {
        return;
    }
    let mut v = vec![0usize; n];
    let mut z = vec![0.0f64; n + 1];
    let mut k = 0;
    z[0] = f64::NEG_INFINITY;
    z[1] = f64::INFINITY;
    let meet = |q: usize, p: usize| {
        ((f[q] + (q * q) as f64) - (f[p] + (p * p) as f64)) / (2.0 * (q as f64 - p as f64))
    };
    for q in 1..n {
        let mut s = meet(q, v[k]);
        while s <= z[k] {
            k -= 1;
            s = meet(q, v[k]);
        }
        k += 1;
        v[k] = q;
        z[k] = s;
        z[k + 1] = f64::INFINITY;
    }
    k = 0;
    for (q, o) in out.iter_mut().enumerate() {
        while z[k + 1] < q as f64 {
            k += 1;
        }
        let p = v[k];
        *o = (q as f64 - p as f64).powi(2) + f[p];
    }
}

/// Mask pixels with a 4-neighbour outside the mask (the image border counts as outside).
pub fn inner_boundary(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let at = |x: isize, y: isize| {
        x >= 0
            && y >= 0
            && (x as usize) < w
            && (y as usize) < h
            && mask[y as usize * w + x as usize]
    };
    (0..w * h)
        .map(|p| {
            let (x, y) = ((p % w) as isize, (p / w) as isize);
            mask[p] && !(at(x - 1, y) && at(x + 1, y) && at(x, y - 1) && at(x, y + 1))
        })
        .collect()
}

/// Signed distance to the mask boundary: negative inside, positive outside, in pixels.
/// A pixel's distance is to the nearest pixel of the other side (so it is ≥ 1 in magnitude).
pub fn signed_distance(mask: &[bool], w: usize, h: usize) -> Vec<f64> {
    let outside: Vec<bool> = mask.iter().map(|&m| !m).collect();
    let to_out = sq_distance_to(&outside, w, h);
    let to_in = sq_distance_to(mask, w, h);
    (0..w * h)
        .map(|p| {
            if mask[p] {
                -to_out[p].sqrt()
            } else {
                to_in[p].sqrt()
            }
        })
        .collect()
}

/// Labels 4-connected components of `mask` in raster order of their first pixel (as
/// OpenCV's `connectedComponents` numbers them); 0 is background. Returns (labels, sizes),
/// `sizes[k]` being the size of label `k + 1`.
pub fn components4(mask: &[bool], w: usize, h: usize) -> (Vec<u32>, Vec<usize>) {
    let mut label = vec![0u32; w * h];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !mask[start] || label[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32 + 1;
        label[start] = id;
        stack.push(start);
        let mut n = 0;
        while let Some(p) = stack.pop() {
            n += 1;
            let (x, y) = (p % w, p / w);
            let mut visit = |q: usize| {
                if mask[q] && label[q] == 0 {
                    label[q] = id;
                    stack.push(q);
                }
            };
            if x > 0 {
                visit(p - 1);
            }
            if x + 1 < w {
                visit(p + 1);
            }
            if y > 0 {
                visit(p - w);
            }
            if y + 1 < h {
                visit(p + w);
            }
        }
        sizes.push(n);
    }
    (label, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_transform_matches_brute_force() {
        let (w, h) = (13, 9);
        let mut seed = 7u64;
        for _ in 0..50 {
            let m: Vec<bool> = (0..w * h)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 60) == 0
                })
                .collect();
            let d = sq_distance_to(&m, w, h);
            for (p, &dp) in d.iter().enumerate() {
                let brute = (0..w * h)
                    .filter(|&q| m[q])
                    .map(|q| {
                        ((p % w) as f64 - (q % w) as f64).powi(2)
                            + ((p / w) as f64 - (q / w) as f64).powi(2)
                    })
                    .fold(f64::INFINITY, f64::min);
                assert_eq!(dp, brute, "pixel {p}");
            }
        }
    }

    #[test]
    fn components_are_numbered_in_raster_order() {
        // Two blobs; the 4-connectivity splits the diagonal pair.
        #[rustfmt::skip]
        let m = [
            true,  false, false, true,
            false, true,  false, true,
            false, false, false, true,
        ];
        let (labels, sizes) = components4(&m, 4, 3);
        assert_eq!(labels, [1, 0, 0, 2, 0, 3, 0, 2, 0, 0, 0, 2]);
        assert_eq!(sizes, [1, 3, 1]);
    }

    #[test]
    fn signed_distance_of_a_square() {
        let mut m = vec![false; 25];
        for y in 1..4 {
            for x in 1..4 {
                m[y * 5 + x] = true;
            }
        }
        let d = signed_distance(&m, 5, 5);
        assert_eq!(d[12], -2.0, "centre is two steps from the outside");
        assert_eq!(d[6], -1.0);
        assert_eq!(d[0], 2f64.sqrt());
        assert_eq!(inner_boundary(&m, 5, 5).iter().filter(|&&b| b).count(), 8);
    }
}
