//! Times tract on a one-layer ONNX model (written by `tools/compare/compare.py`, the same
//! model onnxruntime and OpenVINO run), in this process's Rust, not through bindings.
//!
//! ```text
//! convkit-tract-bench --model LAYER.onnx --input N,C,H,W [--min-s 0.3]
//! ```
//!
//! Prints one JSON object: `{"median_ms": .., "min_ms": .., "runs": ..}`. tract runs a model
//! on the calling thread, so this is a one-thread figure.

use std::time::Instant;
use tract_onnx::prelude::*;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let model_path = arg(&args, "--model").ok_or_else(|| anyhow::anyhow!("--model FILE"))?;
    let shape: Vec<usize> = arg(&args, "--input")
        .ok_or_else(|| anyhow::anyhow!("--input N,C,H,W"))?
        .split(',')
        .map(|v| v.trim().parse::<usize>())
        .collect::<Result<_, _>>()?;
    let min_s: f64 = arg(&args, "--min-s")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(0.3);
    let plan = tract_onnx::onnx()
        .model_for_path(&model_path)?
        .with_input_fact(0, f32::fact(&shape).into())?
        .into_optimized()?
        .into_runnable()?;
    // A deterministic input in [-1, 1).
    let len: usize = shape.iter().product();
    let data: Vec<f32> = (0..len)
        .map(|i: usize| ((i.wrapping_mul(2_654_435_761) >> 8) % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    let input: Tensor = tract_ndarray::ArrayD::from_shape_vec(shape.clone(), data)?.into();
    for _ in 0..2 {
        plan.run(tvec![input.clone().into()])?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 5 || (start.elapsed().as_secs_f64() < min_s && times.len() < 200) {
        let t = Instant::now();
        plan.run(tvec![input.clone().into()])?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{{\"median_ms\": {}, \"min_ms\": {}, \"runs\": {}}}",
        times[times.len() / 2],
        times[0],
        times.len()
    );
    Ok(())
}
