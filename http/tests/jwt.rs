//! JWT bearer tokens against a real server: a token signed with the key
//! set's ES256 key or the HS256 secret, with the configured issuer and
//! audience, names its principal and role; a tampered, expired, foreign,
//! unsigned or role-less token is refused with 401 and says why.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};
use skald_engine::{Engine, EngineOptions, Saga, Step};
use skald_http::{Auth, HttpConfig};

const SECRET: &str = "a shared secret of at least 32 bytes!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, role: &str) -> Value {
    json!({"sub": sub, "role": role, "iss": "https://id.example", "aud": "skald", "exp": now() + 600})
}

fn es256(claims: &Value) -> String {
    let pem = include_bytes!("fixtures/es256.pem");
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("test-es256".into());
    encode(&header, claims, &EncodingKey::from_ec_pem(pem).unwrap()).unwrap()
}

fn hs256(claims: &Value, secret: &str) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).unwrap();
    encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_verified_and_name_a_principal_in_a_role() {
    let dir = tempfile::tempdir().unwrap();
    let saga = Saga::<u64>::new("plain").step(Step::new("a", |_| async { Ok(()) }).pivot());
    let engine = Engine::builder(dir.path())
        .options(EngineOptions::default().partitions(1))
        .register(saga)
        .unwrap()
        .open()
        .await
        .unwrap();
    let keys = json!({
        "jwt": {
            "issuer": "https://id.example",
            "audience": "skald",
            "jwks": serde_json::from_str::<Value>(include_str!("fixtures/es256.jwks.json")).unwrap(),
            "hs256_secret": SECRET,
        },
        "roles": [{"name": "auditor", "permissions": ["view", "audit"]}]
    });
    let auth = Auth::from_json(&keys.to_string(), "keys.json").unwrap();
    let config = HttpConfig {
        auth,
        ..HttpConfig::default()
    };
    let base = common::serve(&engine, config).await;
    let client = reqwest::Client::new();
    let get = |token: String| {
        let request = client.get(format!("{base}/api/sagas")).bearer_auth(token);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (
                status,
                body["error"]["message"].as_str().unwrap_or("").to_owned(),
            )
        }
    };
    assert_eq!(
        get(es256(&claims("ada", "operator"))).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(hs256(&claims("svc", "viewer"), SECRET)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        get(es256(&claims("ann", "auditor"))).await.0,
        StatusCode::OK
    );

    // The role decides: a viewer may not start.
    let start = |token: String| {
        let request = client
            .post(format!("{base}/api/sagas"))
            .bearer_auth(token)
            .json(&json!({"definition": "plain", "input": 1}));
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(
        start(es256(&claims("ada", "operator"))).await,
        StatusCode::CREATED
    );
    assert_eq!(
        start(es256(&claims("vic", "viewer"))).await,
        StatusCode::FORBIDDEN
    );

    let refused: Vec<(String, &str)> = vec![
        (
            {
                let token = es256(&claims("ada", "admin"));
                let (rest, signature) = token.rsplit_once('.').unwrap();
                let flipped = if signature.starts_with('A') { "B" } else { "A" };
                format!("{rest}.{flipped}{}", &signature[1..])
            },
            "signature does not verify",
        ),
        (
            es256(
                &json!({"sub": "ada", "role": "admin", "iss": "https://id.example", "aud": "skald", "exp": now() - 3600}),
            ),
            "has expired",
        ),
        (
            es256(
                &json!({"sub": "ada", "role": "admin", "iss": "https://evil.example", "aud": "skald", "exp": now() + 600}),
            ),
            "issuer is not",
        ),
        (
            es256(
                &json!({"sub": "ada", "role": "admin", "iss": "https://id.example", "aud": "other", "exp": now() + 600}),
            ),
            "audience is not",
        ),
        (
            hs256(
                &claims("eve", "admin"),
                "another secret of at least 32 bytes",
            ),
            "signature does not verify",
        ),
        (
            es256(&claims("ada", "root")),
            "role \"root\" is not configured",
        ),
        (
            es256(
                &json!({"sub": "ada", "iss": "https://id.example", "aud": "skald", "exp": now() + 600}),
            ),
            "no \"role\" claim",
        ),
        // alg "none", unsigned.
        (
            {
                let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
                let body = es256(&claims("ada", "admin"));
                let payload = body.split('.').nth(1).unwrap();
                format!("{header}.{payload}.")
            },
            "not a JWT",
        ),
    ];
    for (token, why) in refused {
        let (status, message) = get(token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {message}");
        assert!(message.contains(why), "expected {why:?} in {message:?}");
    }
    // A misconfigured section is refused at load, naming what is wrong.
    let short = json!({"jwt": {"issuer": "i", "audience": "a", "hs256_secret": "short"}});
    let error = Auth::from_json(&short.to_string(), "keys.json")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("jwt.hs256_secret: at least 32 bytes"),
        "{error}"
    );
    engine.shutdown().await.unwrap();
}
