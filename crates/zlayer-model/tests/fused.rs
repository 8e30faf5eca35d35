//! The fused CPU kernels against candle's composed ops. The reference runs the same `layers`
//! functions in f64, which takes the composed path (the fused one is f32 only): values and
//! gradients of a random linear functional of the output must agree to f32 precision, over
//! many rows, odd row lengths, rows split across rayon tasks and non-contiguous inputs.

use candle_core::{D, DType, Device, Result, Tensor, Var};
use candle_nn::Linear;
use zlayer_model::layers::{self, ModulationOut, QkNorm};

/// Max |a − b| over max |b|, both brought to f64.
fn rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (a, b) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
    let err = (a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(err / b.abs()?.max_all()?.to_scalar::<f64>()?.max(1e-12))
}

/// Runs `f` on `x` in f32 (fused) and f64 (composed): the outputs and the gradients of
/// Σ w ⊙ f(x) must agree. `extra` are further inputs given in both types; the first `diff`
/// of them are differentiated and compared too, the rest are constants (angles, bias).
fn check_all(
    name: &str,
    x: &Tensor,
    extra: &[Tensor],
    diff: usize,
    f: impl Fn(&Tensor, &[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    let run = |dtype: DType| -> Result<(Tensor, Vec<Tensor>)> {
        let v = Var::from_tensor(&x.to_dtype(dtype)?)?;
        let vars: Vec<Var> = extra
            .iter()
            .map(|e| Var::from_tensor(&e.to_dtype(dtype)?))
            .collect::<Result<_>>()?;
        let extra: Vec<Tensor> = vars
            .iter()
            .enumerate()
            .map(|(i, e)| {
                if i < diff {
                    e.as_tensor().clone()
                } else {
                    e.as_tensor().detach()
                }
            })
            .collect();
        let y = f(v.as_tensor(), &extra)?;
        // The same fixed weights in both runs.
        let n = y.elem_count() as u32;
        let w = (Tensor::arange(0u32, n, y.device())?.to_dtype(DType::F64)? * 0.7)?
            .sin()?
            .reshape(y.shape())?
            .to_dtype(dtype)?;
        let grads = (&y * &w)?.sum_all()?.backward()?;
        let grad = |t: &Tensor, what: &str| {
            grads.get(t).cloned().ok_or_else(|| {
                candle_core::Error::Msg(format!("{name}: no gradient for {what} in {dtype:?}"))
            })
        };
        let mut g = vec![grad(v.as_tensor(), "x")?];
        for (i, e) in extra.iter().take(diff).enumerate() {
            g.push(grad(e, &format!("input {}", i + 1))?);
        }
        Ok((y, g))
    };
    let (y32, g32) = run(DType::F32)?;
    let (y64, g64) = run(DType::F64)?;
    assert_eq!(y32.dims(), y64.dims(), "{name}");
    let ey = rel(&y32, &y64)?;
    assert!(ey < 1e-5, "{name}: value {ey:.2e}");
    for (i, (a, b)) in g32.iter().zip(&g64).enumerate() {
        assert_eq!(a.dims(), b.dims(), "{name}: gradient {i}");
        let eg = rel(a, b)?;
        assert!(eg < 1e-4, "{name}: gradient of input {i} off by {eg:.2e}");
    }
    Ok(())
}

/// [`check_all`] differentiating `x` alone.
fn check(
    name: &str,
    x: &Tensor,
    extra: &[Tensor],
    f: impl Fn(&Tensor, &[Tensor]) -> Result<Tensor>,
) -> Result<()> {
    check_all(name, x, extra, 0, f)
}

fn randn(shape: &[usize]) -> Result<Tensor> {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu)
}

#[test]
fn norms_match_the_composed_form() -> Result<()> {
    // 3·37 rows of 128 fit one task; 40·100 rows of 128 span many; 7-wide rows are odd.
    for shape in [[3, 37, 128], [40, 100, 128], [5, 11, 7]] {
        let x = (randn(&shape)? * 3.0)?.broadcast_add(&randn(&[shape[2]])?)?;
        check("layer_norm", &x, &[], |x, _| layers::layer_norm(x))?;
        let scale = (randn(&[shape[2]])? + 1.0)?;
        check("rms_norm", &x, &[scale], |x, e| {
            layers::rms_norm(x, &e[0], 1e-6)
        })?;
        // A transposed (non-contiguous) input.
        check("layer_norm of a transpose", &x, &[], |x, _| {
            layers::layer_norm(&x.transpose(0, 1)?)
        })?;
    }
    Ok(())
}

#[test]
fn softmax_matches_with_scale_and_bias() -> Result<()> {
    for shape in [[2, 4, 33, 33], [16, 4, 70, 70], [1, 1, 3, 5]] {
        let x = (randn(&shape)? * 4.0)?;
        check("softmax", &x, &[], |x, _| {
            layers::softmax_scores(x, 0.177, None)
        })?;
        // Padding keys masked by a large negative bias, broadcast over heads and queries.
        let keys = shape[3];
        let bias: Vec<f32> = (0..shape[0] * keys)
            .map(|i| {
                if i % keys >= keys - keys / 3 {
                    -1e9
                } else {
                    0.0
                }
            })
            .collect();
        let bias = Tensor::from_vec(bias, (shape[0], 1, 1, keys), &Device::Cpu)?;
        check("masked softmax", &x, &[bias], |x, e| {
            layers::softmax_scores(x, 0.5, Some(&e[0]))
        })?;
    }
    Ok(())
}

#[test]
fn gelu_matches_on_a_wide_range() -> Result<()> {
    // More elements than one task holds, from deep negative to large positive.
    let x = (randn(&[3, 50_001])? * 4.0)?;
    check("gelu", &x, &[], |x, _| layers::gelu(x))?;
    check("gelu of a narrow", &x, &[], |x, _| {
        layers::gelu(&x.narrow(1, 3, 1000)?)
    })
}

#[test]
fn rope_matches_per_batch_and_broadcast_angles() -> Result<()> {
    let (b, h, l) = (3, 4, 29);
    let axes = [8, 12, 12];
    let d: usize = axes.iter().sum();
    let ids = (randn(&[b, l, 3])? * 20.0)?.round()?;
    let (cos, sin) = layers::rope(&ids, &axes, 10_000.0)?;
    let x = randn(&[b, h, l, d])?;
    check("rope", &x, &[cos.clone(), sin.clone()], |x, e| {
        layers::apply_rope(x, &e[0], &e[1])
    })?;
    // Angles of one sequence shared by the batch.
    let (c1, s1) = (cos.narrow(0, 0, 1)?, sin.narrow(0, 0, 1)?);
    check("rope, shared angles", &x, &[c1, s1], |x, e| {
        layers::apply_rope(x, &e[0], &e[1])
    })?;
    // q from a fused projection arrives permuted.
    check("rope of a permute", &x, &[cos, sin], |x, e| {
        layers::apply_rope(&x.transpose(1, 2)?.transpose(1, 2)?, &e[0], &e[1])
    })
}

#[test]
fn whole_attention_matches() -> Result<()> {
    let (b, h, l, d) = (2, 4, 40, 32);
    let ids = (randn(&[b, l, 3])? * 10.0)?.round()?;
    let (cos, sin) = layers::rope(&ids, &[8, 12, 12], 10_000.0)?;
    let qkv = randn(&[b, h, l, 3 * d])?;
    check("attention", &qkv, &[cos, sin], |x, e| {
        let q = x.narrow(D::Minus1, 0, d)?;
        let k = x.narrow(D::Minus1, d, d)?;
        let v = x.narrow(D::Minus1, 2 * d, d)?.contiguous()?;
        layers::attention(&q, &k, &v, &(e[0].clone(), e[1].clone()))
    })
}

#[test]
fn linear_modulation_and_gates_match_with_their_vector_gradients() -> Result<()> {
    for (b, l, d) in [(16, 70, 128), (3, 5, 7), (1, 300, 64)] {
        let x = randn(&[b, l, d])?;
        let (w, bias) = (randn(&[2 * d + 1, d])?, randn(&[2 * d + 1])?);
        check_all("linear", &x, &[w, bias], 2, |x, e| {
            layers::linear(&Linear::new(e[0].clone(), Some(e[1].clone())), x)
        })?;
        let m = |e: &[Tensor]| ModulationOut {
            shift: e[0].clone(),
            scale: e[1].clone(),
            gate: e[2].clone(),
        };
        // Per-sample vectors (B, 1, D), and one vector shared by the batch (1, 1, D).
        for g in [b, 1] {
            let v = [randn(&[g, 1, d])?, randn(&[g, 1, d])?, randn(&[g, 1, d])?];
            check_all("modulate", &x, &v, 2, |x, e| m(e).modulate(x))?;
            let args = [v[2].clone(), randn(&[b, l, d])?];
            check_all("gated residual", &x, &args, 2, |x, e| {
                m(&[e[0].clone(), e[0].clone(), e[0].clone()]).gate_add(x, &e[1])
            })?;
        }
    }
    Ok(())
}

#[test]
fn fused_attention_matches_with_masks() -> Result<()> {
    let (b, h, l, d) = (3, 2, 37, 16);
    let qkv = randn(&[b, h, l, 3 * d])?;
    let split = |x: &Tensor| -> Result<(Tensor, Tensor, Tensor)> {
        Ok((
            x.narrow(D::Minus1, 0, d)?,
            x.narrow(D::Minus1, d, d)?,
            x.narrow(D::Minus1, 2 * d, d)?,
        ))
    };
    // Without a bias, a key mask per sample (B, 1, 1, L), and a full mask (B, 1, L, L) with
    // every query keeping itself.
    let keymask: Vec<f32> = (0..b * l)
        .map(|i| if i % l > l - 1 - i / l * 5 { -1e9 } else { 0.0 })
        .collect();
    let full: Vec<f32> = (0..b * l * l)
        .map(|i| {
            let (q, k) = ((i / l) % l, i % l);
            if q == k || (q * 7 + k * 3) % 5 < 3 {
                0.0
            } else {
                -1e9
            }
        })
        .collect();
    let dev = Device::Cpu;
    let biases = [
        None,
        Some(Tensor::from_vec(keymask, (b, 1, 1, l), &dev)?),
        Some(Tensor::from_vec(full, (b, 1, l, l), &dev)?),
    ];
    // Only v tracked: the backward recomputes the probabilities instead of keeping them.
    let (q, k, v) = split(&qkv)?;
    check(
        "fused attention, v alone",
        &v.contiguous()?,
        &[q, k],
        |x, e| layers::attend(&e[0], &e[1], x, 0.25, None),
    )?;
    for bias in biases {
        let extra: Vec<Tensor> = bias.iter().cloned().collect();
        check("fused attention", &qkv, &extra, |x, e| {
            let (q, k, v) = split(x)?;
            layers::attend(&q, &k, &v, 0.25, e.first())
        })?;
    }
    Ok(())
}

#[test]
fn stacked_heads_and_their_attention_match() -> Result<()> {
    let (b, l, h, d) = (3, 29, 4, 32);
    let ids = (randn(&[b, l, 3])? * 10.0)?.round()?;
    let (cos, sin) = layers::rope(&ids, &[8, 12, 12], 10_000.0)?;
    let x = randn(&[b, l, 3 * h * d])?;
    let scales = [(randn(&[d])? + 1.0)?, (randn(&[d])? + 1.0)?];
    let norm = |e: &[Tensor]| -> Result<QkNorm> {
        let map = [
            ("query_norm.scale".to_string(), e[0].clone()),
            ("key_norm.scale".to_string(), e[1].clone()),
        ];
        let vb = candle_nn::VarBuilder::from_tensors(map.into(), e[0].dtype(), &Device::Cpu);
        QkNorm::new(d, vb)
    };
    // Per-sample angles, then one set shared by the batch.
    for (c, s) in [
        (cos.clone(), sin.clone()),
        (cos.narrow(0, 0, 1)?, sin.narrow(0, 0, 1)?),
    ] {
        let extra = [scales[0].clone(), scales[1].clone(), c, s];
        check_all("qkv heads", &x, &extra, 2, |x, e| {
            layers::qkv_heads(x, &norm(e)?, (&e[2], &e[3]), h)
        })?;
        check_all("stacked attention", &x, &extra, 2, |x, e| {
            layers::attend_stacked(&layers::qkv_heads(x, &norm(e)?, (&e[2], &e[3]), h)?, None)
        })?;
    }
    Ok(())
}
