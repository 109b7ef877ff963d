//! CustomResourceDefinitions served from their structural schemas, as the real API server serves
//! them: unknown fields pruned (or refused, when the client asks for strict field validation),
//! defaults filled in, and values checked (types, nullability, enums, required fields,
//! numeric and length bounds) with the API server's messages, which name the field.

use serde_json::Value;

/// What a CRD says about the objects of a collection.
pub(super) struct Served {
    pub kind: String,
    pub group: String,
    pub version: String,
    pub schema: Value,
    /// The version's `additionalPrinterColumns`.
    pub columns: Vec<Value>,
}

/// The CRD version that serves `collection` (`/apis/G/V/plural`), if a CRD does.
pub(super) fn served(collection: &str, crds: &[Value]) -> Option<Served> {
    let segs: Vec<&str> = collection.trim_matches('/').split('/').collect();
    let ["apis", group, version, plural] = segs.as_slice() else {
        return None;
    };
    let crd = crds.iter().find(|c| {
        c["spec"]["group"].as_str() == Some(group)
            && c["spec"]["names"]["plural"].as_str() == Some(plural)
    })?;
    let v = crd["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"].as_str() == Some(version))?;
    Some(Served {
        kind: crd["spec"]["names"]["kind"].as_str()?.to_string(),
        group: group.to_string(),
        version: version.to_string(),
        schema: v["schema"]["openAPIV3Schema"].clone(),
        columns: v["additionalPrinterColumns"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    })
}

/// Why an object is refused: strict field validation found unknown fields (400), or values
/// break the schema (422).
pub(super) enum Refusal {
    Unknown(String),
    Invalid(String),
}

impl Served {
    /// Prunes, defaults and checks `obj` in place. A write to the status subresource
    /// (`status_only`) is checked in its status alone, as the API server's validation ratcheting
    /// lets what did not change stand.
    pub(super) fn admit(
        &self,
        obj: &mut Value,
        strict: bool,
        status_only: bool,
    ) -> Result<(), Refusal> {
        let mut schema = self.schema.clone();
        if status_only && let Some(p) = schema["properties"].as_object_mut() {
            p.retain(|k, _| k == "status");
            schema["required"] = Value::Null;
        }
        let mut unknown = Vec::new();
        if let Some(m) = obj.as_object_mut() {
            for (k, v) in m.iter_mut() {
                // Every object has these; the schema describes the rest.
                if matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                    || (status_only && k != "status")
                {
                    continue;
                }
                match schema["properties"].get(k) {
                    Some(s) => prune(v, s, k, &mut unknown),
                    None => unknown.push(k.clone()),
                }
            }
            m.retain(|k, _| {
                matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                    || (status_only && k != "status")
                    || schema["properties"].get(k).is_some()
            });
        }
        if strict && !unknown.is_empty() {
            let fields: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            return Err(Refusal::Unknown(format!(
                "{kind} in version {v:?} cannot be handled as a {kind}: strict decoding error: {}",
                fields.join(", "),
                kind = self.kind,
                v = self.version,
            )));
        }
        default(obj, &schema);
        let mut errors = Vec::new();
        if let Some(m) = obj.as_object() {
            for (k, v) in m {
                if let Some(s) = schema["properties"].get(k) {
                    check(v, s, k, &mut errors);
                }
            }
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str()
                    && !m.contains_key(r)
                {
                    errors.push(format!("{r}: Required value"));
                }
            }
        }
        if errors.is_empty() {
            return Ok(());
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let list = if errors.len() == 1 {
            errors.remove(0)
        } else {
            format!("[{}]", errors.join(", "))
        };
        Err(Refusal::Invalid(format!(
            "{}.{} {name:?} is invalid: {list}",
            self.kind, self.group
        )))
    }
}

/// Removes what the schema does not describe, noting each field's path.
fn prune(v: &mut Value, schema: &Value, at: &str, unknown: &mut Vec<String>) {
    if schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true) {
        return;
    }
    match v {
        Value::Object(m) => {
            if let Some(props) = schema["properties"].as_object() {
                m.retain(|k, _| {
                    let known = props.contains_key(k);
                    if !known {
                        unknown.push(format!("{at}.{k}"));
                    }
                    known
                });
                for (k, child) in m.iter_mut() {
                    prune(child, &props[k.as_str()], &format!("{at}.{k}"), unknown);
                }
            } else if schema["additionalProperties"].is_object() {
                for (k, child) in m.iter_mut() {
                    prune(
                        child,
                        &schema["additionalProperties"],
                        &format!("{at}.{k}"),
                        unknown,
                    );
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                prune(child, &schema["items"], &format!("{at}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

/// Fills in the schema's defaults for properties an object leaves out.
fn default(v: &mut Value, schema: &Value) {
    match v {
        Value::Object(m) => {
            for (k, s) in schema["properties"].as_object().into_iter().flatten() {
                if !m.contains_key(k)
                    && let Some(d) = s.get("default")
                {
                    m.insert(k.clone(), d.clone());
                }
                if let Some(child) = m.get_mut(k) {
                    default(child, s);
                }
            }
        }
        Value::Array(items) => {
            for child in items {
                default(child, &schema["items"]);
            }
        }
        _ => {}
    }
}

/// The API server's type name of a JSON value.
fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check(v: &Value, schema: &Value, at: &str, errors: &mut Vec<String>) {
    if v.is_null() {
        if schema["nullable"].as_bool() != Some(true) {
            errors.push(format!(
                "{at}: Invalid value: \"null\": {at} in body must be of type {}: \"null\"",
                schema["type"].as_str().unwrap_or("object")
            ));
        }
        return;
    }
    if let Some(want) = schema["type"].as_str() {
        let have = type_of(v);
        let fits = have == want || (want == "number" && have == "integer");
        if !fits {
            errors.push(format!(
                "{at}: Invalid value: \"{have}\": {at} in body must be of type {want}: \"{have}\""
            ));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        errors.push(format!(
            "{at}: Unsupported value: {v}: supported values: {}",
            list.join(", ")
        ));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema["minimum"].as_f64()
            && n < min
        {
            errors.push(format!(
                "{at}: Invalid value: {v}: {at} in body should be greater than or equal to {}",
                schema["minimum"]
            ));
        }
        if let Some(max) = schema["maximum"].as_f64()
            && n > max
        {
            errors.push(format!(
                "{at}: Invalid value: {v}: {at} in body should be less than or equal to {}",
                schema["maximum"]
            ));
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if schema["minLength"].as_u64().is_some_and(|m| len < m) {
            errors.push(format!(
                "{at}: Invalid value: {v}: {at} in body should be at least {} chars long",
                schema["minLength"]
            ));
        }
        if schema["maxLength"].as_u64().is_some_and(|m| len > m) {
            errors.push(format!(
                "{at}: Too long: may not be more than {} bytes",
                schema["maxLength"]
            ));
        }
    }
    match v {
        Value::Object(m) => {
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str()
                    && !m.contains_key(r)
                {
                    errors.push(format!("{at}.{r}: Required value"));
                }
            }
            for (k, child) in m {
                let s = schema["properties"]
                    .get(k)
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                if let Some(s) = s {
                    check(child, s, &format!("{at}.{k}"), errors);
                }
            }
        }
        Value::Array(items) => {
            if schema["minItems"]
                .as_u64()
                .is_some_and(|m| (items.len() as u64) < m)
            {
                errors.push(format!(
                    "{at}: Invalid value: {}: {at} in body should have at least {} items",
                    items.len(),
                    schema["minItems"]
                ));
            }
            if schema["maxItems"]
                .as_u64()
                .is_some_and(|m| (items.len() as u64) > m)
            {
                errors.push(format!(
                    "{at}: Too many: {}: must have at most {} items",
                    items.len(),
                    schema["maxItems"]
                ));
            }
            for (i, child) in items.iter().enumerate() {
                check(child, &schema["items"], &format!("{at}[{i}]"), errors);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pool_schema() -> Served {
        Served {
            kind: "IPAddressPool".into(),
            group: "metallb.io".into(),
            version: "v1beta1".into(),
            columns: vec![],
            schema: json!({
                "type": "object", "required": ["spec"],
                "properties": {"spec": {"type": "object", "required": ["addresses"], "properties": {
                    "addresses": {"type": "array", "items": {"type": "string"}},
                    "autoAssign": {"type": "boolean", "nullable": true, "default": true},
                    "priority": {"type": "integer", "minimum": 0, "maximum": 100},
                    "mode": {"type": "string", "enum": ["a", "b"]},
                }}},
            }),
        }
    }

    fn obj(spec: Value) -> Value {
        json!({"apiVersion": "metallb.io/v1beta1", "kind": "IPAddressPool",
               "metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn defaults_and_pruning() {
        let mut o = obj(json!({"addresses": ["10.0.0.0/24"], "extra": 1}));
        assert!(pool_schema().admit(&mut o, false, false).is_ok());
        assert_eq!(
            o["spec"],
            json!({"addresses": ["10.0.0.0/24"], "autoAssign": true})
        );
        let mut o = obj(json!({"addresses": [], "extra": 1}));
        match pool_schema().admit(&mut o, true, false) {
            Err(Refusal::Unknown(m)) => assert!(m.contains("unknown field \"spec.extra\""), "{m}"),
            _ => panic!("strict validation let an unknown field through"),
        }
    }

    #[test]
    fn messages_name_the_field() {
        let cases = [
            (
                json!({}),
                "IPAddressPool.metallb.io \"p\" is invalid: spec.addresses: Required value",
            ),
            (
                json!({"addresses": "10.0.0.0/24"}),
                "spec.addresses: Invalid value: \"string\": spec.addresses in body must be of type array: \"string\"",
            ),
            (
                json!({"addresses": [], "priority": 101}),
                "spec.priority: Invalid value: 101: spec.priority in body should be less than or equal to 100",
            ),
            (
                json!({"addresses": [], "mode": "c"}),
                "spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\"",
            ),
        ];
        for (spec, want) in cases {
            let mut o = obj(spec);
            match pool_schema().admit(&mut o, true, false) {
                Err(Refusal::Invalid(m)) => assert!(m.contains(want), "{m} lacks {want}"),
                _ => panic!("{want}: admitted"),
            }
        }
    }
}
