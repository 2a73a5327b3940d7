//! Stride-1 convolution (frozen forwards, and the forward and input gradient of training
//! convolutions whose weights learn nothing) as one matrix product per chunk of images.
//!
//! The images of a chunk are padded once, stacked vertically in one buffer per channel (rows
//! `W + left + right` wide, the zero rows between two images serving as one's bottom padding
//! and the next one's top). Tap `(i, j)` of the kernel then reads that buffer from offset
//! `i·dh·Wp + j·dw`, so the chunk's column matrix is `C·kh·kw` contiguous copies of it, and one
//! product of the `[Cout, C·kh·kw]` weights with it gives `[Cout, span]`, whose first `W'`
//! columns of each image row are the output (the others straddle padded rows and are dropped).
//! A chunk is small enough for its column matrix to stay in cache: for a whole batch that
//! matrix would leave it and the product would run at memory speed. A pointwise convolution
//! (1×1, no padding) needs no columns: the chunk's `[images, C, H·W]` is the product's operand.
//!
//! The product is burn's CPU matrix kernel (the `gemm` crate: AVX-512 where the CPU has it), one
//! product with `K = C·kh·kw` rather than `kh·kw` accumulated products with `K = C`, whose short
//! inner loops spent as much time loading and storing the accumulator as multiplying: measured
//! 1.5–2.1× the throughput of `kh·kw` products through `matrixmultiply` (AVX2 only) on the
//! built-in models' shapes. The caller may fold a following normalisation layer's scale into the
//! weights; its shift, a residual sum and a ReLU are applied as the output is written, so the
//! activations are written once instead of once per operator.

use burn::tensor::TensorData;
use burn_flex::FlexTensor;
use burn_flex::ops::matmul::matmul;
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
/// `[N, Cout, H', W']`, and `[H', W']`. The weights become the product's operand as they are.
pub(crate) fn conv_stride1(
    input: &[f32],
    weight: Vec<f32>,
    epilogue: Epilogue<'_>,
    g: &Geometry,
) -> Result<(Vec<f32>, [usize; 2]), ShapeError> {
    let Epilogue { shift, residual, relu } = epilogue;
    let [h, w] = g.size;
    let [kh, kw] = g.kernel;
    let (c, cout) = (g.channels, g.out_channels);
    let wp = g.padded()[1];
    let [out_h, out_w] = g.output().ok_or(ShapeError::Unsupported("a kernel larger than its padded input"))?;
    let mismatch = |what: &'static str| ShapeError::Unsupported(what);
    if input.len() != g.batch * c * h * w {
        return Err(mismatch("convolution input of another size than its geometry"));
    }
    if weight.len() != cout * c * kh * kw {
        return Err(mismatch("convolution weight of another size than its geometry"));
    }
    if shift.len() != cout {
        return Err(mismatch("convolution shift of another length than its output channels"));
    }
    if residual.is_some_and(|r| r.len() != g.batch * cout * out_h * out_w) {
        return Err(mismatch("residual of another size than the convolution's output"));
    }
    let plane = out_h * out_w;
    let mut output = vec![0.0f32; g.batch * cout * plane];
    if output.is_empty() {
        return Ok((output, [out_h, out_w]));
    }
    let taps = kh * kw;
    let weights = FlexTensor::from_data(TensorData::new(weight, [cout, c * taps]));
    let pointwise = taps == 1 && g.padding == [(0, 0); 2];
    let stack = Stack::of(g);
    let images = chunk_images(g.batch, c * stack.image_rows * wp);
    let padded_len = if pointwise { 0 } else { stack.padded_len(images, g) };
    output.par_chunks_mut(images * cout * plane).enumerate().for_each_init(
        || vec![0.0f32; c * padded_len],
        |padded, (chunk, out)| {
            let count = out.len() / (cout * plane);
            let chunk_input = &input[chunk * images * c * h * w..][..count * c * h * w];
            let (product, strides) = if pointwise {
                // The chunk's images are already the product's operand: `[count, C, H·W]`.
                let rhs = TensorData::new(chunk_input.to_vec(), [count, c, h * w]);
                (matmul(weights.clone(), FlexTensor::from_data(rhs)), [cout * plane, plane, out_w])
            } else {
                let span = ((count - 1) * stack.image_rows + out_h) * wp;
                let columns = stack.columns(chunk_input, &mut padded[..], padded_len, span, g);
                let rhs = TensorData::new(columns, [c * taps, span]);
                (matmul(weights.clone(), FlexTensor::from_data(rhs)), [stack.image_rows * wp, span, wp])
            };
            let acc: &[f32] = product.storage();
            let [image_stride, channel_stride, row_stride] = strides;
            let first = chunk * images;
            for (image, out) in out.chunks_exact_mut(cout * plane).enumerate() {
                let residual = residual.map(|r| &r[(first + image) * cout * plane..][..cout * plane]);
                for (co, (dst, &add)) in out.chunks_exact_mut(plane).zip(shift).enumerate() {
                    for (oy, dst_row) in dst.chunks_exact_mut(out_w).enumerate() {
                        let src_row = &acc[image * image_stride + co * channel_stride + oy * row_stride..][..out_w];
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
            }
        },
    );
    Ok((output, [out_h, out_w]))
}

/// Padded input values per chunk: its column matrix (`kh·kw` times as many) then stays within a
/// core's cache. Measured on the built-in models' shapes: 16–64 Ki floats alike, 512 Ki half
/// the throughput on the 16- and 32-channel layers.
const CHUNK_FLOATS: usize = 1 << 15;

/// Images per chunk: as many as keep a chunk's padded input within [`CHUNK_FLOATS`], at least
/// one, and no more than spread the batch over the pool's threads.
fn chunk_images(batch: usize, floats_per_image: usize) -> usize {
    let per_thread = batch.div_ceil(rayon::current_num_threads().max(1)).max(1);
    (CHUNK_FLOATS / floats_per_image.max(1)).clamp(1, per_thread)
}

/// How a chunk's images are stacked in its padded buffers: image `b` starts at row
/// `b·image_rows`, and `gap` zero rows follow each (one image's bottom padding, the next one's top).
#[derive(Debug, Clone, Copy)]
struct Stack {
    image_rows: usize,
}

impl Stack {
    fn of(g: &Geometry) -> Self {
        let [(top, bottom), _] = g.padding;
        Self { image_rows: g.size[0] + top.max(bottom) }
    }

    /// Values per channel's buffer for a chunk of `images`: the last tap's view reads
    /// `(kw − 1)·dw` values past the padded rows.
    fn padded_len(&self, images: usize, g: &Geometry) -> usize {
        let [hp, wp] = g.padded();
        ((images - 1) * self.image_rows + hp) * wp + (g.kernel[1] - 1) * g.dilation[1]
    }

    /// The column matrix `[C·kh·kw, span]` of a chunk's input `[count, C, H, W]`, by way of
    /// `padded` (the chunk's buffers, `padded_len` values per channel, zero outside the
    /// interiors this writes).
    fn columns(&self, input: &[f32], padded: &mut [f32], padded_len: usize, span: usize, g: &Geometry) -> Vec<f32> {
        let [h, w] = g.size;
        let [kh, kw] = g.kernel;
        let [dh, dw] = g.dilation;
        let [(top, _), (left, _)] = g.padding;
        let wp = g.padded()[1];
        let c = g.channels;
        // Only the interiors are written: the padding stays zero from the buffer's creation, and
        // a last, shorter chunk reads none of the rows of the images it lacks.
        for ch in 0..c {
            let dst = &mut padded[ch * padded_len..][..padded_len];
            for (image, src) in input.chunks_exact(c * h * w).enumerate() {
                for (y, row) in src[ch * h * w..][..h * w].chunks_exact(w).enumerate() {
                    dst[(image * self.image_rows + top + y) * wp + left..][..w].copy_from_slice(row);
                }
            }
        }
        let mut columns = Vec::with_capacity(c * kh * kw * span);
        for ch in 0..c {
            for tap in 0..kh * kw {
                let offset = (tap / kw) * dh * wp + (tap % kw) * dw;
                columns.extend_from_slice(&padded[ch * padded_len + offset..][..span]);
            }
        }
        columns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cema_core::onnx::generate::SplitMix64;

    /// The convolution as its definition: every output value summed tap by tap.
    fn direct(input: &[f32], weight: &[f32], epilogue: Epilogue<'_>, g: &Geometry) -> Vec<f32> {
        let [h, w] = g.size;
        let [kh, kw] = g.kernel;
        let [(top, _), (left, _)] = g.padding;
        let [out_h, out_w] = g.output().expect("a geometry that fits");
        let (c, cout) = (g.channels, g.out_channels);
        let mut out = vec![0.0; g.batch * cout * out_h * out_w];
        for (i, value) in out.iter_mut().enumerate() {
            let (n, co, oy, ox) =
                (i / (cout * out_h * out_w), i / (out_h * out_w) % cout, i / out_w % out_h, i % out_w);
            let mut sum = 0.0;
            for ch in 0..c {
                for ky in 0..kh {
                    for kx in 0..kw {
                        let y = (oy + ky * g.dilation[0]).checked_sub(top).filter(|&y| y < h);
                        let x = (ox + kx * g.dilation[1]).checked_sub(left).filter(|&x| x < w);
                        if let (Some(y), Some(x)) = (y, x) {
                            sum += input[((n * c + ch) * h + y) * w + x] * weight[((co * c + ch) * kh + ky) * kw + kx];
                        }
                    }
                }
            }
            sum += epilogue.shift[co] + epilogue.residual.map_or(0.0, |r| r[i]);
            *value = if epilogue.relu { sum.max(0.0) } else { sum };
        }
        out
    }

    /// Whatever the chunking (all images in one chunk, chunks of three and two, one image per
    /// chunk: pools of 1, 2 and 5 threads), the stacked images' products give the definition's
    /// values, for paddings (uneven too), dilations, 1×1 (pointwise) and 5×5 kernels, with the
    /// shift, residual and ReLU of the epilogue.
    #[test]
    fn chunked_products_give_the_definitions_values() {
        let cases = [
            ([3, 3], [(1, 1), (1, 1)], [1, 1]),
            ([1, 1], [(0, 0), (0, 0)], [1, 1]),
            ([1, 1], [(1, 0), (0, 1)], [1, 1]),
            ([3, 2], [(0, 2), (1, 0)], [1, 1]),
            ([3, 3], [(2, 2), (0, 1)], [2, 2]),
            ([5, 5], [(0, 0), (0, 0)], [1, 1]),
        ];
        for (case, (kernel, padding, dilation)) in cases.into_iter().enumerate() {
            let g = Geometry { batch: 5, channels: 3, size: [7, 6], out_channels: 4, kernel, padding, dilation };
            let [out_h, out_w] = g.output().expect("a geometry that fits");
            let mut rng = SplitMix64::new(70 + case as u64);
            let input = rng.vec(5 * 3 * 7 * 6, -1.0, 1.0);
            let weight = rng.vec(4 * 3 * kernel[0] * kernel[1], -1.0, 1.0);
            let shift = rng.vec(4, -1.0, 1.0);
            let residual = rng.vec(5 * 4 * out_h * out_w, -1.0, 1.0);
            for (residual, relu) in [(None, false), (Some(&residual[..]), true)] {
                let epilogue = Epilogue { shift: &shift, residual, relu };
                let want = direct(&input, &weight, epilogue, &g);
                for threads in [1, 2, 5] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a thread pool");
                    let (got, size) =
                        pool.install(|| conv_stride1(&input, weight.clone(), epilogue, &g)).expect("a convolution");
                    assert_eq!(size, [out_h, out_w], "case {case}");
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                            "case {case}, {threads} threads, value {i}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
