//! Durations as text: the one place a number of seconds becomes words, for people (findings,
//! health details, log lines) and for settings (a value to paste).

use crate::session::{Micros, SECOND};

/// A duration for people: `45s`, `12min`, `3h 5min`, `2d 3h`.
pub fn dur(seconds: f64) -> String {
    let s = if seconds.is_finite() {
        seconds.max(0.0).round() as i64
    } else {
        0
    };
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 600 && s % 60 != 0 => format!("{}min {}s", s / 60, s % 60),
        s if s < 7200 => format!("{}min", s / 60),
        s if s < 172_800 => match (s % 3600) / 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h {m}min", s / 3600),
        },
        s => match (s % 86400) / 3600 {
            0 => format!("{}d", s / 86400),
            h => format!("{}d {h}h", s / 86400),
        },
    }
}

/// A timeout as a setting's value (and the override syntax) writes it: `30s`, `1500ms`.
pub fn setting_text(us: Micros) -> String {
    if us % SECOND == 0 {
        format!("{}s", us / SECOND)
    } else {
        format!("{}ms", us / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(dur(0.4), "0s");
        assert_eq!(dur(41.0), "41s");
        assert_eq!(dur(119.0), "119s");
        assert_eq!(dur(245.0), "4min 5s");
        assert_eq!(dur(300.0), "5min");
        assert_eq!(dur(3700.0), "61min");
        assert_eq!(dur(7500.0), "2h 5min");
        assert_eq!(dur(7200.0), "2h");
        assert_eq!(dur(3.0 * 86400.0 + 3600.0), "3d 1h");
        assert_eq!(dur(f64::NAN), "0s");
        assert_eq!(dur(-5.0), "0s");
        assert_eq!(setting_text(30 * SECOND), "30s");
        assert_eq!(setting_text(1_500_000), "1500ms");
    }
}
