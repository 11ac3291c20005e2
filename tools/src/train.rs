//! `convkit train`: a small CNN trained entirely on convkit's kernels (forward and backward)
//! on the 8x8 handwritten digits, comparing the weight initializers, then fine-tuned.
//!
//! The network, NCHW, batch B:
//!
//! ```text
//!   x [B, 1, 8, 8] -> conv 3x3 same, 8 ch, relu, max pool 2 -> [B, 8, 4, 4]
//!                  -> conv 3x3 same, 16 ch, relu, max pool 2 -> [B, 16, 2, 2]
//!                  -> linear 64 -> classes (a 1x1 conv on [B, 64, 1, 1]) -> softmax
//! ```
//!
//! Loss: mean cross-entropy; optimizer: Adam. The split (80% train, 20% test) and every
//! initialization are fixed by `--seed`.

use crate::args::Args;
use convkit::backward::{Saved, TrainPlan};
use convkit::init::{init_weights, Init, Rng};
use convkit::{Activation, ConvSpec, Geometry, Padding, PlanOptions, Pool, PoolWindow};
use std::time::Instant;

/// The dataset, built in (tools/data/README.md has its origin and licence).
const DIGITS: &str = include_str!("../data/digits.csv");

struct Example {
    pixels: [f32; 64],
    label: usize,
}

fn parse_digits(text: &str) -> Result<Vec<Example>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            let v: Vec<&str> = line.trim().split(',').collect();
            if v.len() != 65 {
                return Err(format!(
                    "digits line {}: {} values, expected 65",
                    i + 1,
                    v.len()
                ));
            }
            let mut pixels = [0f32; 64];
            for (p, s) in pixels.iter_mut().zip(&v[..64]) {
                let x: f32 = s
                    .parse()
                    .map_err(|_| format!("digits line {}: bad pixel `{s}`", i + 1))?;
                *p = x / 16.0;
            }
            let label: usize = v[64]
                .parse()
                .ok()
                .filter(|&l| l < 10)
                .ok_or_else(|| format!("digits line {}: bad label `{}`", i + 1, v[64]))?;
            Ok(Example { pixels, label })
        })
        .collect()
}

/// One layer's parameters, Adam state and plan.
struct Layer {
    spec: ConvSpec,
    plan: TrainPlan,
    w: Vec<f32>,
    b: Vec<f32>,
    m: (Vec<f32>, Vec<f32>),
    v: (Vec<f32>, Vec<f32>),
}

impl Layer {
    fn new(spec: ConvSpec, init: Init, seed: u64, opts: &PlanOptions) -> Result<Layer, String> {
        let g = Geometry::new(&spec).map_err(|e| e.to_string())?;
        let w = init_weights(&g, init, seed).map_err(|e| e.to_string())?;
        let b = vec![0f32; g.out_channels];
        Layer::with_weights(spec, w, b, opts)
    }

    fn with_weights(
        spec: ConvSpec,
        w: Vec<f32>,
        b: Vec<f32>,
        opts: &PlanOptions,
    ) -> Result<Layer, String> {
        let g = Geometry::new(&spec).map_err(|e| e.to_string())?;
        // The heuristic's algorithm, fixed for the run (no measuring inside training).
        let opts = PlanOptions {
            algo: Some(convkit::plan::choose_algo(&g).name().into()),
            ..opts.clone()
        };
        let plan = TrainPlan::new(&spec, &w, Some(&b), &opts).map_err(|e| e.to_string())?;
        Ok(Layer {
            m: (vec![0.0; w.len()], vec![0.0; b.len()]),
            v: (vec![0.0; w.len()], vec![0.0; b.len()]),
            spec,
            plan,
            w,
            b,
        })
    }

    fn out_len(&self) -> usize {
        self.plan.geometry().output_len()
    }

    fn forward(&self, x: &[f32]) -> Result<(Vec<f32>, Saved), String> {
        let mut y = vec![0f32; self.out_len()];
        let s = self
            .plan
            .forward(x, None, &mut y)
            .map_err(|e| e.to_string())?;
        Ok((y, s))
    }

    /// One Adam step (t counts from 1) with the gradients, then repacks.
    fn step(&mut self, dw: &[f32], db: &[f32], lr: f32, t: i32) -> Result<(), String> {
        let (b1, b2, eps) = (0.9f32, 0.999f32, 1e-8f32);
        let c1 = 1.0 - b1.powi(t);
        let c2 = 1.0 - b2.powi(t);
        for (p, g, m, v) in [
            (&mut self.w, dw, &mut self.m.0, &mut self.v.0),
            (&mut self.b, db, &mut self.m.1, &mut self.v.1),
        ] {
            for i in 0..p.len() {
                m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                p[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
            }
        }
        self.plan
            .set_weights(&self.w, Some(&self.b))
            .map_err(|e| e.to_string())
    }
}

struct Net {
    conv1: Layer,
    conv2: Layer,
    fc: Layer,
    batch: usize,
    classes: usize,
}

fn conv_spec(input: &[usize], out: usize) -> ConvSpec {
    ConvSpec::new(input, out, &[3, 3])
        .with_padding(Padding::Same)
        .with_activation(Activation::Relu)
        .with_pool(Some(Pool::Max(PoolWindow {
            size: vec![2, 2],
            stride: vec![2, 2],
            padding: vec![(0, 0), (0, 0)],
        })))
}

fn fc_spec(batch: usize, classes: usize) -> ConvSpec {
    ConvSpec::new(&[batch, 64, 1, 1], classes, &[1, 1])
}

impl Net {
    fn new(
        batch: usize,
        classes: usize,
        init: Init,
        seed: u64,
        opts: &PlanOptions,
    ) -> Result<Net, String> {
        Ok(Net {
            conv1: Layer::new(conv_spec(&[batch, 1, 8, 8], 8), init, seed, opts)?,
            conv2: Layer::new(conv_spec(&[batch, 8, 4, 4], 16), init, seed + 1, opts)?,
            fc: Layer::new(fc_spec(batch, classes), init, seed + 2, opts)?,
            batch,
            classes,
        })
    }

    /// Logits `[batch][classes]` and what backward needs.
    #[allow(clippy::type_complexity)]
    fn forward(&self, x: &[f32]) -> Result<(Vec<f32>, [(Vec<f32>, Saved); 2], Saved), String> {
        let (a1, s1) = self.conv1.forward(x)?;
        let (a2, s2) = self.conv2.forward(&a1)?;
        let (logits, s3) = self.fc.forward(&a2)?;
        Ok((logits, [(a1, s1), (a2, s2)], s3))
    }

    /// One step on a batch: returns the mean loss.
    fn train_step(
        &mut self,
        x: &[f32],
        labels: &[usize],
        lr: f32,
        t: i32,
        train_convs: bool,
    ) -> Result<f32, String> {
        let (logits, [(a1, s1), (a2, s2)], s3) = self.forward(x)?;
        let (loss, dlogits) = softmax_cross_entropy(&logits, labels, self.classes);
        let gfc = self
            .fc
            .plan
            .backward(&a2, &s3, &dlogits, train_convs)
            .map_err(|e| e.to_string())?;
        if train_convs {
            let da2 = gfc.input.as_ref().expect("asked for");
            let g2 = self
                .conv2
                .plan
                .backward(&a1, &s2, da2, true)
                .map_err(|e| e.to_string())?;
            let g1 = self
                .conv1
                .plan
                .backward(x, &s1, g2.input.as_ref().expect("asked for"), false)
                .map_err(|e| e.to_string())?;
            self.conv2
                .step(&g2.weight, g2.bias.as_deref().unwrap_or(&[]), lr, t)?;
            self.conv1
                .step(&g1.weight, g1.bias.as_deref().unwrap_or(&[]), lr, t)?;
        }
        self.fc
            .step(&gfc.weight, gfc.bias.as_deref().unwrap_or(&[]), lr, t)?;
        Ok(loss)
    }

    /// Accuracy on `set` (batches padded with blank images, whose outputs are ignored).
    fn accuracy(&self, set: &[&Example], label_of: &dyn Fn(usize) -> usize) -> Result<f64, String> {
        let mut right = 0;
        for chunk in set.chunks(self.batch) {
            let mut x = vec![0f32; self.batch * 64];
            for (i, e) in chunk.iter().enumerate() {
                x[i * 64..(i + 1) * 64].copy_from_slice(&e.pixels);
            }
            let (logits, _, _) = self.forward(&x)?;
            for (i, e) in chunk.iter().enumerate() {
                let row = &logits[i * self.classes..(i + 1) * self.classes];
                let best = (0..self.classes)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .expect("classes > 0");
                if best == label_of(e.label) {
                    right += 1;
                }
            }
        }
        Ok(100.0 * right as f64 / set.len().max(1) as f64)
    }
}

/// Mean cross-entropy of softmax(logits) and its gradient w.r.t. the logits.
fn softmax_cross_entropy(logits: &[f32], labels: &[usize], classes: usize) -> (f32, Vec<f32>) {
    let n = labels.len();
    let mut grad = vec![0f32; logits.len()];
    let mut loss = 0f64;
    for (i, &label) in labels.iter().enumerate() {
        let row = &logits[i * classes..(i + 1) * classes];
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exps: Vec<f64> = row.iter().map(|&z| ((z - max) as f64).exp()).collect();
        let sum: f64 = exps.iter().sum();
        loss -= (exps[label] / sum).ln();
        for c in 0..classes {
            let p = exps[c] / sum;
            grad[i * classes + c] = ((p - f64::from(u8::from(c == label))) / n as f64) as f32;
        }
    }
    ((loss / n as f64) as f32, grad)
}

struct Config {
    epochs: usize,
    batch: usize,
    lr: f32,
    seed: u64,
    opts: PlanOptions,
}

/// Trains `net` for `epochs` on `train`, printing a line per epoch; returns the final test
/// accuracy.
#[allow(clippy::too_many_arguments)]
fn fit(
    net: &mut Net,
    cfg: &Config,
    train: &[&Example],
    test: &[&Example],
    label_of: &dyn Fn(usize) -> usize,
    epochs: usize,
    train_convs: bool,
    tag: &str,
) -> Result<f64, String> {
    let mut rng = Rng::new(cfg.seed ^ 0x5eed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut t = 0;
    let mut test_acc = 0.0;
    for epoch in 1..=epochs {
        let start = Instant::now();
        shuffle(&mut order, &mut rng);
        let mut loss_sum = 0f64;
        let mut steps = 0;
        // Whole batches only; the few examples left over are seen in other epochs.
        for idx in order.chunks_exact(net.batch) {
            let mut x = vec![0f32; net.batch * 64];
            let mut labels = Vec::with_capacity(net.batch);
            for (i, &k) in idx.iter().enumerate() {
                x[i * 64..(i + 1) * 64].copy_from_slice(&train[k].pixels);
                labels.push(label_of(train[k].label));
            }
            t += 1;
            loss_sum += net.train_step(&x, &labels, cfg.lr, t, train_convs)? as f64;
            steps += 1;
        }
        let train_acc = net.accuracy(train, label_of)?;
        test_acc = net.accuracy(test, label_of)?;
        eprintln!(
            "  {tag} epoch {epoch:>2}/{epochs}  loss {:.4}  train {train_acc:5.1}%  test {test_acc:5.1}%  ({:.2} s)",
            loss_sum / steps.max(1) as f64,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(test_acc)
}

fn shuffle(v: &mut [usize], rng: &mut Rng) {
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

fn parse_num<T: std::str::FromStr>(a: &Args, name: &str, default: T) -> Result<T, String> {
    match a.get(name) {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| format!("--{name}: `{s}` is not a valid number")),
    }
}

/// The initializers compared, by name.
fn inits(sel: &str) -> Result<Vec<(&'static str, Init)>, String> {
    let all = [
        ("zeros", Init::Zeros),
        (
            "gaussian",
            Init::Gaussian {
                mean: 0.0,
                std: 0.01,
            },
        ),
        ("xavier", Init::XavierUniform { gain: 1.0 }),
        ("he", Init::HeNormal),
    ];
    if sel == "all" {
        return Ok(all.to_vec());
    }
    all.iter()
        .find(|(n, _)| *n == sel)
        .map(|&x| vec![x])
        .ok_or_else(|| format!("--init: unknown `{sel}` (all, zeros, gaussian, xavier, he)"))
}

pub fn cmd_train(a: &Args) -> Result<(), String> {
    let text = match a.get("data") {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {e}"))?,
        None => DIGITS.to_string(),
    };
    let data = parse_digits(&text)?;
    if data.len() < 20 {
        return Err(format!(
            "the data set has {} images; need at least 20",
            data.len()
        ));
    }
    let threads: usize = parse_num(a, "threads", 1)?;
    if threads == 0 {
        return Err("--threads must be >= 1".into());
    }
    let cfg = Config {
        epochs: parse_num(a, "epochs", 30)?,
        batch: parse_num(a, "batch", 32)?,
        lr: parse_num(a, "lr", 0.005)?,
        seed: parse_num(a, "seed", 1)?,
        opts: PlanOptions {
            threads: Some(threads),
            isa: a.get("isa").map(str::to_string),
            ..Default::default()
        },
    };
    if cfg.batch == 0 || cfg.epochs == 0 || !(cfg.lr > 0.0 && cfg.lr.is_finite()) {
        return Err("--batch and --epochs must be >= 1 and --lr positive".into());
    }
    let finetune_epochs: usize = parse_num(a, "finetune-epochs", 5)?;
    let selected = inits(a.get("init").unwrap_or("all"))?;
    // The split, fixed by the seed: 80% train, 20% test.
    let mut order: Vec<usize> = (0..data.len()).collect();
    shuffle(&mut order, &mut Rng::new(cfg.seed));
    let n_test = data.len() / 5;
    let test: Vec<&Example> = order[..n_test].iter().map(|&i| &data[i]).collect();
    let train: Vec<&Example> = order[n_test..].iter().map(|&i| &data[i]).collect();
    eprintln!(
        "digits: {} train, {} test images; batch {}, Adam lr {}, {} epochs, {} thread(s), isa {}",
        train.len(),
        test.len(),
        cfg.batch,
        cfg.lr,
        cfg.epochs,
        threads,
        convkit::arch::resolve_isa(cfg.opts.isa.as_deref())
            .map_err(|e| e.to_string())?
            .name()
    );
    let total = Instant::now();
    let mut summary = Vec::new();
    let id = |l: usize| l;
    for (name, init) in &selected {
        eprintln!("init {name}:");
        let start = Instant::now();
        let mut net = Net::new(cfg.batch, 10, *init, cfg.seed, &cfg.opts)?;
        let acc = fit(&mut net, &cfg, &train, &test, &id, cfg.epochs, true, name)?;
        summary.push((name.to_string(), acc, start.elapsed().as_secs_f64()));
    }
    println!("initializer  test accuracy  time");
    for (name, acc, secs) in &summary {
        let note = if name == "zeros" {
            "  (all-zero filters get identical gradients: the symmetry never breaks)"
        } else {
            ""
        };
        println!("{name:<12} {acc:>11.1}%  {secs:>5.1} s{note}");
    }
    if finetune_epochs > 0 {
        finetune(&cfg, &train, &test, finetune_epochs)?;
    }
    eprintln!("total {:.1} s", total.elapsed().as_secs_f64());
    Ok(())
}

/// The examples with labels 5-9 (`high`) or 0-4.
fn split_labels<'a>(set: &[&'a Example], high: bool) -> Vec<&'a Example> {
    set.iter()
        .copied()
        .filter(|e| (e.label >= 5) == high)
        .collect()
}

/// Pretrain on digits 0-4, then learn 5-9 with a new classifier: convolutions frozen, then
/// unfrozen, beside a network trained from scratch for the same few epochs.
fn finetune(
    cfg: &Config,
    train: &[&Example],
    test: &[&Example],
    epochs: usize,
) -> Result<(), String> {
    let (train_lo, test_lo, train_hi, test_hi) = (
        split_labels(train, false),
        split_labels(test, false),
        split_labels(train, true),
        split_labels(test, true),
    );
    eprintln!(
        "fine-tuning: pretrain on digits 0-4 ({} images), He init",
        train_lo.len()
    );
    let id = |l: usize| l;
    let mut base = Net::new(cfg.batch, 5, Init::HeNormal, cfg.seed, &cfg.opts)?;
    let pre_acc = fit(
        &mut base, cfg, &train_lo, &test_lo, &id, cfg.epochs, true, "0-4",
    )?;
    let shifted = |l: usize| l - 5;
    let mut results = Vec::new();
    for (tag, train_convs) in [("frozen", false), ("unfrozen", true)] {
        // The pretrained convolutions, a new classifier for 5-9.
        let mut net = Net {
            conv1: Layer::with_weights(
                base.conv1.spec.clone(),
                base.conv1.w.clone(),
                base.conv1.b.clone(),
                &cfg.opts,
            )?,
            conv2: Layer::with_weights(
                base.conv2.spec.clone(),
                base.conv2.w.clone(),
                base.conv2.b.clone(),
                &cfg.opts,
            )?,
            fc: Layer::new(
                fc_spec(cfg.batch, 5),
                Init::HeNormal,
                cfg.seed + 7,
                &cfg.opts,
            )?,
            batch: cfg.batch,
            classes: 5,
        };
        eprintln!("fine-tune on 5-9, convolutions {tag}:");
        let acc = fit(
            &mut net,
            cfg,
            &train_hi,
            &test_hi,
            &shifted,
            epochs,
            train_convs,
            tag,
        )?;
        results.push((tag, acc));
    }
    eprintln!("from scratch on 5-9, same budget:");
    let mut scratch = Net::new(cfg.batch, 5, Init::HeNormal, cfg.seed + 11, &cfg.opts)?;
    let scratch_acc = fit(
        &mut scratch,
        cfg,
        &train_hi,
        &test_hi,
        &shifted,
        epochs,
        true,
        "scratch",
    )?;
    println!(
        "fine-tuning ({epochs} epochs on 5-9 after pretraining on 0-4: {pre_acc:.1}% test on 0-4)"
    );
    for (tag, acc) in results {
        println!("conv {tag:<9} {acc:>8.1}%  test on 5-9");
    }
    println!("from scratch   {scratch_acc:>8.1}%  test on 5-9");
    Ok(())
}
