//! One contract, three descriptions: every example document under
//! `tests/examples/<kind>/{valid,invalid}/` is fed to the Rust decoder, the
//! checked-in JSON Schema (`schema/`) and, for what the HTTP API takes, the
//! component schema of `services/coordinator/openapi.yaml`. All of them must
//! accept the valid ones and refuse the invalid ones.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(file name, document)` of every example of `kind`/`validity`, sorted.
fn examples(kind: &str, validity: &str) -> Vec<(String, Value)> {
    let dir = root().join("tests/examples").join(kind).join(validity);
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no examples in {}", dir.display());
    out
}

fn json_schema(file: &str) -> jsonschema::Validator {
    let path = root().join("schema").join(file);
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// OpenAPI 3.0 `nullable: true` is not JSON Schema: turn it into a `null` type
/// (the standard conversion), everywhere in `v`.
fn nullable_to_type(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.remove("nullable") == Some(Value::Bool(true)) {
                if let Some(Value::String(t)) = m.get("type").cloned() {
                    m.insert("type".into(), serde_json::json!([t, "null"]));
                }
                if let Some(Value::Array(e)) = m.get_mut("enum")
                    && !e.contains(&Value::Null)
                {
                    e.push(Value::Null);
                }
            }
            m.values_mut().for_each(nullable_to_type);
        }
        Value::Array(a) => a.iter_mut().for_each(nullable_to_type),
        _ => {}
    }
}

/// A validator of the component schema `name` of the coordinator's openapi.yaml
/// (draft 4, which OpenAPI 3.0's schema objects are based on; `$ref`s resolve
/// inside the whole document).
fn openapi_schema(name: &str) -> jsonschema::Validator {
    let path = root().join("../../services/coordinator/openapi.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut doc: Value = serde_norway::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    nullable_to_type(&mut doc);
    assert!(
        doc["components"]["schemas"].get(name).is_some(),
        "openapi.yaml has no components.schemas.{name}"
    );
    doc["$ref"] = format!("#/components/schemas/{name}").into();
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&doc)
        .unwrap_or_else(|e| panic!("openapi.yaml components.schemas.{name}: {e}"))
}

/// Checks every example of `kind` against `decode` and the validators.
fn agree(
    kind: &str,
    decode: impl Fn(&[u8]) -> Result<(), String>,
    validators: &[(&str, jsonschema::Validator)],
) {
    let mut wrong = Vec::new();
    for (validity, want) in [("valid", true), ("invalid", false)] {
        for (name, doc) in examples(kind, validity) {
            let body = serde_json::to_vec(&doc).unwrap();
            let decoded = decode(&body);
            if decoded.is_ok() != want {
                wrong.push(format!(
                    "{kind}/{validity}/{name}: decoder says {decoded:?}"
                ));
            }
            for (what, v) in validators {
                let errors: Vec<String> = v.iter_errors(&doc).map(|e| e.to_string()).collect();
                if errors.is_empty() != want {
                    wrong.push(format!(
                        "{kind}/{validity}/{name}: {what} says {}",
                        if errors.is_empty() {
                            "valid".to_owned()
                        } else {
                            errors.join("; ")
                        }
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "the descriptions disagree:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn submission_examples_agree() {
    agree(
        "submission",
        |b| {
            fleet_protocol::decode_submission(b)
                .map(drop)
                .map_err(|e| e.to_string())
        },
        &[
            (
                "submission.schema.json",
                json_schema("submission.schema.json"),
            ),
            ("openapi Submission", openapi_schema("Submission")),
        ],
    );
}

#[test]
fn item_batch_examples_agree() {
    agree(
        "item-batch",
        |b| {
            fleet_protocol::decode_item_batch(b)
                .map(drop)
                .map_err(|e| e.to_string())
        },
        &[
            (
                "item-batch.schema.json",
                json_schema("item-batch.schema.json"),
            ),
            ("openapi ItemBatch", openapi_schema("ItemBatch")),
        ],
    );
}

#[test]
fn job_envelope_examples_agree() {
    agree(
        "job-envelope",
        |b| {
            fleet_protocol::decode_job(b, usize::MAX)
                .map(drop)
                .map_err(|e| e.to_string())
        },
        &[(
            "job-envelope.schema.json",
            json_schema("job-envelope.schema.json"),
        )],
    );
}
