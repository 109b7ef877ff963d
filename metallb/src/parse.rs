//! The one parser of each value type MetalLB's YAML carries as text: Go durations, BGP
//! communities, label selectors and address entries (CIDRs and ranges). Each error message is the
//! text a rejection shows.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// A Go duration as `time.ParseDuration` reads it (`90s`, `1m30s`, `1.5m`, `500ms`), exactly
/// (no floating point) and bounded as Go bounds it (about 292 years). Negative durations, which
/// no MetalLB field means, are refused.
pub fn go_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {s:?}");
    let body = s.strip_prefix('+').unwrap_or(s);
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if body.is_empty() || body.starts_with('-') {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    let mut rest = body;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{}: missing unit", invalid()))?;
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(format!("{}: missing unit", invalid())),
            _ => return Err(format!("{}: unknown unit {unit:?}", invalid())),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(invalid());
        }
        let mut nanos = digits(whole)
            .and_then(|w| w.checked_mul(nanos_per_unit))
            .ok_or_else(invalid)?;
        // The fraction, to the nanosecond (Go truncates the same way).
        let mut scale = nanos_per_unit;
        for d in fraction.bytes() {
            scale /= 10;
            nanos += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(nanos).ok_or_else(invalid)?;
        if total > i64::MAX as u128 {
            return Err(format!("{}: too long", invalid()));
        }
        rest = tail;
    }
    let nanos = u64::try_from(total).map_err(|_| invalid())?;
    Ok(Duration::from_nanos(nanos))
}

/// Decimal digits as a number; None for an empty string or an overflow.
fn digits(s: &str) -> Option<u128> {
    if s.is_empty() {
        return Some(0);
    }
    s.parse().ok()
}

/// A BGP community value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CommunityValue {
    /// `AA:NN` (RFC 1997).
    Standard(u16, u16),
    /// `large:G:L1:L2` (RFC 8092).
    Large(u32, u32, u32),
}

/// Why a text is not a community value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommunityError {
    /// Not in a community's shape at all: it may be an alias's name.
    Format(String),
    /// In a community's shape with numbers out of range.
    Value(String),
}

impl CommunityError {
    pub fn message(&self) -> &str {
        match self {
            CommunityError::Format(m) | CommunityError::Value(m) => m,
        }
    }
}

/// `AA:NN` (two 16-bit numbers) or `large:G:L1:L2` (three 32-bit numbers).
pub fn community(v: &str) -> Result<CommunityValue, CommunityError> {
    if let Some(large) = v.strip_prefix("large:") {
        let parts: Vec<&str> = large.split(':').collect();
        if parts.len() != 3 || parts.iter().any(|p| !is_number(p)) {
            return Err(CommunityError::Format(format!(
                "invalid community format {v:?}: a large community is large:G:L1:L2"
            )));
        }
        let n: Vec<u32> = parts.iter().filter_map(|p| p.parse().ok()).collect();
        return match n[..] {
            [g, l1, l2] => Ok(CommunityValue::Large(g, l1, l2)),
            _ => Err(CommunityError::Value(format!(
                "invalid community value {v:?}: each part of a large community is a 32-bit number"
            ))),
        };
    }
    let parts: Vec<&str> = v.split(':').collect();
    if parts.len() != 2 || parts.iter().any(|p| !is_number(p)) {
        return Err(CommunityError::Format(format!(
            "invalid community format {v:?}: a community is AA:NN"
        )));
    }
    match (parts[0].parse(), parts[1].parse()) {
        (Ok(a), Ok(n)) => Ok(CommunityValue::Standard(a, n)),
        _ => Err(CommunityError::Value(format!(
            "invalid community value {v:?}: each part is a 16-bit number"
        ))),
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// What is wrong with a label selector, as `metav1.LabelSelectorAsSelector` finds it: an
/// unknown operator, `In`/`NotIn` without values, `Exists`/`DoesNotExist` with values, a value or
/// an expression given twice.
pub fn selector_problems(sel: &LabelSelector) -> Vec<String> {
    let mut out = vec![];
    let exprs = sel.match_expressions.as_deref().unwrap_or_default();
    for (i, e) in exprs.iter().enumerate() {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => out.push(format!(
                "for 'in', 'notin' operators, values set can't be empty (key {:?})",
                e.key
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => out.push(format!(
                "values set must be empty for exists and does not exist (key {:?})",
                e.key
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => out.push(format!("{op:?} is not a valid label selector operator")),
        }
        if let Some(v) = first_duplicate(values.iter()) {
            out.push(format!(
                "duplicate definition of match expression value in label selector {v:?}"
            ));
        }
        if exprs[..i].contains(e) {
            out.push(format!(
                "duplicate definition of match expressions (key {:?})",
                e.key
            ));
        }
    }
    out
}

/// A selector in one canonical text (values sorted), to find the same selector given twice.
pub fn selector_key(sel: &LabelSelector) -> String {
    let mut sel = sel.clone();
    for e in sel.match_expressions.iter_mut().flatten() {
        if let Some(v) = e.values.as_mut() {
            v.sort();
        }
    }
    serde_json::to_string(&sel).unwrap_or_default()
}

/// Whether a label selector matches `labels` (a selector with a problem matches nothing).
pub fn matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    by_labels
        && sel.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let have = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => have.is_some_and(|v| values.contains(v)),
                "NotIn" => have.is_none_or(|v| !values.contains(v)),
                "Exists" => have.is_some(),
                "DoesNotExist" => have.is_none(),
                _ => false,
            }
        })
}

/// The first item that appears twice.
pub fn first_duplicate<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Option<T> {
    let mut seen: Vec<T> = vec![];
    for i in items {
        if seen.contains(&i) {
            return Some(i);
        }
        seen.push(i);
    }
    None
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

/// An `addresses` entry of a pool: its family, and the shortest prefix length among the CIDRs it
/// summarises to (a CIDR's own length; for `start-end`, the widest aligned block), which is what
/// MetalLB checks aggregation lengths against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub family: Family,
    pub shortest_prefix: u8,
    /// The first and last address the entry covers, as numbers of its family.
    pub first: u128,
    pub last: u128,
}

impl Entry {
    /// Whether the two entries have an address in common.
    pub fn overlaps(&self, other: &Entry) -> bool {
        self.family == other.family && self.first <= other.last && other.first <= self.last
    }
}

/// Reads a pool entry as MetalLB's `ParseCIDR` does: `net.ParseCIDR` (host bits allowed), or
/// `start-end` with whitespace trimmed and start not after end.
pub fn address_entry(entry: &str) -> Result<Entry, String> {
    let Some((start, end)) = entry.split_once('-') else {
        let (ip, len) = entry
            .split_once('/')
            .ok_or_else(|| format!("invalid CIDR {entry:?}"))?;
        let ip: IpAddr = ip.parse().map_err(|_| format!("invalid CIDR {entry:?}"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= bits(ip))
            .filter(|_| len.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("invalid CIDR {entry:?}"))?;
        let host_bits = u32::from(bits(ip) - len);
        let host_mask = 1u128.checked_shl(host_bits).map_or(u128::MAX, |b| b - 1);
        let first = number(ip) & !host_mask;
        return Ok(Entry {
            family: family(ip),
            shortest_prefix: len,
            first,
            last: first | host_mask,
        });
    };
    let (a, b) = (start.trim(), end.trim());
    let a: IpAddr = a
        .parse()
        .map_err(|_| format!("invalid IP range {entry:?}: invalid start IP {a:?}"))?;
    let b: IpAddr = b
        .parse()
        .map_err(|_| format!("invalid IP range {entry:?}: invalid end IP {b:?}"))?;
    let (lo, hi) = match (a, b) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (number(a), number(b)),
        _ => {
            return Err(format!(
                "invalid IP range {entry:?}: start and end are of different families"
            ));
        }
    };
    if lo > hi {
        return Err(format!(
            "invalid IP range {entry:?}: start IP {a} is after the end IP {b}"
        ));
    }
    Ok(Entry {
        family: family(a),
        shortest_prefix: widest_block(lo, hi, bits(a)),
        first: lo,
        last: hi,
    })
}

fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn bits(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn family(ip: IpAddr) -> Family {
    if ip.is_ipv4() { Family::V4 } else { Family::V6 }
}

/// The shortest prefix length among the aligned blocks that cover `lo..=hi` exactly.
fn widest_block(lo: u128, hi: u128, bits: u8) -> u8 {
    let bits = u32::from(bits);
    let mut shortest = bits;
    let mut at = lo;
    loop {
        // The largest block that starts at `at` (aligned) and ends at or before `hi`.
        let mut size = if at == 0 {
            bits
        } else {
            at.trailing_zeros().min(bits)
        };
        while size > 0 && block_end(at, size).is_none_or(|end| end > hi) {
            size -= 1;
        }
        shortest = shortest.min(bits - size);
        match block_end(at, size).and_then(|end| end.checked_add(1)) {
            Some(next) if next <= hi => at = next,
            _ => return shortest as u8,
        }
    }
}

/// The last address of the block of 2^size addresses at `at`; None past the end of the space.
fn block_end(at: u128, size: u32) -> Option<u128> {
    if size >= 128 {
        return (at == 0).then_some(u128::MAX);
    }
    at.checked_add((1u128 << size) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    #[test]
    fn go_durations_as_go_reads_them() {
        let ok = |s: &str| go_duration(s).expect(s);
        assert_eq!(ok("90s"), Duration::from_secs(90));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1.5m"), Duration::from_secs(90));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1h2m3.5s"), Duration::from_millis(3_723_500));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("10µs"), Duration::from_micros(10));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("2562047h"), Duration::from_secs(2_562_047 * 3600));
        for bad in [
            "",
            "90",
            "s",
            "1x",
            "-1s",
            "1..5s",
            ".s",
            "99999999999999999999h",
            "2562048h",
        ] {
            let e = go_duration(bad).expect_err(bad);
            assert!(e.starts_with(&format!("invalid duration {bad:?}")), "{e}");
        }
    }

    #[test]
    fn communities() {
        assert_eq!(
            community("65000:100"),
            Ok(CommunityValue::Standard(65000, 100))
        );
        assert_eq!(
            community("large:4200000000:1:2"),
            Ok(CommunityValue::Large(4_200_000_000, 1, 2))
        );
        assert!(matches!(
            community("no-export"),
            Err(CommunityError::Format(_))
        ));
        assert!(matches!(community("1:2:3"), Err(CommunityError::Format(_))));
        assert!(matches!(
            community("large:1:2"),
            Err(CommunityError::Format(_))
        ));
        assert!(matches!(
            community("99999999:1"),
            Err(CommunityError::Value(_))
        ));
        assert!(matches!(
            community("large:1:2:5000000000"),
            Err(CommunityError::Value(_))
        ));
    }

    fn expr(op: &str, values: &[&str]) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: op.into(),
                values: Some(values.iter().map(|s| s.to_string()).collect()),
            }]),
            ..LabelSelector::default()
        }
    }

    #[test]
    fn selectors_match_and_are_checked() {
        let labels: BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
        assert!(matches(&expr("In", &["a", "b"]), &labels));
        assert!(!matches(&expr("NotIn", &["a"]), &labels));
        assert!(matches(&expr("Exists", &[]), &labels));
        assert!(!matches(&expr("DoesNotExist", &[]), &labels));
        assert!(!matches(&expr("Near", &["a"]), &labels));
        assert!(matches(&LabelSelector::default(), &labels));

        assert_eq!(selector_problems(&expr("In", &["a"])), Vec::<String>::new());
        assert!(selector_problems(&expr("Near", &["a"]))[0].contains("not a valid"));
        assert!(selector_problems(&expr("In", &[]))[0].contains("can't be empty"));
        assert!(selector_problems(&expr("Exists", &["a"]))[0].contains("must be empty"));
        assert!(selector_problems(&expr("In", &["a", "a"]))[0].contains("duplicate"));
        assert_eq!(
            selector_key(&expr("In", &["b", "a"])),
            selector_key(&expr("In", &["a", "b"]))
        );
    }

    #[test]
    fn address_entries() {
        let e = |s: &str| address_entry(s).expect(s);
        assert_eq!(e("10.0.0.5/24").shortest_prefix, 24);
        assert_eq!(e("10.0.1.0-10.0.1.127").shortest_prefix, 25);
        assert_eq!(e("10.0.1.1-10.0.1.6").shortest_prefix, 31);
        assert_eq!(e("10.0.1.1 - 10.0.1.1").shortest_prefix, 32);
        // Spans: a CIDR's host bits do not count; a range is as written.
        assert!(e("10.0.0.5/24").overlaps(&e("10.0.0.255-10.0.1.3")));
        assert!(!e("10.0.0.0/25").overlaps(&e("10.0.0.128/25")));
        assert!(e("0.0.0.0/0").overlaps(&e("255.255.255.255/32")));
        assert!(e("::/0").overlaps(&e("fd00::1/128")));
        // Families never overlap, whatever their numbers.
        assert!(!e("0.0.0.0/0").overlaps(&e("::/96")));
        assert_eq!(e("0.0.0.0-255.255.255.255").shortest_prefix, 0);
        assert_eq!(
            e("::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").shortest_prefix,
            0
        );
        assert_eq!(
            e("fd00::-fd00::ff"),
            Entry {
                family: Family::V6,
                shortest_prefix: 120,
                first: 0xfd00 << 112,
                last: (0xfd00 << 112) | 0xff,
            }
        );
        for (bad, why) in [
            ("10.0.0.9-10.0.0.1", "is after the end IP"),
            ("10.0.0.0/33", "invalid CIDR"),
            ("10.0.0.0", "invalid CIDR"),
            ("10.0.0.0/+8", "invalid CIDR"),
            ("10.0.0.1-fd00::1", "different families"),
            ("10.0.0-10.0.0.4", "invalid start IP"),
        ] {
            let err = address_entry(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
