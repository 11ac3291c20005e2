//! `convkit bench`: times each layer as a user pays for it (layout conversions inside the
//! timing, weights packed once before it, packing time reported apart), median of repeated
//! runs after warm-up.

use crate::args::Args;
use convkit::init::Rng;
use convkit::tune::TuneMode;
use convkit::{algo, Algo, ConvSpec, Geometry, Layout, Plan, PlanOptions};
use serde_json::json;
use std::time::Instant;

/// One measured row.
pub struct Row {
    pub layer: String,
    pub algo: String,
    pub auto: bool,
    pub choice: &'static str,
    pub runner_up: Option<(String, f64)>,
    pub threads: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    pub gflops: f64,
    pub pack_ms: f64,
    /// `--check`: the worst error over sampled outputs, in units of S (SPEC section 4).
    pub error: Option<f64>,
    /// `--phases`: named phases and their milliseconds (the fastest of 5 profiled runs).
    pub phases: Vec<(&'static str, f64)>,
}

/// Input, weight, bias and residual of a layer.
pub type Operands = (Vec<f32>, Vec<f32>, Option<Vec<f32>>, Option<Vec<f32>>);

/// Random operands for a layer, deterministic per layer.
pub fn operands(g: &Geometry, seed: u64) -> Operands {
    let mut rng = Rng::new(seed);
    let mut fill = |n: usize| {
        let mut v = vec![0f32; n];
        rng.fill_uniform(&mut v, -1.0, 1.0);
        v
    };
    let x = fill(g.input_len());
    let w = fill(g.weight_len());
    let b = g.epilogue.bias.then(|| fill(g.out_channels));
    let r = g.epilogue.residual.then(|| fill(g.conv_output_len()));
    (x, w, b, r)
}

/// `--tune heuristic|measure|exhaustive` (default `measure`: the benchmark is the tuner's
/// showcase; a second run finds every answer in the wisdom file and measures nothing).
pub fn parse_tune(v: Option<&str>) -> Result<TuneMode, String> {
    match v.unwrap_or("measure") {
        "heuristic" => Ok(TuneMode::Heuristic),
        "measure" => Ok(TuneMode::Measure { budget_ms: 60 }),
        "exhaustive" => Ok(TuneMode::Exhaustive),
        other => Err(format!(
            "--tune: expected heuristic, measure or exhaustive, got `{other}`"
        )),
    }
}

/// `--wisdom FILE`, else `CONVKIT_WISDOM`, else `$XDG_CACHE_HOME/convkit/wisdom.json` or
/// `~/.cache/convkit/wisdom.json`, else `convkit-wisdom.json` here.
pub fn wisdom_path(flag: Option<&str>) -> std::path::PathBuf {
    if let Some(f) = flag {
        return f.into();
    }
    if let Ok(p) = std::env::var("CONVKIT_WISDOM") {
        if !p.is_empty() {
            return p.into();
        }
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .ok()
        .filter(|s| !s.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var("HOME")
                .ok()
                .filter(|s| !s.is_empty())
                .map(|h| std::path::Path::new(&h).join(".cache"))
        });
    match base {
        Some(b) => b.join("convkit").join("wisdom.json"),
        None => "convkit-wisdom.json".into(),
    }
}

/// Loads the wisdom file if it exists; a bad one is ignored with a warning.
pub fn load_wisdom_or_warn(path: &std::path::Path) {
    if path.exists() {
        match convkit::tune::load_wisdom(path) {
            Ok(n) => eprintln!("wisdom: {n} entries from {}", path.display()),
            Err(e) => eprintln!("warning: wisdom file ignored: {e}"),
        }
    }
}

/// Saves the wisdom file; a failure is a warning (the results are still printed).
pub fn save_wisdom_or_warn(path: &std::path::Path) {
    match convkit::tune::save_wisdom(path) {
        Ok(()) => eprintln!("wisdom: saved to {}", path.display()),
        Err(e) => eprintln!("warning: wisdom not saved: {e}"),
    }
}

/// Plans one (layer, algorithm) with weights `w` and bias `b`, and returns the plan with
/// its packing time.
pub fn plan_layer(
    spec: &ConvSpec,
    w: &[f32],
    b: Option<&[f32]>,
    opts: &PlanOptions,
) -> Result<(Plan, f64), String> {
    // The first plan may tune (measure the candidates); the second finds the choice in the
    // cache, so its time is the packing a user pays per plan.
    let plan = Plan::new(spec, w, b, opts).map_err(|e| e.to_string())?;
    let t = Instant::now();
    drop(Plan::new(spec, w, b, opts).map_err(|e| e.to_string())?);
    Ok((plan, t.elapsed().as_secs_f64() * 1e3))
}

/// Times plans of one layer on input `x` (and residual `r`) side by side: two warm-up runs
/// each, then rounds of one timed run per plan (A B C A B C ...; with more than one plan,
/// each timed run after untimed ones of its plan, see below) until every plan has
/// `min_reps` runs and 0.3 s a plan has passed (at most 200 rounds). Returns each plan's
/// (median, min) ms.
///
/// In rounds, a burst of interference on this kind of shared host hits every plan alike;
/// timed one after the other, one algorithm could spend its whole 0.3 s inside a burst and
/// the `--algo all` comparison named the wrong one fastest.
pub fn time_plans(
    g: &Geometry,
    x: &[f32],
    r: Option<&[f32]>,
    plans: &[&Plan],
    min_reps: usize,
) -> Result<Vec<(f64, f64)>, String> {
    let mut y = vec![0f32; g.output_len()];
    let alternating = plans.len() > 1;
    let mut run = |plan: &Plan| -> Result<f64, String> {
        let mut once = || -> Result<f64, String> {
            let t = Instant::now();
            plan.run(x, r, &mut y).map_err(|e| e.to_string())?;
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        // Side by side, each timed run comes after the plan has settled (convkit::tune::
        // settled, at most 3 runs): right after the other plans, one with tens of MB of
        // weights (Winograd's on vgg16.conv4_3, conv5_3) ran up to 2-4x its time alone, and
        // `--algo all` named other algorithms fastest than a layer run alone would.
        if alternating {
            convkit::tune::settled(1, 3, &mut once)?;
        }
        once()
    };
    for plan in plans {
        for _ in 0..2 {
            run(plan)?;
        }
    }
    let mut times = vec![Vec::new(); plans.len()];
    let start = Instant::now();
    let budget_s = 0.3 * plans.len() as f64;
    let mut rounds = 0;
    while rounds < min_reps || (start.elapsed().as_secs_f64() < budget_s && rounds < 200) {
        for (plan, t) in plans.iter().zip(times.iter_mut()) {
            t.push(run(plan)?);
        }
        rounds += 1;
    }
    Ok(times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            (t[t.len() / 2], t[0])
        })
        .collect())
}

/// The weight-gradient methods `--algo` names (`--pass backward_weights`): `None` is the
/// library's choice (`auto`), `Some(Algo::Im2col)` the GEMM, `Some(Algo::Winograd(v))` a
/// Winograd variant (kernel 3, stride 1) and `Some(Algo::DilatedWinograd(v))` the same on a
/// dilated layer (named apart as in the forward pass); `all` is each of these. Other names
/// are errors.
fn weight_methods(algo: &str) -> Result<Vec<Option<Algo>>, String> {
    use convkit::algo::WinogradVariant as V;
    let variants = [V::F2, V::F4, V::F6];
    match algo {
        "auto" => Ok(vec![None]),
        "all" => Ok(std::iter::once(Algo::Im2col)
            .chain(variants.map(Algo::Winograd))
            .chain(variants.map(Algo::DilatedWinograd))
            .map(Some)
            .collect()),
        name => match Algo::parse(name) {
            Ok(a @ (Algo::Im2col | Algo::Winograd(_) | Algo::DilatedWinograd(_))) => {
                Ok(vec![Some(a)])
            }
            _ => Err(format!(
                "--algo {name}: the weight gradient runs on auto, all, im2col, \
                 winograd_f2x3|f4x3|f6x3 or dilated_f2x3|f4x3|f6x3"
            )),
        },
    }
}

/// Whether weight-gradient method `method` takes layer `g`: the Winograd names need a layer
/// the Winograd weight gradient takes, `winograd_*` an undilated one, `dilated_*` a dilated
/// one.
fn weight_method_accepts(method: Option<Algo>, g: &Geometry) -> bool {
    let winograd_ok = || convkit::backward::winograd_weights_check(g).is_ok();
    let dilated = g.dilation != [1, 1];
    match method {
        Some(Algo::Winograd(_)) => !dilated && winograd_ok(),
        Some(Algo::DilatedWinograd(_)) => dilated && winograd_ok(),
        _ => true,
    }
}

/// Times the data or the weight gradient of a layer's convolution (`dz` of the conv-output
/// shape in, `dx` or `dw` out; the weights for `dx` packed before the timing).
pub fn time_backward(
    g: &Geometry,
    isa: convkit::Isa,
    threads: Option<usize>,
    pass: &str,
    weight_method: Option<Algo>,
    min_reps: usize,
) -> Result<(f64, f64, f64), String> {
    use convkit::backward::{
        backward_data_into, backward_weights_gemm_into, backward_weights_into,
        backward_weights_winograd_into, DataWeights,
    };
    let (x, w, _, _) = operands(g, 0x5eed);
    let mut rng = Rng::new(7);
    let mut dz = vec![0f32; g.conv_output_len()];
    rng.fill_uniform(&mut dz, -1.0, 1.0);
    let kernels = isa.kernels().map_err(|e| e.to_string())?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()
        .map_err(|e| format!("cannot start threads: {e}"))?;
    // Only the data gradient has weights to pack (the weight gradient's pack time is 0).
    let t = Instant::now();
    let data = if pass == "backward_data" {
        Some(DataWeights::new(g, kernels, &w).map_err(|e| e.to_string())?)
    } else {
        None
    };
    let pack_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut dx = vec![0f32; g.input_len()];
    let mut dw = vec![0f32; g.weight_len()];
    let mut run = || {
        pool.install(|| match (&data, weight_method) {
            (Some(data), _) => backward_data_into(data, &dz, &mut dx),
            (None, None) => backward_weights_into(g, kernels, &x, &dz, &mut dw),
            (None, Some(Algo::Winograd(v) | Algo::DilatedWinograd(v))) => {
                backward_weights_winograd_into(g, kernels, v, &x, &dz, &mut dw)
            }
            (None, Some(_)) => backward_weights_gemm_into(g, kernels, &x, &dz, &mut dw),
        })
        .map_err(|e| e.to_string())
    };
    run()?;
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min_reps || (start.elapsed().as_secs_f64() < 0.3 && times.len() < 200) {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok((pack_ms, times[times.len() / 2], times[0]))
}

/// The worst `|y - y_ref| / S` over `samples` outputs spread over the whole tensor (every
/// one when there are fewer), each recomputed in f64 from its receptive field; S is the
/// largest magnitude among them (SPEC section 4 over the sample). A pooled layer is checked
/// before its pool (the same algorithm planned without it).
pub fn sampled_error(
    spec: &ConvSpec,
    plan: &Plan,
    opts: &PlanOptions,
    samples: usize,
) -> Result<f64, String> {
    let unpooled;
    let (plan, spec) = if spec.pool.is_some() {
        let s = ConvSpec {
            pool: None,
            ..spec.clone()
        };
        let g = Geometry::new(&s).map_err(|e| e.to_string())?;
        let (_, w, b, _) = operands(&g, 0x5eed);
        let o = PlanOptions {
            algo: Some(plan.algo().name().into()),
            ..opts.clone()
        };
        unpooled = Plan::new(&s, &w, b.as_deref(), &o).map_err(|e| e.to_string())?;
        (&unpooled, s)
    } else {
        (plan, spec.clone())
    };
    let g = &Geometry::new(&spec).map_err(|e| e.to_string())?;
    let (x, w, b, r) = operands(g, 0x5eed);
    let mut y = vec![0f32; g.output_len()];
    // The operands and the reference below are NCHW: an NHWC plan runs on them converted,
    // and its output is converted back before the comparison.
    if opts.layout == Layout::Nhwc {
        use convkit::tensor::{nchw_to_nhwc, nhwc_to_nchw};
        let (hw_in, hw_out) = (g.input_area(), g.output[0] * g.output[1]);
        let mut xn = vec![0f32; x.len()];
        nchw_to_nhwc(&x, &mut xn, g.batch, g.in_channels, hw_in);
        let rn = r.as_ref().map(|r| {
            let mut t = vec![0f32; r.len()];
            nchw_to_nhwc(r, &mut t, g.batch, g.out_channels, hw_out);
            t
        });
        let mut yn = vec![0f32; y.len()];
        plan.run(&xn, rn.as_deref(), &mut yn)
            .map_err(|e| e.to_string())?;
        nhwc_to_nchw(&yn, &mut y, g.batch, g.out_channels, hw_out);
    } else {
        plan.run(&x, r.as_deref(), &mut y)
            .map_err(|e| e.to_string())?;
    }
    let [ih, iw] = g.input;
    let [kh, kw] = g.kernel;
    let [oh, ow] = g.conv_out;
    let (cg, og) = (g.cin_per_group, g.cout_per_group);
    let step = (y.len() / samples.max(1)).max(1);
    let (mut worst, mut s_max) = (0f64, 0f64);
    let mut errs = Vec::new();
    for o in (0..y.len()).step_by(step) {
        let (n, co) = (
            o / (g.out_channels * oh * ow),
            (o / (oh * ow)) % g.out_channels,
        );
        let (oy, ox) = ((o / ow) % oh, o % ow);
        let grp = co / og;
        let (mut acc, mut mag) = (0f64, 0f64);
        for ci in 0..cg {
            let c = grp * cg + ci;
            for ky in 0..kh {
                let iy =
                    (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.pad_before[0] as isize;
                if iy < 0 || iy >= ih as isize {
                    continue;
                }
                for kx in 0..kw {
                    let ix =
                        (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.pad_before[1] as isize;
                    if ix < 0 || ix >= iw as isize {
                        continue;
                    }
                    let xv =
                        x[((n * g.in_channels + c) * ih + iy as usize) * iw + ix as usize] as f64;
                    let wv = w[((co * cg + ci) * kh + ky) * kw + kx] as f64;
                    acc += xv * wv;
                    mag += (xv * wv).abs();
                }
            }
        }
        if let Some(b) = &b {
            acc += b[co] as f64;
            mag += (b[co] as f64).abs();
        }
        if let Some(r) = &r {
            acc += r[o] as f64;
            mag += (r[o] as f64).abs();
        }
        let want = g.epilogue.activation.apply(acc);
        errs.push((y[o] as f64 - want).abs());
        s_max = s_max.max(mag);
    }
    for e in errs {
        worst = worst.max(e / s_max.max(1e-30));
    }
    Ok(worst)
}

/// The phases of the fastest of 5 profiled runs (`Plan::run_profiled`).
fn profile(g: &Geometry, plan: &Plan) -> Result<Vec<(&'static str, f64)>, String> {
    let (x, _, _, r) = operands(g, 0x5eed);
    let mut y = vec![0f32; g.output_len()];
    let mut best: Option<convkit::PhaseProfile> = None;
    for _ in 0..5 {
        let p = plan
            .run_profiled(&x, r.as_deref(), &mut y)
            .map_err(|e| e.to_string())?;
        if best.as_ref().is_none_or(|b| p.total_ms < b.total_ms) {
            best = Some(p);
        }
    }
    let best = best.expect("five runs");
    let mut phases = best.phases.clone();
    if !phases.is_empty() {
        let rest = best.total_ms - phases.iter().map(|p| p.1).sum::<f64>();
        phases.push(("other", rest.max(0.0)));
        phases.push(("total", best.total_ms));
    }
    Ok(phases)
}

pub fn cmd_bench(a: &Args) -> Result<(), String> {
    let text = match a.get("suite") {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read suite {p}: {e}"))?,
        None => crate::BUILTIN_SUITE.to_string(),
    };
    let mut specs = convkit::spec::parse_suite(&text).map_err(|e| format!("suite: {e}"))?;
    if let Some(list) = a.get("layers") {
        let wanted: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        for w in &wanted {
            if !specs.iter().any(|s| s.name.as_deref() == Some(*w)) {
                return Err(format!("--layers: no layer named `{w}` in the suite"));
            }
        }
        specs.retain(|s| wanted.contains(&s.name.as_deref().unwrap_or("")));
    }
    let threads = crate::parse_threads(a.get("threads"))?;
    let layout = match a.get("layout") {
        None => Layout::Nchw,
        Some(s) => {
            Layout::parse(s).ok_or_else(|| format!("--layout: expected nchw or nhwc, got `{s}`"))?
        }
    };
    let format = a.get("format").unwrap_or("table");
    if !["table", "json", "csv"].contains(&format) {
        return Err(format!(
            "--format: expected table, json or csv, got `{format}`"
        ));
    }
    let min_reps = match a.get("reps") {
        None => 5,
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|&n| n >= 1)
            .ok_or_else(|| format!("--reps: expected an integer >= 1, got `{s}`"))?,
    };
    let pass = a.get("pass").unwrap_or("forward");
    if !["forward", "backward_data", "backward_weights"].contains(&pass) {
        return Err(format!(
            "--pass: expected forward, backward_data or backward_weights, got `{pass}`"
        ));
    }
    let want_phases = match a.get("phases") {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Err(format!("--phases: expected true or false, got `{v}`")),
    };
    let check = match a.get("check") {
        None | Some("false") => false,
        Some("true") => true,
        Some(v) => return Err(format!("--check: expected true or false, got `{v}`")),
    };
    let algo_sel = a.get("algo").unwrap_or("auto").to_string();
    if algo_sel != "all" && algo_sel != "auto" {
        Algo::parse(&algo_sel).map_err(|e| e.to_string())?;
    }
    // The data gradient has one method a layer; the weight gradient those `--algo` names.
    let backward_methods = match pass {
        "backward_weights" => weight_methods(&algo_sel)?,
        _ => vec![None],
    };
    let isa = convkit::arch::resolve_isa(a.get("isa")).map_err(|e| e.to_string())?;
    let nthreads = threads.unwrap_or_else(convkit::sysinfo::cores);
    let tune = parse_tune(a.get("tune"))?;
    // `--band-rows N` sets the fused pool's band height; a value >= the conv output height
    // makes the pool a separate pass over the whole conv output (the unfused baseline).
    let band_rows = match a.get("band-rows") {
        None => None,
        Some(s) => Some(
            s.parse::<usize>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| format!("--band-rows: expected an integer >= 1, got `{s}`"))?,
        ),
    };
    let wisdom = wisdom_path(a.get("wisdom"));
    load_wisdom_or_warn(&wisdom);
    let peak = convkit::sysinfo::measure_peak_gflops(isa, nthreads).unwrap_or(0.0);

    let mut rows = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let g = Geometry::new(spec)
            .map_err(|e| format!("layer {}: {e}", spec.name.as_deref().unwrap_or("?")))?;
        let name = spec.name.clone().unwrap_or_else(|| format!("layer{i}"));
        if pass != "forward" {
            for &method in &backward_methods {
                // A weight-gradient row names its method (`auto`: the one chosen).
                let label = if pass == "backward_data" {
                    pass.to_string()
                } else {
                    let chosen = method.unwrap_or_else(|| {
                        convkit::backward::weights_by_winograd(&g).map_or(Algo::Im2col, |v| {
                            if g.dilation == [1, 1] {
                                Algo::Winograd(v)
                            } else {
                                Algo::DilatedWinograd(v)
                            }
                        })
                    });
                    format!("{pass}:{}", chosen.name())
                };
                if !weight_method_accepts(method, &g) {
                    // `all` lists only the methods that take the layer.
                    if algo_sel != "all" {
                        eprintln!(
                            "[{}/{}] {name}: {label} does not accept this layer, skipped",
                            i + 1,
                            specs.len()
                        );
                    }
                    continue;
                }
                eprint!("[{}/{}] {name} {label} ...", i + 1, specs.len());
                let (pack_ms, med, min) = time_backward(&g, isa, threads, pass, method, min_reps)?;
                let gflops = g.flops() as f64 / (med * 1e-3) / 1e9;
                eprintln!(" {med:.3} ms, {gflops:.1} GFLOP/s");
                rows.push(Row {
                    layer: name.clone(),
                    algo: label,
                    auto: method.is_none(),
                    choice: if method.is_none() {
                        "heuristic"
                    } else {
                        "forced"
                    },
                    runner_up: None,
                    threads: nthreads,
                    median_ms: med,
                    min_ms: min,
                    gflops,
                    pack_ms,
                    error: None,
                    phases: Vec::new(),
                });
            }
            continue;
        }
        let algos: Vec<Option<Algo>> = match algo_sel.as_str() {
            "auto" => vec![None],
            "all" => algo::accepting(&g)
                .into_iter()
                .filter(|a| *a != Algo::Reference)
                .map(Some)
                .collect(),
            n => {
                let al = Algo::parse(n).map_err(|e| e.to_string())?;
                if !al.accepts(&g) {
                    eprintln!(
                        "[{}/{}] {name}: {n} does not accept this layer, skipped",
                        i + 1,
                        specs.len()
                    );
                    continue;
                }
                vec![Some(al)]
            }
        };
        // Plan every algorithm of the layer first, then time them side by side on one set of
        // operands.
        let (x, w, b, r) = operands(&g, 0x5eed);
        let mut planned = Vec::new();
        for al in algos {
            eprintln!(
                "[{}/{}] {name} {} ...",
                i + 1,
                specs.len(),
                al.map(|a| a.name()).unwrap_or("auto")
            );
            let opts = PlanOptions {
                algo: al.map(|a| a.name().to_string()),
                isa: Some(isa.name().to_string()),
                threads,
                layout,
                tune: tune.clone(),
                band_rows,
                ..Default::default()
            };
            let (plan, pack_ms) = plan_layer(spec, &w, b.as_deref(), &opts)?;
            planned.push((al, opts, plan, pack_ms));
        }
        let plans: Vec<&Plan> = planned.iter().map(|p| &p.2).collect();
        let timed = time_plans(&g, &x, r.as_deref(), &plans, min_reps)?;
        for ((al, opts, plan, pack_ms), (med, min)) in planned.into_iter().zip(timed) {
            let error = if check {
                Some(sampled_error(spec, &plan, &opts, 4096)?)
            } else {
                None
            };
            let phases = if want_phases {
                profile(&g, &plan)?
            } else {
                Vec::new()
            };
            let choice = plan.choice().clone();
            let gflops = g.flops() as f64 / (med * 1e-3) / 1e9;
            eprintln!(
                "[{}/{}] {name} {}: {med:.3} ms, {gflops:.1} GFLOP/s",
                i + 1,
                specs.len(),
                plan.algo().name()
            );
            rows.push(Row {
                layer: name.clone(),
                algo: plan.algo().name().to_string(),
                auto: al.is_none(),
                choice: choice.source.name(),
                runner_up: choice.runner_up().map(|(a, ms)| (a.name().to_string(), ms)),
                threads: nthreads,
                median_ms: med,
                min_ms: min,
                gflops,
                pack_ms,
                error,
                phases,
            });
        }
    }
    save_wisdom_or_warn(&wisdom);
    if let Some(path) = a.get("plot") {
        let title = format!(
            "convkit GFLOP/s per layer ({}, {} thread(s))",
            isa.name(),
            nthreads
        );
        let svg = crate::plot::svg(&rows, peak, &title);
        let tmp = format!("{path}.tmp");
        std::fs::write(&tmp, svg)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| format!("--plot {path}: {e}"))?;
        eprintln!("chart written to {path}");
    }
    print_rows(&rows, format, isa.name(), nthreads, peak);
    Ok(())
}

fn print_rows(rows: &[Row], format: &str, isa: &str, threads: usize, peak: f64) {
    match format {
        "json" => {
            let results: Vec<_> = rows
                .iter()
                .map(|r| {
                    let mut o = json!({"layer": r.layer, "algo": r.algo, "auto": r.auto, "choice": r.choice, "threads": r.threads,
                           "median_ms": r.median_ms, "min_ms": r.min_ms, "gflops": r.gflops, "pack_ms": r.pack_ms});
                    if let Some(e) = r.error {
                        o["error_over_s"] = json!(e);
                    }
                    if !r.phases.is_empty() {
                        o["phases_ms"] = r.phases.iter().map(|(n, ms)| (n.to_string(), json!(ms))).collect();
                    }
                    o
                })
                .collect();
            let doc = json!({"machine": {"isa": isa, "threads": threads, "peak_gflops": peak}, "results": results});
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        "csv" => {
            println!("layer,algo,auto,choice,threads,median_ms,min_ms,gflops,pct_peak,pack_ms,runner_up,runner_up_ms");
            for r in rows {
                let (ru, ru_ms) = match &r.runner_up {
                    Some((a, ms)) => (a.clone(), format!("{ms:.4}")),
                    None => (String::new(), String::new()),
                };
                println!(
                    "{},{},{},{},{},{:.4},{:.4},{:.2},{:.1},{:.3},{},{}",
                    r.layer,
                    r.algo,
                    r.auto,
                    r.choice,
                    r.threads,
                    r.median_ms,
                    r.min_ms,
                    r.gflops,
                    pct(r.gflops, peak),
                    r.pack_ms,
                    ru,
                    ru_ms
                );
            }
        }
        _ => {
            println!("isa {isa}, {threads} thread(s), measured FMA peak {peak:.1} GFLOP/s");
            println!(
                "{:<26} {:<10} {:<9} {:>10} {:>10} {:>9} {:>7} {:>9}  runner-up (tuning ms)",
                "layer", "algo", "choice", "median ms", "min ms", "GFLOP/s", "% peak", "pack ms",
            );
            for r in rows {
                let ru = match &r.runner_up {
                    Some((a, ms)) => format!("{a} {ms:.3}"),
                    None => "-".to_string(),
                };
                let mut err = r
                    .error
                    .map(|e| format!("  error {e:.2e} x S"))
                    .unwrap_or_default();
                for (n, ms) in &r.phases {
                    err.push_str(&format!("  {n} {ms:.2}"));
                }
                println!(
                    "{:<26} {:<10} {:<9} {:>10.3} {:>10.3} {:>9.1} {:>6.1}% {:>9.3}  {}{}",
                    r.layer,
                    r.algo,
                    r.choice,
                    r.median_ms,
                    r.min_ms,
                    r.gflops,
                    pct(r.gflops, peak),
                    r.pack_ms,
                    ru,
                    err
                );
            }
            if !rows.is_empty() {
                let geo = (rows.iter().map(|r| r.gflops.max(1e-9).ln()).sum::<f64>()
                    / rows.len() as f64)
                    .exp();
                println!("geomean GFLOP/s: {geo:.1}");
            }
        }
    }
}

fn pct(g: f64, peak: f64) -> f64 {
    if peak > 0.0 {
        100.0 * g / peak
    } else {
        0.0
    }
}

/// `convkit tune`: measures every layer of the suite and writes the wisdom file, without the
/// benchmark table.
pub fn cmd_tune(a: &Args) -> Result<(), String> {
    let text = match a.get("suite") {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read suite {p}: {e}"))?,
        None => crate::BUILTIN_SUITE.to_string(),
    };
    let specs = convkit::spec::parse_suite(&text).map_err(|e| format!("suite: {e}"))?;
    let threads = crate::parse_threads(a.get("threads"))?;
    let isa = convkit::arch::resolve_isa(a.get("isa")).map_err(|e| e.to_string())?;
    let wisdom = wisdom_path(a.get("wisdom"));
    load_wisdom_or_warn(&wisdom);
    let start = Instant::now();
    for (i, spec) in specs.iter().enumerate() {
        let g = Geometry::new(spec)
            .map_err(|e| format!("layer {}: {e}", spec.name.as_deref().unwrap_or("?")))?;
        let (_, w, b, _) = operands(&g, 0x5eed);
        let opts = PlanOptions {
            isa: Some(isa.name().to_string()),
            threads,
            tune: TuneMode::Measure { budget_ms: 60 },
            ..Default::default()
        };
        let plan = Plan::new(spec, &w, b.as_deref(), &opts).map_err(|e| e.to_string())?;
        println!(
            "[{}/{}] {}: {}",
            i + 1,
            specs.len(),
            spec.name.as_deref().unwrap_or("?"),
            plan.explain()
        );
    }
    println!(
        "tuned {} layers in {:.1} s",
        specs.len(),
        start.elapsed().as_secs_f64()
    );
    convkit::tune::save_wisdom(&wisdom).map_err(|e| e.to_string())?;
    println!("wisdom saved to {}", wisdom.display());
    Ok(())
}
