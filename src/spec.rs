//! The layer spec of SPEC.md section 1: JSON parsing (strict: unknown fields are refused and
//! every error names its field), a builder for Rust callers, and serialisation back to JSON.
//! Validation of the geometry lives in [`crate::geometry`].

use crate::epilogue::{Activation, Epilogue, Pool, PoolWindow};
use crate::error::{Error, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Padding of the convolution, as the spec allows it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Padding {
    /// No padding.
    #[default]
    Valid,
    /// TensorFlow "same": total = max((ceil(in/s) - 1) * s + (k - 1) * d + 1 - in, 0), the odd
    /// extra on the after side.
    Same,
    /// `[ph, pw]`: the same amount before and after, per spatial dim.
    Symmetric(Vec<usize>),
    /// `[[top, bottom], [left, right]]`: explicit (before, after) per spatial dim.
    Explicit(Vec<(usize, usize)>),
}

/// One convolution layer with its fused epilogue (SPEC.md section 1).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvSpec {
    /// Label only.
    pub name: Option<String>,
    /// `[N, C, H, W]` (2-D) or `[N, C, L]` (1-D).
    pub input: Vec<usize>,
    /// Output channels.
    pub out_channels: usize,
    /// `[KH, KW]` or `[K]`.
    pub kernel: Vec<usize>,
    /// Per spatial dim; `None` means all 1.
    pub stride: Option<Vec<usize>>,
    /// Padding.
    pub padding: Padding,
    /// Per spatial dim; `None` means all 1.
    pub dilation: Option<Vec<usize>>,
    /// Groups; must divide C and out_channels.
    pub groups: usize,
    /// A bias per output channel.
    pub bias: bool,
    /// A residual tensor of the conv output shape, added before the activation.
    pub residual: bool,
    /// The activation.
    pub activation: Activation,
    /// The pool applied last.
    pub pool: Option<Pool>,
}

impl ConvSpec {
    /// A spec with the defaults of SPEC.md: stride and dilation 1, "valid" padding, one group,
    /// bias on, no residual, no activation, no pool. Chain the setters below to change them:
    ///
    /// ```
    /// use convkit::{ConvSpec, Padding, Activation};
    /// let spec = ConvSpec::new(&[1, 3, 32, 32], 16, &[3, 3])
    ///     .with_padding(Padding::Same)
    ///     .with_activation(Activation::Relu);
    /// let g = convkit::Geometry::new(&spec).unwrap();
    /// assert_eq!(g.output_shape(), vec![1, 16, 32, 32]);
    /// ```
    pub fn new(input: &[usize], out_channels: usize, kernel: &[usize]) -> Self {
        ConvSpec {
            name: None,
            input: input.to_vec(),
            out_channels,
            kernel: kernel.to_vec(),
            stride: None,
            padding: Padding::Valid,
            dilation: None,
            groups: 1,
            bias: true,
            residual: false,
            activation: Activation::None,
            pool: None,
        }
    }
    /// Sets the label.
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = Some(name.to_string());
        self
    }
    /// Sets the stride per spatial dim.
    pub fn with_stride(mut self, stride: &[usize]) -> Self {
        self.stride = Some(stride.to_vec());
        self
    }
    /// Sets the padding.
    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }
    /// Sets the dilation per spatial dim.
    pub fn with_dilation(mut self, dilation: &[usize]) -> Self {
        self.dilation = Some(dilation.to_vec());
        self
    }
    /// Sets the number of groups.
    pub fn with_groups(mut self, groups: usize) -> Self {
        self.groups = groups;
        self
    }
    /// Turns the bias on or off.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// Turns the residual input on or off.
    pub fn with_residual(mut self, residual: bool) -> Self {
        self.residual = residual;
        self
    }
    /// Sets the activation.
    pub fn with_activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }
    /// Sets the pool.
    pub fn with_pool(mut self, pool: Option<Pool>) -> Self {
        self.pool = pool;
        self
    }

    /// The epilogue this spec asks for.
    pub fn epilogue(&self) -> Epilogue {
        Epilogue {
            bias: self.bias,
            residual: self.residual,
            activation: self.activation,
            pool: self.pool.clone(),
        }
    }

    /// Parses one spec from JSON text. Unknown fields, wrong types and bad values are errors
    /// that name the field.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| Error::Json(format!("invalid JSON: {e}")))?;
        Self::from_value(&value, "")
    }

    /// Parses one spec from a JSON value; `at` prefixes field paths in errors (e.g. `layers[3].`).
    pub fn from_value(value: &Value, at: &str) -> Result<Self> {
        if !value.is_object() {
            return Err(Error::Json(format!(
                "{}the spec must be a JSON object, found {}",
                if at.is_empty() {
                    String::new()
                } else {
                    format!("{} ", at.trim_end_matches('.'))
                },
                kind_of(value)
            )));
        }
        let raw: RawSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." || path.is_empty() {
                Error::Json(format!("{at}spec: {inner}"))
            } else {
                Error::spec(format!("{at}{path}"), inner)
            }
        })?;
        raw.into_spec(at)
    }

    /// The spec as JSON (the same schema it is parsed from; defaults written out).
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(n) = &self.name {
            m.insert("name".into(), json!(n));
        }
        m.insert("input".into(), json!(self.input));
        m.insert("out_channels".into(), json!(self.out_channels));
        m.insert("kernel".into(), json!(self.kernel));
        if let Some(s) = &self.stride {
            m.insert("stride".into(), json!(s));
        }
        m.insert(
            "padding".into(),
            match &self.padding {
                Padding::Valid => json!("valid"),
                Padding::Same => json!("same"),
                Padding::Symmetric(p) => json!(p),
                Padding::Explicit(p) => json!(p.iter().map(|&(a, b)| [a, b]).collect::<Vec<_>>()),
            },
        );
        if let Some(d) = &self.dilation {
            m.insert("dilation".into(), json!(d));
        }
        m.insert("groups".into(), json!(self.groups));
        m.insert("bias".into(), json!(self.bias));
        m.insert("residual".into(), json!(self.residual));
        m.insert(
            "activation".into(),
            match self.activation {
                Activation::LeakyRelu { alpha } => json!({"kind": "leaky_relu", "alpha": alpha}),
                Activation::Clamp { min, max } => json!({"kind": "clamp", "min": min, "max": max}),
                a => json!(a.name()),
            },
        );
        m.insert(
            "pool".into(),
            match &self.pool {
                None => Value::Null,
                Some(Pool::GlobalMax) => json!({"kind": "global_max"}),
                Some(Pool::GlobalAvg) => json!({"kind": "global_avg"}),
                Some(Pool::Max(w)) => window_json("max", w, None),
                Some(Pool::Avg {
                    window,
                    count_include_pad,
                }) => window_json("avg", window, Some(*count_include_pad)),
            },
        );
        Value::Object(m)
    }
}

fn window_json(kind: &str, w: &PoolWindow, cip: Option<bool>) -> Value {
    let mut v = json!({
        "kind": kind,
        "size": w.size,
        "stride": w.stride,
        "padding": w.padding.iter().map(|&(a, b)| [a, b]).collect::<Vec<_>>(),
    });
    if let Some(c) = cip {
        v["count_include_pad"] = json!(c);
    }
    v
}

/// Parses a suite file: `{"layers": [spec, ...]}` (an `"about"` string may stand beside it).
pub fn parse_suite(text: &str) -> Result<Vec<ConvSpec>> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| Error::Json(format!("invalid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| Error::Json("suite: expected an object with a `layers` list".into()))?;
    for key in obj.keys() {
        if key != "layers" && key != "about" {
            return Err(Error::spec(
                key,
                "unknown field in suite (expected `layers`, `about`)",
            ));
        }
    }
    let layers = obj
        .get("layers")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::spec("layers", "missing or not a list"))?;
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| ConvSpec::from_value(l, &format!("layers[{i}].")))
        .collect()
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    name: Option<String>,
    input: Vec<u64>,
    out_channels: u64,
    kernel: Vec<u64>,
    #[serde(default)]
    stride: Option<Vec<u64>>,
    #[serde(default)]
    padding: Option<Value>,
    #[serde(default)]
    dilation: Option<Vec<u64>>,
    #[serde(default)]
    groups: Option<u64>,
    #[serde(default)]
    bias: Option<bool>,
    #[serde(default)]
    residual: Option<bool>,
    #[serde(default)]
    activation: Option<Value>,
    #[serde(default)]
    pool: Option<Value>,
}

fn to_usize(v: u64, field: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::spec(field, format!("{v} does not fit in usize")))
}

fn to_usizes(v: &[u64], field: &str) -> Result<Vec<usize>> {
    v.iter()
        .enumerate()
        .map(|(i, &x)| to_usize(x, &format!("{field}[{i}]")))
        .collect()
}

fn uint(v: &Value, field: &str) -> Result<usize> {
    match v.as_u64() {
        Some(x) => to_usize(x, field),
        None => Err(Error::spec(
            field,
            format!("expected a non-negative integer, found {}", show(v)),
        )),
    }
}

fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}...", &s[..40])
    } else {
        s
    }
}

fn uint_list(v: &Value, field: &str) -> Result<Vec<usize>> {
    let arr = v.as_array().ok_or_else(|| {
        Error::spec(
            field,
            format!("expected a list of integers, found {}", show(v)),
        )
    })?;
    arr.iter()
        .enumerate()
        .map(|(i, x)| uint(x, &format!("{field}[{i}]")))
        .collect()
}

/// Parses a padding list: `[p, ..]` (symmetric) or `[[before, after], ..]` (explicit).
fn padding_list(v: &Value, field: &str) -> Result<Padding> {
    let arr = v.as_array().ok_or_else(|| {
        Error::spec(
            field,
            format!(
                "expected \"same\", \"valid\", a list or a list of pairs, found {}",
                show(v)
            ),
        )
    })?;
    if !arr.is_empty() && arr.iter().all(Value::is_array) {
        let mut pairs = Vec::with_capacity(arr.len());
        for (i, p) in arr.iter().enumerate() {
            let f = format!("{field}[{i}]");
            let items = uint_list(p, &f)?;
            if items.len() != 2 {
                return Err(Error::spec(
                    f,
                    format!(
                        "expected a [before, after] pair, found {} values",
                        items.len()
                    ),
                ));
            }
            pairs.push((items[0], items[1]));
        }
        Ok(Padding::Explicit(pairs))
    } else if arr.iter().any(Value::is_array) {
        Err(Error::spec(
            field,
            "mixes integers and [before, after] pairs",
        ))
    } else {
        Ok(Padding::Symmetric(uint_list(v, field)?))
    }
}

fn parse_padding(v: &Value, field: &str) -> Result<Padding> {
    match v {
        Value::String(s) if s == "same" => Ok(Padding::Same),
        Value::String(s) if s == "valid" => Ok(Padding::Valid),
        Value::String(s) => Err(Error::spec(
            field,
            format!("unknown padding \"{s}\" (expected \"same\", \"valid\" or a list)"),
        )),
        _ => padding_list(v, field),
    }
}

fn finite_number(v: Option<&Value>, field: &str) -> Result<f32> {
    let v = v.ok_or_else(|| Error::spec(field, "missing"))?;
    let x = v
        .as_f64()
        .ok_or_else(|| Error::spec(field, format!("expected a number, found {}", show(v))))?;
    let f = x as f32;
    if !f.is_finite() {
        return Err(Error::spec(field, format!("{x} is not a finite f32")));
    }
    Ok(f)
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], field: &str) -> Result<()> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(Error::spec(
                format!("{field}.{k}"),
                format!("unknown field (expected one of: {})", allowed.join(", ")),
            ));
        }
    }
    Ok(())
}

const SIMPLE_ACTIVATIONS: [(&str, Activation); 8] = [
    ("none", Activation::None),
    ("relu", Activation::Relu),
    ("relu6", Activation::Relu6),
    ("sigmoid", Activation::Sigmoid),
    ("tanh", Activation::Tanh),
    ("gelu", Activation::Gelu),
    ("gelu_tanh", Activation::GeluTanh),
    ("silu", Activation::Silu),
];

fn parse_activation(v: &Value, field: &str) -> Result<Activation> {
    let known = "none, relu, relu6, sigmoid, tanh, gelu, gelu_tanh, silu, {\"kind\": \"leaky_relu\", \"alpha\": a}, {\"kind\": \"clamp\", \"min\": lo, \"max\": hi}";
    match v {
        Value::String(s) => {
            if let Some((_, a)) = SIMPLE_ACTIVATIONS.iter().find(|(n, _)| n == s) {
                return Ok(*a);
            }
            if s == "leaky_relu" || s == "clamp" {
                return Err(Error::spec(
                    field,
                    format!("\"{s}\" needs its parameters: write it as an object ({known})"),
                ));
            }
            Err(Error::spec(
                field,
                format!("unknown activation \"{s}\" (expected one of: {known})"),
            ))
        }
        Value::Object(obj) => {
            let kind = obj
                .get("kind")
                .and_then(Value::as_str)
                .ok_or_else(|| Error::spec(format!("{field}.kind"), "missing or not a string"))?;
            match kind {
                "leaky_relu" => {
                    check_keys(obj, &["kind", "alpha"], field)?;
                    let alpha = finite_number(obj.get("alpha"), &format!("{field}.alpha"))?;
                    Ok(Activation::LeakyRelu { alpha })
                }
                "clamp" => {
                    check_keys(obj, &["kind", "min", "max"], field)?;
                    let min = finite_number(obj.get("min"), &format!("{field}.min"))?;
                    let max = finite_number(obj.get("max"), &format!("{field}.max"))?;
                    if min > max {
                        return Err(Error::spec(
                            field,
                            format!("clamp min {min} is greater than max {max}"),
                        ));
                    }
                    Ok(Activation::Clamp { min, max })
                }
                other => {
                    if let Some((_, a)) = SIMPLE_ACTIVATIONS.iter().find(|(n, _)| *n == other) {
                        check_keys(obj, &["kind"], field)?;
                        return Ok(*a);
                    }
                    Err(Error::spec(
                        format!("{field}.kind"),
                        format!("unknown activation \"{other}\" (expected one of: {known})"),
                    ))
                }
            }
        }
        _ => Err(Error::spec(
            field,
            format!("expected a string or an object, found {}", show(v)),
        )),
    }
}

fn parse_pool(v: &Value, field: &str) -> Result<Option<Pool>> {
    let obj = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => {
            return Err(Error::spec(
                field,
                format!("expected an object or null, found {}", show(v)),
            ))
        }
    };
    let kind = obj
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::spec(format!("{field}.kind"), "missing or not a string"))?;
    match kind {
        "global_max" | "global_avg" => {
            check_keys(obj, &["kind"], field)?;
            Ok(Some(if kind == "global_max" {
                Pool::GlobalMax
            } else {
                Pool::GlobalAvg
            }))
        }
        "max" | "avg" => {
            check_keys(
                obj,
                &["kind", "size", "stride", "padding", "count_include_pad"],
                field,
            )?;
            let size = uint_list(
                obj.get("size")
                    .ok_or_else(|| Error::spec(format!("{field}.size"), "missing"))?,
                &format!("{field}.size"),
            )?;
            let stride = match obj.get("stride") {
                None | Some(Value::Null) => size.clone(),
                Some(s) => uint_list(s, &format!("{field}.stride"))?,
            };
            let padding = match obj.get("padding") {
                None | Some(Value::Null) => vec![(0, 0); size.len()],
                Some(p) => match padding_list(p, &format!("{field}.padding"))? {
                    Padding::Symmetric(p) => p.iter().map(|&x| (x, x)).collect(),
                    Padding::Explicit(p) => p,
                    _ => unreachable!("padding_list returns lists only"),
                },
            };
            let count_include_pad = match obj.get("count_include_pad") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(Error::spec(
                        format!("{field}.count_include_pad"),
                        format!("expected a boolean, found {}", show(other)),
                    ))
                }
            };
            let window = PoolWindow {
                size,
                stride,
                padding,
            };
            Ok(Some(if kind == "max" {
                Pool::Max(window)
            } else {
                Pool::Avg {
                    window,
                    count_include_pad,
                }
            }))
        }
        other => Err(Error::spec(
            format!("{field}.kind"),
            format!("unknown pool kind \"{other}\" (expected max, avg, global_max, global_avg)"),
        )),
    }
}

impl RawSpec {
    fn into_spec(self, at: &str) -> Result<ConvSpec> {
        let f = |name: &str| format!("{at}{name}");
        Ok(ConvSpec {
            name: self.name,
            input: to_usizes(&self.input, &f("input"))?,
            out_channels: to_usize(self.out_channels, &f("out_channels"))?,
            kernel: to_usizes(&self.kernel, &f("kernel"))?,
            stride: self
                .stride
                .map(|s| to_usizes(&s, &f("stride")))
                .transpose()?,
            padding: match self.padding {
                None | Some(Value::Null) => Padding::Valid,
                Some(p) => parse_padding(&p, &f("padding"))?,
            },
            dilation: self
                .dilation
                .map(|d| to_usizes(&d, &f("dilation")))
                .transpose()?,
            groups: match self.groups {
                None => 1,
                Some(g) => to_usize(g, &f("groups"))?,
            },
            bias: self.bias.unwrap_or(true),
            residual: self.residual.unwrap_or(false),
            activation: match self.activation {
                None | Some(Value::Null) => Activation::None,
                Some(a) => parse_activation(&a, &f("activation"))?,
            },
            pool: match self.pool {
                None => None,
                Some(p) => parse_pool(&p, &f("pool"))?,
            },
        })
    }
}
