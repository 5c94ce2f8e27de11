//! Amounts of money: integer millionths of a dollar ("micros") inside, decimal strings
//! of dollars on the wire (`"12.340000"`). No floating point touches money.

/// Micros in a dollar.
pub const MICROS_PER_USD: i64 = 1_000_000;

/// The largest amount a request may name: a billion dollars. Anything past it is a typo
/// or an attack, and sums of such amounts could overflow.
pub const MAX_MICROS: i64 = 1_000_000_000 * MICROS_PER_USD;

/// Why a string is not an amount we take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must be a decimal number of US dollars, such as \"25.00\"")]
    NotDecimal,
    #[error("has more than 6 decimal places (amounts are kept to the millionth of a dollar)")]
    TooPrecise,
    #[error("must not be negative")]
    Negative,
    #[error("is larger than 1000000000 dollars")]
    TooLarge,
}

/// Reads `"25"`, `"25.5"`, `".5"`, `"-3.25"` (a sign only where `signed`) as micros.
pub fn parse_usd(text: &str, signed: bool) -> Result<i64, AmountError> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !all_digits(whole) || !all_digits(frac) {
        return Err(AmountError::NotDecimal);
    }
    if frac.len() > 6 {
        return Err(AmountError::TooPrecise);
    }
    // Leading zeros are fine; a whole part too long to be under the maximum is not.
    let whole = whole.trim_start_matches('0');
    if whole.len() > 10 {
        return Err(AmountError::TooLarge);
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| AmountError::NotDecimal)?
    };
    let frac_micros: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse::<i64>().map_err(|_| AmountError::NotDecimal)?
            * 10_i64.pow(6 - frac.len() as u32)
    };
    let micros = whole * MICROS_PER_USD + frac_micros;
    if micros > MAX_MICROS {
        return Err(AmountError::TooLarge);
    }
    match (negative, signed) {
        (true, false) if micros != 0 => Err(AmountError::Negative),
        (true, _) => Ok(-micros),
        (false, _) => Ok(micros),
    }
}

/// Micros as a dollar string with all six places: `12340000` → `"12.340000"`.
pub fn format_usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    let per = MICROS_PER_USD as u64;
    format!("{sign}{}.{:06}", abs / per, abs % per)
}

/// `list` raised by a markup of `markup_bp` basis points (4000 = 40 %), rounded up to
/// the next micro so that many small requests never add up to less than they cost.
pub fn with_markup(list: i64, markup_bp: i64) -> i64 {
    let total = i128::from(list) * i128::from(10_000 + markup_bp);
    ((total + 9_999) / 10_000).min(i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_exactly_or_not_at_all() {
        assert_eq!(parse_usd("25", false), Ok(25_000_000));
        assert_eq!(parse_usd("25.00", false), Ok(25_000_000));
        assert_eq!(parse_usd("0.000001", false), Ok(1));
        assert_eq!(parse_usd(".5", false), Ok(500_000));
        assert_eq!(parse_usd("007.25", false), Ok(7_250_000));
        assert_eq!(parse_usd("-3.25", true), Ok(-3_250_000));
        assert_eq!(parse_usd("1000000000", false), Ok(MAX_MICROS));
        assert_eq!(parse_usd("-3.25", false), Err(AmountError::Negative));
        assert_eq!(parse_usd("0.0000001", false), Err(AmountError::TooPrecise));
        assert_eq!(
            parse_usd("1000000000.000001", false),
            Err(AmountError::TooLarge)
        );
        assert_eq!(
            parse_usd("99999999999999999999", false),
            Err(AmountError::TooLarge)
        );
        for junk in [
            "", ".", "-", "1e3", "1.2.3", " 1", "1,5", "0x10", "NaN", "١",
        ] {
            assert_eq!(
                parse_usd(junk, true),
                Err(AmountError::NotDecimal),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn amounts_print_with_six_places() {
        assert_eq!(format_usd(12_340_000), "12.340000");
        assert_eq!(format_usd(0), "0.000000");
        assert_eq!(format_usd(1), "0.000001");
        assert_eq!(format_usd(-500_000), "-0.500000");
        for m in [0, 1, 999_999, 25_000_000, MAX_MICROS] {
            assert_eq!(parse_usd(&format_usd(m), false), Ok(m));
        }
    }

    #[test]
    fn markup_rounds_up_to_the_micro() {
        assert_eq!(with_markup(1_000_000, 4000), 1_400_000);
        assert_eq!(with_markup(1, 4000), 2);
        assert_eq!(with_markup(0, 4000), 0);
        assert_eq!(with_markup(100, 0), 100);
        assert_eq!(with_markup(3, 2200), 4);
    }
}
