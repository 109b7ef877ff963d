//! Who a caller is: a SPIFFE ID in the certificate's URI SAN, within one trust domain.
//!
//! | identity | SPIFFE ID |
//! |---|---|
//! | an operator | `spiffe://<domain>/admin/<name>` |
//! | a cluster's Kubernetes adapter | `spiffe://<domain>/cluster/<cluster>/adapter` |
//! | the announcer of one node | `spiffe://<domain>/cluster/<cluster>/node/<node>` |
//! | an external IPAM system | `spiffe://<domain>/client/<name>` |
//! | the allocator (every replica) | `spiffe://<domain>/allocator` |

use std::fmt;

/// A verified caller. Built only from a certificate that passed chain verification (or, in the
/// development plaintext mode, from the metadata a loopback caller sent).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Admin(String),
    Adapter { cluster: String },
    Node { cluster: String, node: String },
    Client(String),
    Allocator,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate carries no URI SAN")]
    NoUri,
    #[error("the certificate carries {0} URI SANs; ferrolb wants exactly one")]
    ManyUris(usize),
    #[error("{0:?} is not a spiffe:// ID")]
    NotSpiffe(String),
    #[error("{id:?} is outside the trust domain {domain:?}")]
    ForeignDomain { id: String, domain: String },
    #[error(
        "{0:?} names no ferrolb identity (admin/<name>, cluster/<c>/adapter, cluster/<c>/node/<n>, client/<name>, allocator)"
    )]
    UnknownPath(String),
    #[error("trust domain {0:?}: lowercase letters, digits, '.', '-' and '_' only")]
    BadDomain(String),
}

/// A name inside an identity: what Kubernetes accepts as an object name, which is also what
/// the allocator accepts for clusters and nodes.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

/// Checks a SPIFFE trust domain name.
pub fn check_domain(domain: &str) -> Result<(), IdentityError> {
    let ok = !domain.is_empty()
        && domain.len() <= 255
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(IdentityError::BadDomain(domain.to_string()))
    }
}

impl Principal {
    /// Reads the path form (`admin/alice`, `cluster/home/node/n1`, …).
    pub fn from_path(path: &str) -> Result<Principal, IdentityError> {
        let unknown = || IdentityError::UnknownPath(path.to_string());
        let parts: Vec<&str> = path.split('/').collect();
        let p = match parts.as_slice() {
            ["allocator"] => Principal::Allocator,
            ["admin", name] if valid_name(name) => Principal::Admin(name.to_string()),
            ["client", name] if valid_name(name) => Principal::Client(name.to_string()),
            ["cluster", c, "adapter"] if valid_name(c) => Principal::Adapter {
                cluster: c.to_string(),
            },
            ["cluster", c, "node", n] if valid_name(c) && valid_name(n) => Principal::Node {
                cluster: c.to_string(),
                node: n.to_string(),
            },
            _ => return Err(unknown()),
        };
        Ok(p)
    }

    /// Reads a SPIFFE ID of `domain`.
    pub fn from_spiffe_id(id: &str, domain: &str) -> Result<Principal, IdentityError> {
        let rest = id
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::NotSpiffe(id.to_string()))?;
        let (d, path) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::UnknownPath(id.to_string()))?;
        if d != domain {
            return Err(IdentityError::ForeignDomain {
                id: id.to_string(),
                domain: domain.to_string(),
            });
        }
        Principal::from_path(path)
    }

    /// The one identity among a certificate's URI SANs.
    pub fn from_uris<'a>(
        uris: impl IntoIterator<Item = &'a str>,
        domain: &str,
    ) -> Result<Principal, IdentityError> {
        let uris: Vec<&str> = uris.into_iter().collect();
        match uris.as_slice() {
            [] => Err(IdentityError::NoUri),
            [one] => Principal::from_spiffe_id(one, domain),
            many => Err(IdentityError::ManyUris(many.len())),
        }
    }

    pub fn spiffe_id(&self, domain: &str) -> String {
        format!("spiffe://{domain}/{self}")
    }

    /// The name the allocator's authorization speaks of: `admin`, `cluster/<c>` or
    /// `client/<x>`, the same text the development plaintext mode reads from metadata.
    pub fn caller_name(&self) -> String {
        match self {
            Principal::Admin(_) => "admin".into(),
            Principal::Adapter { cluster } => format!("cluster/{cluster}"),
            Principal::Node { cluster, node } => format!("cluster/{cluster}/node/{node}"),
            Principal::Client(c) => format!("client/{c}"),
            Principal::Allocator => "allocator".into(),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Admin(n) => write!(f, "admin/{n}"),
            Principal::Adapter { cluster } => write!(f, "cluster/{cluster}/adapter"),
            Principal::Node { cluster, node } => write!(f, "cluster/{cluster}/node/{node}"),
            Principal::Client(c) => write!(f, "client/{c}"),
            Principal::Allocator => f.write_str("allocator"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for path in [
            "admin/alice",
            "cluster/home/adapter",
            "cluster/home/node/n1",
            "client/netbox",
            "allocator",
        ] {
            let p = Principal::from_path(path).expect(path);
            assert_eq!(p.to_string(), path);
            let id = p.spiffe_id("lab.example");
            assert_eq!(Principal::from_spiffe_id(&id, "lab.example"), Ok(p));
        }
    }

    #[test]
    fn refusals() {
        let d = "lab.example";
        assert_eq!(
            Principal::from_spiffe_id("spiffe://other.example/admin/a", d),
            Err(IdentityError::ForeignDomain {
                id: "spiffe://other.example/admin/a".into(),
                domain: d.into()
            })
        );
        assert!(matches!(
            Principal::from_spiffe_id("https://lab.example/admin/a", d),
            Err(IdentityError::NotSpiffe(_))
        ));
        for bad in [
            "admin",
            "admin/",
            "admin/a/b",
            "cluster/c",
            "cluster/c/node",
            "cluster/C/adapter",
            "cluster/c/node/n/x",
            "root",
        ] {
            assert!(
                matches!(
                    Principal::from_spiffe_id(&format!("spiffe://{d}/{bad}"), d),
                    Err(IdentityError::UnknownPath(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(Principal::from_uris([], d), Err(IdentityError::NoUri));
        assert_eq!(
            Principal::from_uris(["spiffe://lab.example/allocator"; 2], d),
            Err(IdentityError::ManyUris(2))
        );
        assert!(check_domain("Lab").is_err());
        assert!(check_domain("ferrolb.local").is_ok());
    }
}
