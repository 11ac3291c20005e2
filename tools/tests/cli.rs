//! The `convkit` command end to end (SPEC section 3): results, and one `error:` line with a
//! non-zero exit and no output file for every class of bad input.

use convkit::npy::encode_f32;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_convkit"))
}

struct Dir(PathBuf);
impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("convkit-cli-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn file(&self, name: &str, bytes: &[u8]) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_npy(path: &str, shape: &[usize]) -> Vec<f32> {
    convkit::npy::read_f32(Path::new(path), shape, "output").unwrap()
}

fn assert_error(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one stderr line expected, got: {err}"
    );
    assert!(lines[0].starts_with("error: "), "{err}");
    assert!(
        lines[0].contains(needle),
        "error should mention `{needle}`: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
}

const SEED_SPEC: &str = r#"{"name": "seed", "input": [1, 1, 3, 3], "out_channels": 1, "kernel": [2, 2], "bias": false,
  "activation": "relu", "pool": {"kind": "max", "size": [2, 2]}}"#;

fn seed_files(d: &Dir) -> (String, String, String) {
    let spec = d.file("s.json", SEED_SPEC.as_bytes());
    let x = d.file(
        "x.npy",
        &encode_f32(&[1, 1, 3, 3], &[1., 1., 0., 1., 0., 1., 0., 1., 1.]),
    );
    let w = d.file("w.npy", &encode_f32(&[1, 1, 2, 2], &[1., -1., -1., 1.]));
    (spec, x, w)
}

#[test]
fn run_computes_the_seed_example_with_every_algorithm() {
    let d = Dir::new("seed");
    let (spec, x, w) = seed_files(&d);
    let algos = bin().args(["algos", "--spec", &spec]).output().unwrap();
    assert!(algos.status.success());
    let names = String::from_utf8(algos.stdout).unwrap();
    assert!(
        names.lines().any(|l| l == "reference") && names.lines().any(|l| l == "im2col"),
        "{names}"
    );
    assert!(
        !names.lines().any(|l| l == "gemm1x1"),
        "gemm1x1 cannot run a 2x2 kernel: {names}"
    );
    for algo in names.lines().chain(["auto"]) {
        let y = d.path(&format!("y-{algo}.npy"));
        let out = bin()
            .args([
                "run", "--spec", &spec, "--input", &x, "--weight", &w, "--algo", algo, "--output",
                &y,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{algo}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(read_npy(&y, &[1, 1, 1, 1]), vec![2.0], "{algo}");
    }
    for isa in ["portable", "auto"] {
        let y = d.path("y-isa.npy");
        let out = bin()
            .args([
                "run",
                "--spec",
                &spec,
                "--input",
                &x,
                "--weight",
                &w,
                "--isa",
                isa,
                "--threads",
                "2",
                "--output",
                &y,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(read_npy(&y, &[1, 1, 1, 1]), vec![2.0]);
    }
}

#[test]
fn bias_and_residual_files_are_required_exactly_when_the_spec_says() {
    let d = Dir::new("bias");
    let spec = d.file(
        "s.json",
        br#"{"input": [1, 1, 2, 2], "out_channels": 1, "kernel": [1, 1], "residual": true}"#,
    );
    let x = d.file("x.npy", &encode_f32(&[1, 1, 2, 2], &[1., 2., 3., 4.]));
    let w = d.file("w.npy", &encode_f32(&[1, 1, 1, 1], &[2.]));
    let b = d.file("b.npy", &encode_f32(&[1], &[0.5]));
    let r = d.file("r.npy", &encode_f32(&[1, 1, 2, 2], &[10., 20., 30., 40.]));
    let y = d.path("y.npy");
    let ok = bin()
        .args([
            "run",
            "--spec",
            &spec,
            "--input",
            &x,
            "--weight",
            &w,
            "--bias",
            &b,
            "--residual",
            &r,
            "--output",
            &y,
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(read_npy(&y, &[1, 1, 2, 2]), vec![12.5, 24.5, 36.5, 48.5]);
    std::fs::remove_file(&y).unwrap();
    let no_bias = bin()
        .args([
            "run",
            "--spec",
            &spec,
            "--input",
            &x,
            "--weight",
            &w,
            "--residual",
            &r,
            "--output",
            &y,
        ])
        .output()
        .unwrap();
    assert_error(&no_bias, "bias");
    let no_res = bin()
        .args([
            "run", "--spec", &spec, "--input", &x, "--weight", &w, "--bias", &b, "--output", &y,
        ])
        .output()
        .unwrap();
    assert_error(&no_res, "residual");
    let spec_nb = d.file(
        "nb.json",
        br#"{"input": [1, 1, 2, 2], "out_channels": 1, "kernel": [1, 1], "bias": false}"#,
    );
    let extra = bin()
        .args([
            "run", "--spec", &spec_nb, "--input", &x, "--weight", &w, "--bias", &b, "--output", &y,
        ])
        .output()
        .unwrap();
    assert_error(&extra, "bias");
    assert!(
        !Path::new(&y).exists(),
        "no output file may be written on error"
    );
}

#[test]
fn every_class_of_bad_input_is_one_error_line_and_no_output() {
    let d = Dir::new("bad");
    let (spec, x, w) = seed_files(&d);
    let y = d.path("y.npy");
    let bad_json = d.file("bad.json", b"{\"input\": [1, 1, 3, 3], ");
    let unknown_field = d.file(
        "uf.json",
        br#"{"input": [1, 1, 3, 3], "out_channels": 1, "kernel": [2, 2], "padd": 1}"#,
    );
    let huge = d.file(
        "huge.json",
        br#"{"input": [1, 1, 5000000000, 5000000000], "out_channels": 1, "kernel": [1, 1]}"#,
    );
    let impossible = d.file(
        "imp.json",
        br#"{"input": [1, 1, 3, 3], "out_channels": 1, "kernel": [5, 5]}"#,
    );
    let x_shape = d.file("xs.npy", &encode_f32(&[1, 1, 3, 4], &[0.0; 12]));
    let mut f8 = encode_f32(&[1, 1, 3, 3], &[0.0; 9]);
    let pos = f8.windows(3).position(|w| w == b"<f4").unwrap();
    f8[pos..pos + 3].copy_from_slice(b"<f8");
    let x_f8 = d.file("xf8.npy", &f8);
    let mut fort = encode_f32(&[1, 1, 3, 3], &[0.0; 9]);
    let pos = fort.windows(5).position(|w| w == b"False").unwrap();
    fort[pos..pos + 5].copy_from_slice(b"True ");
    let x_fort = d.file("xfort.npy", &fort);
    let full = encode_f32(&[1, 1, 3, 3], &[0.0; 9]);
    let x_trunc = d.file("xtrunc.npy", &full[..full.len() - 4]);
    let x_long = d.file("xlong.npy", &[full.clone(), vec![0; 4]].concat());
    let x_garbage = d.file("xg.npy", b"hello, not numpy");
    let missing = d.path("nope.npy");
    let s = spec.as_str();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "missing command"),
        (vec!["frobnicate"], "unknown command"),
        (
            vec!["run", "--spec", s, "--input", &x, "--weight", &w],
            "--output",
        ),
        (
            vec![
                "run", "--spec", s, "--input", &x, "--weight", &w, "--output", &y, "--colour",
                "red",
            ],
            "--colour",
        ),
        (
            vec![
                "run", "--spec", s, "--input", &x, "--weight", &w, "--output", &y, "--spec", s,
            ],
            "twice",
        ),
        (
            vec![
                "run", "--spec", &bad_json, "--input", &x, "--weight", &w, "--output", &y,
            ],
            "JSON",
        ),
        (
            vec![
                "run",
                "--spec",
                &unknown_field,
                "--input",
                &x,
                "--weight",
                &w,
                "--output",
                &y,
            ],
            "padd",
        ),
        (
            vec![
                "run", "--spec", &huge, "--input", &x, "--weight", &w, "--output", &y,
            ],
            "overflow",
        ),
        (
            vec![
                "run",
                "--spec",
                &impossible,
                "--input",
                &x,
                "--weight",
                &w,
                "--output",
                &y,
            ],
            "kernel",
        ),
        (
            vec![
                "run", "--spec", &missing, "--input", &x, "--weight", &w, "--output", &y,
            ],
            "nope.npy",
        ),
        (
            vec![
                "run", "--spec", s, "--input", &x_shape, "--weight", &w, "--output", &y,
            ],
            "shape",
        ),
        (
            vec![
                "run", "--spec", s, "--input", &x_f8, "--weight", &w, "--output", &y,
            ],
            "<f8",
        ),
        (
            vec![
                "run", "--spec", s, "--input", &x_fort, "--weight", &w, "--output", &y,
            ],
            "Fortran",
        ),
        (
            vec![
                "run", "--spec", s, "--input", &x_trunc, "--weight", &w, "--output", &y,
            ],
            "bytes",
        ),
        (
            vec![
                "run", "--spec", s, "--input", &x_long, "--weight", &w, "--output", &y,
            ],
            "bytes",
        ),
        (
            vec![
                "run", "--spec", s, "--input", &x_garbage, "--weight", &w, "--output", &y,
            ],
            "xg.npy",
        ),
        (
            vec![
                "run", "--spec", s, "--input", &missing, "--weight", &w, "--output", &y,
            ],
            "nope.npy",
        ),
        (
            vec![
                "run", "--spec", s, "--input", &x, "--weight", &x, "--output", &y,
            ],
            "weight",
        ),
        (
            vec![
                "run", "--spec", s, "--input", &x, "--weight", &w, "--output", &y, "--algo",
                "fastest",
            ],
            "fastest",
        ),
        (
            vec![
                "run", "--spec", s, "--input", &x, "--weight", &w, "--output", &y, "--algo",
                "gemm1x1",
            ],
            "gemm1x1",
        ),
        (
            vec![
                "run", "--spec", s, "--input", &x, "--weight", &w, "--output", &y, "--isa", "sse9",
            ],
            "sse9",
        ),
        (
            vec![
                "run",
                "--spec",
                s,
                "--input",
                &x,
                "--weight",
                &w,
                "--output",
                &y,
                "--threads",
                "0",
            ],
            "threads",
        ),
        (
            vec![
                "run",
                "--spec",
                s,
                "--input",
                &x,
                "--weight",
                &w,
                "--output",
                &y,
                "--threads",
                "two",
            ],
            "threads",
        ),
        (vec!["algos", "--spec", &impossible], "kernel"),
        (vec!["bench", "--layers", "no.such.layer"], "no.such.layer"),
        (vec!["bench", "--format", "xml"], "format"),
    ];
    for (args, needle) in cases {
        let out = bin().args(&args).output().unwrap();
        assert_error(&out, needle);
        assert!(!Path::new(&y).exists(), "{args:?} left an output file");
    }
    // An unwritable output location fails cleanly too.
    let out = bin()
        .args([
            "run",
            "--spec",
            s,
            "--input",
            &x,
            "--weight",
            &w,
            "--output",
            &d.path("no/such/dir/y.npy"),
        ])
        .output()
        .unwrap();
    assert_error(&out, "y.npy");
    // ISAs this CPU lacks are an error, not a fallback.
    for isa in convkit::arch::ALL_ISAS.iter().filter(|i| !i.is_available()) {
        let out = bin()
            .args([
                "run",
                "--spec",
                s,
                "--input",
                &x,
                "--weight",
                &w,
                "--output",
                &y,
                "--isa",
                isa.name(),
            ])
            .output()
            .unwrap();
        assert_error(&out, isa.name());
    }
}

#[test]
fn info_and_bench_json_follow_the_spec() {
    let info = bin().arg("info").output().unwrap();
    assert!(info.status.success());
    let text = String::from_utf8(info.stdout).unwrap();
    assert!(
        text.contains("isa:")
            && text.contains("caches:")
            && text.contains("cores:")
            && text.contains("peak"),
        "{text}"
    );
    let d = Dir::new("bench");
    let suite = d.file(
        "suite.json",
        br#"{"layers": [{"name": "tiny", "input": [1, 8, 12, 12], "out_channels": 8, "kernel": [3, 3], "padding": [1, 1], "activation": "relu"},
                        {"name": "tiny1d", "input": [1, 4, 40], "out_channels": 6, "kernel": [3], "pool": {"kind": "global_max"}}]}"#,
    );
    let wisdom = d.path("wisdom.json");
    let chart = d.path("chart.svg");
    let out = bin()
        .args([
            "bench",
            "--suite",
            &suite,
            "--algo",
            "all",
            "--threads",
            "1",
            "--reps",
            "2",
            "--format",
            "json",
            "--wisdom",
            &wisdom,
            "--plot",
            &chart,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["machine"]["threads"], 1);
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg")
            && svg.contains("tiny1d")
            && svg.contains("FMA peak")
            && svg.trim_end().ends_with("</svg>")
    );
    let results = v["results"].as_array().unwrap();
    assert!(results.len() >= 2);
    for r in results {
        for key in [
            "layer",
            "algo",
            "auto",
            "choice",
            "threads",
            "median_ms",
            "min_ms",
            "gflops",
            "pack_ms",
        ] {
            assert!(r.get(key).is_some(), "missing {key} in {r}");
        }
        assert!(r["gflops"].as_f64().unwrap() > 0.0);
        assert_ne!(r["algo"], "reference");
    }

    // The tuned benchmark: the first run measures, the second takes every choice from the
    // wisdom file it wrote.
    for expected in ["measured", "wisdom"] {
        let out = bin()
            .args([
                "bench",
                "--suite",
                &suite,
                "--threads",
                "1",
                "--reps",
                "1",
                "--format",
                "json",
                "--wisdom",
                &wisdom,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for r in v["results"].as_array().unwrap() {
            assert_eq!(r["auto"], true);
            assert_eq!(r["choice"], expected, "{r}");
        }
    }
    // `convkit tune` fills a wisdom file; a corrupt CONVKIT_WISDOM only warns.
    let tuned = d.path("tuned.json");
    let out = bin()
        .args([
            "tune",
            "--suite",
            &suite,
            "--threads",
            "1",
            "--wisdom",
            &tuned,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(convkit::tune::load_wisdom(Path::new(&tuned)).unwrap() >= 2);
    let corrupt = d.file("corrupt.json", b"{\"format\": \"convkit-wisdom\", \"entr");
    let out = bin()
        .env("CONVKIT_WISDOM", &corrupt)
        .args([
            "bench",
            "--suite",
            &suite,
            "--threads",
            "1",
            "--reps",
            "1",
            "--tune",
            "heuristic",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: wisdom file ignored"));

    // Two processes writing the same wisdom file at once leave a valid file.
    let both = d.path("both.json");
    let kids: Vec<_> = (0..2)
        .map(|_| {
            bin()
                .args([
                    "tune",
                    "--suite",
                    &suite,
                    "--threads",
                    "1",
                    "--wisdom",
                    &both,
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut k in kids {
        assert!(k.wait().unwrap().success());
    }
    assert!(convkit::tune::load_wisdom(Path::new(&both)).unwrap() >= 2);
}

/// `--pass backward_weights` names its method in each row: `all` gives the GEMM and the three
/// Winograd variants on a 3x3 stride-1 layer (and on a 1-D kernel of 3; `dilated_*` on a
/// dilated layer) and the GEMM alone elsewhere; `auto` one row, the method chosen; a
/// forward-only algorithm is an error.
#[test]
fn bench_weight_gradient_rows_name_their_method() {
    let d = Dir::new("bench_wgrad");
    let suite = d.file(
        "suite.json",
        br#"{"layers": [{"name": "s1", "input": [2, 8, 12, 12], "out_channels": 8, "kernel": [3, 3], "padding": [1, 1]},
                        {"name": "s2", "input": [1, 4, 12, 12], "out_channels": 6, "kernel": [3, 3], "stride": [2, 2]},
                        {"name": "d2", "input": [4, 4, 20, 20], "out_channels": 4, "kernel": [3, 3], "dilation": [2, 2], "padding": [2, 2]},
                        {"name": "l1", "input": [1, 4, 40], "out_channels": 4, "kernel": [3]}]}"#,
    );
    let rows = |algo: &str| -> Vec<String> {
        let out = bin()
            .args([
                "bench",
                "--suite",
                &suite,
                "--pass",
                "backward_weights",
                "--algo",
                algo,
                "--threads",
                "1",
                "--reps",
                "1",
                "--format",
                "csv",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| l.split(',').take(2).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(
        rows("all"),
        [
            "s1,backward_weights:im2col",
            "s1,backward_weights:winograd_f2x3",
            "s1,backward_weights:winograd_f4x3",
            "s1,backward_weights:winograd_f6x3",
            "s2,backward_weights:im2col",
            "d2,backward_weights:im2col",
            "d2,backward_weights:dilated_f2x3",
            "d2,backward_weights:dilated_f4x3",
            "d2,backward_weights:dilated_f6x3",
            "l1,backward_weights:im2col",
            "l1,backward_weights:winograd_f2x3",
            "l1,backward_weights:winograd_f4x3",
            "l1,backward_weights:winograd_f6x3",
        ]
    );
    // s1: 2 x 9 F(4,3) tiles, too few for Winograd; d2: 4 images x 4 phases x 9 tiles; l1:
    // 10 tiles.
    assert_eq!(
        rows("auto"),
        [
            "s1,backward_weights:im2col",
            "s2,backward_weights:im2col",
            "d2,backward_weights:dilated_f4x3",
            "l1,backward_weights:im2col",
        ]
    );
    assert_eq!(
        rows("winograd_f4x3"),
        [
            "s1,backward_weights:winograd_f4x3",
            "l1,backward_weights:winograd_f4x3"
        ]
    );
    assert_eq!(rows("dilated_f2x3"), ["d2,backward_weights:dilated_f2x3"]);
    let out = bin()
        .args([
            "bench",
            "--suite",
            &suite,
            "--pass",
            "backward_weights",
            "--algo",
            "direct",
        ])
        .output()
        .unwrap();
    assert_error(&out, "weight gradient");
}

/// `convkit train` learns the digits with He initialization and stays near chance with
/// zeros (a short run: 6 epochs), and rejects bad flags with one error line.
#[test]
fn train_learns_digits_and_zeros_do_not() {
    let out = bin()
        .args([
            "train",
            "--epochs",
            "6",
            "--init",
            "he",
            "--finetune-epochs",
            "0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let acc = |name: &str, text: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in {text}"));
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches('%')
            .parse()
            .unwrap()
    };
    assert!(acc("he", &text) >= 90.0, "{text}");
    let out = bin()
        .args([
            "train",
            "--epochs",
            "3",
            "--init",
            "zeros",
            "--finetune-epochs",
            "0",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(acc("zeros", &text) <= 25.0, "{text}");
    for (args, needle) in [
        (&["train", "--init", "ones"][..], "--init"),
        (&["train", "--epochs", "x"][..], "--epochs"),
        (&["train", "--lr", "-1"][..], "--lr"),
        (&["train", "--data", "/nonexistent.csv"][..], "cannot read"),
    ] {
        let out = bin().args(args).output().unwrap();
        assert_error(&out, needle);
    }
}
