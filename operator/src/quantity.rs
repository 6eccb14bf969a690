//! Kubernetes quantities (`10Gi`, `500M`, `1.5Ti`, `1e9`) as byte counts, so that sizes
//! written differently compare as the API server compares them: it stores `2048Mi` as
//! `2Gi`, and a text comparison would see a change where there is none.

/// The number of bytes `text` stands for; `None` when it is not a storage quantity (no
/// sign, at most one decimal point, one of Kubernetes' suffixes).
pub fn bytes(text: &str) -> Option<u128> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        e if e.starts_with(['e', 'E']) => 10u128.checked_pow(e[1..].parse().ok()?)?,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut total = whole.checked_mul(multiplier)?;
    if !fraction.is_empty() {
        let digits: u32 = u32::try_from(fraction.len()).ok()?;
        let scale = 10u128.checked_pow(digits)?;
        let part: u128 = fraction.parse().ok()?;
        total = total.checked_add(part.checked_mul(multiplier)? / scale)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("10Gi", Some(10 << 30))]
    #[case("2048Mi", Some(2 << 30))]
    #[case("1.5Gi", Some(3 << 29))]
    #[case("500M", Some(500_000_000))]
    #[case("1e9", Some(1_000_000_000))]
    #[case("1073741824", Some(1 << 30))]
    #[case("1GB", None)]
    #[case("-1Gi", None)]
    #[case("Gi", None)]
    #[case("1.2.3Gi", None)]
    fn given_a_quantity_should_count_its_bytes(#[case] text: &str, #[case] want: Option<u128>) {
        assert_eq!(bytes(text), want);
    }
}
