//! The one adapter from zlayer's kernels to candle's custom-op traits: a [`Kernel`] sees its
//! arguments as contiguous f32 slices with their dims, whatever their number.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor,
};

/// One argument of a kernel: its data and dims.
pub(super) struct Arg<'a> {
    /// The elements, row-major.
    pub(super) x: &'a [f32],
    /// The shape.
    pub(super) dims: &'a [usize],
}

impl Arg<'_> {
    /// Length of the last dimension (the row length of the row-wise kernels).
    pub(super) fn last(&self) -> usize {
        self.dims.last().copied().unwrap_or(1)
    }
}

/// A CPU kernel over contiguous f32 arguments, and its backward pass.
pub(super) trait Kernel: Send + Sync + 'static {
    /// Name in candle's errors.
    const NAME: &'static str;

    /// The output's data and shape.
    fn fwd(&self, args: &[Arg]) -> Result<(Vec<f32>, Shape)>;

    /// The arguments' gradients (`None`: no gradient), from the arguments, the output and its
    /// gradient. Backward kernels themselves have none.
    fn bwd(&self, _args: &[&Tensor], _res: &Tensor, _grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        candle_core::bail!("{}: forward only", Self::NAME)
    }
}

/// A kernel as a candle op.
pub(super) struct Op<K>(pub(super) K);

impl<K: Kernel> Op<K> {
    /// Applies the kernel to contiguous copies of `args` (1 to 3), recording the backward pass.
    pub(super) fn on(self, args: &[&Tensor]) -> Result<Tensor> {
        let c = contiguous(args)?;
        match &c[..] {
            [a] => a.apply_op1(self),
            [a, b] => a.apply_op2(b, self),
            [a, b, c] => a.apply_op3(b, c, self),
            _ => candle_core::bail!("{}: 1 to 3 arguments, got {}", K::NAME, args.len()),
        }
    }

    /// Applies the kernel without a backward pass (the kernels of backward passes).
    pub(super) fn run(&self, args: &[&Tensor]) -> Result<Tensor> {
        let c = contiguous(args)?;
        match &c[..] {
            [a] => a.apply_op1_no_bwd(self),
            [a, b] => a.apply_op2_no_bwd(b, self),
            [a, b, c] => a.apply_op3_no_bwd(b, c, self),
            _ => candle_core::bail!("{}: 1 to 3 arguments, got {}", K::NAME, args.len()),
        }
    }

    fn cpu(&self, args: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let args = args
            .iter()
            .map(|&(s, l)| {
                Ok(Arg {
                    x: data(s, l, K::NAME)?,
                    dims: l.dims(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (v, shape) = self.0.fwd(&args)?;
        Ok((CpuStorage::F32(v), shape))
    }
}

fn contiguous(args: &[&Tensor]) -> Result<Vec<Tensor>> {
    args.iter().map(|t| t.contiguous()).collect()
}

/// The f32 data of a contiguous CPU tensor.
fn data<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: f32 only")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: contiguous input only"),
    }
}

/// Runs `f` on the f32 data of a contiguous CPU tensor that a kernel holds (not an argument:
/// angles, an output gradient).
pub(super) fn held<R>(t: &Tensor, op: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(s) = &*storage else {
        candle_core::bail!("{op}: a held tensor is not on the CPU")
    };
    f(data(s, layout, op)?)
}

/// The `i`-th gradient, if the kernel gave one.
fn nth(g: &mut [Option<Tensor>], i: usize) -> Option<Tensor> {
    g.get_mut(i).and_then(Option::take)
}

impl<K: Kernel> CustomOp1 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu(&[(s, l)])
    }

    fn bwd(&self, a: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(nth(&mut self.0.bwd(&[a], res, grad)?, 0))
    }
}

impl<K: Kernel> CustomOp2 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu(&[(s1, l1), (s2, l2)])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = self.0.bwd(&[a, b], res, grad)?;
        Ok((nth(&mut g, 0), nth(&mut g, 1)))
    }
}

impl<K: Kernel> CustomOp3 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu(&[(s1, l1), (s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = self.0.bwd(&[a, b, c], res, grad)?;
        Ok((nth(&mut g, 0), nth(&mut g, 1), nth(&mut g, 2)))
    }
}
