//! `convkit`: run one layer from .npy files, list algorithms, describe the machine, and
//! benchmark the suite (SPEC.md section 3). Every failure is one `error: ...` line on stderr
//! and a non-zero exit; an output file is only ever written whole.

mod args;
mod bench;
mod plot;
mod train;

use args::Args;
use convkit::{npy, ConvSpec, Geometry, Plan, PlanOptions};
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "usage:
  convkit run   --spec S.json --input X.npy --weight W.npy [--bias B.npy] [--residual R.npy]
                [--algo NAME|auto] [--isa NAME|auto] [--threads N] --output Y.npy
  convkit algos --spec S.json
  convkit bench [--suite FILE] [--layers NAME,..] [--algo all|auto|NAME] [--isa NAME] [--threads N]
                [--layout nchw|nhwc] [--format table|json|csv] [--reps N]
                [--tune measure|heuristic|exhaustive] [--wisdom FILE] [--band-rows N] [--plot FILE.svg]
                [--pass forward|backward_data|backward_weights] [--check true] [--phases true]
  convkit tune  [--suite FILE] [--wisdom FILE] [--isa NAME] [--threads N]
  convkit info
  convkit train [--epochs N] [--batch N] [--lr F] [--seed N] [--threads N] [--isa NAME]
                [--init all|zeros|gaussian|xavier|he] [--finetune-epochs N] [--data FILE.csv]";

/// The built-in benchmark suite (a copy of shared/bench/layers.json).
pub const BUILTIN_SUITE: &str = include_str!("../../benches/layers.json");

fn main() -> ExitCode {
    // A bug must still look like an error line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string().replace('\n', " ");
        eprintln!("error: internal error (please report): {msg}");
    }));
    let argv: Vec<String> = std::env::args().skip(1).collect();
    match std::panic::catch_unwind(|| dispatch(&argv)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(msg)) => {
            eprintln!("error: {}", msg.replace('\n', " "));
            ExitCode::from(1)
        }
        Err(_) => ExitCode::from(101),
    }
}

fn dispatch(argv: &[String]) -> Result<(), String> {
    let Some(cmd) = argv.first() else {
        return Err(
            "missing command (run, algos, bench, tune, train, info); try `convkit --help`"
                .to_string(),
        );
    };
    let rest = &argv[1..];
    match cmd.as_str() {
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        "run" => cmd_run(&Args::parse(
            rest,
            &[
                "spec", "input", "weight", "bias", "residual", "algo", "isa", "threads", "output",
            ],
        )?),
        "algos" => cmd_algos(&Args::parse(rest, &["spec"])?),
        "info" => cmd_info(&Args::parse(rest, &[])?),
        "train" => train::cmd_train(&Args::parse(
            rest,
            &[
                "epochs",
                "batch",
                "lr",
                "seed",
                "threads",
                "isa",
                "init",
                "finetune-epochs",
                "data",
            ],
        )?),
        "tune" => bench::cmd_tune(&Args::parse(rest, &["suite", "wisdom", "isa", "threads"])?),
        "bench" => bench::cmd_bench(&Args::parse(
            rest,
            &[
                "suite",
                "layers",
                "algo",
                "isa",
                "threads",
                "layout",
                "format",
                "reps",
                "tune",
                "wisdom",
                "band-rows",
                "plot",
                "pass",
                "check",
                "phases",
            ],
        )?),
        other => Err(format!(
            "unknown command `{other}` (expected run, algos, bench, tune, train, info)"
        )),
    }
}

fn load_spec(path: &str) -> Result<(ConvSpec, Geometry), String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read spec {path}: {e}"))?;
    let text = String::from_utf8(text).map_err(|_| format!("spec {path}: not valid UTF-8"))?;
    let spec = ConvSpec::from_json(&text).map_err(|e| format!("spec {path}: {e}"))?;
    let geom = Geometry::new(&spec).map_err(|e| format!("spec {path}: {e}"))?;
    Ok((spec, geom))
}

pub(crate) fn parse_threads(v: Option<&str>) -> Result<Option<usize>, String> {
    match v {
        None => Ok(None),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(format!("--threads: expected an integer >= 1, got `{s}`")),
        },
    }
}

fn cmd_run(a: &Args) -> Result<(), String> {
    let spec_path = a.required("spec")?;
    let output = a.required("output")?;
    let input_path = a.required("input")?;
    let weight_path = a.required("weight")?;
    let (spec, g) = load_spec(spec_path)?;
    let threads = parse_threads(a.get("threads"))?;
    // Resolve algorithm and ISA before reading the tensors, so a bad name fails fast.
    let algo = a.get("algo").map(str::to_string);
    let isa = a.get("isa").map(str::to_string);
    convkit::arch::resolve_isa(isa.as_deref()).map_err(|e| e.to_string())?;
    if let Some(name) = algo.as_deref().filter(|n| *n != "auto") {
        let al = convkit::Algo::parse(name).map_err(|e| e.to_string())?;
        al.check(&g).map_err(|why| {
            convkit::Error::AlgorithmRejects {
                algo: name.into(),
                why,
            }
            .to_string()
        })?;
    }
    match (spec.bias, a.get("bias")) {
        (true, None) => {
            return Err("the spec has \"bias\": true, so --bias B.npy is required".to_string())
        }
        (false, Some(_)) => {
            return Err("--bias given, but the spec has \"bias\": false".to_string())
        }
        _ => {}
    }
    match (spec.residual, a.get("residual")) {
        (true, None) => {
            return Err(
                "the spec has \"residual\": true, so --residual R.npy is required".to_string(),
            )
        }
        (false, Some(_)) => {
            return Err(
                "--residual given, but the spec has \"residual\" false or absent".to_string(),
            )
        }
        _ => {}
    }
    let read = |p: &str, shape: &[usize], name: &str| {
        npy::read_f32(Path::new(p), shape, name).map_err(|e| e.to_string())
    };
    let x = read(input_path, &g.input_shape(), "input")?;
    let w = read(weight_path, &g.weight_shape(), "weight")?;
    let b = a
        .get("bias")
        .map(|p| read(p, &g.bias_shape(), "bias"))
        .transpose()?;
    let r = a
        .get("residual")
        .map(|p| read(p, &g.conv_output_shape(), "residual"))
        .transpose()?;
    let out_path = Path::new(output);
    if out_path.is_dir() {
        return Err(format!("--output {output} is a directory"));
    }
    let opts = PlanOptions {
        algo,
        isa,
        threads,
        ..Default::default()
    };
    let plan = Plan::new(&spec, &w, b.as_deref(), &opts).map_err(|e| e.to_string())?;
    let mut y = vec![0f32; g.output_len()];
    plan.run(&x, r.as_deref(), &mut y)
        .map_err(|e| e.to_string())?;
    npy::write_f32(out_path, &g.output_shape(), &y).map_err(|e| e.to_string())
}

fn cmd_algos(a: &Args) -> Result<(), String> {
    let (_, g) = load_spec(a.required("spec")?)?;
    for al in convkit::algo::accepting(&g) {
        println!("{}", al.name());
    }
    Ok(())
}

fn cmd_info(_: &Args) -> Result<(), String> {
    use convkit::sysinfo;
    let isa = convkit::arch::default_isa().map_err(|e| e.to_string())?;
    let avail: Vec<&str> = convkit::arch::available_isas()
        .iter()
        .map(|i| i.name())
        .collect();
    let c = sysinfo::caches();
    println!("convkit {}", env!("CARGO_PKG_VERSION"));
    println!("arch: {}", std::env::consts::ARCH);
    println!("isa: {} (available: {})", isa.name(), avail.join(", "));
    println!("cpu features: {}", convkit::arch::cpu_features().join(" "));
    println!(
        "caches: L1d {} KiB, L2 {} KiB, L3 {} KiB",
        c.l1d >> 10,
        c.l2 >> 10,
        c.l3 >> 10
    );
    println!("cores: {}", sysinfo::cores());
    let kernels = isa.kernels().map_err(|e| e.to_string())?;
    let uk = kernels.gemm_default();
    let blocking = convkit::gemm::Blocking::derive(uk, c);
    println!(
        "gemm kernel: {} (KC {}, MC {}, NC {})",
        uk.name, blocking.kc, blocking.mc, blocking.nc
    );
    if isa == convkit::arch::Isa::Avx512 {
        let datapath = match convkit::arch::avx512_datapath() {
            convkit::arch::Avx512Datapath::Full512 => "512-bit",
            convkit::arch::Avx512Datapath::Split256 => "two 256-bit halves",
        };
        println!("avx512 fma datapath: {datapath}");
    }
    let p1 = sysinfo::measure_peak_gflops(isa, 1).unwrap_or(0.0);
    let pn = sysinfo::measure_peak_gflops(isa, sysinfo::cores()).unwrap_or(0.0);
    println!(
        "peak fma gflops ({}): 1 thread {:.1}, {} threads {:.1}",
        isa.name(),
        p1,
        sysinfo::cores(),
        pn
    );
    Ok(())
}
