//! im2col + GEMM: the image is read as its im2col matrix straight into the GEMM's packed B
//! panels, so the full im2col matrix never exists in memory. Also serves `gemm1x1`, where B
//! is the image itself.
//!
//! Per image and group g (NCHW):
//! ```text
//!   C_g [Cout/g x OH*OW] = W_g [Cout/g x (C/g)*KH*KW] . B_g
//!   B_g [(ci, ky, kx)][(oy, ox)] = x[ci][oy*SH - PT + ky*DH][ox*SW - PL + kx*DW]  (0 outside)
//! ```

use crate::gemm::PackB;
use crate::geometry::Geometry;

/// One image's channels of one group, read as an im2col matrix.
pub struct Im2colB<'a> {
    /// The group's input channels of one image, `C/g * H * W` floats.
    pub x: &'a [f32],
    /// The layer.
    pub g: &'a Geometry,
    /// The first output position (oy * OW + ox) that column 0 of B stands for: a band of rows.
    pub col0: usize,
}

impl PackB for Im2colB<'_> {
    fn pack(&self, p0: usize, kc: usize, j0: usize, n: usize, nr: usize, out: &mut [f32]) {
        let g = self.g;
        let [ih, iw] = g.input;
        let [kh, kw] = g.kernel;
        let ow = g.conv_out[1];
        let (sh, sw) = (g.stride[0], g.stride[1]);
        let (dh, dw) = (g.dilation[0], g.dilation[1]);
        let (pt, pl) = (g.pad_before[0] as isize, g.pad_before[1] as isize);
        let panels = n.div_ceil(nr);
        for p in 0..kc {
            let row = p0 + p;
            let (ci, rem) = (row / (kh * kw), row % (kh * kw));
            let (ky, kx) = (rem / kw, rem % kw);
            let plane = &self.x[ci * ih * iw..(ci + 1) * ih * iw];
            for jp in 0..panels {
                let dst = &mut out[jp * kc * nr + p * nr..jp * kc * nr + (p + 1) * nr];
                let c0 = jp * nr;
                let w = nr.min(n - c0);
                let mut j = 0;
                while j < w {
                    // One run of columns along the same output row.
                    let col = self.col0 + j0 + c0 + j;
                    let (oy, ox) = (col / ow, col % ow);
                    let run = (ow - ox).min(w - j);
                    let y = (oy * sh + ky * dh) as isize - pt;
                    if y < 0 || y >= ih as isize {
                        dst[j..j + run].fill(0.0);
                    } else {
                        let src = &plane[y as usize * iw..(y as usize + 1) * iw];
                        let x0 = (ox * sw + kx * dw) as isize - pl;
                        if sw == 1 && x0 >= 0 && x0 as usize + run <= iw {
                            crate::gemm::pack::copy_floats(
                                &mut dst[j..j + run],
                                &src[x0 as usize..x0 as usize + run],
                            );
                        } else {
                            for (t, d) in dst[j..j + run].iter_mut().enumerate() {
                                let x = x0 + (t * sw) as isize;
                                *d = if x >= 0 && (x as usize) < iw {
                                    src[x as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                    j += run;
                }
                dst[w..].fill(0.0);
            }
        }
    }
}
