//! Kubernetes resource quantities (`128Mi`, `2Gi`, `64M`, `1.5G`, `100m`) as numbers.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity that does not parse as a Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantity {0:?} is not a valid Kubernetes quantity")]
pub struct QuantityError(pub String);

/// Parses a quantity into an exact value in thousandths (milli-units), so `100m` is 100 and
/// `1Ki` is 1_024_000. Saturates instead of overflowing on absurd values.
pub fn parse_milli(q: &str) -> Result<u128, QuantityError> {
    let err = || QuantityError(q.to_owned());
    let s = q.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num = num.strip_prefix('+').unwrap_or(num);
    if num.is_empty() || num.matches('.').count() > 1 || num == "." {
        return Err(err());
    }
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let (mult_num, mult_den): (u128, u128) = match suffix {
        "" => (1, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: u32 = s[1..].parse().map_err(|_| err())?;
            if exp > 18 {
                return Err(err());
            }
            (10u128.pow(exp), 1)
        }
        _ => return Err(err()),
    };
    if frac.len() > 9 {
        return Err(err());
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| err())?
    };
    let frac_digits = frac.len() as u32;
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| err())?
    };
    let scale = 10u128.pow(frac_digits);
    let value_scaled = whole.saturating_mul(scale).saturating_add(frac);
    let milli = value_scaled.saturating_mul(mult_num).saturating_mul(1000) / mult_den / scale;
    Ok(milli)
}

/// The quantity in whole units, rounded up (memory in bytes, for example).
pub fn to_units(q: &Quantity) -> Result<u64, QuantityError> {
    let milli = parse_milli(&q.0)?;
    Ok(u64::try_from(milli.div_ceil(1000)).unwrap_or(u64::MAX))
}

/// Formats a byte count the way Kubernetes users write it (`128Mi`, `1Gi`, or plain bytes).
pub fn format_bytes(bytes: u64) -> Quantity {
    for (suffix, shift) in [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return Quantity(format!("{}{suffix}", bytes >> shift));
        }
    }
    Quantity(bytes.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_users_write() {
        let q = |s: &str| to_units(&Quantity(s.into())).unwrap();
        assert_eq!(q("128Mi"), 128 << 20);
        assert_eq!(q("2Gi"), 2 << 30);
        assert_eq!(q("64M"), 64_000_000);
        assert_eq!(q("1.5Gi"), 3 << 29);
        assert_eq!(q("1e3"), 1000);
        assert_eq!(q("1024"), 1024);
        assert_eq!(parse_milli("100m").unwrap(), 100);
        assert_eq!(parse_milli("2").unwrap(), 2000);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "Mi", "12Q", "1.2.3", "-5", "abc", "1e99"] {
            assert!(parse_milli(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn formats_round_numbers_with_binary_suffixes() {
        assert_eq!(format_bytes(128 << 20).0, "128Mi");
        assert_eq!(format_bytes(1 << 30).0, "1Gi");
        assert_eq!(format_bytes(1000).0, "1000");
    }
}
