//! Stride-1 convolution for graphs without autodiff (teacher logits, evaluation): `kh·kw`
//! matrix products over shifted views of each zero-padded image, accumulated in place.
//!
//! A column matrix (im2col) holds `kh·kw` copies of the input; for a batch it leaves the cache
//! and the convolution runs at memory speed. Here each image is padded once (its rows copied
//! into a buffer `W + left + right` wide) and every tap `(i, j)` is the same buffer read from
//! offset `i·dh·Wp + j·dw`: the product of the tap's `[Cout, C]` weights with the `[C, H'·Wp]`
//! view accumulates into `[Cout, H'·Wp]`, whose first `W'` columns of each row are the output
//! (the others straddle two padded rows and are dropped). The caller may fold a following
//! normalisation layer's scale into the weights; its shift, a residual sum and a ReLU are
//! applied as the output is written, so the activations are written once instead of once per
//! operator.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayView4, ArrayViewMut2, Axis, Slice};
use rayon::prelude::*;

use crate::error::ShapeError;

/// A stride-1 convolution's geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Images.
    pub(crate) batch: usize,
    /// Input channels.
    pub(crate) channels: usize,
    /// Input height and width.
    pub(crate) size: [usize; 2],
    /// Output channels.
    pub(crate) out_channels: usize,
    /// Kernel height and width.
    pub(crate) kernel: [usize; 2],
    /// `(begin, end)` zero padding per spatial axis.
    pub(crate) padding: [(usize, usize); 2],
    /// Dilation per spatial axis.
    pub(crate) dilation: [usize; 2],
}

impl Geometry {
    /// Padded height and width.
    fn padded(&self) -> [usize; 2] {
        let [(top, bottom), (left, right)] = self.padding;
        [self.size[0] + top + bottom, self.size[1] + left + right]
    }

    /// Output height and width, or `None` when the dilated kernel does not fit.
    pub(crate) fn output(&self) -> Option<[usize; 2]> {
        let [hp, wp] = self.padded();
        let reach = |axis: usize| self.dilation[axis] * (self.kernel[axis].max(1) - 1);
        Some([hp.checked_sub(reach(0))?, wp.checked_sub(reach(1))?]).filter(|[h, w]| *h > 0 && *w > 0)
    }
}

/// What is applied as the output is written: per output channel a `shift`, then an optional
/// `residual` of the output's size added, then an optional ReLU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    pub(crate) shift: &'a [f32],
    pub(crate) residual: Option<&'a [f32]>,
    pub(crate) relu: bool,
}

/// The convolution of `input` `[N, C, H, W]` with `weight` `[Cout, C, kh, kw]`, then `epilogue`:
/// `[N, Cout, H', W']`, and `[H', W']`.
pub(crate) fn conv_stride1(
    input: &[f32],
    weight: &[f32],
    epilogue: Epilogue<'_>,
    g: &Geometry,
) -> Result<(Vec<f32>, [usize; 2]), ShapeError> {
    let Epilogue { shift, residual, relu } = epilogue;
    let [h, w] = g.size;
    let [kh, kw] = g.kernel;
    let [dh, dw] = g.dilation;
    let (c, cout) = (g.channels, g.out_channels);
    let [hp, wp] = g.padded();
    let [out_h, out_w] = g.output().ok_or(ShapeError::Unsupported("a kernel larger than its padded input"))?;
    let [(top, _), (left, _)] = g.padding;
    let mismatch = |what: &'static str| ShapeError::Unsupported(what);
    if input.len() != g.batch * c * h * w {
        return Err(mismatch("convolution input of another size than its geometry"));
    }
    if shift.len() != cout {
        return Err(mismatch("convolution shift of another length than its output channels"));
    }
    if residual.is_some_and(|r| r.len() != g.batch * cout * out_h * out_w) {
        return Err(mismatch("residual of another size than the convolution's output"));
    }
    let weight = ArrayView4::from_shape((cout, c, kh, kw), weight)
        .map_err(|_| mismatch("convolution weight of another size than its geometry"))?;
    // The last tap's view reads (kw − 1)·dw values past the padded image.
    let padded_len = hp * wp + (kw - 1) * dw;
    let span = out_h * wp;
    let plane = out_h * out_w;
    let mut output = vec![0.0f32; g.batch * cout * plane];
    let buffers = || (vec![0.0f32; c * padded_len], vec![0.0f32; cout * span]);
    output.par_chunks_mut(cout * plane).enumerate().try_for_each_init(buffers, |(padded, acc), (image, out)| {
        // Only the interior is written: the border stays zero from the buffer's creation.
        for ch in 0..c {
            let src = &input[(image * c + ch) * h * w..][..h * w];
            let dst = &mut padded[ch * padded_len..][..padded_len];
            for (y, row) in src.chunks_exact(w).enumerate() {
                dst[(y + top) * wp + left..][..w].copy_from_slice(row);
            }
        }
        let padded = ArrayView2::from_shape((c, padded_len), &padded[..]).map_err(|_| mismatch("padded buffer"))?;
        let mut acc = ArrayViewMut2::from_shape((cout, span), &mut acc[..]).map_err(|_| mismatch("accumulator"))?;
        for i in 0..kh {
            for j in 0..kw {
                let offset = i * dh * wp + j * dw;
                let taps = weight.index_axis(Axis(2), i).index_axis_move(Axis(2), j);
                let shifted = padded.slice_axis(Axis(1), Slice::from(offset..offset + span));
                let keep = if i == 0 && j == 0 { 0.0 } else { 1.0 };
                general_mat_mul(1.0, &taps, &shifted, keep, &mut acc);
            }
        }
        let acc = acc.as_slice().ok_or(mismatch("accumulator layout"))?;
        let residual = residual.map(|r| &r[image * cout * plane..][..cout * plane]);
        for (co, (dst, &add)) in out.chunks_exact_mut(plane).zip(shift).enumerate() {
            for (oy, dst_row) in dst.chunks_exact_mut(out_w).enumerate() {
                let src_row = &acc[co * span + oy * wp..][..out_w];
                dst_row.iter_mut().zip(src_row).for_each(|(d, s)| *d = s + add);
                if let Some(residual) = residual {
                    let res_row = &residual[co * plane + oy * out_w..][..out_w];
                    dst_row.iter_mut().zip(res_row).for_each(|(d, r)| *d += r);
                }
                if relu {
                    dst_row.iter_mut().for_each(|d| *d = d.max(0.0));
                }
            }
        }
        Ok::<(), ShapeError>(())
    })?;
    Ok((output, [out_h, out_w]))
}
