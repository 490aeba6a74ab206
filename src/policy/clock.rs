//! The request's wall-clock time as policies see it (`context.time`), in UTC.

/// `context.time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Time {
    pub hour: i64,
    pub minute: i64,
    /// `mon` … `sun`.
    pub weekday: &'static str,
    /// `YYYY-MM-DD`.
    pub date: String,
}

const WEEKDAYS: [&str; 7] = ["thu", "fri", "sat", "sun", "mon", "tue", "wed"];

/// The UTC time of a unix timestamp.
pub fn time(unix: u64) -> Time {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = civil(days as i64);
    Time {
        hour: (secs / 3600) as i64,
        minute: (secs % 3600 / 60) as i64,
        // 1970-01-01 was a Thursday.
        weekday: WEEKDAYS[(days % 7) as usize],
        date: format!("{y:04}-{m:02}-{d:02}"),
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_time_of_known_instants() {
        // 2026-11-30T15:04:05Z, a Monday.
        let t = time(1_796_051_045);
        assert_eq!(
            t,
            Time {
                hour: 15,
                minute: 4,
                weekday: "mon",
                date: "2026-11-30".into()
            }
        );
        assert_eq!(time(0).weekday, "thu");
        assert_eq!(time(951_782_400).date, "2000-02-29");
    }
}
