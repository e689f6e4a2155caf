"""Integer parameters exactly as TensorFlow Lite Micro's int8 reference kernels derive them.

Why a module of its own: the C library must compute what the ``.tflite`` file computes in TFLM, bit for bit,
so every constant it uses is derived here from the file's float32 scales the way TFLM's ``Prepare`` does it
(``QuantizeMultiplier``: ``frexp`` and round-half-away of the mantissa to Q31; the double-rounding
``MultiplyByQuantizedMultiplier`` of gemmlowp), and the int8 TANH, a function of 256 inputs, is tabulated
by running gemmlowp's fixed-point ``tanh`` (Q4.27 input, Q0.31 output) on each of them. Written from the
published algorithms, in Python integers with int32 wrap-around where the C++ wraps.
"""

from __future__ import annotations

import math

import numpy as np

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


def _wrap32(x: int) -> int:
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """``real`` -> (Q31 multiplier, shift) with ``real ~= multiplier * 2**(shift - 31)`` (TFLite's
    ``QuantizeMultiplier``: shift > 0 is a left shift)."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(math.floor(abs(q) * (1 << 31) + 0.5)) * (1 if q >= 0 else -1)  # std::round
    if q_fixed == (1 << 31):
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def rounding_doubling_high_mul(a: int, b: int) -> int:
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int32 values."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    v = ab + nudge
    q = abs(v) >> 31  # C++ division truncates toward zero
    return _wrap32(q if v >= 0 else -q)


def rounding_divide_by_pot(x: int, exponent: int) -> int:
    """gemmlowp ``RoundingDivideByPOT``: round to nearest, halves away from zero."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def multiply_by_quantized_multiplier(x: int, multiplier: int, shift: int) -> int:
    """TFLite's double-rounding ``MultiplyByQuantizedMultiplier`` (int32 ``x``)."""
    left, right = max(shift, 0), max(-shift, 0)
    return rounding_divide_by_pot(rounding_doubling_high_mul(_wrap32(x * (1 << left)), multiplier), right)


# ---- gemmlowp fixed-point tanh (raw int32 values; "Fk" = k integer bits) ---------------------------------

def _mul(a: int, b: int) -> int:
    return rounding_doubling_high_mul(a, b)


def _mul_by_pot(x: int, exponent: int) -> int:
    """``SaturatingRoundingMultiplyByPOT<exponent>``."""
    if exponent == 0:
        return x
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    if x > threshold:
        return INT32_MAX
    if x < -threshold:
        return INT32_MIN
    return x << exponent


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: int) -> int:
    constant_term, one_third = 1895147668, 715827883  # exp(-1/8), 1/3 in Q0.31
    x = _wrap32(a + (1 << 28))
    x2 = _mul(x, x)
    x3 = _mul(x2, x)
    x4 = _mul(x2, x2)
    x4_over_4 = _mul_by_pot(x4, -2)
    poly = _mul_by_pot(_wrap32(_mul(_wrap32(x4_over_4 + x3), one_third) + x2), -1)
    return _wrap32(constant_term + _mul(constant_term, _wrap32(x + poly)))


def _exp_on_negative_values(a: int, integer_bits: int) -> int:
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    mask = one_quarter - 1
    a_mod_quarter_minus_one_quarter = _wrap32((a & mask) - one_quarter)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        _mul_by_pot(a_mod_quarter_minus_one_quarter, integer_bits))  # Rescale<0>
    remainder = _wrap32(a_mod_quarter_minus_one_quarter - a)
    for exponent, multiplier in ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
                                 (2, 39332535), (3, 720401), (4, 242)):
        if integer_bits > exponent and remainder & (1 << (fractional_bits + exponent)):
            result = _mul(result, multiplier)
    if integer_bits > 5 and a < -(1 << (fractional_bits + 5)):
        result = 0
    return INT32_MAX if a == 0 else result


def _one_minus_x_over_one_plus_x_for_x_in_0_1(a: int) -> int:
    s = a + INT32_MAX  # RoundingHalfSum(a, F0::One())
    half_denominator = (s + (1 if s >= 0 else -1)) // 2 if s >= 0 else -((-s + 1) // 2)
    x = _wrap32(1515870810 + _mul(half_denominator, -1010580540))  # 48/17 - 32/17 * d, in F2
    one_f2 = 1 << 29
    for _ in range(3):
        half_denominator_times_x = _mul(half_denominator, x)  # F2
        one_minus = _wrap32(one_f2 - half_denominator_times_x)
        x = _wrap32(x + _mul_by_pot(_mul(x, one_minus), 2))  # Rescale<2> of an F4
    return _mul_by_pot(_wrap32(x - one_f2), 2)  # Rescale<0> of an F2


def gemmlowp_tanh(raw: int, integer_bits: int) -> int:
    """tanh of a Q``integer_bits``.(31-integer_bits) raw int32, as a Q0.31 raw int32."""
    if raw == 0:
        return 0
    n = raw if raw < 0 else _wrap32(-raw)
    # neg_tanh_on_negative_values: ExactMulByPot<1> keeps the raw value and adds an integer bit
    t = _one_minus_x_over_one_plus_x_for_x_in_0_1(_exp_on_negative_values(n, integer_bits + 1))
    return _wrap32(-t) if raw < 0 else t


def tanh_int8_table(input_scale: float, input_zero_point: int) -> np.ndarray:
    """(256,) int8: TFLM's int8 TANH output for every int8 input ``q`` at index ``q & 0xFF``.

    TFLM's ``TanhPrepare``/``reference_integer_ops::Tanh``: the input is rescaled to Q4.27 with a Q31
    multiplier from ``frexp(scale * 2**27)``, inputs beyond the representable radius saturate to -128/127,
    and the Q0.31 result is rounded to Q0.7 (output scale 1/128, zero point 0, whatever the file says).
    """
    integer_bits = 4
    real = float(np.float32(input_scale)) * (1 << (31 - integer_bits))
    q, left_shift = math.frexp(real)
    multiplier = int(math.floor(q * (1 << 31) + 0.5))
    radius = math.floor(((1 << integer_bits) - 1) * (1 << (31 - integer_bits)) / (1 << left_shift))
    table = np.empty(256, np.int8)
    for v in range(-128, 128):
        x = v - int(input_zero_point)
        if x <= -radius:
            out = -128
        elif x >= radius:
            out = 127
        else:
            q4 = multiply_by_quantized_multiplier(x, multiplier, left_shift)
            out = min(max(rounding_divide_by_pot(gemmlowp_tanh(q4, integer_bits), 31 - 7), -128), 127)
        table[v & 0xFF] = out
    return table
