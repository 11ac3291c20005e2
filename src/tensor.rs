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
/// [`SCRATCH_KEPT`] are kept).
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
}
