//! Durations on the command line: `10s`, `500ms`, `1.5`, `2m`. A bare number is seconds.

use std::time::Duration;

/// Parses `NUMBER[ms|s|m]`; a bare number is seconds. Refuses zero, negatives and nonsense
/// with a message clap shows after the option's name.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_seconds) = if let Some(number) = text.strip_suffix("ms") {
        (number, 0.001)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1.0)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (e.g. 10s, 500ms, 1.5)"))?;
    let seconds = value * unit_seconds;
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("'{text}' must be a positive duration"));
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_refuses_nonsense() {
        let cases: [(&str, Option<Duration>); 10] = [
            ("10s", Some(Duration::from_secs(10))),
            ("500ms", Some(Duration::from_millis(500))),
            ("1.5", Some(Duration::from_millis(1500))),
            ("2m", Some(Duration::from_secs(120))),
            (" 3 s ", Some(Duration::from_secs(3))),
            ("0", None),
            ("-1s", None),
            ("soon", None),
            ("NaN", None),
            ("1e300m", None),
        ];
        for (number, (input, expected)) in cases.into_iter().enumerate() {
            assert_eq!(
                parse_duration(input).ok(),
                expected,
                "case {number}: {input:?}"
            );
        }
    }
}
