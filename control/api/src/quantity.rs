//! Parsing of Kubernetes `resource.Quantity` strings ("100m", "1.5Gi", "1e3", ...) into
//! exact integers: milli-units for cpu, plain units (bytes, counts) for everything else.
//!
//! The scheduler compares requests against allocatable, and the kubelet turns them into
//! cgroup settings, with integer arithmetic, so this module never goes through floating
//! point: a quantity is held as `mantissa * 10^exp10 * 2^exp2` and only scaled at the
//! end, rounding up like Kubernetes' `Value()` / `MilliValue()` do (a request of "0.1m"
//! cpu is 1m, not 0).
//!
//! Pure code: no I/O, no logging. Callers decide what a bad quantity means.

use thiserror::Error;

/// Why a quantity string was rejected. Each variant names the offending input so the
/// message can be shown to a person as is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("quantity {0:?} does not start with a number (expected e.g. \"100m\", \"0.5\", \"128Mi\")")]
    NoNumber(String),
    #[error(
        "quantity {input:?} has unknown suffix {suffix:?} (accepted: n u m k M G T P E Ki Mi Gi Ti Pi Ei, or an exponent like e3)"
    )]
    UnknownSuffix { input: String, suffix: String },
    #[error("quantity {0:?} is too large")]
    Overflow(String),
    /// Not produced by the parsers (Kubernetes quantities may be negative); callers
    /// that need a non-negative amount, such as requests, report it with this.
    #[error("quantity {0:?} is negative")]
    Negative(String),
}

pub type Result<T, E = QuantityError> = std::result::Result<T, E>;

/// Digits beyond this many significant ones are dropped (and only make the value round
/// up): i128 holds 38 decimal digits and the scaling below needs headroom.
const MAX_MANTISSA: i128 = 10i128.pow(30);

/// Exponents outside this range cannot produce an i64 after scaling (or round to 0/1);
/// bounding them keeps `10^n` computations cheap and overflow-free.
const MAX_EXP10: i32 = 60;

/// A parsed quantity: `sign * mantissa * 10^exp10 * 2^exp2`, plus whether non-zero
/// digits were dropped (then the true value is slightly larger in magnitude).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Parsed {
    negative: bool,
    mantissa: i128,
    exp10: i32,
    exp2: u32,
    inexact: bool,
}

fn parse(input: &str) -> Result<Parsed> {
    if input.is_empty() {
        return Err(QuantityError::Empty);
    }
    let bytes = input.as_bytes();
    let mut i = 0;
    let mut negative = false;
    if bytes[0] == b'+' || bytes[0] == b'-' {
        negative = bytes[0] == b'-';
        i = 1;
    }

    let mut mantissa: i128 = 0;
    let mut exp10: i32 = 0;
    let mut inexact = false;
    let mut digits = 0usize;
    let mut seen_dot = false;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'.' && !seen_dot {
            seen_dot = true;
        } else if b.is_ascii_digit() {
            digits += 1;
            let d = i128::from(b - b'0');
            if mantissa < MAX_MANTISSA {
                mantissa = mantissa * 10 + d;
                if seen_dot {
                    exp10 -= 1;
                }
            } else if seen_dot {
                // A fractional digit we cannot hold: dropping it only matters for
                // rounding, which `inexact` accounts for.
                inexact |= d != 0;
            } else {
                // An integer digit we cannot hold still multiplies the value by 10.
                inexact |= d != 0;
                exp10 += 1;
            }
        } else {
            break;
        }
        i += 1;
    }
    if digits == 0 {
        return Err(QuantityError::NoNumber(input.to_string()));
    }

    let suffix = &input[i..];
    let (suffix_exp10, exp2) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        // "1E" alone is exa (handled above); "1e3" / "1E-2" are decimal exponents.
        s if s.starts_with(['e', 'E']) => (parse_exponent(input, &s[1..])?, 0),
        s => return Err(QuantityError::UnknownSuffix { input: input.to_string(), suffix: s.to_string() }),
    };
    Ok(Parsed { negative, mantissa, exp10: exp10 + suffix_exp10, exp2, inexact })
}

fn parse_exponent(input: &str, s: &str) -> Result<i32> {
    let unknown = || QuantityError::UnknownSuffix { input: input.to_string(), suffix: format!("e{s}") };
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(unknown());
    }
    // A huge exponent is well-formed but cannot be represented; report it as such.
    let magnitude: i32 = digits
        .parse()
        .ok()
        .filter(|m| *m <= MAX_EXP10 * 2)
        .ok_or_else(|| QuantityError::Overflow(input.to_string()))?;
    Ok(if s.starts_with('-') { -magnitude } else { magnitude })
}

/// `value * 10^scale_exp10`, rounded up (towards +infinity), as i64.
fn scaled(input: &str, p: Parsed, scale_exp10: i32) -> Result<i64> {
    let overflow = || QuantityError::Overflow(input.to_string());
    if p.mantissa == 0 {
        return Ok(0);
    }
    let exp10 = p.exp10 + scale_exp10;
    if exp10 > MAX_EXP10 {
        return Err(overflow());
    }
    let with_binary = p.mantissa.checked_mul(1i128.checked_shl(p.exp2).ok_or_else(overflow)?).ok_or_else(overflow)?;
    // magnitude = floor(|value| * 10^scale) and whether anything was cut off.
    let (floor, remainder) = if exp10 >= 0 {
        let v = with_binary
            .checked_mul(10i128.checked_pow(exp10.unsigned_abs()).ok_or_else(overflow)?)
            .ok_or_else(overflow)?;
        (v, false)
    } else if -exp10 > 38 {
        // The divisor would exceed i128::MAX, which `with_binary` is below: floor is 0.
        (0, true)
    } else {
        let div = 10i128.pow(exp10.unsigned_abs());
        (with_binary / div, with_binary % div != 0)
    };
    let cut = remainder || p.inexact;
    // Round towards +infinity: up for positive values, truncate for negative ones.
    let result = if p.negative {
        -floor
    } else if cut {
        floor + 1
    } else {
        floor
    };
    i64::try_from(result).map_err(|_| overflow())
}

/// Parses a quantity into milli-units, rounding up: "100m" → 100, "0.5" → 500, "2" → 2000.
/// Used for cpu.
pub fn parse_milli(input: &str) -> Result<i64> {
    scaled(input, parse(input)?, 3)
}

/// Parses a quantity into whole units, rounding up: "128Mi" → 134217728, "1k" → 1000,
/// "1e3" → 1000. Used for memory (bytes) and counts such as `pods`.
pub fn parse_value(input: &str) -> Result<i64> {
    scaled(input, parse(input)?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_forms() {
        assert_eq!(parse_milli("100m"), Ok(100));
        assert_eq!(parse_milli("0.5"), Ok(500));
        assert_eq!(parse_milli(".5"), Ok(500));
        assert_eq!(parse_milli("1."), Ok(1000));
        assert_eq!(parse_milli("2"), Ok(2000));
        assert_eq!(parse_milli("+2"), Ok(2000));
        assert_eq!(parse_milli("1500m"), Ok(1500));
        assert_eq!(parse_milli("0"), Ok(0));
        assert_eq!(parse_milli("0m"), Ok(0));
        assert_eq!(parse_milli("250000u"), Ok(250));
        assert_eq!(parse_milli("1e-3"), Ok(1));
    }

    #[test]
    fn sub_milli_rounds_up() {
        // Kubernetes rounds requests up, so a tiny request never becomes "free".
        assert_eq!(parse_milli("0.1m"), Ok(1));
        assert_eq!(parse_milli("1n"), Ok(1));
        assert_eq!(parse_milli("1001u"), Ok(2));
        assert_eq!(parse_value("0.5"), Ok(1));
        assert_eq!(parse_value("1500m"), Ok(2));
        // Digits beyond what we keep still round up.
        assert_eq!(parse_value("1.0000000000000000000000000000000000000001"), Ok(2));
        assert_eq!(parse_value("1.0000000000000000000000000000000000000000"), Ok(1));
    }

    #[test]
    fn negative_rounds_towards_positive_infinity() {
        assert_eq!(parse_milli("-1"), Ok(-1000));
        assert_eq!(parse_value("-1500m"), Ok(-1));
    }

    #[test]
    fn memory_binary_suffixes() {
        assert_eq!(parse_value("1Ki"), Ok(1024));
        assert_eq!(parse_value("128Mi"), Ok(128 << 20));
        assert_eq!(parse_value("1Gi"), Ok(1 << 30));
        assert_eq!(parse_value("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_value("2Ti"), Ok(2 << 40));
        assert_eq!(parse_value("1Pi"), Ok(1 << 50));
        assert_eq!(parse_value("1Ei"), Ok(1 << 60));
    }

    #[test]
    fn memory_decimal_suffixes_and_exponents() {
        assert_eq!(parse_value("1k"), Ok(1000));
        assert_eq!(parse_value("500M"), Ok(500_000_000));
        assert_eq!(parse_value("1G"), Ok(1_000_000_000));
        assert_eq!(parse_value("1T"), Ok(1_000_000_000_000));
        assert_eq!(parse_value("1P"), Ok(1_000_000_000_000_000));
        assert_eq!(parse_value("1E"), Ok(1_000_000_000_000_000_000));
        assert_eq!(parse_value("1e3"), Ok(1000));
        assert_eq!(parse_value("1E3"), Ok(1000));
        assert_eq!(parse_value("1e+3"), Ok(1000));
        assert_eq!(parse_value("12e-1"), Ok(2));
        assert_eq!(parse_value("129e6"), Ok(129_000_000));
    }

    #[test]
    fn rejects_malformed_input() {
        assert_eq!(parse_value(""), Err(QuantityError::Empty));
        for bad in ["abc", ".", "-", "+", "m", "Mi", " 1", "-.m"] {
            assert!(matches!(parse_value(bad), Err(QuantityError::NoNumber(_))), "{bad:?}");
        }
        for bad in ["1Kb", "1K", "1mi", "1 ", "1.2.3", "1e", "1e+", "1e3.5", "1MiB", "1ki"] {
            assert!(matches!(parse_value(bad), Err(QuantityError::UnknownSuffix { .. })), "{bad:?}");
        }
    }

    #[test]
    fn rejects_values_beyond_i64() {
        assert!(matches!(parse_value("8Ei"), Err(QuantityError::Overflow(_))));
        assert!(matches!(parse_milli("10E"), Err(QuantityError::Overflow(_))));
        assert!(matches!(parse_value("1e999"), Err(QuantityError::Overflow(_))));
        assert!(matches!(parse_value("1e99"), Err(QuantityError::Overflow(_))));
        // Tiny values are fine: they round up to one unit.
        assert_eq!(parse_value("1e-99"), Ok(1));
    }

    #[test]
    fn error_messages_name_the_input() {
        let err = parse_milli("1Kb").unwrap_err().to_string();
        assert!(err.contains("\"1Kb\"") && err.contains("\"Kb\""), "{err}");
    }
}
