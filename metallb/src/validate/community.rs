//! Community: MetalLB's `communitiesFromCrs`. Aliases are unique across every Community object.

use super::{known, placed};
use crate::object::{Config, Rejection, kind::COMMUNITY};
use crate::parse;

pub(super) fn check(cfg: &Config, namespace: &str, out: &mut Vec<Rejection>) {
    for c in &cfg.communities {
        placed(COMMUNITY, c, namespace, out);
        known(COMMUNITY, &c.name, "spec", &c.spec.other, out);
        for (i, alias) in c.spec.communities.iter().enumerate() {
            let at = format!("spec.communities[{i}]");
            known(COMMUNITY, &c.name, &at, &alias.other, out);
            if let Err(e) = parse::community(&alias.value) {
                out.push(Rejection::new(
                    COMMUNITY,
                    &c.name,
                    &format!("{at}.value"),
                    format!("parsing community {:?}: {}", alias.name, e.message()),
                ));
            }
        }
    }
    defined_once(cfg, out);
}

fn defined_once(cfg: &Config, out: &mut Vec<Rejection>) {
    let mut seen = std::collections::BTreeSet::new();
    for c in &cfg.communities {
        for (i, alias) in c.spec.communities.iter().enumerate() {
            if !seen.insert(&alias.name) {
                out.push(Rejection::new(
                    COMMUNITY,
                    &c.name,
                    &format!("spec.communities[{i}].name"),
                    format!("duplicate definition of community {:?}", alias.name),
                ));
            }
        }
    }
}

/// The aliases every Community object defines.
pub(super) fn aliases(cfg: &Config) -> std::collections::BTreeSet<&str> {
    cfg.communities
        .iter()
        .flat_map(|c| &c.spec.communities)
        .map(|a| a.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use crate::crd::{CommunityAlias, CommunitySpec};
    use crate::object::{Config, Object};

    fn community(name: &str, alias: &str, value: &str) -> Object<CommunitySpec> {
        Object::new(
            name,
            NS,
            CommunitySpec {
                communities: vec![CommunityAlias {
                    name: alias.into(),
                    value: value.into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )
    }

    #[test]
    fn aliases_parse_and_are_defined_once() {
        let cfg = Config {
            communities: vec![
                community("c1", "gold", "large:1:2"),
                community("c2", "gold", "1:2"),
            ],
            ..Config::default()
        };
        assert_eq!(
            rejected(&cfg),
            [
                "Community/c1 spec.communities[0].value",
                "Community/c2 spec.communities[0].name"
            ]
        );
        let all = super::super::check(&cfg, NS);
        assert!(
            all[0]
                .message
                .starts_with("parsing community \"gold\": invalid community format")
        );
        assert_eq!(all[1].message, "duplicate definition of community \"gold\"");
    }
}
