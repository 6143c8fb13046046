//! Every configuration error at once: the binary started with both a service setting and a
//! runtime setting wrong names both in one message and exits non-zero, before any broker; the
//! OpenAI key file (FLEET_OPENAI_API_KEY_FILE) is read, and a bad one is a named error.

use std::time::Duration;

use fleet_test_support::run_to_exit;

#[test]
fn service_and_runtime_errors_come_in_one_message() {
    let (ok, stderr) = run_to_exit(
        env!("CARGO_BIN_EXE_fleet-summarizer"),
        &[
            ("FLEET_CONCURRENCY", "0"),
            ("FLEET_OPENAI_BASE_URL", "ftp://nowhere/v1"),
        ],
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("FLEET_CONCURRENCY must be at least 1")
            && stderr.contains("base_url must start with http"),
        "both errors at once: {stderr}"
    );
}

/// Runs the summarizer with `env` (and nothing else from ours) until it exits.
fn run_to_end(env: &[(&str, &str)]) -> (bool, String) {
    run_to_exit(env!("CARGO_BIN_EXE_fleet-summarizer"), env)
}

#[test]
fn a_missing_empty_or_conflicting_openai_key_file_is_a_configuration_error() {
    let dir = std::env::temp_dir().join(fleet_test_support::unique_prefix("key-file"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Nothing listens there: start-up must fail on the key before any call.
    let base = ("FLEET_OPENAI_BASE_URL", "http://127.0.0.1:33009/v1");
    let (ok, err) = run_to_end(&[base, ("FLEET_OPENAI_API_KEY_FILE", "/nonexistent/key")]);
    assert!(
        !ok && err.contains("FLEET_OPENAI_API_KEY_FILE=/nonexistent/key")
            && err.contains("check the path"),
        "a missing file names the setting and the fix: {err}"
    );
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").expect("write");
    let empty_s = empty.display().to_string();
    let (ok, err) = run_to_end(&[base, ("FLEET_OPENAI_API_KEY_FILE", &empty_s)]);
    assert!(
        !ok && err.contains("FLEET_OPENAI_API_KEY_FILE=") && err.contains("the file is empty"),
        "an empty file is refused: {err}"
    );
    let key = dir.join("key");
    std::fs::write(&key, "sk-S3CRET-from-file\n").expect("write");
    let key_s = key.display().to_string();
    let (ok, err) = run_to_end(&[
        base,
        ("FLEET_OPENAI_API_KEY_FILE", &key_s),
        ("FLEET_OPENAI_API_KEY_ENV", "SOME_KEY"),
        ("SOME_KEY", "sk-S3CRET-from-env"),
    ]);
    assert!(
        !ok && err.contains("both FLEET_OPENAI_API_KEY_ENV and FLEET_OPENAI_API_KEY_FILE"),
        "both forms set: {err}"
    );
    assert!(!err.contains("S3CRET"), "an error shows the key: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_api_key_comes_from_its_file() {
    use axum::http::HeaderMap;
    use clap::Parser as _;
    // A loopback endpoint that keeps the Authorization header of every call and answers.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: HeaderMap| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().expect("lock").push(auth);
                axum::Json(serde_json::json!({
                    "choices": [{"message": {"role": "assistant", "content": "Summary."},
                                 "finish_reason": "stop"}]
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = std::env::temp_dir().join(fleet_test_support::unique_prefix("key-file-ok"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let key = dir.join("key");
    std::fs::write(&key, "sk-from-file\n").expect("write");
    // The flag and FLEET_OPENAI_API_KEY_FILE fill the same setting.
    let config = fleet_summarizer::Config::try_parse_from([
        "fleet-summarizer".to_owned(),
        "--broker-url=memory://".into(),
        format!("--openai-base-url=http://{addr}/v1"),
        format!("--openai-api-key-file={}", key.display()),
    ])
    .expect("config");
    let providers = config.providers().expect("providers");
    assert_eq!(providers.len(), 1);
    let provider =
        fleet_summarizer::openai::OpenAiProvider::new(providers[0].clone()).expect("provider");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let answer = provider.complete("system", "user", deadline).await;
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(answer.expect("the call succeeds"), "Summary.");
    assert_eq!(
        *seen.lock().expect("lock"),
        vec!["Bearer sk-from-file".to_owned()],
        "the file's content, without its newline, is the key sent"
    );
}
