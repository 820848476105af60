"""Number formats from first principles: bit layouts, limits, every value, and round-to-nearest-even."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from . import validate


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, `exponent` bits with a bias, `mantissa` fraction bits.

    specials: "ieee" (all-ones exponent = Inf/NaN), "fn" (finite only; all-ones exponent and mantissa = NaN,
    as FP8 E4M3FN), "none" (every pattern is a number, as FP4 E2M1). overflow: what rounding past the
    largest value gives ("inf", or "saturate" as torch's cast to float8_e4m3fn does).
    """

    name: str
    exponent: int
    mantissa: int
    bias: int
    specials: str
    overflow: str
    torch_dtype: torch.dtype | None = None

    @property
    def bits(self) -> int:
        return 1 + self.exponent + self.mantissa

    @property
    def max_exponent(self) -> int:
        """Largest unbiased exponent of a finite number."""
        top = 2**self.exponent - 1 - self.bias
        return top - 1 if self.specials == "ieee" else top

    @property
    def max_finite(self) -> float:
        frac = 2 - 2.0 ** -self.mantissa
        if self.specials == "fn":  # the all-ones mantissa at the top exponent is NaN: one step less
            frac -= 2.0 ** -self.mantissa
        return frac * 2.0**self.max_exponent

    @property
    def min_normal(self) -> float:
        return 2.0 ** (1 - self.bias)

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (1 - self.bias - self.mantissa)

    @property
    def epsilon(self) -> float:
        """Gap between 1 and the next larger number: the relative precision."""
        return 2.0**-self.mantissa

    @property
    def n_finite(self) -> int:
        """Distinct finite values (+0 and -0 counted once)."""
        patterns = 2**self.bits
        special = {"ieee": 2 * 2**self.mantissa, "fn": 2, "none": 0}[self.specials]
        return patterns - special - 1

    def decode(self, pattern: int) -> float:
        """The value of one bit pattern (an int in [0, 2**bits))."""
        if isinstance(pattern, bool) or not isinstance(pattern, int) or not 0 <= pattern < 2**self.bits:
            raise validate.BadInput(f"{self.name} has {self.bits} bits: pattern must be in [0, {2**self.bits}) (an int), "
                                    f"got {pattern!r}")
        sign = -1.0 if pattern >> (self.bits - 1) else 1.0
        e = (pattern >> self.mantissa) & (2**self.exponent - 1)
        m = pattern & (2**self.mantissa - 1)
        top = 2**self.exponent - 1
        if self.specials == "ieee" and e == top:
            return sign * math.inf if m == 0 else math.nan
        if self.specials == "fn" and e == top and m == 2**self.mantissa - 1:
            return math.nan
        if e == 0:  # subnormal: no implicit leading 1
            return sign * m * 2.0 ** (1 - self.bias - self.mantissa)
        return sign * (1 + m * 2.0**-self.mantissa) * 2.0 ** (e - self.bias)

    def values(self) -> torch.Tensor:
        """Every bit pattern decoded, in pattern order (float64, NaN where the pattern is NaN)."""
        return torch.tensor([self.decode(p) for p in range(2**self.bits)], dtype=torch.float64)

    def round(self, x: torch.Tensor) -> torch.Tensor:
        """Round x to the nearest value of this format, ties to even (float64 result)."""
        x = _as_float(x).double()
        a = x.abs()
        exp = torch.floor(torch.log2(a.clamp_min(self.min_subnormal))).clamp(1 - self.bias, None)
        step = torch.exp2(exp - self.mantissa)
        q = torch.round(a / step) * step  # torch.round rounds half to even
        big = q > self.max_finite
        q = torch.where(big, torch.full_like(q, math.inf if self.overflow == "inf" else self.max_finite), q)
        q = torch.where(a.isinf(), torch.full_like(q, math.inf if self.specials == "ieee" else self.max_finite), q)
        return torch.where(x.isnan(), x, torch.copysign(q, x))

    def encode(self, value: float) -> int:
        """The bit pattern of the representable number nearest to value."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise validate.BadInput(f"value must be a number (NaN and Inf allowed), got {value!r}")
        q = float(self.round(torch.tensor([float(value)]))[0])
        sign = int(math.copysign(1, q) < 0) << (self.bits - 1)
        top = 2**self.exponent - 1
        if math.isnan(q):
            if self.specials == "none":
                raise ValueError(f"{self.name} has no NaN")
            return sign | (top << self.mantissa) | (2**self.mantissa - 1)
        a = abs(q)
        if math.isinf(a):
            return sign | (top << self.mantissa)
        if a < self.min_normal:  # zero or subnormal
            return sign | int(a / self.min_subnormal)
        e = math.floor(math.log2(a))
        return sign | ((e + self.bias) << self.mantissa) | int((a / 2.0**e - 1) * 2**self.mantissa)

    def bit_fields(self, value: float) -> str:
        """The nearest representable number's bits as 'sign | exponent | mantissa'."""
        s = f"{self.encode(value):0{self.bits}b}"
        return f"{s[0]} | {s[1:1 + self.exponent]} | {s[1 + self.exponent:]}"


@dataclass(frozen=True)
class IntFormat:
    """A signed two's-complement integer format (values are multiples of a scale set by quantization)."""

    name: str
    bits: int

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    def values(self) -> torch.Tensor:
        return torch.arange(self.qmin, self.qmax + 1, dtype=torch.float64)

    def round(self, x: torch.Tensor) -> torch.Tensor:
        """Round x (already divided by its scale) to the nearest code, ties to even, clamped to qmin..qmax (float64)."""
        x = _as_float(x).double()
        if bool(x.isnan().any()):
            raise validate.BadInput(f"{self.name} has no NaN: find where the NaN came from before rounding")
        return torch.round(x).clamp(self.qmin, self.qmax)


FORMATS = {
    "fp32": FloatFormat("FP32", 8, 23, 127, "ieee", "inf", torch.float32),
    "bf16": FloatFormat("BF16", 8, 7, 127, "ieee", "inf", torch.bfloat16),
    "fp16": FloatFormat("FP16", 5, 10, 15, "ieee", "inf", torch.float16),
    "fp8_e4m3": FloatFormat("FP8 E4M3FN", 4, 3, 7, "fn", "saturate", torch.float8_e4m3fn),
    "fp8_e5m2": FloatFormat("FP8 E5M2", 5, 2, 15, "ieee", "inf", torch.float8_e5m2),
    "fp4_e2m1": FloatFormat("FP4 E2M1", 2, 1, 1, "none", "saturate"),
    "int8": IntFormat("INT8", 8),
    "int4": IntFormat("INT4", 4),
}


def get(name: str) -> FloatFormat | IntFormat:
    """A format by its key in FORMATS."""
    return FORMATS[validate.choice(name, "format", FORMATS)]


def _as_float(x) -> torch.Tensor:
    if isinstance(x, bool) or not isinstance(x, (torch.Tensor, numbers.Real, list, tuple)):
        raise validate.BadInput(f"expected a floating-point tensor (or a number), got {type(x).__name__}")
    try:
        x = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise validate.BadInput(f"expected a floating-point tensor, could not make one of {x!r}: {err}") from None
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {x.dtype}: convert with .float() first")
    return x


def torch_round_trip(x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """Round x through torch's own cast to fmt's dtype and back (float64)."""
    if not isinstance(fmt, FloatFormat):
        raise validate.BadInput(f"fmt must be a FloatFormat such as formats.get('fp8_e4m3'), got {fmt!r}")
    if fmt.torch_dtype is None:
        raise ValueError(f"torch has no castable dtype for {fmt.name}")
    return _as_float(x).float().to(fmt.torch_dtype).double()


def summary_row(key: str) -> dict:
    """One row of the format table: bits, layout, limits, precision, distinct values, range in decades."""
    f = get(key)
    if isinstance(f, IntFormat):
        return {"format": f.name, "bits": f.bits, "exp": "-", "mant": "-", "max": float(f.qmax),
                "min normal": 1.0, "min subnormal": 1.0, "epsilon": 1.0 / f.qmax, "finite values": 2**f.bits,
                "range (decades)": math.log10(f.qmax)}
    return {"format": f.name, "bits": f.bits, "exp": f.exponent, "mant": f.mantissa, "max": f.max_finite,
            "min normal": f.min_normal, "min subnormal": f.min_subnormal, "epsilon": f.epsilon,
            "finite values": f.n_finite, "range (decades)": math.log10(f.max_finite / f.min_subnormal)}
