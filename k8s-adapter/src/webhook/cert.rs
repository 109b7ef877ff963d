//! The webhook's serving certificate, made and rotated by the adapter itself: a CA and a
//! certificate for the webhook's Service name, kept in one Secret that every replica reads (the
//! first to find it empty or due fills it), and the CA bundle written into the
//! ValidatingWebhookConfiguration so that the API server trusts what the replicas serve.
//!
//! The certificate lasts `lifetime` and is renewed when a third of it is left; the CA lasts ten
//! times as long and is renewed likewise. A renewed CA is added to the bundle beside the previous
//! one, which stays until it expires: replicas that still serve a certificate of the previous CA
//! stay trusted while they take up the new one.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrolb_common::pki::{self, Issued, Validity};
use ferrolb_common::secret::Secret as Redacted;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Where the certificate is kept and published, and how long it lasts.
#[derive(Debug, Clone)]
pub struct Place {
    pub namespace: String,
    pub secret: String,
    pub configuration: String,
    pub dns_names: Vec<String>,
    pub lifetime: Duration,
}

/// When the CA and the certificate expire, as the Secret's annotations record them.
const CA_EXPIRES: &str = "ferrolb.io/ca-expires";
const CERT_EXPIRES: &str = "ferrolb.io/cert-expires";

/// What the Secret holds.
#[derive(Clone, Debug)]
pub struct Material {
    /// PEM: the current CA first, then earlier ones that have not expired.
    pub bundle: String,
    pub ca: Issued,
    pub ca_expires: SystemTime,
    pub cert: Issued,
    pub cert_expires: SystemTime,
}

impl PartialEq for Material {
    fn eq(&self, o: &Material) -> bool {
        let same = |a: &Issued, b: &Issued| a.cert == b.cert && a.key == b.key;
        self.bundle == o.bundle
            && same(&self.ca, &o.ca)
            && self.ca_expires == o.ca_expires
            && same(&self.cert, &o.cert)
            && self.cert_expires == o.cert_expires
    }
}

fn seconds(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string()
}

/// `t` to the second, as the annotations keep it.
fn whole(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
}

fn time(s: &str) -> Option<SystemTime> {
    Some(UNIX_EPOCH + Duration::from_secs(s.parse().ok()?))
}

impl Material {
    /// The material in a Secret, if it is complete.
    fn read(s: &Secret) -> Option<Material> {
        let data = s.data.as_ref()?;
        let text = |k: &str| String::from_utf8(data.get(k)?.0.clone()).ok();
        let notes = s.metadata.annotations.as_ref()?;
        let bundle = text("ca.crt")?;
        let ca_cert = pem_blocks(&bundle).into_iter().next()?;
        Some(Material {
            ca: Issued {
                cert: ca_cert,
                key: Redacted::new(text("ca.key")?),
            },
            bundle,
            ca_expires: time(notes.get(CA_EXPIRES)?)?,
            cert: Issued {
                cert: text("tls.crt")?,
                key: Redacted::new(text("tls.key")?),
            },
            cert_expires: time(notes.get(CERT_EXPIRES)?)?,
        })
    }

    fn write(&self, s: &mut Secret) {
        let bytes = |v: &str| ByteString(v.as_bytes().to_vec());
        s.type_ = Some("kubernetes.io/tls".into());
        s.data = Some(BTreeMap::from([
            ("ca.crt".to_string(), bytes(&self.bundle)),
            ("ca.key".to_string(), bytes(self.ca.key.expose())),
            ("tls.crt".to_string(), bytes(&self.cert.cert)),
            ("tls.key".to_string(), bytes(self.cert.key.expose())),
        ]));
        let notes = s.metadata.annotations.get_or_insert_default();
        notes.insert(CA_EXPIRES.into(), seconds(self.ca_expires));
        notes.insert(CERT_EXPIRES.into(), seconds(self.cert_expires));
    }
}

/// The PEM blocks of a bundle, each with its armour.
fn pem_blocks(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    bundle
        .split_inclusive(END)
        .map(str::trim)
        .filter(|b| b.ends_with(END))
        .map(|b| format!("{b}\n"))
        .collect()
}

/// Whether something valid until `expires`, of `lifetime`, is due for renewal at `now`.
fn due(expires: SystemTime, lifetime: Duration, now: SystemTime) -> bool {
    expires.duration_since(now).unwrap_or_default() < lifetime / 3
}

/// New material if `current` is missing or due at `now`; None while it is good.
pub fn renewed(
    current: Option<&Material>,
    place: &Place,
    now: SystemTime,
) -> Result<Option<Material>, pki::PkiError> {
    let ca_lifetime = place.lifetime * 10;
    let ca_due = current.is_none_or(|m| due(m.ca_expires, ca_lifetime, now));
    let cert_due = ca_due || current.is_none_or(|m| due(m.cert_expires, place.lifetime, now));
    if !cert_due {
        return Ok(None);
    }
    let (ca, ca_expires, bundle) = match current {
        Some(m) if !ca_due => (m.ca.clone(), m.ca_expires, m.bundle.clone()),
        _ => {
            let validity = Validity::for_next(ca_lifetime);
            let ca = pki::new_authority("webhook", validity)?;
            // The previous CA stays trusted until it expires.
            let mut bundle = ca.cert.clone();
            if let Some(m) = current.filter(|m| m.ca_expires > now) {
                bundle.push_str(&m.ca.cert);
            }
            (ca, whole(validity.not_after), bundle)
        }
    };
    let validity = Validity::for_next(place.lifetime);
    let cert = pki::issue_server(&ca, &place.dns_names, validity)?;
    Ok(Some(Material {
        bundle,
        ca,
        ca_expires,
        cert,
        cert_expires: whole(validity.not_after),
    }))
}

/// The certificate the webhook serves, swapped when it is renewed.
#[derive(Debug, Default)]
pub struct Served(RwLock<Option<Arc<CertifiedKey>>>);

impl Served {
    fn set(&self, m: &Material) -> Result<(), String> {
        let chain = CertificateDer::pem_slice_iter(m.cert.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the webhook certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(m.cert.key.expose().as_bytes())
            .map_err(|_| "the webhook certificate's key does not load".to_string())?;
        let key = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|_| "the webhook certificate's key is of no supported type".to_string())?;
        *self.0.write().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(CertifiedKey::new(chain, key)));
        Ok(())
    }
}

impl ResolvesServerCert for Served {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Keeps the Secret, the configuration's CA bundle and the served certificate current.
pub struct Keeper {
    secrets: Api<Secret>,
    configurations: Api<ValidatingWebhookConfiguration>,
    place: Place,
    pub served: Arc<Served>,
}

impl Keeper {
    pub fn new(client: kube::Client, place: Place) -> Keeper {
        Keeper {
            secrets: Api::namespaced(client.clone(), &place.namespace),
            configurations: Api::all(client),
            place,
            served: Arc::default(),
        }
    }

    /// How often the Secret is looked at again.
    pub fn period(&self) -> Duration {
        (self.place.lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// One round: read the Secret, renew what is due (another replica's write wins a race, and
    /// is read back), publish the bundle, serve the certificate.
    pub async fn keep(&self) -> Result<(), String> {
        let name = &self.place.secret;
        let mut stored = self
            .secrets
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read Secret {name}: {e}"))?;
        let current = stored.as_ref().and_then(Material::read);
        let material = match renewed(current.as_ref(), &self.place, SystemTime::now())
            .map_err(|e| e.to_string())?
        {
            None => current.ok_or("no webhook certificate")?,
            Some(new) => {
                let written = match stored.as_mut() {
                    Some(s) => {
                        new.write(s);
                        self.secrets.replace(name, &PostParams::default(), s).await
                    }
                    None => {
                        let mut s = Secret::default();
                        s.metadata.name = Some(name.clone());
                        new.write(&mut s);
                        self.secrets.create(&PostParams::default(), &s).await
                    }
                };
                written.map_err(|e| format!("cannot write Secret {name}: {e}"))?;
                tracing::info!(
                    secret = name,
                    expires = seconds(new.cert_expires),
                    "webhook certificate renewed"
                );
                new
            }
        };
        self.publish(&material.bundle).await?;
        self.served.set(&material)
    }

    /// Writes the bundle into every webhook of the configuration that does not carry it.
    async fn publish(&self, bundle: &str) -> Result<(), String> {
        let name = &self.place.configuration;
        let Some(mut vwc) = self
            .configurations
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read ValidatingWebhookConfiguration {name}: {e}"))?
        else {
            tracing::debug!(
                configuration = name,
                "no ValidatingWebhookConfiguration to publish the CA to"
            );
            return Ok(());
        };
        let want = ByteString(bundle.as_bytes().to_vec());
        let mut changed = false;
        for hook in vwc.webhooks.iter_mut().flatten() {
            if hook.client_config.ca_bundle.as_ref() != Some(&want) {
                hook.client_config.ca_bundle = Some(want.clone());
                changed = true;
            }
        }
        if changed {
            self.configurations
                .replace(name, &PostParams::default(), &vwc)
                .await
                .map_err(|e| format!("cannot write ValidatingWebhookConfiguration {name}: {e}"))?;
            tracing::info!(configuration = name, "webhook CA bundle published");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(lifetime: Duration) -> Place {
        Place {
            namespace: "metallb-system".into(),
            secret: "ferrolb-webhook-cert".into(),
            configuration: "ferrolb-webhook-configuration".into(),
            dns_names: vec!["ferrolb-webhook.ferrolb-system.svc".into()],
            lifetime,
        }
    }

    #[test]
    fn certificates_are_made_kept_and_renewed_with_the_ca_bundle_overlapping() {
        let day = Duration::from_secs(86_400);
        let p = place(90 * day);
        let now = SystemTime::now();
        let first = renewed(None, &p, now).unwrap().expect("made");
        assert_eq!(pem_blocks(&first.bundle).len(), 1);
        // Good for now; and it survives the Secret.
        assert_eq!(renewed(Some(&first), &p, now).unwrap(), None);
        let mut s = Secret::default();
        first.write(&mut s);
        assert_eq!(Material::read(&s).as_ref(), Some(&first));
        assert!(!format!("{first:?}").contains("PRIVATE KEY"), "{first:?}");

        // With a third of its life left, the certificate is renewed under the same CA.
        let later = now + 61 * day;
        let second = renewed(Some(&first), &p, later).unwrap().expect("renewed");
        assert_eq!(second.ca.cert, first.ca.cert);
        assert_eq!(second.bundle, first.bundle);
        assert_ne!(second.cert.cert, first.cert.cert);

        // Near the CA's end, a new CA joins the bundle beside the old one.
        let much_later = now + 601 * day;
        let third = renewed(Some(&second), &p, much_later)
            .unwrap()
            .expect("renewed");
        assert_ne!(third.ca.cert, first.ca.cert);
        assert_eq!(
            pem_blocks(&third.bundle),
            [third.ca.cert.clone(), first.ca.cert.clone()]
        );
        // An incomplete Secret is made anew.
        s.metadata.annotations = None;
        assert_eq!(Material::read(&s), None);
    }

    #[test]
    fn the_served_certificate_loads() {
        let m = renewed(None, &place(Duration::from_secs(60)), SystemTime::now())
            .unwrap()
            .unwrap();
        let served = Served::default();
        served.set(&m).expect("loads");
        assert!(served.0.read().unwrap().is_some());
    }
}
