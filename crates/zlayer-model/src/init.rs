//! Seeded weight initialisation: candle draws `Init`'s random values from an unseeded CPU
//! generator, so two fresh training runs of one command started from different weights
//! (seen: the layout branch's first alignment loss 0.58 in one run, 0.78 in the next).
//! [`seeded`] builds variables into a `VarMap` with the same distributions, drawn from
//! zlayer's SplitMix64 seeded by (seed, variable name), so that a run is repeatable and a
//! variable's start does not depend on the order the model asks for its variables.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use zlayer_scene::rng::Rng;

/// A `VarBuilder` creating its variables in `vm`, initialised from `seed`.
pub fn seeded(vm: &VarMap, seed: u64, dtype: DType, dev: &Device) -> VarBuilder<'static> {
    let backend: Box<dyn SimpleBackend> = Box::new(Seeded {
        vm: vm.clone(),
        seed,
    });
    VarBuilder::from_backend(backend, dtype, dev.clone())
}

struct Seeded {
    vm: VarMap,
    seed: u64,
}

/// FNV-1a of `name`, mixed with `seed`: each variable its own stream, whatever the order it
/// is asked for in (a `VarMap` iterates in no fixed order).
pub fn name_seed(seed: u64, name: &str) -> u64 {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    seed ^ h.rotate_left(17)
}

fn stream(seed: u64, name: &str) -> Rng {
    Rng::new(name_seed(seed, name))
}

/// A tensor of `shape` drawn as `init` prescribes.
fn draw(init: Init, shape: &Shape, rng: &mut Rng, dtype: DType, dev: &Device) -> Result<Tensor> {
    let n = shape.elem_count();
    let mut fill = |f: &mut dyn FnMut(&mut Rng) -> f64| -> Vec<f32> {
        (0..n).map(|_| f(rng) as f32).collect()
    };
    let data = match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => fill(&mut |r| mean + stdev * r.normal()),
        Init::Uniform { lo, up } => fill(&mut |r| lo + (up - lo) * r.uniform()),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let b = 3f64.sqrt() * std;
                    fill(&mut |r| -b + 2.0 * b * r.uniform())
                }
                NormalOrUniform::Normal => fill(&mut |r| std * r.normal()),
            }
        }
    };
    Tensor::from_vec(data, shape.clone(), dev)?.to_dtype(dtype)
}

impl SimpleBackend for Seeded {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut data = self.vm.data().lock().expect("var map lock");
        if let Some(v) = data.get(name) {
            let t = v.as_tensor();
            if t.shape() != &s {
                candle_core::bail!("{name}: shape {:?}, asked for {s:?}", t.shape());
            }
            return Ok(t.clone());
        }
        let var = Var::from_tensor(&draw(h, &s, &mut stream(self.seed, name), dtype, dev)?)?;
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("{name}: a seeded var map creates variables with a shape, not without")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vm
            .data()
            .lock()
            .expect("var map lock")
            .contains_key(name)
    }
}

/// Sets every variable of `vm` from the weights in `path` (any float dtype, as f32): the
/// start of a fine-tune. Returns how many it set; a variable the file lacks, or holds in
/// another shape, is an error that names it.
pub fn load_into(vm: &VarMap, path: &std::path::Path) -> std::result::Result<usize, String> {
    load_fitted(vm, path, |_| false, |_, t| Ok(t))
}

/// [`load_into`] for a model grown from the one in `path`: the variables `skip` names keep
/// their values and need not be in the file, and each other one is set to `fit(its current
/// value, the file's tensor in its dtype)`. Returns how many it set.
pub fn load_fitted(
    vm: &VarMap,
    path: &std::path::Path,
    skip: impl Fn(&str) -> bool,
    fit: impl Fn(&Tensor, Tensor) -> Result<Tensor>,
) -> std::result::Result<usize, String> {
    let data = vm.data().lock().expect("var map lock");
    let dev = data
        .values()
        .next()
        .map(|v| v.device().clone())
        .unwrap_or(Device::Cpu);
    let file = candle_core::safetensors::load(path, &dev)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut set = 0;
    for (name, var) in data.iter().filter(|(name, _)| !skip(name)) {
        let t = file
            .get(name)
            .ok_or_else(|| format!("{}: no tensor {name:?}", path.display()))?;
        let fail = |e: candle_core::Error| format!("{}: {name}: {e}", path.display());
        let t = fit(var.as_tensor(), t.to_dtype(var.dtype()).map_err(fail)?).map_err(fail)?;
        var.set(&t).map_err(fail)?;
        set += 1;
    }
    Ok(set)
}

/// DiT's adaLN-Zero start: zeroes every modulation (`*_mod.lin`, `*.modulation.lin`) and the
/// final layer in `vm`, so that each block begins as the identity and the model's output at
/// zero; returns how many variables it zeroed. A block's weights get gradients from the
/// second step on, once the gates have moved off zero.
pub fn adaln_zero(vm: &VarMap) -> Result<usize> {
    let data = vm.data().lock().expect("var map lock");
    let mut n = 0;
    for (name, var) in data.iter() {
        if name.contains("_mod.lin.")
            || name.contains(".modulation.lin.")
            || name.contains("final_layer.")
        {
            var.set(&var.as_tensor().zeros_like()?)?;
            n += 1;
        }
    }
    Ok(n)
}

/// A `VarBuilder` whose every tensor is fresh N(0, 0.02²) noise drawn on `dev`, kept
/// nowhere: full-size models for speed and memory benchmarks, whose values do not matter.
pub fn noise_weights(dtype: DType, dev: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(Noise), dtype, dev.clone())
}

struct Noise;

impl SimpleBackend for Noise {
    fn get(&self, s: Shape, _: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        // Drawn in f32: CUDA's generator has no half-precision path.
        Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("{name}: noise weights need a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::init::{FanInOut, NonLinearity};

    fn build(seed: u64, order: &[&str]) -> VarMap {
        let vm = VarMap::new();
        let vb = seeded(&vm, seed, DType::F32, &Device::Cpu);
        for name in order {
            vb.get_with_hints((64, 32), name, candle_nn::init::DEFAULT_KAIMING_UNIFORM)
                .unwrap();
        }
        vm
    }

    fn values(vm: &VarMap, name: &str) -> Vec<f32> {
        vm.data().lock().unwrap()[name]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn adaln_zero_makes_the_output_zero_and_touches_only_modulations_and_the_final_layer() {
        let cfg = crate::Config::tiny();
        let vm = VarMap::new();
        let flux = crate::dit::Flux::new(&cfg, seeded(&vm, 3, DType::F32, &Device::Cpu)).unwrap();
        let before = vm.all_vars().len();
        // Two stream modulations per double block, one per single block, and the final
        // layer's linear and adaLN modulation, each a weight and a bias.
        let want = 2 * (2 * cfg.depth + cfg.depth_single_blocks + 2);
        assert_eq!(adaln_zero(&vm).unwrap(), want);
        assert_eq!(vm.all_vars().len(), before);
        let dev = Device::Cpu;
        let r = |s: &[usize]| Tensor::randn(0f32, 1.0, s, &dev).unwrap();
        let (img, txt, y) = (r(&[2, 16, 8]), r(&[2, 5, 128]), r(&[2, 128]));
        let ids = Tensor::zeros((2, 16, 3), DType::F32, &dev).unwrap();
        let tids = Tensor::zeros((2, 5, 3), DType::F32, &dev).unwrap();
        let t = Tensor::new(&[0.3f32, 0.7], &dev).unwrap();
        let out = flux
            .forward(&crate::dit::FluxInput {
                img: &img,
                img_ids: &ids,
                txt: &txt,
                txt_ids: &tids,
                timesteps: &t,
                y: &y,
                guidance: None,
            })
            .unwrap();
        let max: f32 = out.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert_eq!(max, 0.0);
        // The blocks' own weights keep their random start.
        let qkv = &vm.data().lock().unwrap()["double_blocks.0.img_attn.qkv.weight"];
        let q: f32 = qkv
            .as_tensor()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(q > 0.0);
    }

    #[test]
    fn one_seed_one_start_in_any_order_and_another_seed_another() {
        let (a, b) = (build(7, &["x", "y"]), build(7, &["y", "x"]));
        assert_eq!(values(&a, "x"), values(&b, "x"));
        assert_eq!(values(&a, "y"), values(&b, "y"));
        assert_ne!(values(&a, "x"), values(&a, "y"));
        assert_ne!(values(&a, "x"), values(&build(8, &["x"]), "x"));
    }

    #[test]
    fn draws_follow_each_init_distribution() {
        let mut rng = Rng::new(3);
        let dev = Device::Cpu;
        let stats = |t: Tensor| {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
            let (lo, hi) = v
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            (mean, var.sqrt(), lo as f64, hi as f64)
        };
        let s = Shape::from((256, 128));
        let (m, sd, ..) = stats(
            draw(
                Init::Randn {
                    mean: 1.0,
                    stdev: 0.5,
                },
                &s,
                &mut rng,
                DType::F32,
                &dev,
            )
            .unwrap(),
        );
        assert!(
            (m - 1.0).abs() < 0.01 && (sd - 0.5).abs() < 0.01,
            "{m} {sd}"
        );
        let (m, _, lo, hi) = stats(
            draw(
                Init::Uniform { lo: -2.0, up: 4.0 },
                &s,
                &mut rng,
                DType::F32,
                &dev,
            )
            .unwrap(),
        );
        assert!((m - 1.0).abs() < 0.03 && lo >= -2.0 && hi < 4.0 && lo < -1.99 && hi > 3.99);
        // Kaiming uniform with fan-in 128 and ReLU gain: bound √3·√2/√128.
        let k = Init::Kaiming {
            dist: NormalOrUniform::Uniform,
            fan: FanInOut::FanIn,
            non_linearity: NonLinearity::ReLU,
        };
        let bound = 3f64.sqrt() * 2f64.sqrt() / 128f64.sqrt();
        let (_, sd, lo, hi) = stats(draw(k, &s, &mut rng, DType::F32, &dev).unwrap());
        assert!(lo >= -bound && hi <= bound && hi > 0.99 * bound);
        assert!((sd - bound / 3f64.sqrt()).abs() < 0.01 * bound, "{sd}");
        let c = draw(Init::Const(0.25), &s, &mut rng, DType::F32, &dev).unwrap();
        assert_eq!(stats(c).0, 0.25);
    }
}
