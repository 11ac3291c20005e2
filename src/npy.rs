//! Strict `.npy` reading and atomic writing (SPEC section 2): little-endian float32 (`<f4`),
//! C order, a shape that must equal the one the spec implies. Everything else is an error
//! that names the file. A reader of our own (rather than a crate) because the strictness is
//! the point: header fields, data length and shape are checked before any large allocation.

use crate::error::{checked_f32_bytes, checked_product, Error, Result};
use std::io::{Read, Write};
use std::path::Path;

const MAGIC: &[u8] = b"\x93NUMPY";

/// A parsed header.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Reads `path` and checks that it holds `<f4`, C-order data of exactly `shape`.
/// `name` is the tensor's role (`input`, `weight`, ...) for error messages.
pub fn read_f32(path: &Path, shape: &[usize], name: &str) -> Result<Vec<f32>> {
    let shown = path.display().to_string();
    let err = |msg: String| Error::file(&shown, format!("({name}) {msg}"));
    let mut f = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let file_len = f
        .metadata()
        .map_err(|e| err(format!("cannot stat: {e}")))?
        .len();
    if file_len > 0 && f.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(err("is a directory".into()));
    }
    let mut pre = [0u8; 10];
    f.read_exact(&mut pre)
        .map_err(|_| err("too short to be a .npy file".into()))?;
    if &pre[..6] != MAGIC {
        return Err(err("not a .npy file (bad magic)".into()));
    }
    let (major, minor) = (pre[6], pre[7]);
    let (header_len, prefix) = match major {
        1 => (u16::from_le_bytes([pre[8], pre[9]]) as usize, 10usize),
        2 | 3 => {
            let mut more = [0u8; 2];
            f.read_exact(&mut more)
                .map_err(|_| err("truncated header".into()))?;
            (
                u32::from_le_bytes([pre[8], pre[9], more[0], more[1]]) as usize,
                12usize,
            )
        }
        _ => return Err(err(format!("unsupported .npy version {major}.{minor}"))),
    };
    if minor != 0 {
        return Err(err(format!("unsupported .npy version {major}.{minor}")));
    }
    if (header_len as u64) > file_len.saturating_sub(prefix as u64) || header_len > 1 << 20 {
        return Err(err(format!(
            "header length {header_len} runs past the end of the file"
        )));
    }
    let mut hbytes = vec![0u8; header_len];
    f.read_exact(&mut hbytes)
        .map_err(|_| err("truncated header".into()))?;
    let text = std::str::from_utf8(&hbytes).map_err(|_| err("header is not valid text".into()))?;
    let h = parse_header(text).map_err(err)?;
    if h.descr != "<f4" {
        return Err(err(format!(
            "dtype '{}' is not little-endian float32 ('<f4')",
            h.descr
        )));
    }
    if h.fortran_order {
        return Err(err("Fortran order; C order is required".into()));
    }
    if h.shape != shape {
        return Err(err(format!(
            "shape {:?} does not match the spec's {:?}",
            h.shape, shape
        )));
    }
    let count = checked_product(&h.shape, "npy shape")?;
    let bytes = checked_f32_bytes(count, "npy data")?;
    let data_len = file_len - (prefix + header_len) as u64;
    if data_len != bytes as u64 {
        return Err(err(format!(
            "holds {data_len} data bytes, shape {:?} needs {bytes}",
            h.shape
        )));
    }
    let mut raw = vec![0u8; bytes];
    f.read_exact(&mut raw)
        .map_err(|e| err(format!("cannot read data: {e}")))?;
    Ok(raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Parses the Python-literal header dict: `{'descr': '<f4', 'fortran_order': False,
/// 'shape': (2, 3), }`. Exactly these three keys, in any order.
fn parse_header(text: &str) -> std::result::Result<Header, String> {
    let t = text.trim_end_matches(['\n', ' ', '\0']).trim();
    let inner = t
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or("header is not a dict")?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let (key, after) = parse_str(rest).ok_or("bad header key")?;
        let after = after
            .trim_start()
            .strip_prefix(':')
            .ok_or("bad header: expected ':'")?
            .trim_start();
        let after = match key.as_str() {
            "descr" => {
                let (v, a) = parse_str(after).ok_or("bad 'descr'")?;
                descr = Some(v);
                a
            }
            "fortran_order" => {
                if let Some(a) = after.strip_prefix("False") {
                    fortran = Some(false);
                    a
                } else if let Some(a) = after.strip_prefix("True") {
                    fortran = Some(true);
                    a
                } else {
                    return Err("bad 'fortran_order'".into());
                }
            }
            "shape" => {
                let a = after.strip_prefix('(').ok_or("bad 'shape'")?;
                let close = a.find(')').ok_or("bad 'shape'")?;
                let dims = a[..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.trim_end_matches('L')
                            .parse::<usize>()
                            .map_err(|_| format!("bad dim '{s}' in 'shape'"))
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                shape = Some(dims);
                &a[close + 1..]
            }
            other => return Err(format!("unexpected header key '{other}'")),
        };
        rest = after.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(Header {
        descr: descr.ok_or("header has no 'descr'")?,
        fortran_order: fortran.ok_or("header has no 'fortran_order'")?,
        shape: shape.ok_or("header has no 'shape'")?,
    })
}

fn parse_str(s: &str) -> Option<(String, &str)> {
    let q = s.chars().next()?;
    if q != '\'' && q != '"' {
        return None;
    }
    let end = s[1..].find(q)? + 1;
    Some((s[1..end].to_string(), &s[end + 1..]))
}

/// Encodes `data` of `shape` as a version 1.0 `.npy` (header padded to 64 bytes).
pub fn encode_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let dims = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = MAGIC.len() + 4 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Writes atomically: to a temporary file in the target's directory, then renamed over the
/// target, so a failure never leaves a partial file.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let shown = path.display().to_string();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let fname = path
        .file_name()
        .ok_or_else(|| Error::file(&shown, "not a file path"))?
        .to_string_lossy()
        .to_string();
    if path.is_dir() {
        return Err(Error::file(&shown, "is a directory"));
    }
    let tmp = dir.join(format!(".{fname}.tmp.{}", std::process::id()));
    let bytes = encode_f32(shape, data);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::file(&shown, format!("cannot write: {e}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_alignment() {
        let b = encode_f32(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        let h = parse_header(std::str::from_utf8(&b[10..10 + hl]).unwrap()).unwrap();
        assert_eq!(
            h,
            Header {
                descr: "<f4".into(),
                fortran_order: false,
                shape: vec![2, 3]
            }
        );
        assert_eq!(
            parse_header("{'shape': (5,), 'fortran_order': True, 'descr': '<f8'}")
                .unwrap()
                .shape,
            vec![5]
        );
        assert!(parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x)}").is_err());
        assert!(parse_header("{'descr': '<f4', 'shape': (2,)}").is_err());
        assert!(parse_header("not a dict").is_err());
    }
}
