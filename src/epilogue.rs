//! The fused output pass as data: bias, residual, activation and pooling, with the one scalar
//! definition of each operation that the reference, the kernels' edge paths and the tests share.
//!
//! Order (SPEC section 1): `y = pool(act(conv(x, w) + bias + residual))`.

/// Floating-point operations the scalar definitions need, for `f32` (kernels) and `f64`
/// (the reference). One generic definition per activation keeps the two in step.
pub trait Real:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
{
    /// Converts from f64 (rounding for f32).
    fn from_f64(v: f64) -> Self;
    /// e^x.
    fn exp(self) -> Self;
    /// tanh(x).
    fn tanh(self) -> Self;
    /// erf(x).
    fn erf(self) -> Self;
    /// erfc(x) = 1 - erf(x), without the cancellation for large x.
    fn erfc(self) -> Self;
    /// Whether the value is NaN.
    fn is_nan(self) -> bool;
}

impl Real for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn erfc(self) -> Self {
        libm::erfc(self)
    }
    fn is_nan(self) -> bool {
        f64::is_nan(self)
    }
}

impl Real for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn erfc(self) -> Self {
        libm::erfcf(self)
    }
    fn is_nan(self) -> bool {
        f32::is_nan(self)
    }
}

/// The activation applied after bias and residual.
#[derive(Copy, Clone, Debug, PartialEq, Default)]
pub enum Activation {
    /// Identity.
    #[default]
    None,
    /// max(x, 0).
    Relu,
    /// clamp(x, 0, 6).
    Relu6,
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// tanh(x).
    Tanh,
    /// x * Phi(x), exact erf form: 0.5 x (1 + erf(x / sqrt 2)).
    Gelu,
    /// The tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    GeluTanh,
    /// x * sigmoid(x).
    Silu,
    /// x for x >= 0, alpha x otherwise.
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
    /// clamp(x, min, max), min <= max.
    Clamp {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
}

impl Activation {
    /// The spec name of the activation (`leaky_relu`, `clamp` for the object forms).
    pub fn name(&self) -> &'static str {
        match self {
            Activation::None => "none",
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Silu => "silu",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Clamp { .. } => "clamp",
        }
    }

    /// The activation as a clamp `[lo, hi]` when it is one (identity, relu, relu6, clamp):
    /// these run as one min/max on the accumulator registers. `None` for the others, which
    /// run in the band pass.
    pub fn as_clamp(&self) -> Option<(f32, f32)> {
        match *self {
            Activation::None => Some((f32::NEG_INFINITY, f32::INFINITY)),
            Activation::Relu => Some((0.0, f32::INFINITY)),
            Activation::Relu6 => Some((0.0, 6.0)),
            Activation::Clamp { min, max } => Some((min, max)),
            _ => None,
        }
    }

    /// The scalar definition, generic over f32 and f64. NaN propagates through every
    /// activation (comparisons with NaN are false, so NaN falls through unchanged).
    #[inline]
    pub fn apply<T: Real>(&self, x: T) -> T {
        let zero = T::from_f64(0.0);
        let one = T::from_f64(1.0);
        let half = T::from_f64(0.5);
        match *self {
            Activation::None => x,
            Activation::Relu => clamp_nan(x, zero, T::from_f64(f64::INFINITY)),
            Activation::Relu6 => clamp_nan(x, zero, T::from_f64(6.0)),
            Activation::Clamp { min, max } => {
                clamp_nan(x, T::from_f64(min as f64), T::from_f64(max as f64))
            }
            Activation::LeakyRelu { alpha } => {
                if x < zero {
                    T::from_f64(alpha as f64) * x
                } else {
                    x
                }
            }
            Activation::Sigmoid => sigmoid(x),
            Activation::Tanh => x.tanh(),
            Activation::Silu => x * sigmoid(x),
            Activation::Gelu => {
                half * x * (one + (x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erf())
            }
            Activation::GeluTanh => {
                let c = T::from_f64((2.0 / std::f64::consts::PI).sqrt());
                let inner = c * (x + T::from_f64(0.044715) * x * x * x);
                half * x * (one + inner.tanh())
            }
        }
    }
}

impl Activation {
    /// The derivative at the pre-activation value `x`, generic over f32 and f64 (the backward
    /// pass multiplies the incoming gradient by it). At the kinks of the piecewise ones the
    /// derivative of the branch the forward pass takes is used: relu'(0) = 0, relu6'(6) = 0,
    /// clamp'(min) = clamp'(max) = 0, leaky_relu'(0) = 1. NaN gives NaN.
    #[inline]
    pub fn derivative<T: Real>(&self, x: T) -> T {
        let zero = T::from_f64(0.0);
        let one = T::from_f64(1.0);
        let half = T::from_f64(0.5);
        let inside = |lo: T, hi: T| {
            if x > lo && x < hi {
                one
            } else if x.is_nan() {
                x
            } else {
                zero
            }
        };
        match *self {
            Activation::None => one,
            Activation::Relu => inside(zero, T::from_f64(f64::INFINITY)),
            Activation::Relu6 => inside(zero, T::from_f64(6.0)),
            Activation::Clamp { min, max } => {
                inside(T::from_f64(min as f64), T::from_f64(max as f64))
            }
            Activation::LeakyRelu { alpha } => {
                if x < zero {
                    T::from_f64(alpha as f64)
                } else if x.is_nan() {
                    x
                } else {
                    one
                }
            }
            // 1 - s is taken as sigmoid(-x), and 1 - tanh^2 as sech^2: written the textbook
            // way, both cancel when the unit saturates (at tanh = 0.99975, f32's 6e-8 in t
            // becomes 2.4e-4 of 1 - t^2), and the gradient loses the accuracy SPEC asks for.
            Activation::Sigmoid => sigmoid(x) * sigmoid(-x),
            Activation::Tanh => sech_squared(x),
            Activation::Silu => sigmoid(x) * (one + x * sigmoid(-x)),
            Activation::Gelu => {
                // Phi(x) + x phi(x), with Phi(x) = erfc(-x / sqrt 2) / 2: the form 1 + erf
                // cancels for x << 0 (at x = -4.5 half of Phi's f32 digits were gone).
                let cdf = half * (-x * T::from_f64(std::f64::consts::FRAC_1_SQRT_2)).erfc();
                let pdf = (-(half * x * x)).exp()
                    * T::from_f64(1.0 / (2.0 * std::f64::consts::PI).sqrt());
                cdf + x * pdf
            }
            Activation::GeluTanh => {
                let c = T::from_f64((2.0 / std::f64::consts::PI).sqrt());
                let k = T::from_f64(0.044715);
                let u = c * (x + k * x * x * x);
                // (1 + tanh u) / 2 = sigmoid(2u), again without the cancellation for u << 0.
                sigmoid(u + u)
                    + half * x * sech_squared(u) * c * (one + T::from_f64(3.0) * k * x * x)
            }
        }
    }
}

/// sech^2(x) = 1 - tanh^2(x) = 4 e / (1 + e)^2 with e = e^(-2|x|): no cancellation, and
/// e underflows to 0 (not NaN) far out.
fn sech_squared<T: Real>(x: T) -> T {
    let zero = T::from_f64(0.0);
    let one = T::from_f64(1.0);
    let a = if x < zero { -x } else { x };
    let e = (T::from_f64(-2.0) * a).exp();
    let d = one + e;
    T::from_f64(4.0) * e / (d * d)
}

/// clamp that lets NaN through (min/max on x86 would not, in general).
#[inline]
pub(crate) fn clamp_nan<T: Real>(x: T, lo: T, hi: T) -> T {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
}

#[inline]
fn sigmoid<T: Real>(x: T) -> T {
    let one = T::from_f64(1.0);
    let zero = T::from_f64(0.0);
    // Written so that neither branch overflows: for x >= 0, 1/(1+e^-x); else e^x/(1+e^x).
    if x >= zero {
        one / (one + (-x).exp())
    } else if x < zero {
        let e = x.exp();
        e / (one + e)
    } else {
        x // NaN
    }
}

/// Max that propagates NaN (a max pool over a window holding NaN is NaN, as in the reference).
#[inline]
pub fn max_nan<T: Real>(a: T, b: T) -> T {
    // Written as selects (no early return) so that loops over rows vectorize; a + b is NaN
    // exactly when either is.
    let m = if b > a { b } else { a };
    if a.is_nan() || b.is_nan() {
        a + b
    } else {
        m
    }
}

/// A max or average pooling window: size, stride and padding per spatial dim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolWindow {
    /// Window extent per spatial dim.
    pub size: Vec<usize>,
    /// Step per spatial dim (defaults to the size).
    pub stride: Vec<usize>,
    /// (before, after) padding per spatial dim.
    pub padding: Vec<(usize, usize)>,
}

/// Pooling applied after the activation, fused into the output pass.
#[derive(Clone, Debug, PartialEq)]
pub enum Pool {
    /// Max over the real cells of each window (padding is ignored).
    Max(PoolWindow),
    /// Average over each window: divided by the real cells, or by the whole window when
    /// `count_include_pad`.
    Avg {
        /// The window.
        window: PoolWindow,
        /// Divide by the window size including padded cells.
        count_include_pad: bool,
    },
    /// Max over all spatial positions; keeps the rank (`[N, C, 1, 1]`).
    GlobalMax,
    /// Mean over all spatial positions; keeps the rank.
    GlobalAvg,
}

impl Pool {
    /// The spec name of the pool kind.
    pub fn name(&self) -> &'static str {
        match self {
            Pool::Max(_) => "max",
            Pool::Avg { .. } => "avg",
            Pool::GlobalMax => "global_max",
            Pool::GlobalAvg => "global_avg",
        }
    }
    /// The window of a windowed pool.
    pub fn window(&self) -> Option<&PoolWindow> {
        match self {
            Pool::Max(w) | Pool::Avg { window: w, .. } => Some(w),
            _ => None,
        }
    }
}

/// Everything applied to the convolution's accumulators before they reach the user.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Epilogue {
    /// A bias per output channel is added.
    pub bias: bool,
    /// A tensor of the conv output shape is added.
    pub residual: bool,
    /// The activation.
    pub activation: Activation,
    /// The pool, if any.
    pub pool: Option<Pool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the smooth units saturate, the f32 derivative keeps its relative accuracy
    /// (the textbook 1 - tanh^2 was off by 2.4e-4 of itself at x = 4.5).
    #[test]
    fn smooth_derivatives_stay_accurate_in_saturation() {
        for act in [
            Activation::Tanh,
            Activation::Sigmoid,
            Activation::Silu,
            Activation::Gelu,
            Activation::GeluTanh,
        ] {
            for x in [-9.0f32, -4.5, -2.0, -0.3, 0.0, 0.7, 3.0, 4.5, 9.0] {
                let want = act.derivative(x as f64);
                let got = act.derivative(x) as f64;
                let rel = (got - want).abs() / want.abs().max(1e-30);
                // gelu_tanh'(-9) is e^-66-small and moves by 2e-6 of itself with f32's
                // rounding of its inner polynomial (u = -33): that is conditioning, not the
                // formula, so the bound is 1e-5, still 24x below x.
                assert!(rel < 1e-5, "{act:?}'({x}) = {got} vs {want}: {rel:.2e}");
            }
        }
        // Against an independent value (Python's math.erfc in f64), since both precisions
        // of the same formula would share a cancellation: gelu'(-4.5) = Phi(-4.5) - 4.5
        // phi(-4.5). Through 1 + erf in f32, gelu'(-4.7) was off by 3.7e-4 of itself and
        // gelu'(-5) by 1.6e-3.
        for (x, want) in [
            (-4.7f32, -2.863_737_088_675_804_3e-5),
            (-5.0, -7.146_946_001_792_295e-6),
        ] {
            let got = Activation::Gelu.derivative(x) as f64;
            assert!(
                ((got - want) / want).abs() < 1e-5,
                "gelu'({x}) = {got} vs {want}"
            );
        }
    }

    #[test]
    fn activations_at_hand_computed_points() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert_eq!(Activation::Relu.apply(-2.0f64), 0.0);
        assert_eq!(Activation::Relu.apply(3.5f64), 3.5);
        assert_eq!(Activation::Relu6.apply(7.0f64), 6.0);
        assert_eq!(Activation::Relu6.apply(-1.0f64), 0.0);
        assert_eq!(
            Activation::Clamp {
                min: -1.0,
                max: 2.0
            }
            .apply(5.0f64),
            2.0
        );
        assert_eq!(
            Activation::Clamp {
                min: -1.0,
                max: 2.0
            }
            .apply(-5.0f64),
            -1.0
        );
        assert_eq!(Activation::LeakyRelu { alpha: 0.25 }.apply(-4.0f64), -1.0);
        assert!(close(Activation::Sigmoid.apply(0.0f64), 0.5));
        assert!(close(
            Activation::Sigmoid.apply(2.0f64),
            1.0 / (1.0 + (-2.0f64).exp())
        ));
        assert!(close(Activation::Sigmoid.apply(-800.0f64), 0.0));
        assert!(close(
            Activation::Silu.apply(1.0f64),
            1.0 / (1.0 + (-1.0f64).exp())
        ));
        // gelu(1) = 0.5 * (1 + erf(1/sqrt2)) = 0.8413447460685429
        assert!(close(
            Activation::Gelu.apply(1.0f64),
            0.841_344_746_068_542_9
        ));
        // gelu_tanh(1) = 0.5 * (1 + tanh(sqrt(2/pi) * 1.044715)) = 0.8411919906082768
        assert!(close(
            Activation::GeluTanh.apply(1.0f64),
            0.841_191_990_608_276_8
        ));
        assert!(close(Activation::Tanh.apply(0.5f64), 0.5f64.tanh()));
    }

    #[test]
    fn nan_propagates_through_every_activation_and_max() {
        let acts = [
            Activation::None,
            Activation::Relu,
            Activation::Relu6,
            Activation::Sigmoid,
            Activation::Tanh,
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::Silu,
            Activation::LeakyRelu { alpha: 0.1 },
            Activation::Clamp {
                min: -1.0,
                max: 1.0,
            },
        ];
        for a in acts {
            assert!(a.apply(f64::NAN).is_nan(), "{a:?}");
            assert!(a.apply(f32::NAN).is_nan(), "{a:?}");
        }
        assert!(max_nan(1.0f64, f64::NAN).is_nan());
        assert!(max_nan(f64::NAN, 1.0f64).is_nan());
        assert_eq!(max_nan(1.0f64, 2.0), 2.0);
    }

    #[test]
    fn clamp_lowering_covers_exactly_the_min_max_activations() {
        assert_eq!(Activation::Relu6.as_clamp(), Some((0.0, 6.0)));
        assert!(Activation::Gelu.as_clamp().is_none());
        assert!(Activation::LeakyRelu { alpha: 0.1 }.as_clamp().is_none());
    }
}
