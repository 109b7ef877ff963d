//! Validating admission as the real API server runs it: every ValidatingWebhookConfiguration
//! the server holds is asked, over HTTPS with its `caBundle`, about each create and update of an
//! object its rules cover, with an AdmissionReview (admission.k8s.io/v1); a denial refuses the
//! write with the webhook's message, and a webhook that cannot be reached refuses it too unless
//! its `failurePolicy` is `Ignore`. Webhooks are reached by `clientConfig.url`; a `service`
//! reference is reached at `https://127.0.0.1:<port><path>`, the lab's one host, and its
//! certificate checked against `<name>.<namespace>.svc`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

/// What is being written.
pub(super) struct Write<'a> {
    pub operation: &'static str,
    pub group: &'a str,
    pub version: &'a str,
    pub resource: &'a str,
    pub object: &'a Value,
    pub old: Option<&'a Value>,
}

/// The first refusal among the configured webhooks: HTTP code and message.
pub(super) async fn review(configs: &[Value], w: &Write<'_>) -> Option<(u16, String)> {
    for config in configs {
        for hook in config["webhooks"].as_array().into_iter().flatten() {
            if !covers(hook, w) {
                continue;
            }
            let name = hook["name"].as_str().unwrap_or_default();
            match call(hook, w).await {
                Ok(resp) if resp["allowed"].as_bool() == Some(true) => {}
                Ok(resp) => {
                    let code = resp["status"]["code"].as_u64().unwrap_or(400) as u16;
                    let why = resp["status"]["message"].as_str().unwrap_or_default();
                    return Some((
                        code,
                        format!("admission webhook {name:?} denied the request: {why}"),
                    ));
                }
                Err(_) if hook["failurePolicy"].as_str() == Some("Ignore") => {}
                Err(e) => {
                    return Some((
                        500,
                        format!("Internal error occurred: failed calling webhook {name:?}: {e}"),
                    ));
                }
            }
        }
    }
    None
}

fn covers(hook: &Value, w: &Write<'_>) -> bool {
    let has = |list: &Value, want: &str| {
        list.as_array()
            .into_iter()
            .flatten()
            .any(|v| v.as_str() == Some(want) || v.as_str() == Some("*"))
    };
    hook["rules"].as_array().into_iter().flatten().any(|r| {
        has(&r["operations"], w.operation)
            && has(&r["apiGroups"], w.group)
            && has(&r["apiVersions"], w.version)
            && has(&r["resources"], w.resource)
    })
}

/// The webhook's `response`.
async fn call(hook: &Value, w: &Write<'_>) -> Result<Value, String> {
    let cc = &hook["clientConfig"];
    // A `url` is reached and checked as written; a `service` reference is reached on the
    // lab's one host and checked against the Service's DNS name, as the API server checks it.
    let (authority, host, path) = match cc["url"].as_str() {
        Some(url) => {
            let rest = url
                .strip_prefix("https://")
                .ok_or("the webhook is not HTTPS")?;
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            (authority.to_string(), host.to_string(), path.to_string())
        }
        None => {
            let svc = &cc["service"];
            let port = svc["port"].as_u64().unwrap_or(443);
            let host = format!(
                "{}.{}.svc",
                svc["name"].as_str().unwrap_or_default(),
                svc["namespace"].as_str().unwrap_or_default()
            );
            let path = svc["path"].as_str().unwrap_or("/").to_string();
            (format!("127.0.0.1:{port}"), host, path)
        }
    };
    let pem = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        cc["caBundle"].as_str().unwrap_or_default(),
    )
    .map_err(|e| format!("caBundle: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // A delete sends no object, only the one being deleted.
    let subject = match w.object {
        Value::Null => w.old.unwrap_or(w.object),
        o => o,
    };
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": {"group": w.group, "version": w.version, "kind": subject["kind"]},
            "resource": {"group": w.group, "version": w.version, "resource": w.resource},
            "name": subject["metadata"]["name"],
            "namespace": subject["metadata"]["namespace"],
            "operation": w.operation,
            "object": w.object,
            "oldObject": w.old.cloned().unwrap_or(Value::Null),
            "userInfo": {"username": "kubectl"},
            "dryRun": false,
        },
    });
    let timeout = Duration::from_secs(hook["timeoutSeconds"].as_u64().unwrap_or(10));
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(&authority)
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = axum::http::Request::post(path.as_str())
            .header("host", authority.as_str())
            .header("content-type", "application/json")
            .body(Body::from(review.to_string()))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let bytes = axum::body::to_bytes(Body::new(resp.into_body()), 1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        Ok::<Value, String>(v["response"].clone())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer in {timeout:?}"))?
}
