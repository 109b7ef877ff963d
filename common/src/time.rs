//! Times as people and the Kubernetes API read them.

/// A time as RFC 3339 in UTC: whole seconds (`2026-12-04T21:27:11Z`, as the API server stamps
/// `creationTimestamp`), or with milliseconds when `millis` is given (`…11.386Z`).
pub fn rfc3339(seconds: i64, millis: Option<u32>) -> String {
    let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (the proleptic Gregorian calendar; Howard
    // Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let fraction = millis.map_or(String::new(), |m| format!(".{:03}", m.min(999)));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{fraction}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn times_in_rfc3339() {
        assert_eq!(rfc3339(0, None), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400, Some(5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(
            rfc3339(1_796_419_631, Some(386)),
            "2026-12-04T21:27:11.386Z"
        );
        assert_eq!(rfc3339(-1, None), "1969-12-31T23:59:59Z");
    }
}
