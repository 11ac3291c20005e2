//! Checks convkit's conv2d against candle's own on a small CNN and on suite layers, then
//! times both side by side. Threads: `RAYON_NUM_THREADS` (both libraries run on rayon's
//! global pool here). Exits non-zero when an output differs beyond SPEC's tolerance.
//!
//! `convkit-candle --suite benches/layers.json --layer NAME` instead times candle alone on
//! one suite layer (conv, bias, activation and pool in candle's own ops) and prints one JSON
//! object: the candle column of `tools/compare/compare.py --rust-peers`.

use candle_core::{Device, Tensor};
use convkit_candle::{Conv2d, Conv2dConfig};
use std::time::Instant;

fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut t = Vec::new();
    let start = Instant::now();
    while t.len() < 5 || (start.elapsed().as_secs_f64() < 0.5 && t.len() < 100) {
        let s = Instant::now();
        f();
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Worst |a - b| relative to the largest |b| + 1 (a proxy for SPEC's S on these sizes).
fn worst(a: &Tensor, b: &Tensor) -> candle_core::Result<f32> {
    let a = a.flatten_all()?.to_vec1::<f32>()?;
    let b = b.flatten_all()?.to_vec1::<f32>()?;
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())) + 1.0;
    Ok(a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale)
}

/// One suite layer in candle's own ops: `{"layer", "median_ms"}` or `{"layer", "skipped"}`.
fn time_suite_layer(suite: &str, name: &str) -> candle_core::Result<String> {
    let text = std::fs::read_to_string(suite)
        .map_err(|e| candle_core::Error::Msg(format!("{suite}: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| candle_core::Error::Msg(format!("{suite}: {e}")))?;
    let l = v["layers"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["name"] == name))
        .ok_or_else(|| candle_core::Error::Msg(format!("no layer {name}")))?;
    let nums = |k: &str| -> Vec<usize> {
        l[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as usize)
                    .collect()
            })
            .unwrap_or_default()
    };
    let (input, kernel, stride, pad, dil) = (
        nums("input"),
        nums("kernel"),
        nums("stride"),
        nums("padding"),
        nums("dilation"),
    );
    let same = |v: &[usize]| v.iter().all(|&x| x == v[0]);
    if !(same(&stride) && same(&pad) && same(&dil)) {
        return Ok(format!(
            "{{\"layer\": \"{name}\", \"skipped\": \"per-dimension parameters differ\"}}"
        ));
    }
    let groups = l["groups"].as_u64().unwrap_or(1) as usize;
    let cout = l["out_channels"].as_u64().unwrap_or(1) as usize;
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, input.as_slice(), &dev)?;
    let mut wshape = vec![cout, input[1] / groups];
    wshape.extend(&kernel);
    let w = (Tensor::randn(0f32, 1.0, wshape.as_slice(), &dev)? * 0.05)?;
    let bias = l["bias"].as_bool().unwrap_or(true);
    let b = Tensor::randn(0f32, 0.1, cout, &dev)?;
    let act = l["activation"].as_str().unwrap_or("none").to_string();
    let pool = l["pool"].clone();
    let two_d = kernel.len() == 2;
    let run = || -> candle_core::Result<Tensor> {
        let mut y = if two_d {
            x.conv2d(&w, pad[0], stride[0], dil[0], groups)?
        } else {
            x.conv1d(&w, pad[0], stride[0], dil[0], groups)?
        };
        if bias {
            let shape: Vec<usize> = if two_d {
                vec![1, cout, 1, 1]
            } else {
                vec![1, cout, 1]
            };
            y = y.broadcast_add(&b.reshape(shape)?)?;
        }
        y = match act.as_str() {
            "relu" => y.relu()?,
            "relu6" => y.clamp(0f32, 6f32)?,
            "gelu" => y.gelu_erf()?,
            _ => y,
        };
        if let Some(kind) = pool["kind"].as_str() {
            y = match kind {
                "global_max" => y.max_keepdim(2)?,
                "global_avg" => y.mean_keepdim(2)?,
                _ => {
                    let size = pool["size"][0].as_u64().unwrap_or(2) as usize;
                    let st = pool["stride"][0].as_u64().unwrap_or(size as u64) as usize;
                    let pp = pool["padding"][0].as_u64().unwrap_or(0) as usize;
                    // Zero padding equals ignoring the padded cells for a max pool after
                    // relu (every value is >= 0 and each window holds a real cell).
                    let yp = if pp > 0 {
                        y.pad_with_zeros(2, pp, pp)?.pad_with_zeros(3, pp, pp)?
                    } else {
                        y
                    };
                    if kind == "max" {
                        yp.max_pool2d_with_stride(size, st)?
                    } else {
                        yp.avg_pool2d_with_stride(size, st)?
                    }
                }
            };
        }
        Ok(y)
    };
    run()?;
    let ms = median_ms(|| {
        run().expect("candle runs the layer");
    });
    Ok(format!("{{\"layer\": \"{name}\", \"median_ms\": {ms}}}"))
}

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let (Some(i), Some(j)) = (
        args.iter().position(|a| a == "--suite"),
        args.iter().position(|a| a == "--layer"),
    ) {
        let (suite, name) = (
            args.get(i + 1).cloned().unwrap_or_default(),
            args.get(j + 1).cloned().unwrap_or_default(),
        );
        println!("{}", time_suite_layer(&suite, &name)?);
        return Ok(());
    }
    let dev = Device::Cpu;
    let mut failed = false;
    // 1. A small CNN's convolutions, each through both: (input, Cout, kernel, cfg).
    let layers: Vec<(Vec<usize>, usize, usize, Conv2dConfig)> = vec![
        (
            vec![2, 3, 32, 32],
            16,
            3,
            Conv2dConfig {
                padding: 1,
                ..Default::default()
            },
        ),
        (
            vec![2, 16, 32, 32],
            32,
            3,
            Conv2dConfig {
                padding: 1,
                stride: 2,
                ..Default::default()
            },
        ),
        (
            vec![2, 32, 16, 16],
            32,
            3,
            Conv2dConfig {
                padding: 2,
                dilation: 2,
                groups: 4,
                ..Default::default()
            },
        ),
        (
            vec![2, 32, 16, 16],
            32,
            3,
            Conv2dConfig {
                padding: 1,
                groups: 32,
                ..Default::default()
            },
        ),
        (vec![2, 32, 16, 16], 64, 1, Conv2dConfig::default()),
        (
            vec![2, 64, 16, 16],
            10,
            5,
            Conv2dConfig {
                padding: 2,
                ..Default::default()
            },
        ),
    ];
    println!("correctness against candle's conv2d (worst error / (max |y| + 1)):");
    let mut x = Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &dev)?;
    for (i, (shape, cout, k, cfg)) in layers.iter().enumerate() {
        // Chain the layers like a model where the shapes allow; otherwise a fresh input.
        if x.dims() != shape.as_slice() {
            x = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?;
        }
        let cpg = shape[1] / cfg.groups;
        let scale = 1.0 / ((cpg * k * k) as f64).sqrt();
        let w = (Tensor::randn(0f32, 1.0, (*cout, cpg, *k, *k), &dev)? * scale)?;
        let b = Tensor::randn(0f32, 0.1, *cout, &dev)?;
        let ours = Conv2d::new(w.clone(), Some(b.clone()), *cfg)?;
        let y = ours.forward(&x)?;
        let want = x
            .conv2d(&w, cfg.padding, cfg.stride, cfg.dilation, cfg.groups)?
            .broadcast_add(&b.reshape((1, *cout, 1, 1))?)?;
        let e = worst(&y, &want)?;
        let algo = ours.algorithm(x.dims())?;
        let tol = if algo.starts_with("winograd") {
            1e-3
        } else {
            1e-4
        };
        println!(
            "  layer {i}: {:?} -> {:?} {algo:<14} error {e:.2e}",
            shape,
            y.dims()
        );
        if e.is_nan() || e > tol {
            println!("  FAILED: beyond {tol}");
            failed = true;
        }
        // A strided view (a narrowed slice of a wider tensor, at an offset) gives the same
        // result as its contiguous copy: candle's strides are read, not assumed.
        let (n, c, h, wd) = x.dims4()?;
        let wide = Tensor::randn(0f32, 1.0, (n, c, h, wd + 3), &dev)?;
        let view = wide.narrow(3, 2, wd)?;
        if !view.is_contiguous()
            && worst(&ours.forward(&view)?, &ours.forward(&view.contiguous()?)?)? > 0.0
        {
            println!("  FAILED: a strided input changed the result");
            failed = true;
        }
        x = y.relu()?;
    }
    // 2. Suite layers, timed side by side (weights ready: convkit planned before timing).
    println!(
        "\nside by side, median ms (GFLOP/s), {} thread(s):",
        rayon_threads()
    );
    println!(
        "  {:<20} {:>14} {:>18} {:>8}  convkit algo",
        "layer", "candle", "convkit", "ratio"
    );
    let suite: [(&str, [usize; 4], usize, usize, Conv2dConfig); 6] = [
        (
            "resnet50.res2.3x3",
            [1, 64, 56, 56],
            64,
            3,
            Conv2dConfig {
                padding: 1,
                ..Default::default()
            },
        ),
        (
            "resnet50.res4.3x3",
            [1, 256, 14, 14],
            256,
            3,
            Conv2dConfig {
                padding: 1,
                ..Default::default()
            },
        ),
        (
            "vgg16.conv3_3",
            [1, 256, 56, 56],
            256,
            3,
            Conv2dConfig {
                padding: 1,
                ..Default::default()
            },
        ),
        (
            "resnet50.res4.1x1",
            [1, 1024, 14, 14],
            256,
            1,
            Conv2dConfig::default(),
        ),
        (
            "resnet50.res3.3x3s2",
            [1, 128, 56, 56],
            128,
            3,
            Conv2dConfig {
                padding: 1,
                stride: 2,
                ..Default::default()
            },
        ),
        (
            "googlenet.inc3a.5x5",
            [1, 16, 28, 28],
            32,
            5,
            Conv2dConfig {
                padding: 2,
                ..Default::default()
            },
        ),
    ];
    for (name, shape, cout, k, cfg) in suite {
        let x = Tensor::randn(0f32, 1.0, shape.as_slice(), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (cout, shape[1], k, k), &dev)?;
        let ours = Conv2d::new(w.clone(), None, cfg)?;
        let algo = ours.algorithm(&shape)?;
        let y = ours.forward(&x)?;
        let want = x.conv2d(&w, cfg.padding, cfg.stride, cfg.dilation, cfg.groups)?;
        let e = worst(&y, &want)?;
        let tol = if algo.starts_with("winograd") {
            1e-3
        } else {
            1e-4
        };
        if e.is_nan() || e > tol {
            println!("  FAILED: {name} error {e:.2e}");
            failed = true;
        }
        let out = y.dims()[2] * y.dims()[3];
        let flops = 2.0 * (cout * out * shape[1] * k * k) as f64;
        let t_candle = median_ms(|| {
            x.conv2d(&w, cfg.padding, cfg.stride, cfg.dilation, cfg.groups)
                .unwrap();
        });
        let t_ours = median_ms(|| {
            ours.forward(&x).unwrap();
        });
        println!(
            "  {name:<20} {t_candle:7.3} ({:5.1}) {t_ours:9.3} ({:5.1}) {:7.2}x  {algo}",
            flops / t_candle / 1e6,
            flops / t_ours / 1e6,
            t_candle / t_ours
        );
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into())
}
