//! Kubernetes label selectors: `matchLabels` and `matchExpressions`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LabelSelector {
    pub match_labels: Labels,
    pub match_expressions: Vec<Requirement>,
}

impl Requirement {
    /// Checks a requirement as the API server would, naming what is wrong.
    pub fn new(key: String, operator: &str, values: Vec<String>) -> Result<Requirement, String> {
        if key.is_empty() {
            return Err("a match expression has an empty key".into());
        }
        let operator = match operator {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => return Err(format!("unknown operator {other:?} for key {key:?}")),
        };
        let wants_values = matches!(operator, Operator::In | Operator::NotIn);
        if wants_values && values.is_empty() {
            return Err(format!("operator {operator:?} on key {key:?} needs values"));
        }
        if !wants_values && !values.is_empty() {
            return Err(format!(
                "operator {operator:?} on key {key:?} takes no values"
            ));
        }
        let mut sorted = values.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != values.len() {
            return Err(format!("duplicate values for key {key:?}"));
        }
        Ok(Requirement {
            key,
            operator,
            values: sorted,
        })
    }

    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

impl LabelSelector {
    /// All of `matchLabels` and every expression must hold; an empty selector matches everything.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expressions() {
        let sel = LabelSelector {
            match_labels: labels(&[("team", "web")]),
            match_expressions: vec![
                Requirement::new("env".into(), "In", vec!["prod".into(), "stage".into()])
                    .expect("valid"),
                Requirement::new("legacy".into(), "DoesNotExist", vec![]).expect("valid"),
            ],
        };
        assert!(sel.matches(&labels(&[("team", "web"), ("env", "prod")])));
        assert!(!sel.matches(&labels(&[("team", "web"), ("env", "dev")])));
        assert!(!sel.matches(&labels(&[("team", "web"), ("env", "prod"), ("legacy", "")])));
        assert!(!sel.matches(&labels(&[("env", "prod")])));
        assert!(LabelSelector::default().matches(&Labels::new()));
    }

    #[test]
    fn bad_requirements() {
        assert!(Requirement::new("a".into(), "Like", vec![]).is_err());
        assert!(Requirement::new("a".into(), "In", vec![]).is_err());
        assert!(Requirement::new("a".into(), "Exists", vec!["x".into()]).is_err());
        assert!(Requirement::new("a".into(), "In", vec!["x".into(), "x".into()]).is_err());
        assert!(Requirement::new(String::new(), "Exists", vec![]).is_err());
    }
}
