//! Making a stack of straight-alpha layers composite back to an observed image.
//!
//! A layer model predicts every layer's colour, but the pixels where a layer shows are
//! observed: the image itself. With the alphas held, the over-composite of a stack is linear
//! in its colours. At pixel p, layer k (bottom first) contributes with weight
//! `w_k = α_k · Π_{j>k} (1 − α_j)`, and the composite is `Σ_k w_k c_k`. So the smallest change of
//! colours (in the least-squares sense) that makes the composite equal the target t moves
//! each layer along its weight, `c_k += (t − Σ w c) · w_k / Σ w²`. A layer that is hidden
//! (`w_k = 0`) keeps its predicted colour; a layer alone on top takes the image's. Colours
//! stay within [0, 1]: a channel that reaches a bound drops out, and the rest take up what it
//! could not. Each pass either meets the target or pins one more layer, so a stack of n
//! layers needs at most n + 1.

/// Changes the colour (not alpha) of every layer of `stack`, bottom first, straight alpha in
/// [0, 1], by the least amount that makes its over-composite equal `target` (RGB in [0, 1])
/// at each pixel, as far as colours in [0, 1] allow. Every layer has `target.len()` pixels.
///
/// Returns the largest composite error left in any channel: 0 when every target is met,
/// more where the stack cannot reach it (no opaque layer under a pixel).
pub fn reconcile(stack: &mut [&mut [[f32; 4]]], target: &[[f32; 3]]) -> Result<f32, String> {
    if let Some(k) = stack.iter().position(|l| l.len() != target.len()) {
        return Err(format!(
            "layer {k} has {} pixels, the image {}: reconcile layers at the image's size",
            stack[k].len(),
            target.len()
        ));
    }
    let n = stack.len();
    let (mut w, mut c) = (vec![0f32; n], vec![0f32; n]);
    let mut worst = 0f32;
    for (p, t) in target.iter().enumerate() {
        let mut front = 1f32;
        for k in (0..n).rev() {
            let a = stack[k][p][3];
            w[k] = a * front;
            front *= 1.0 - a;
        }
        for (ch, &goal) in t.iter().enumerate() {
            for k in 0..n {
                c[k] = stack[k][p][ch];
            }
            worst = worst.max(fit(&w, &mut c, goal));
            for k in 0..n {
                stack[k][p][ch] = c[k];
            }
        }
    }
    Ok(worst)
}

/// Moves `c` along `w` until `Σ w c = goal`, keeping every entry in [0, 1]; the error left.
fn fit(w: &[f32], c: &mut [f32], goal: f32) -> f32 {
    let mut err = goal - composite(w, c);
    for _ in 0..=c.len() {
        if err.abs() <= 1e-7 {
            break;
        }
        let free = |w: f32, c: f32| w > 0.0 && if err > 0.0 { c < 1.0 } else { c > 0.0 };
        let norm: f32 = w
            .iter()
            .zip(c.iter())
            .filter(|&(&w, &c)| free(w, c))
            .map(|(w, _)| w * w)
            .sum();
        if norm <= 1e-12 {
            break;
        }
        let step = err / norm;
        for (&w, c) in w.iter().zip(c.iter_mut()) {
            if free(w, *c) {
                *c = (*c + step * w).clamp(0.0, 1.0);
            }
        }
        err = goal - composite(w, c);
    }
    err.abs()
}

fn composite(w: &[f32], c: &[f32]) -> f32 {
    w.iter().zip(c).map(|(a, b)| a * b).sum()
}
