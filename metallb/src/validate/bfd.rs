//! BFDProfile: MetalLB's `bfdProfileFromCR` (each value within its range) and unique names. The
//! echo function (RFC 5880 §6.4) is not run by ferrolb's BFD: a profile that asks for it is
//! refused, with the reason.

use super::{known, placed, unique_names};
use crate::object::{Config, Rejection, kind::BFD_PROFILE as KIND};

/// Why `echoMode: true` is refused.
pub const ECHO_REFUSED: &str = "ferrolb's BFD sends control packets only and does not run the echo function: set echoMode to false (control packets alone detect a failure within detectMultiplier x receiveInterval)";

pub(super) fn check(cfg: &Config, namespace: &str, out: &mut Vec<Rejection>) {
    for b in &cfg.bfd_profiles {
        placed(KIND, b, namespace, out);
        known(KIND, &b.name, "spec", &b.spec.other, out);
        let s = &b.spec;
        for (field, value, min, max) in [
            ("spec.detectMultiplier", s.detect_multiplier, 2, 255),
            ("spec.receiveInterval", s.receive_interval, 10, 60000),
            ("spec.transmitInterval", s.transmit_interval, 10, 60000),
            ("spec.minimumTtl", s.minimum_ttl, 1, 254),
            ("spec.echoInterval", s.echo_interval, 10, 60000),
        ] {
            if let Some(v) = value.filter(|v| !(min..=max).contains(v)) {
                out.push(Rejection::new(
                    KIND,
                    &b.name,
                    field,
                    format!("invalid value {v}, must be in {min}-{max} range"),
                ));
            }
        }
    }
    for b in cfg
        .bfd_profiles
        .iter()
        .filter(|b| b.spec.echo_mode == Some(true))
    {
        out.push(Rejection::new(KIND, &b.name, "spec.echoMode", ECHO_REFUSED));
    }
    unique_names(KIND, &cfg.bfd_profiles, "bfd profile", out);
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use crate::crd::BFDProfileSpec;
    use crate::object::{Config, Object};

    #[test]
    fn values_within_metallbs_ranges() {
        let cfg = Config {
            bfd_profiles: vec![Object::new(
                "b",
                NS,
                BFDProfileSpec {
                    detect_multiplier: Some(1),
                    receive_interval: Some(60001),
                    minimum_ttl: Some(254),
                    ..Default::default()
                },
            )],
            ..Config::default()
        };
        assert_eq!(
            rejected(&cfg),
            [
                "BFDProfile/b spec.detectMultiplier",
                "BFDProfile/b spec.receiveInterval"
            ]
        );
        assert_eq!(
            super::super::check(&cfg, NS)[0].message,
            "invalid value 1, must be in 2-255 range"
        );
    }
}
