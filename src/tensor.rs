//! Tensors: the activation layouts, owned 64-byte-aligned buffers, and layout conversion.
//! Caller memory is never required to be aligned; only what convkit owns is.

use aligned_vec::{AVec, ConstAlign};

/// A buffer of f32 aligned to 64 bytes (one cache line, one AVX-512 vector).
pub type AlignedBuf = AVec<f32, ConstAlign<64>>;

/// A zeroed aligned buffer of `len` floats.
pub fn aligned_zeros(len: usize) -> AlignedBuf {
    let mut v = AlignedBuf::with_capacity(64, len);
    v.resize(len, 0.0);
    v
}

/// Memory order of activations. Weights are always OIHW (OIL in 1-D).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// Channels first: NCHW (NCL in 1-D).
    #[default]
    Nchw,
    /// Channels last: NHWC (NLC in 1-D).
    Nhwc,
}

impl Layout {
    /// `nchw` or `nhwc`.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        }
    }
    /// Parses `nchw` / `nhwc` (also `ncl` / `nlc`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "nchw" | "ncl" => Some(Layout::Nchw),
            "nhwc" | "nlc" => Some(Layout::Nhwc),
            _ => None,
        }
    }
}

/// Converts `n` images of `c` channels by `hw` positions from NHWC to NCHW.
pub fn nhwc_to_nchw(src: &[f32], dst: &mut [f32], n: usize, c: usize, hw: usize) {
    for b in 0..n {
        let s = &src[b * c * hw..(b + 1) * c * hw];
        let d = &mut dst[b * c * hw..(b + 1) * c * hw];
        for p in 0..hw {
            for ch in 0..c {
                d[ch * hw + p] = s[p * c + ch];
            }
        }
    }
}

/// Converts from NCHW to NHWC.
pub fn nchw_to_nhwc(src: &[f32], dst: &mut [f32], n: usize, c: usize, hw: usize) {
    for b in 0..n {
        let s = &src[b * c * hw..(b + 1) * c * hw];
        let d = &mut dst[b * c * hw..(b + 1) * c * hw];
        for ch in 0..c {
            for p in 0..hw {
                d[p * c + ch] = s[ch * hw + p];
            }
        }
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<AlignedBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A recycled scratch buffer of `len` floats (contents unspecified): derefs to exactly
/// `len` floats, while the buffer behind it keeps every float it ever held initialized.
/// (Handed out as a `Vec` resized to `len`, a buffer shrunk for a short block was zeroed
/// again up to the next long one: `memset` was 2-5% of the Winograd layers, whose last block
/// of a run is short and first one long.)
///
/// The buffer is 64-byte aligned, like the GEMM's own packing buffers: Winograd's V is read
/// in place as the GEMM's packed B panels, and from a `Vec` (16 bytes past a page for large
/// allocations) every other 32-byte load of a 64-byte panel row crossed a cache line.
pub struct Scratch {
    buf: AlignedBuf,
    len: usize,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            buf: aligned_zeros(0),
            len: 0,
        }
    }
}

impl std::ops::Deref for Scratch {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[..self.len]
    }
}

impl std::ops::DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

/// A scratch buffer of `len` floats (contents unspecified), recycled per thread: plans run
/// many times, and a fresh multi-megabyte `vec!` per run cost page faults and zeroing on
/// every call (a fifth of mobilenetv2.dw112). Return it with [`give_scratch`].
pub fn take_scratch(len: usize) -> Scratch {
    let mut buf = SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        // Best fit: the smallest buffer that holds `len`. (First fit handed a Winograd block
        // the padded image's buffer, and the image then came from a fresh allocation, zeroed
        // and faulted in on every run: 19 of vgg16.conv1_2's 63 ms.)
        let fit = s
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= len)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i);
        match fit {
            Some(i) => s.swap_remove(i),
            None => s.pop().unwrap_or_else(|| aligned_zeros(0)),
        }
    });
    if buf.len() < len {
        // Only floats this buffer never held are written.
        buf.resize(len, 0.0);
    }
    Scratch { buf, len }
}

/// Buffers [`give_scratch`] keeps per thread. A fused pool run holds five at once on the
/// calling thread (padded image, band, a task's pooled rows, the pool's window row and
/// pooled row); with four kept, one was dropped and allocated afresh on every run.
const SCRATCH_KEPT: usize = 8;

/// Returns a buffer from [`take_scratch`] for reuse by this thread (at most
/// `SCRATCH_KEPT` are kept).
pub fn give_scratch(v: Scratch) {
    if v.buf.is_empty() {
        return;
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SCRATCH_KEPT {
            s.push(v.buf);
        }
    });
}

/// `dst[j * rows + i] = src[i * cols + j]` (an image `[rows][cols]` into `[cols][rows]`,
/// NHWC <-> NCHW) with the tier's `transpose`, on the current pool's threads. The threads
/// take bands of source rows; each transposes its band block by block (16 rows) into a
/// small buffer and copies the block's pieces into its share of every destination row (a
/// share is its own slice: the threads' writes never alias). One thread, or a small image:
/// one call of `transpose` straight into `dst`. (A serial transpose in and out of NHWC
/// plans held two threads back on the converted layers.)
pub fn transpose_image(
    transpose: crate::arch::TransposeFn,
    src: &[f32],
    rows: usize,
    cols: usize,
    dst: &mut [f32],
) {
    let threads = crate::par::threads();
    let floats = rows * cols;
    if threads == 1 || floats < 1 << 18 || rows < 32 || cols == 0 {
        // Bands of about 256 KiB of source rows, each transposed whole into its columns of
        // every destination row. The tier's transpose walks column blocks outer, so over a
        // whole large image it read every source line once per block of 8 columns, from
        // DRAM: [50176 x 64] (vgg16.conv1_2's NHWC input) took 3.1 ms whole, 1.6 ms in bands
        // of 1024 rows (0.7 against 1.4 ms for [12544 x 128]; bands of 32-128 rows 1.2-1.7x
        // slower than 256 KiB ones, of 4096 up to 1.5x; rows of 64 channels 1024).
        // (At least 8 rows: past 64K columns the quotient is 0.)
        let band = ((1usize << 16) / cols.max(1)).max(1).next_multiple_of(8);
        for b0 in (0..rows).step_by(band) {
            let n = band.min(rows - b0);
            transpose(
                &src[b0 * cols..(b0 + n) * cols],
                n,
                cols,
                &mut dst[b0..],
                rows,
            );
        }
        return;
    }
    const BLOCK: usize = 16;
    let tasks = (2 * threads).min(rows / BLOCK).max(1);
    let bound = |t: usize| (t * rows / tasks).next_multiple_of(BLOCK).min(rows);
    let cuts: Vec<usize> = (0..=tasks).map(bound).collect();
    let shares = crate::par::plane_parts(&mut dst[..floats], rows, &cuts);
    crate::par::for_each_item(shares, |t, mut pieces| {
        let (r0, r1) = (bound(t), bound(t + 1));
        let mut block = take_scratch(BLOCK * cols);
        for b0 in (r0..r1).step_by(BLOCK) {
            let n = BLOCK.min(r1 - b0);
            transpose(
                &src[b0 * cols..(b0 + n) * cols],
                n,
                cols,
                &mut block[..n * cols],
                n,
            );
            for (j, piece) in pieces.iter_mut().enumerate() {
                crate::gemm::pack::copy_floats(
                    &mut piece[b0 - r0..b0 - r0 + n],
                    &block[j * n..(j + 1) * n],
                );
            }
        }
        give_scratch(block);
    });
}

/// Zero-padded channel planes of one image: `channels` planes of `plane[0] x plane[1]`
/// floats, one after the other, input pixel (y, x) of each at row `pad[0] + y`, column
/// `pad[1] + x` (rows and columns past the input zero; a plane may be cut short of the input's
/// last columns or rows).
pub struct PaddedPlanes {
    /// Input `[IH, IW]`.
    pub input: [usize; 2],
    /// Planes (input channels).
    pub channels: usize,
    /// Padding before, `[top, left]`.
    pub pad: [usize; 2],
    /// A plane's `[rows, row length]`.
    pub plane: [usize; 2],
}

impl PaddedPlanes {
    /// The planes of `g`'s input channels, `plane` = `[rows, row length]`, padded as `g`.
    pub fn of(g: &crate::geometry::Geometry, plane: [usize; 2]) -> Self {
        PaddedPlanes {
            input: g.input,
            channels: g.in_channels,
            pad: g.pad_before,
            plane,
        }
    }

    /// Fills the first `channels * rows * row length` floats of `xp` from one NHWC image `x`
    /// (`[IH][IW][C]`): each input row transposed into its row of every plane, without an NCHW
    /// copy of the image in between (an NHWC run had transposed the whole image to NCHW, then
    /// copied it into the planes: two passes over it through memory). One thread transposes
    /// straight into the planes (the transpose's destination stride is the plane); threads
    /// take bands of padded rows, each row transposed into a buffer and copied out to the
    /// band's rows of every plane.
    pub fn fill_from_nhwc(&self, x: &[f32], xp: &mut [f32], transpose: crate::arch::TransposeFn) {
        let ([ih, iw], c, [ph, pw]) = (self.input, self.channels, self.plane);
        let (pt, pl) = (self.pad[0], self.pad[1].min(pw));
        let plane = ph * pw;
        // Input columns that land in the plane (all, unless the plane is cut short).
        let cols = iw.min(pw - pl);
        let xp = &mut xp[..c * plane];
        let threads = crate::par::threads();
        if threads == 1 || ph < 2 * threads {
            for r in 0..ph {
                let y = r.wrapping_sub(pt);
                for ch in 0..c {
                    let row = &mut xp[ch * plane + r * pw..ch * plane + (r + 1) * pw];
                    if y >= ih || cols == 0 {
                        row.fill(0.0);
                    } else {
                        row[..pl].fill(0.0);
                        row[pl + cols..].fill(0.0);
                    }
                }
                if y < ih && cols > 0 {
                    transpose(
                        &x[y * iw * c..(y * iw + cols) * c],
                        cols,
                        c,
                        &mut xp[r * pw + pl..],
                        plane,
                    );
                }
            }
            return;
        }
        // Bands of padded rows, one a thread: each band's rows of every plane.
        let bound = |t: usize| ph * t / threads;
        let cuts: Vec<usize> = (0..=threads).map(|t| bound(t) * pw).collect();
        let parts = crate::par::plane_parts(xp, plane, &cuts);
        crate::par::for_each_part(parts, |t, mut rows| {
            let mut buf = take_scratch(c * cols);
            for r in bound(t)..bound(t + 1) {
                let y = r.wrapping_sub(pt);
                let at = (r - bound(t)) * pw;
                if y >= ih || cols == 0 {
                    for ch_rows in rows.iter_mut() {
                        ch_rows[at..at + pw].fill(0.0);
                    }
                    continue;
                }
                transpose(&x[y * iw * c..(y * iw + cols) * c], cols, c, &mut buf, cols);
                for (ch, ch_rows) in rows.iter_mut().enumerate() {
                    let row = &mut ch_rows[at..at + pw];
                    row[..pl].fill(0.0);
                    crate::gemm::pack::copy_floats(
                        &mut row[pl..pl + cols],
                        &buf[ch * cols..(ch + 1) * cols],
                    );
                    row[pl + cols..].fill(0.0);
                }
            }
            give_scratch(buf);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scratch buffers start on a cache line, fresh or recycled, grown or shrunk (Winograd's
    /// V is read from one as the GEMM's packed panels, with 32-byte loads).
    #[test]
    fn scratch_buffers_are_cache_line_aligned() {
        for len in [1usize, 7, 1000, 100_000, 3_000_000, 10, 2_000_000] {
            let mut s = take_scratch(len);
            assert_eq!(s.len(), len);
            assert_eq!(s.as_ptr() as usize % 64, 0, "scratch of {len} floats");
            s[len - 1] = 1.0;
            give_scratch(s);
        }
    }

    /// The parallel transpose (bands of rows, blocks through a buffer, shares of the
    /// destination rows) gives exactly the serial one: images past the size at which it
    /// splits, rows off the block size, on 1, 2 and 3 threads, every tier's transpose.
    #[test]
    fn transpose_image_in_parallel_is_exact() {
        for (rows, cols) in [
            (4100usize, 67usize),
            (70, 4001),
            (1000, 300),
            (64, 3136),
            (12, 70001),
        ] {
            let src: Vec<f32> = (0..rows * cols).map(|v| v as f32 * 0.5 - 7.0).collect();
            let mut want = vec![0f32; rows * cols];
            crate::arch::transpose_scalar(&src, rows, cols, &mut want, rows);
            for isa in crate::arch::available_isas() {
                let transpose = isa.kernels().unwrap().transpose;
                for threads in [1, 2, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut got = vec![f32::NAN; rows * cols];
                    pool.install(|| transpose_image(transpose, &src, rows, cols, &mut got));
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{rows} x {cols} on {} threads ({})",
                        threads,
                        isa.name()
                    );
                }
            }
        }
    }
}
