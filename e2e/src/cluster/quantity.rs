//! Kubernetes resource quantities ("500m", "64Mi", "1.5G", "2e3") as numbers, for Docker
//! limits, PVC capacity and `resourceFieldRef` env values. Pure.

/// The quantity's value (cores for CPU, bytes for memory), or None when it does not parse.
pub fn parse(quantity: &str) -> Option<f64> {
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0_f64.powi(2),
        "Gi" => 1024.0_f64.powi(3),
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("500m", Some(0.5))]
    #[case("2", Some(2.0))]
    #[case("64Mi", Some(67_108_864.0))]
    #[case("1Gi", Some(1_073_741_824.0))]
    #[case("1.5G", Some(1.5e9))]
    #[case("129e6", Some(129e6))]
    #[case("12x", None)]
    #[case("", None)]
    fn given_quantity_when_parsing_should_scale_by_suffix(
        #[case] quantity: &str,
        #[case] expected: Option<f64>,
    ) {
        assert_eq!(parse(quantity), expected);
    }
}
