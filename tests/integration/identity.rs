//! External identity providers: a real authorization server (`oidc-provider` 9.13.3, started by
//! `tests/peers/idp.mjs`) as a `[[identity.issuers]]` entry; a corpus of malformed and malicious
//! tokens and placements, each refused with 401 and never reaching the downstream; JWKS rotation
//! and the rate-limited unknown-`kid` refresh; 403 `insufficient_scope`; and the unmodified
//! Python `mcp` SDK finding the IdP from Mandate's 401 alone.

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{Value, json};

use crate::common::*;

const MISSION: &str = "finance/prod/review";
const SECRET: &str = "bot-secret-0123456789abcdef";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An ES256 key the test holds, published by the IdP under `kid`.
struct SigningKey {
    kid: String,
    secret: p256::SecretKey,
}

impl SigningKey {
    fn new(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            secret: p256::SecretKey::random(&mut rand::rngs::OsRng),
        }
    }

    /// The private JWK (the IdP signs with it).
    fn private_jwk(&self) -> Value {
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
            &self.secret.public_key(),
            false,
        );
        json!({"kty": "EC", "crv": "P-256", "kid": self.kid, "alg": "ES256", "use": "sig",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()), "d": b64(self.secret.to_bytes())})
    }

    fn encoding(&self) -> EncodingKey {
        let pem = self.secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()
    }

    fn public_pem(&self) -> String {
        self.secret
            .public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap()
    }
}

/// `header.payload.signature` from raw JSON texts, ES256-signed with `key`.
fn sign_raw(header: &str, payload: &str, key: &EncodingKey) -> String {
    let message = format!("{}.{}", b64(header), b64(payload));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, Algorithm::ES256).unwrap();
    format!("{message}.{signature}")
}

fn sign(header: &Value, claims: &Value, key: &EncodingKey) -> String {
    sign_raw(&header.to_string(), &claims.to_string(), key)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The IdP's configuration: client `bot` of tenant `acme`, with fixed signing keys.
fn idp_config(keys: &[&SigningKey], port: u16) -> Value {
    json!({
        "port": port,
        "clients": [{"client_id": "bot", "client_secret": SECRET,
            "claims": {"tenant": "acme", "groups": ["finance", "emea"], "department": "accounts"}}],
        "scopes": ["mcp:tools"],
        "jwks": {"keys": keys.iter().map(|k| k.private_jwk()).collect::<Vec<_>>()},
    })
}

/// A ledger mission trusting the IdP, with `extra` lines in its issuer entry.
fn workspace(idp: &Idp, extra: &str) -> Workspace {
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.mission(MISSION, "\"finance/ledger/get_invoice\"", "");
    ws.write(
        "mandate.toml",
        &format!(
            r#"[[identity.issuers]]
issuer = "{}"
tenant_claim = "tenant"
groups_claim = "groups"
attributes = {{ department = "department" }}
algorithms = ["ES256"]
{extra}
"#,
            idp.url
        ),
    );
    ws.pin();
    ws
}

/// A stateless 2026-07-28 `tools/call` of `get_invoice`: reaches the downstream when admitted.
fn call_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "get_invoice", "arguments": {"invoice_id": "INV-1001"},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                  "io.modelcontextprotocol/clientCapabilities": {}}}})
}

fn call_request(http: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    http.post(url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
}

async fn ready(server: &Server) -> Value {
    reqwest::get(format!("{}/readyz", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_issuer_ready(server: &Server) {
    for _ in 0..100 {
        if ready(server).await["issuers"][0]["ready"] == true {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("issuer never ready: {}", ready(server).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_the_external_idp_calls_a_tool_as_its_tenant_and_agent() {
    let key = SigningKey::new("idp-1");
    let idp = Idp::start(&idp_config(&[&key], 0));
    let ws = workspace(&idp, "");
    let server = ws.serve();
    wait_issuer_ready(&server).await;
    let url = server.mission_url(MISSION);
    let r = ready(&server).await;
    assert_eq!(r["issuers"][0]["issuer"], idp.url.as_str(), "{r}");
    assert_eq!(r["issuers"][0]["keys"], 1, "{r}");

    // RFC 9728: the external issuer is one of the authorization servers.
    let metadata: Value = reqwest::get(format!(
        "{}/.well-known/oauth-protected-resource/mcp/{MISSION}",
        server.url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(metadata["resource"], url.as_str());
    assert!(
        metadata["authorization_servers"]
            .as_array()
            .unwrap()
            .contains(&json!(idp.url)),
        "{metadata}"
    );

    let token = idp.token("bot", SECRET, &url, None).await;
    let client = client(&url, &token).await;
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 1);
    let result = client
        .call_tool({
            let mut p = rmcp::model::CallToolRequestParams::new("get_invoice".to_owned());
            p.arguments = json!({"invoice_id": "INV-1001"}).as_object().cloned();
            p
        })
        .await
        .unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    client.cancel().await.unwrap();

    // A token for another resource (the broker's audiences are exact) is refused.
    let other = idp
        .token("bot", SECRET, &format!("{url}-other"), None)
        .await;
    let r = call_request(&reqwest::Client::new(), &url)
        .bearer_auth(&other)
        .json(&call_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    server.stop();
    let records = audit_records(&ws);
    let call = records
        .iter()
        .find(|r| r["kind"] == "call" && r["tool"] == "get_invoice")
        .expect("a call record");
    assert_eq!(call["subject"], "bot");
    assert_eq!(call["agent"], "bot");
    assert_eq!(call["tenant"], "acme");
}

/// The §2.6 catalogue: each malformed or malicious token or placement is answered 401 with a
/// `WWW-Authenticate` challenge, is audited (in full or counted), and never reaches the
/// downstream. Two well-formed requests in the same run are admitted, so the refusals are not an
/// artefact of the setup.
#[tokio::test(flavor = "multi_thread")]
async fn malicious_tokens_and_placements_are_refused_audited_and_never_reach_the_downstream() {
    let key = SigningKey::new("idp-es256");
    let idp = Idp::start(&idp_config(&[&key], 0));
    let ws = workspace(&idp, "");
    let server = ws.serve();
    wait_issuer_ready(&server).await;
    let url = server.mission_url(MISSION);
    let iss = idp.url.clone();
    let signer = key.encoding();
    let attacker = SigningKey::new("idp-es256");
    let attacker_key = attacker.encoding();
    let t = now();
    let claims = json!({"iss": iss, "sub": "bot", "aud": url, "exp": t + 300, "iat": t,
        "jti": "j-1", "client_id": "bot", "tenant": "acme", "scope": "mcp:tools"});
    let header = json!({"alg": "ES256", "typ": "at+jwt", "kid": "idp-es256"});
    let with = |base: &Value, field: &str, value: Value| {
        let mut v = base.clone();
        v[field] = value;
        v
    };
    let without = |base: &Value, field: &str| {
        let mut v = base.clone();
        v.as_object_mut().unwrap().remove(field);
        v
    };
    let good = sign(&header, &claims, &signer);
    let real = idp.token("bot", SECRET, &url, None).await;
    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            b64(json!({"alg": alg, "typ": "at+jwt", "kid": "idp-es256"}).to_string()),
            b64(claims.to_string())
        )
    };
    let hmac = |alg: Algorithm, secret: &[u8]| {
        let h = json!({"alg": format!("{alg:?}"), "typ": "at+jwt", "kid": "idp-es256"});
        let message = format!("{}.{}", b64(h.to_string()), b64(claims.to_string()));
        let sig =
            jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(secret), alg)
                .unwrap();
        format!("{message}.{sig}")
    };
    let public_pem = key.public_pem();
    let public_jwk = {
        let mut j = key.private_jwk();
        j.as_object_mut().unwrap().remove("d");
        j
    };
    let attacker_jwk = {
        let mut j = attacker.private_jwk();
        j.as_object_mut().unwrap().remove("d");
        j
    };
    let parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let flipped = {
        let mut sig = parts[2].clone().into_bytes();
        let last = sig.len() - 1;
        sig[last] = if sig[last] == b'A' { b'B' } else { b'A' };
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            String::from_utf8(sig).unwrap()
        )
    };
    let nested = {
        let mut v = json!("deep");
        for _ in 0..10 {
            v = json!({ "n": v });
        }
        v
    };
    let duplicate_aud = format!(
        r#"{{"iss":"{iss}","sub":"bot","aud":"https://evil.example","aud":"{url}","exp":{},"iat":{t},"client_id":"bot","tenant":"acme"}}"#,
        t + 300
    );

    let tokens: Vec<(&str, String)> = vec![
        ("alg none", unsigned("none")),
        ("alg None", unsigned("None")),
        ("alg nOnE", unsigned("nOnE")),
        (
            "HS256 keyed with the IdP's public PEM",
            hmac(Algorithm::HS256, public_pem.as_bytes()),
        ),
        (
            "HS512 keyed with the IdP's public JWK",
            hmac(Algorithm::HS512, public_jwk.to_string().as_bytes()),
        ),
        (
            "alg not in the allow-list (PS256)",
            sign(&with(&header, "alg", json!("PS256")), &claims, &signer),
        ),
        (
            "alg ES256K",
            sign(&with(&header, "alg", json!("ES256K")), &claims, &signer),
        ),
        (
            "jwk header with the attacker's key",
            sign(
                &with(&header, "jwk", attacker_jwk.clone()),
                &claims,
                &attacker_key,
            ),
        ),
        (
            "jku to an attacker's host",
            sign(
                &with(&header, "jku", json!("http://127.0.0.1:9/jwks")),
                &claims,
                &attacker_key,
            ),
        ),
        (
            "x5u to an internal address",
            sign(
                &with(&header, "x5u", json!("http://169.254.169.254/cert")),
                &claims,
                &attacker_key,
            ),
        ),
        (
            "x5c self-signed chain",
            sign(
                &with(&header, "x5c", json!(["MIIBszCCAVmgAwIBAgIUQ"])),
                &claims,
                &attacker_key,
            ),
        ),
        (
            "attacker key under the IdP's kid",
            sign(&header, &claims, &attacker_key),
        ),
        (
            "kid missing",
            sign(&without(&header, "kid"), &claims, &signer),
        ),
        (
            "kid path traversal",
            sign(
                &with(&header, "kid", json!("../../dev/null")),
                &claims,
                &signer,
            ),
        ),
        (
            "kid SQL injection",
            sign(
                &with(&header, "kid", json!("' OR '1'='1")),
                &claims,
                &signer,
            ),
        ),
        (
            "kid of 300 characters",
            sign(
                &with(&header, "kid", json!("k".repeat(300))),
                &claims,
                &signer,
            ),
        ),
        (
            "iss with a trailing slash",
            sign(
                &header,
                &with(&claims, "iss", json!(format!("{iss}/"))),
                &signer,
            ),
        ),
        (
            "iss over https",
            sign(
                &header,
                &with(&claims, "iss", json!(iss.replace("http:", "https:"))),
                &signer,
            ),
        ),
        (
            "iss missing",
            sign(&header, &without(&claims, "iss"), &signer),
        ),
        (
            "iss of the embedded issuer, signed by the IdP",
            sign(&header, &with(&claims, "iss", json!(server.url)), &signer),
        ),
        (
            "aud another MCP server",
            sign(
                &header,
                &with(&claims, "aud", json!("https://other-mcp.example/mcp")),
                &signer,
            ),
        ),
        (
            "aud with a prefix of the resource",
            sign(
                &header,
                &with(&claims, "aud", json!(format!("{url}-other"))),
                &signer,
            ),
        ),
        (
            "aud a substring trick",
            sign(
                &header,
                &with(&claims, "aud", json!(format!("{url}.evil.example"))),
                &signer,
            ),
        ),
        (
            "aud a path trick",
            sign(
                &header,
                &with(&claims, "aud", json!(format!("{url}/../x"))),
                &signer,
            ),
        ),
        (
            "aud in upper case",
            sign(
                &header,
                &with(&claims, "aud", json!(url.to_uppercase())),
                &signer,
            ),
        ),
        (
            "aud array without the resource",
            sign(
                &header,
                &with(
                    &claims,
                    "aud",
                    json!(["https://a.example", "https://b.example"]),
                ),
                &signer,
            ),
        ),
        (
            "aud missing",
            sign(&header, &without(&claims, "aud"), &signer),
        ),
        (
            "exp missing",
            sign(&header, &without(&claims, "exp"), &signer),
        ),
        (
            "exp a string",
            sign(
                &header,
                &with(&claims, "exp", json!((t + 300).to_string())),
                &signer,
            ),
        ),
        (
            "exp a float",
            sign(
                &header,
                &with(&claims, "exp", json!(t as f64 + 300.5)),
                &signer,
            ),
        ),
        (
            "exp negative",
            sign(&header, &with(&claims, "exp", json!(-1)), &signer),
        ),
        (
            "exp in the past",
            sign(&header, &with(&claims, "exp", json!(t - 600)), &signer),
        ),
        (
            "nbf in the future",
            sign(&header, &with(&claims, "nbf", json!(t + 600)), &signer),
        ),
        (
            "iat in the future",
            sign(&header, &with(&claims, "iat", json!(t + 600)), &signer),
        ),
        (
            "sub missing",
            sign(&header, &without(&claims, "sub"), &signer),
        ),
        (
            "tenant missing",
            sign(&header, &without(&claims, "tenant"), &signer),
        ),
        (
            "typ JWT (an ID-token-like type)",
            sign(
                &with(&header, "typ", json!("JWT")),
                &with(&claims, "nonce", json!("n")),
                &signer,
            ),
        ),
        (
            "typ missing",
            sign(&without(&header, "typ"), &claims, &signer),
        ),
        (
            "typ of an ID-JAG",
            sign(
                &with(&header, "typ", json!("oauth-id-jag+jwt")),
                &claims,
                &signer,
            ),
        ),
        (
            "crit b64 with an unencoded payload",
            sign(
                &with(&with(&header, "crit", json!(["b64"])), "b64", json!(false)),
                &claims,
                &signer,
            ),
        ),
        (
            "crit unknown",
            sign(
                &with(&header, "crit", json!(["urn:example:ext"])),
                &claims,
                &signer,
            ),
        ),
        (
            "duplicate aud claim",
            sign_raw(&header.to_string(), &duplicate_aud, &signer),
        ),
        (
            "claims nested too deep",
            sign(&header, &with(&claims, "x", nested), &signer),
        ),
        (
            "oversized token",
            sign(
                &header,
                &with(&claims, "pad", json!("p".repeat(9000))),
                &signer,
            ),
        ),
        ("signature stripped", format!("{}.{}.", parts[0], parts[1])),
        ("signature last byte flipped", flipped),
        (
            "payload changed, signature kept",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(with(&claims, "sub", json!("admin")).to_string()),
                parts[2]
            ),
        ),
        ("truncated", good[..good.len() / 2].to_owned()),
        (
            "base64 padding added",
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        ),
        (
            "standard base64 alphabet",
            format!(
                "{}.{}.{}",
                parts[0],
                parts[1].replace('-', "+").replace('_', "/") + "+/",
                parts[2]
            ),
        ),
        (
            "JWE-shaped (five parts)",
            format!("{}.e30.e30.e30.e30", parts[0]),
        ),
        ("garbage", "not-a-token".to_owned()),
    ];
    let http = reqwest::Client::new();
    let mut refused = 0u64;
    let mut check = |what: &str, status: u16, challenge: Option<String>| {
        assert_eq!(status, 401, "{what} was not refused");
        let challenge = challenge.unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
        assert!(
            challenge.starts_with("Bearer ")
                && challenge.contains(&format!(
                    "resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp/{MISSION}\"",
                    server.url
                )),
            "{what}: {challenge}"
        );
        refused += 1;
    };
    let challenge_of = |r: &reqwest::Response| {
        r.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(tokens.len(), 52);
    for (what, token) in &tokens {
        let r = call_request(&http, &url)
            .header("authorization", format!("Bearer {token}"))
            .json(&call_body())
            .send()
            .await
            .unwrap();
        let challenge = challenge_of(&r);
        check(what, r.status().as_u16(), challenge);
    }
    // Placements.
    let placements: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "two Authorization headers",
            call_request(&http, &url)
                .header("authorization", format!("Bearer {good}"))
                .header("authorization", format!("Bearer {good}"))
                .json(&call_body()),
        ),
        (
            "token in the query string",
            call_request(&http, &format!("{url}?access_token={good}")).json(&call_body()),
        ),
        (
            "token in a form body",
            call_request(&http, &url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("access_token={good}")),
        ),
        (
            "Basic scheme",
            call_request(&http, &url)
                .header("authorization", format!("Basic {good}"))
                .json(&call_body()),
        ),
        (
            "Bearer without a token",
            call_request(&http, &url)
                .header("authorization", "Bearer ")
                .json(&call_body()),
        ),
        (
            "two tokens in one header",
            call_request(&http, &url)
                .header("authorization", format!("Bearer {good} {good}"))
                .json(&call_body()),
        ),
        (
            "Authorization header over 8 KiB",
            call_request(&http, &url)
                .header("authorization", format!("Bearer {}", "a".repeat(9000)))
                .json(&call_body()),
        ),
    ];
    for (what, request) in placements {
        let r = request.send().await.unwrap();
        let challenge = challenge_of(&r);
        check(what, r.status().as_u16(), challenge);
    }
    let total = refused;
    assert_eq!(total, 59);

    // Admitted in the same run: a token the test signed with the IdP's key, the IdP's own
    // token, and a lowercase `bearer` scheme (RFC 9110: the scheme is case-insensitive).
    for (what, authorization) in [
        ("self-signed with the IdP's key", format!("Bearer {good}")),
        ("issued by the IdP", format!("Bearer {real}")),
        ("lowercase scheme", format!("bearer {real}")),
    ] {
        let r = call_request(&http, &url)
            .header("authorization", authorization)
            .json(&call_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what}");
        let body = r.text().await.unwrap();
        assert!(body.contains("INV-1001"), "{what}: {body}");
    }
    server.stop();

    let records = audit_records(&ws);
    let calls = records.iter().filter(|r| r["kind"] == "call").count();
    assert_eq!(calls, 3, "only the admitted requests reach the downstream");
    // Every refusal is in the audit: recorded in full, or counted in an aggregate record.
    let failures: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "auth_failure")
        .collect();
    let mut audited = 0u64;
    for r in &failures {
        let detail = r["detail"].as_str().unwrap_or_default();
        assert!(
            !detail.contains(&good) && !detail.contains(&real),
            "a token in the audit"
        );
        if r["outcome"] == "aggregated" {
            audited += detail.split(' ').next().unwrap().parse::<u64>().unwrap();
        } else {
            audited += 1;
        }
    }
    assert_eq!(audited, total, "{failures:#?}");
    // Distinct reasons are recorded in full (so the audit says why each kind failed).
    let full = failures
        .iter()
        .filter(|r| r["outcome"] == "unauthenticated")
        .count();
    assert!(full >= 25, "{full} full records");
    for reason in [
        "`alg` is never accepted",
        "header `jwk`",
        "header `jku`",
        "header `x5u`",
        "header `x5c`",
        "header `crit`",
        "unknown `kid`",
        "`exp` is past",
        "`iat` is in the future",
        "`aud` does not name this resource",
        "more than one `Authorization` header",
        "strict JSON",
    ] {
        assert!(
            failures
                .iter()
                .any(|r| r["detail"].as_str().unwrap_or_default().contains(reason)),
            "no audit record says {reason}"
        );
    }
}

/// Unknown `kid`s cost at most one JWKS fetch per `jwks_min_interval`, however many arrive at
/// once; a rotated key is picked up by that refresh, and a key gone from the JWKS no longer
/// verifies (even a token verified and cached before).
#[tokio::test(flavor = "multi_thread")]
async fn unknown_kids_refresh_the_jwks_at_most_once_per_interval_and_rotation_is_followed() {
    let old = SigningKey::new("old");
    let idp = Idp::start(&idp_config(&[&old], 0));
    let port: u16 = idp.url.rsplit(':').next().unwrap().parse().unwrap();
    let ws = workspace(&idp, "jwks_min_interval = \"2s\"");
    let server = ws.serve();
    wait_issuer_ready(&server).await;
    let url = server.mission_url(MISSION);
    let t = now();
    let claims = json!({"iss": idp.url, "sub": "bot", "aud": url, "exp": t + 300, "iat": t,
        "client_id": "bot", "tenant": "acme"});
    let http = reqwest::Client::new();
    let status = |token: String| {
        let r = call_request(&http, &url)
            .bearer_auth(token)
            .json(&call_body())
            .send();
        async move { r.await.unwrap().status().as_u16() }
    };
    let old_token = sign(
        &json!({"alg": "ES256", "typ": "at+jwt", "kid": "old"}),
        &claims,
        &old.encoding(),
    );
    assert_eq!(status(old_token.clone()).await, 200);
    let fetches = |r: &Value| r["issuers"][0]["jwks_fetches"].as_u64().unwrap();
    let before = fetches(&ready(&server).await);

    // Let the interval since the start's fetch pass, then 30 unknown kids at once.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let forger = SigningKey::new("x");
    let floods = (0..30).map(|i| {
        let token = sign(
            &json!({"alg": "ES256", "typ": "at+jwt", "kid": format!("unknown-{i}")}),
            &claims,
            &forger.encoding(),
        );
        status(token)
    });
    let statuses = futures::future::join_all(floods).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let after = fetches(&ready(&server).await);
    assert_eq!(after, before + 1, "one fetch for 30 unknown kids");

    // Rotation: the IdP now publishes only a new key.
    drop(idp);
    let new = SigningKey::new("new");
    let _idp = Idp::start(&idp_config(&[&new], port));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let new_token = sign(
        &json!({"alg": "ES256", "typ": "at+jwt", "kid": "new"}),
        &claims,
        &new.encoding(),
    );
    assert_eq!(
        status(new_token).await,
        200,
        "the new key is fetched on its first token"
    );
    assert_eq!(
        status(old_token).await,
        401,
        "the removed key no longer verifies"
    );
    server.stop();
}

/// `required_scopes`: a token without them is answered 403 `insufficient_scope` naming the
/// scope; the 401 challenge and the metadata name it too; with the scope the call passes.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_without_the_required_scope_is_answered_403_insufficient_scope() {
    let key = SigningKey::new("idp-1");
    let idp = Idp::start(&idp_config(&[&key], 0));
    let ws = workspace(&idp, "required_scopes = [\"mcp:tools\"]");
    let server = ws.serve();
    wait_issuer_ready(&server).await;
    let url = server.mission_url(MISSION);
    let http = reqwest::Client::new();
    let r = call_request(&http, &url)
        .json(&call_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains("scope=\"mcp:tools\""), "{challenge}");
    assert!(
        !challenge.contains("error="),
        "no error code without credentials: {challenge}"
    );

    let unscoped = idp.token("bot", SECRET, &url, None).await;
    let r = call_request(&http, &url)
        .bearer_auth(&unscoped)
        .json(&call_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with("Bearer error=\"insufficient_scope\"")
            && challenge.contains("scope=\"mcp:tools\"")
            && challenge.contains("resource_metadata=\""),
        "{challenge}"
    );
    let scoped = idp.token("bot", SECRET, &url, Some("mcp:tools")).await;
    let r = call_request(&http, &url)
        .bearer_auth(&scoped)
        .json(&call_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop();
    let records = audit_records(&ws);
    assert!(records.iter().any(|r| {
        r["kind"] == "auth_failure"
            && r["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("lacks the required scope `mcp:tools`")
    }));
}

/// `/readyz` says when an issuer cannot be reached (and the broker is then not ready); its
/// tokens are refused with a text that says to retry.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_issuer_makes_readyz_say_so() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.mission(MISSION, "\"finance/ledger/get_invoice\"", "");
    ws.write(
        "mandate.toml",
        &format!("[[identity.issuers]]\nissuer = \"http://127.0.0.1:{port}\"\ntenant = \"acme\"\n"),
    );
    ws.pin();
    let server = ws.serve();
    let mut r = ready(&server).await;
    for _ in 0..100 {
        if r["issuers"][0]["error"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        r = ready(&server).await;
    }
    assert_eq!(r["ready"], false, "{r}");
    assert_eq!(r["issuers"][0]["ready"], false, "{r}");
    assert!(
        r["issuers"][0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot reach"),
        "{r}"
    );
    let key = SigningKey::new("k");
    let t = now();
    let token = sign(
        &json!({"alg": "ES256", "typ": "at+jwt", "kid": "k"}),
        &json!({"iss": format!("http://127.0.0.1:{port}"), "sub": "bot", "aud": server.mission_url(MISSION),
            "exp": t + 300, "iat": t, "client_id": "bot"}),
        &key.encoding(),
    );
    let r = call_request(&reqwest::Client::new(), &server.mission_url(MISSION))
        .bearer_auth(token)
        .json(&call_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .starts_with("token issuer's keys cannot be fetched now")
    );
    server.stop();
}

/// Misconfigured issuers are reported with `path:line:col`, all at once.
#[test]
fn issuer_configuration_errors_are_located() {
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.mission(MISSION, "\"finance/ledger/get_invoice\"", "");
    ws.write(
        "mandate.toml",
        r#"[[identity.issuers]]
issuer = "http://login.example.com"
tenant_claim = "tid"
algorithms = ["HS256", "RS265"]
typ = "id_token"

[[identity.issuers]]
issuer = "https://login.example.com/t/v2.0"
jwks_min_interval = "0s"
agent_clam = "azp"
"#,
    );
    let out = ws.mandate(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "mandate.toml:2:10: `issuer` `http://login.example.com` must use https (plain http is allowed on loopback only)",
        "mandate.toml:4:15: algorithm `HS256` is never accepted",
        "mandate.toml:4:24: unknown algorithm `RS265` (did you mean `RS256`?)",
        "mandate.toml:5:7: `typ` must be `at+jwt`",
        "mandate.toml:7:1: issuer `https://login.example.com/t/v2.0` needs `tenant_claim",
        "mandate.toml:9:21: `jwks_min_interval` must be a duration between 1s and 1h",
        "mandate.toml:10:1: unknown field `agent_clam`",
    ] {
        assert!(err.contains(expected), "missing `{expected}` in:\n{err}");
    }
}

const PY_OAUTH_CLIENT: &str = r#"
import sys, json, anyio, httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
url, issuer, client_id, secret = sys.argv[1:5]
class Memory:
    def __init__(self): self.tokens = None; self.info = None
    async def get_tokens(self): return self.tokens
    async def set_tokens(self, tokens): self.tokens = tokens
    async def get_client_info(self): return self.info
    async def set_client_info(self, info): self.info = info
async def main():
    auth = ClientCredentialsOAuthProvider(server_url=url, storage=Memory(), client_id=client_id,
                                          client_secret=secret, issuer=issuer)
    async with httpx2.AsyncClient(auth=auth) as http:
        async with Client(streamable_http_client(url, http_client=http)) as c:
            tools = await c.list_tools()
            r = await c.call_tool("get_invoice", {"invoice_id": "INV-1001"})
            print(json.dumps({"tools": [t.name for t in tools.tools], "is_error": r.is_error,
                              "id": (r.structured_content or {}).get("id")}))
anyio.run(main)
"#;

/// The unmodified Python `mcp` SDK with `ClientCredentialsOAuthProvider`, given only the MCP URL
/// and its client credentials, finds the IdP from Mandate's 401 (RFC 9728 → RFC 8414 / OIDC
/// discovery → token with `resource`) and calls a tool.
#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_client_credentials_finds_the_external_idp_from_the_401() {
    let key = SigningKey::new("idp-1");
    let idp = Idp::start(&idp_config(&[&key], 0));
    // The required scope is what the SDK learns to request (from the 401's `scope`); without
    // one it would fall back to the IdP's `scopes_supported` (`openid`, refused for a machine
    // client).
    let ws = workspace(&idp, "required_scopes = [\"mcp:tools\"]");
    let server = ws.serve();
    wait_issuer_ready(&server).await;
    let url = server.mission_url(MISSION);
    let out = Command::new(peers().join("venv/bin/python"))
        .args([
            "-W",
            "ignore",
            "-c",
            PY_OAUTH_CLIENT,
            &url,
            &idp.url,
            "bot",
            SECRET,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    let v: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    assert_eq!(v["tools"], json!(["get_invoice"]), "{v}");
    assert_eq!(v["is_error"], false, "{v}");
    assert_eq!(v["id"], "INV-1001", "{v}");
    // With a wrong secret the IdP refuses, and nothing reaches the tool.
    let out = Command::new(peers().join("venv/bin/python"))
        .args([
            "-W",
            "ignore",
            "-c",
            PY_OAUTH_CLIENT,
            &url,
            &idp.url,
            "bot",
            "wrong",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    server.stop();
    let records = audit_records(&ws);
    let calls: Vec<&Value> = records.iter().filter(|r| r["kind"] == "call").collect();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0]["agent"], "bot");
}

/// Two external issuers and the embedded one at once: each token goes to the issuer its `iss`
/// names and maps to that issuer's tenant; a token claiming one issuer but signed with the
/// other's valid key, and a token of an unknown issuer, are refused.
#[tokio::test(flavor = "multi_thread")]
async fn several_issuers_at_once_each_token_routed_by_its_exact_iss() {
    let key_a = SigningKey::new("a-1");
    let key_b = SigningKey::new("b-1");
    let idp_a = Idp::start(&idp_config(&[&key_a], 0));
    let idp_b = Idp::start(&idp_config(&[&key_b], 0));
    let ws = Workspace::new();
    ws.ledger(&[]);
    ws.mission(MISSION, "\"finance/ledger/get_invoice\"", "");
    ws.write(
        "missions/hr/prod/other.toml",
        r#"description = "globex mission"
tenant = "globex"
owner = "hr@globex.example"
expires = 2099-12-31
agents = ["bot"]
tools = ["finance/ledger/get_invoice"]
"#,
    );
    ws.write(
        "mandate.toml",
        &format!(
            r#"[[identity.issuers]]
issuer = "{}"
tenant_claim = "tenant"

[[identity.issuers]]
issuer = "{}"
tenant = "globex"
"#,
            idp_a.url, idp_b.url
        ),
    );
    ws.pin();
    let server = ws.serve();
    for _ in 0..100 {
        let r = ready(&server).await;
        if r["issuers"][0]["ready"] == true && r["issuers"][1]["ready"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acme = server.mission_url(MISSION);
    let globex = server.mission_url("hr/prod/other");
    let metadata: Value = reqwest::get(format!(
        "{}/.well-known/oauth-protected-resource/mcp/hr/prod/other",
        server.url
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        metadata["authorization_servers"],
        json!([server.url, idp_a.url, idp_b.url]),
        "{metadata}"
    );
    let http = reqwest::Client::new();
    let status = |url: &str, token: &str| {
        let r = call_request(&http, url)
            .bearer_auth(token)
            .json(&call_body())
            .send();
        async move { r.await.unwrap().status().as_u16() }
    };
    let a_for_acme = idp_a.token("bot", SECRET, &acme, None).await;
    let a_for_globex = idp_a.token("bot", SECRET, &globex, None).await;
    let b_for_globex = idp_b.token("bot", SECRET, &globex, None).await;
    let b_for_acme = idp_b.token("bot", SECRET, &acme, None).await;
    assert_eq!(status(&acme, &a_for_acme).await, 200);
    assert_eq!(status(&globex, &b_for_globex).await, 200);
    assert_eq!(
        status(&acme, &ws.token(Some(MISSION))).await,
        200,
        "embedded"
    );
    // Right signature, wrong tenant: A's callers are acme, B's are globex.
    assert_eq!(status(&globex, &a_for_globex).await, 403);
    assert_eq!(status(&acme, &b_for_acme).await, 403);
    // Claims of issuer A, signed with B's valid key (under B's kid, and under A's).
    let t = now();
    let claims = json!({"iss": idp_a.url, "sub": "bot", "aud": acme, "exp": t + 300, "iat": t,
        "client_id": "bot", "tenant": "acme"});
    for kid in ["b-1", "a-1"] {
        let forged = sign(
            &json!({"alg": "ES256", "typ": "at+jwt", "kid": kid}),
            &claims,
            &key_b.encoding(),
        );
        assert_eq!(status(&acme, &forged).await, 401, "kid {kid}");
    }
    let unknown = sign(
        &json!({"alg": "ES256", "typ": "at+jwt", "kid": "a-1"}),
        &with_iss(&claims, "http://127.0.0.1:1"),
        &key_a.encoding(),
    );
    let r = call_request(&http, &acme)
        .bearer_auth(&unknown)
        .json(&call_body())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap()
            .starts_with("token issuer is not trusted")
    );
    server.stop();
    let records = audit_records(&ws);
    let tenants: Vec<&str> = records
        .iter()
        .filter(|r| r["kind"] == "call")
        .map(|r| r["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants.len(), 3, "{tenants:?}");
    assert!(tenants.contains(&"globex") && tenants.contains(&"acme"));
}

fn with_iss(claims: &Value, iss: &str) -> Value {
    let mut c = claims.clone();
    c["iss"] = json!(iss);
    c
}

/// `typ = "JWT"`, the configuration for Entra ID, Okta and Keycloak (their access tokens carry
/// `typ: JWT` or none), end to end: `JWT` (any case, with or without `application/`) and untyped
/// access tokens are admitted and reach the downstream; an ID token (`nonce` or `at_hash`, the
/// same `typ: JWT`), an RFC 9068 `at+jwt` token (not this issuer's type, including one the IdP
/// itself issued) and an ID-JAG are refused with 401, audited with their reason, and never reach
/// the downstream.
#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_with_typ_jwt_admits_jwt_and_untyped_access_tokens_and_refuses_id_tokens() {
    let key = SigningKey::new("idp-es256");
    let idp = Idp::start(&idp_config(&[&key], 0));
    let ws = workspace(&idp, "typ = \"JWT\"");
    let server = ws.serve();
    wait_issuer_ready(&server).await;
    let url = server.mission_url(MISSION);
    let signer = key.encoding();
    let t = now();
    let claims = json!({"iss": idp.url, "sub": "bot", "aud": url, "exp": t + 300, "iat": t,
        "jti": "j-typ", "client_id": "bot", "tenant": "acme", "scope": "mcp:tools"});
    let header = |typ: Option<&str>| {
        let mut h = json!({"alg": "ES256", "kid": "idp-es256"});
        if let Some(typ) = typ {
            h["typ"] = json!(typ);
        }
        h
    };
    let with = |field: &str, value: Value| {
        let mut v = claims.clone();
        v[field] = value;
        v
    };
    let admitted = [
        ("typ JWT", sign(&header(Some("JWT")), &claims, &signer)),
        ("typ jwt", sign(&header(Some("jwt")), &claims, &signer)),
        (
            "typ application/jwt",
            sign(&header(Some("application/jwt")), &claims, &signer),
        ),
        ("untyped", sign(&header(None), &claims, &signer)),
    ];
    let refused = [
        (
            "ID token with `nonce`",
            sign(
                &header(Some("JWT")),
                &with("nonce", json!("n-0S6")),
                &signer,
            ),
            "an ID token (`nonce`/`at_hash`)",
        ),
        (
            "untyped ID token with `at_hash`",
            sign(
                &header(None),
                &with("at_hash", json!("77QmUPtjPfzWtF2AnpK9RQ")),
                &signer,
            ),
            "an ID token (`nonce`/`at_hash`)",
        ),
        (
            "typ at+jwt",
            sign(&header(Some("at+jwt")), &claims, &signer),
            "not this issuer's access token type",
        ),
        (
            "the IdP's own at+jwt access token",
            idp.token("bot", SECRET, &url, None).await,
            "not this issuer's access token type",
        ),
        (
            "typ of an ID-JAG",
            sign(&header(Some("oauth-id-jag+jwt")), &claims, &signer),
            "`typ` is not an access token type",
        ),
    ];
    let http = reqwest::Client::new();
    for (what, token) in &admitted {
        let r = call_request(&http, &url)
            .bearer_auth(token)
            .json(&call_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{what}");
        let body = r.text().await.unwrap();
        assert!(body.contains("INV-1001"), "{what}: {body}");
    }
    for (what, token, _) in &refused {
        let r = call_request(&http, &url)
            .bearer_auth(token)
            .json(&call_body())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{what} was not refused");
        assert!(r.headers().get("www-authenticate").is_some(), "{what}");
    }
    server.stop();

    let records = audit_records(&ws);
    let calls = records.iter().filter(|r| r["kind"] == "call").count();
    assert_eq!(
        calls,
        admitted.len(),
        "only the admitted tokens reach the downstream"
    );
    let failures: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "auth_failure")
        .collect();
    for (what, _, reason) in &refused {
        assert!(
            failures
                .iter()
                .any(|r| r["detail"].as_str().unwrap_or_default().contains(reason)),
            "{what}: no audit record says {reason}: {failures:#?}"
        );
    }
}
