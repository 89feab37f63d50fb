//! `INCRBYFLOAT` arithmetic, bit for bit as Redis computes it on x86-64: the operands are read
//! with `strtold` into the x87 80-bit `long double` (64-bit mantissa), added, and printed with
//! `"%.17Lf"` minus trailing zeros. So `0.1 + 0.2` is `0.3` (not f64's `0.30000000000000004`)
//! and `1000000 + 0.1` is `1000000.10000000000002274`, as in Redis.
//!
//! Rust has no 80-bit float, so this is a small software one: exact big-integer arithmetic,
//! rounded once to 64 mantissa bits (round half to even, as the x87 does by default). It is
//! a pure function of its input bytes, so every replica computes the same result at apply.
//!
//! Not supported (refused as "not a valid float", where Redis would accept them): hexadecimal
//! floats (`0x1p3`). NaN and an overflowing or underflowing-to-zero input are refused as
//! Redis refuses them.
//!
//! Invariant: a finite `LongDouble` has `mant == 0` (a zero), or `mant >= 2^63` (normal), or
//! `exp == EXP_MIN` (subnormal).

use crate::client::value::Value;

/// Smallest exponent of the last mantissa bit: the x87 subnormal scale, 2^-16445.
const EXP_MIN: i64 = -16445;
/// Largest exponent of the last mantissa bit of a finite value (largest is < 2^16384).
const EXP_MAX: i64 = 16384 - 64;
/// Longest operand accepted, in bytes (Redis's MAX_LONG_DOUBLE_CHARS).
pub const FLOAT_TEXT_SIZE_MAX: usize = 5 * 1024;

pub fn not_a_float() -> Value {
    Value::error("ERR value is not a valid float")
}

/// An x87 extended-precision value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongDouble {
    /// `(-1)^neg * mant * 2^exp`.
    Finite {
        neg: bool,
        mant: u64,
        exp: i64,
    },
    Inf {
        neg: bool,
    },
    NaN,
}

/// A non-negative big integer, 32-bit limbs, least significant first, no high zero limbs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Big(Vec<u32>);

impl Big {
    fn from_u64(v: u64) -> Big {
        let mut b = Big(vec![v as u32, (v >> 32) as u32]);
        b.trim();
        b
    }
    fn trim(&mut self) {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
    }
    fn is_zero(&self) -> bool {
        self.0.is_empty()
    }
    fn bits(&self) -> u64 {
        match self.0.last() {
            None => 0,
            Some(&top) => (self.0.len() as u64 - 1) * 32 + u64::from(32 - top.leading_zeros()),
        }
    }
    fn bit(&self, i: u64) -> bool {
        let limb = (i / 32) as usize;
        limb < self.0.len() && self.0[limb] >> (i % 32) & 1 == 1
    }
    /// Whether any bit below position `i` is set.
    fn any_below(&self, i: u64) -> bool {
        let whole = (i / 32) as usize;
        if self.0.iter().take(whole).any(|&l| l != 0) {
            return true;
        }
        let rem = i % 32;
        rem > 0 && whole < self.0.len() && self.0[whole] & ((1u32 << rem) - 1) != 0
    }
    fn mul_small(&mut self, m: u32) {
        let mut carry = 0u64;
        for limb in &mut self.0 {
            let v = u64::from(*limb) * u64::from(m) + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            self.0.push(carry as u32);
        }
    }
    fn add_small(&mut self, a: u32) {
        let mut carry = u64::from(a);
        for limb in &mut self.0 {
            if carry == 0 {
                return;
            }
            let v = u64::from(*limb) + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            self.0.push(carry as u32);
        }
    }
    /// Divide by `d` in place; returns the remainder.
    fn div_small(&mut self, d: u32) -> u32 {
        let mut rem = 0u64;
        for limb in self.0.iter_mut().rev() {
            let v = (rem << 32) | u64::from(*limb);
            *limb = (v / u64::from(d)) as u32;
            rem = v % u64::from(d);
        }
        self.trim();
        rem as u32
    }
    fn mul_pow10(&mut self, mut n: u64) {
        while n >= 9 {
            self.mul_small(1_000_000_000);
            n -= 9;
        }
        self.mul_small(10u32.pow(n as u32));
    }
    fn shl(&mut self, n: u64) {
        if self.is_zero() {
            return;
        }
        let (limbs, bits) = ((n / 32) as usize, (n % 32) as u32);
        if bits > 0 {
            let mut carry = 0u32;
            for limb in &mut self.0 {
                let v = (*limb << bits) | carry;
                carry = *limb >> (32 - bits);
                *limb = v;
            }
            if carry > 0 {
                self.0.push(carry);
            }
        }
        self.0.splice(0..0, std::iter::repeat_n(0, limbs));
    }
    /// The value shifted right by `n` bits, as u64 (the caller knows it fits).
    fn shr_u64(&self, n: u64) -> u64 {
        let mut v = 0u64;
        for i in 0..64 {
            if self.bit(n + i) {
                v |= 1 << i;
            }
        }
        v
    }
    fn cmp(&self, other: &Big) -> std::cmp::Ordering {
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.iter().rev().cmp(other.0.iter().rev()))
    }
    fn add(&mut self, other: &Big) {
        let mut carry = 0u64;
        for i in 0..self.0.len().max(other.0.len()) {
            if i == self.0.len() {
                self.0.push(0);
            }
            let v = u64::from(self.0[i]) + u64::from(*other.0.get(i).unwrap_or(&0)) + carry;
            self.0[i] = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            self.0.push(carry as u32);
        }
    }
    /// `self - other`; `other <= self` is the caller's promise.
    fn sub(&mut self, other: &Big) {
        let mut borrow = 0i64;
        for i in 0..self.0.len() {
            let v = i64::from(self.0[i]) - i64::from(*other.0.get(i).unwrap_or(&0)) - borrow;
            borrow = i64::from(v < 0);
            self.0[i] = v.rem_euclid(1 << 32) as u32;
        }
        assert_eq!(borrow, 0, "big subtraction underflowed");
        self.trim();
    }
    fn to_decimal(&self) -> String {
        let mut n = self.clone();
        let mut chunks = Vec::new();
        while !n.is_zero() {
            chunks.push(n.div_small(1_000_000_000));
        }
        let mut out = chunks
            .pop()
            .map_or_else(|| "0".to_string(), |c| c.to_string());
        for c in chunks.iter().rev() {
            out.push_str(&format!("{c:09}"));
        }
        out
    }
}

/// Round `n * 2^scale` (plus a sticky fraction below it when `sticky`) to a `LongDouble`.
fn round(neg: bool, n: &Big, scale: i64, sticky: bool) -> LongDouble {
    if n.is_zero() {
        return LongDouble::Finite {
            neg,
            mant: 0,
            exp: 0,
        };
    }
    let bits = n.bits() as i64;
    // Drop `shift` low bits so 64 remain, or more if the result would be below EXP_MIN. A
    // negative shift (fewer than 64 bits) normalizes exactly; it is at most 63, since n > 0.
    let mut shift = (bits - 64).max(EXP_MIN - scale);
    let (mut mant, half, rest) = if shift <= 0 {
        (n.shr_u64(0) << -shift, false, false)
    } else {
        let s = shift as u64;
        (n.shr_u64(s), n.bit(s - 1), n.any_below(s - 1))
    };
    if half && (rest || sticky || mant & 1 == 1) {
        match mant.checked_add(1) {
            Some(m) => mant = m,
            None => {
                mant = 1 << 63;
                shift += 1;
            }
        }
    }
    let exp = scale + shift;
    if mant == 0 {
        return LongDouble::Finite {
            neg,
            mant: 0,
            exp: 0,
        };
    }
    if exp > EXP_MAX {
        return LongDouble::Inf { neg };
    }
    LongDouble::Finite { neg, mant, exp }
}

impl LongDouble {
    /// `strtold` as Redis's `string2ld` uses it: `None` for anything Redis refuses (and for
    /// hexadecimal floats, which we do not read).
    pub fn parse(text: &[u8]) -> Option<LongDouble> {
        if text.is_empty() || text.len() >= FLOAT_TEXT_SIZE_MAX {
            return None;
        }
        let (neg, body) = match text[0] {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let lower = body.to_ascii_lowercase();
        if lower == b"inf" || lower == b"infinity" {
            return Some(LongDouble::Inf { neg });
        }
        let (digits, exp10) = decimal_parts(body)?;
        let value = from_decimal(neg, &digits, exp10);
        match value {
            LongDouble::Finite { mant: 0, .. } if digits.iter().any(|&d| d != 0) => None,
            LongDouble::Inf { .. } => None, // overflow: ERANGE with HUGE_VAL
            v => Some(v),
        }
    }

    pub fn plus(self, other: LongDouble) -> LongDouble {
        use LongDouble::*;
        match (self, other) {
            (NaN, _) | (_, NaN) => NaN,
            (Inf { neg: a }, Inf { neg: b }) if a != b => NaN,
            (Inf { neg }, _) | (_, Inf { neg }) => Inf { neg },
            (
                Finite {
                    mant: 0, neg: a, ..
                },
                Finite {
                    mant: 0, neg: b, ..
                },
            ) => Finite {
                neg: a && b,
                mant: 0,
                exp: 0,
            },
            (Finite { mant: 0, .. }, x) | (x, Finite { mant: 0, .. }) => x,
            (
                Finite {
                    neg: na,
                    mant: ma,
                    exp: ea,
                },
                Finite {
                    neg: nb,
                    mant: mb,
                    exp: eb,
                },
            ) => {
                // Far apart, the smaller is below a quarter of the larger's last bit and cannot
                // move a round-to-nearest result (no tie is possible).
                if (ea - eb).abs() > 130 {
                    return if ea > eb { self } else { other };
                }
                let low = ea.min(eb);
                let (mut a, mut b) = (Big::from_u64(ma), Big::from_u64(mb));
                a.shl((ea - low) as u64);
                b.shl((eb - low) as u64);
                if na == nb {
                    a.add(&b);
                    return round(na, &a, low, false);
                }
                match a.cmp(&b) {
                    std::cmp::Ordering::Equal => Finite {
                        neg: false,
                        mant: 0,
                        exp: 0,
                    },
                    std::cmp::Ordering::Greater => {
                        a.sub(&b);
                        round(na, &a, low, false)
                    }
                    std::cmp::Ordering::Less => {
                        b.sub(&a);
                        round(nb, &b, low, false)
                    }
                }
            }
        }
    }

    pub fn is_finite(self) -> bool {
        matches!(self, LongDouble::Finite { .. })
    }

    /// `"%.17Lf"` with trailing zeros (and a trailing `.`) removed, `-0` as `0`: Redis's
    /// `ld2string(LD_STR_HUMAN)`. Only for finite values.
    pub fn human(self) -> String {
        let LongDouble::Finite { neg, mant, exp } = self else {
            unreachable!("human() of a non-finite value")
        };
        let mut n = Big::from_u64(mant);
        n.mul_pow10(17);
        if exp >= 0 {
            n.shl(exp as u64);
        } else {
            let s = (-exp) as u64;
            let half = n.bit(s - 1);
            let rest = n.any_below(s - 1);
            let odd = n.bit(s);
            let mut q = Big(Vec::new());
            // q = n >> s, limb by limb.
            let limbs = n.bits().saturating_sub(s).div_ceil(32);
            for i in 0..limbs {
                let word = n.shr_u64(s + i * 32) as u32;
                q.0.push(word);
            }
            q.trim();
            if half && (rest || odd) {
                q.add_small(1);
            }
            n = q;
        }
        let digits = format!("{:0>18}", n.to_decimal());
        let (int, frac) = digits.split_at(digits.len() - 17);
        let frac = frac.trim_end_matches('0');
        let mut out = String::new();
        if neg {
            out.push('-');
        }
        out.push_str(int);
        if !frac.is_empty() {
            out.push('.');
            out.push_str(frac);
        }
        if out == "-0" {
            out = "0".into();
        }
        out
    }
}

/// The digits (values 0..=9, leading zeros dropped) and power of ten of a decimal literal
/// `digits[.digits][(e|E)[+-]digits]`; `None` if it is not one.
fn decimal_parts(body: &[u8]) -> Option<(Vec<u8>, i64)> {
    let mut digits = Vec::new();
    let mut exp10: i64 = 0;
    let mut seen = false;
    let mut i = 0;
    let mut dot = false;
    while i < body.len() {
        match body[i] {
            d @ b'0'..=b'9' => {
                seen = true;
                if !(digits.is_empty() && d == b'0') {
                    digits.push(d - b'0');
                }
                if dot {
                    exp10 -= 1;
                } else if digits.is_empty() {
                    // a leading zero of the integer part: nothing to scale
                }
            }
            b'.' if !dot => dot = true,
            b'e' | b'E' if seen => break,
            _ => return None,
        }
        i += 1;
    }
    if !seen {
        return None;
    }
    if i < body.len() {
        let e = &body[i + 1..];
        let (eneg, edigits) = match e.first() {
            Some(b'-') => (true, &e[1..]),
            Some(b'+') => (false, &e[1..]),
            _ => (false, e),
        };
        if edigits.is_empty() || !edigits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        // Saturate: anything this large is an overflow or an underflow anyway.
        let mut v: i64 = 0;
        for &d in edigits {
            v = (v * 10 + i64::from(d - b'0')).min(1 << 40);
        }
        exp10 += if eneg { -v } else { v };
    }
    Some((digits, exp10))
}

/// The `LongDouble` nearest `digits * 10^exp10`.
fn from_decimal(neg: bool, digits: &[u8], exp10: i64) -> LongDouble {
    if digits.is_empty() {
        return LongDouble::Finite {
            neg,
            mant: 0,
            exp: 0,
        };
    }
    let magnitude = digits.len() as i64 + exp10; // value < 10^magnitude
    if magnitude > 4934 {
        return LongDouble::Inf { neg };
    }
    if magnitude < -4952 {
        return LongDouble::Finite {
            neg,
            mant: 0,
            exp: 0,
        };
    }
    let mut n = Big(Vec::new());
    for &d in digits {
        n.mul_small(10);
        n.add_small(u32::from(d));
        n.trim();
    }
    if exp10 >= 0 {
        n.mul_pow10(exp10 as u64);
        return round(neg, &n, 0, false);
    }
    // n / 10^m: scale up by 2^k first so the quotient keeps 66+ bits, then divide in steps
    // (floor of floors is the floor); any remainder is a sticky bit.
    let m = (-exp10) as u64;
    let k = (m * 10 / 3 + 70).saturating_sub(n.bits()) + 2;
    n.shl(k);
    let mut sticky = false;
    let mut left = m;
    while left > 0 {
        let step = left.min(9);
        sticky |= n.div_small(10u32.pow(step as u32)) != 0;
        left -= step;
    }
    round(neg, &n, -(k as i64), sticky)
}

/// `INCRBYFLOAT`: the new text of a key holding `current` (None: missing) after adding
/// `incr`, or the error Redis answers.
pub fn incr_by_float(current: Option<&[u8]>, incr: &[u8]) -> Result<String, Value> {
    let value = match current {
        None => LongDouble::Finite {
            neg: false,
            mant: 0,
            exp: 0,
        },
        Some(v) => LongDouble::parse(v).ok_or_else(not_a_float)?,
    };
    let incr = LongDouble::parse(incr).ok_or_else(not_a_float)?;
    let sum = value.plus(incr);
    if !sum.is_finite() {
        return Err(Value::error("ERR increment would produce NaN or Infinity"));
    }
    Ok(sum.human())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(a: &str, b: &str) -> String {
        match incr_by_float(Some(a.as_bytes()), b.as_bytes()) {
            Ok(s) => s,
            Err(Value::Error(e)) => e,
            Err(v) => panic!("{v:?}"),
        }
    }

    #[test]
    fn sums_print_exactly_as_redis_7_on_x86_64_prints_them() {
        // Each expected text was read from redis-server 7.0.15 (x86-64).
        assert_eq!(add("1000000", "0.1"), "1000000.10000000000002274");
        assert_eq!(add("10.5", "0.1"), "10.6");
        assert_eq!(add("0.2", "0.1"), "0.3");
        assert_eq!(add("1e20", "0.1"), "100000000000000000000");
        assert_eq!(
            add("123456789.123", "0.000001"),
            "123456789.12300099999993108"
        );
        assert_eq!(add("3.0e3", "2.0e2"), "3200");
        assert_eq!(add("1", "1e-20"), "1");
        assert_eq!(add("5", "-5"), "0");
        assert_eq!(add("0.1", "0.2"), "0.3");
        assert_eq!(add("339.627", "481.097"), "820.72399999999999998");
        assert_eq!(add("999.999", "999.999"), "1999.998");
    }

    #[test]
    fn bad_operands_and_infinite_results_are_refused_like_redis() {
        assert_eq!(add("abc", "1"), "ERR value is not a valid float");
        assert_eq!(add("1", " 1"), "ERR value is not a valid float");
        assert_eq!(add("1", "nan"), "ERR value is not a valid float");
        assert_eq!(add("1", "1e99999"), "ERR value is not a valid float");
        assert_eq!(add("1", "1e-99999"), "ERR value is not a valid float");
        assert_eq!(
            add("1", "inf"),
            "ERR increment would produce NaN or Infinity"
        );
        assert_eq!(add("", "1"), "ERR value is not a valid float");
        assert!(LongDouble::parse(b"1.").is_some() && LongDouble::parse(b".5").is_some());
        assert!(LongDouble::parse(b".").is_none() && LongDouble::parse(b"1e").is_none());
    }

    /// Sums of short decimals below 8 are within 3e-18 of the exact sum in 64 mantissa bits,
    /// so they must print as the exact decimal sum (checked with integer arithmetic). Larger
    /// ones need not: Redis prints 339.627 + 481.097 as 820.72399999999999998 (and so do we,
    /// see tests/redis_compat.rs for random sums checked against redis-server).
    #[test]
    fn short_decimal_sums_print_exactly() {
        let mut p = crate::prng::Prng::new(7);
        let text = |milli: i64| {
            let sign = if milli < 0 { "-" } else { "" };
            let m = milli.abs();
            let frac = format!("{:03}", m % 1000);
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                format!("{sign}{}", m / 1000)
            } else {
                format!("{sign}{}.{frac}", m / 1000)
            }
        };
        for _ in 0..20_000 {
            let a = p.range(0, 16_000) as i64 - 8_000;
            let b = p.range(0, 16_000) as i64 - 8_000;
            assert_eq!(
                add(&text(a), &text(b)),
                text(a + b),
                "{} + {}",
                text(a),
                text(b)
            );
        }
    }

    #[test]
    fn parsing_rounds_to_the_nearest_64_bit_mantissa() {
        assert_eq!(
            LongDouble::parse(b"1"),
            Some(LongDouble::Finite {
                neg: false,
                mant: 1 << 63,
                exp: -63
            })
        );
        // 0.1 in x87 extended precision is 0xCCCCCCCCCCCCCCCD * 2^-67.
        assert_eq!(
            LongDouble::parse(b"0.1"),
            Some(LongDouble::Finite {
                neg: false,
                mant: 0xCCCC_CCCC_CCCC_CCCD,
                exp: -67
            })
        );
        assert_eq!(LongDouble::parse(b"0.1").unwrap().human(), "0.1");
        assert_eq!(LongDouble::parse(b"-0.0").unwrap().human(), "0");
    }
}
