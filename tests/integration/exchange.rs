//! Token exchange against real components: the real broker, the protected sample downstream
//! (`examples/protected.rs`, which verifies every request's bearer token with a JWKS and
//! records what it received) and, for the `rfc8693`, `entra-obo` and `id-jag` profiles, a real
//! `oidc-provider` with the token-exchange and jwt-bearer grants registered
//! (`tests/peers/sts.mjs`).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};

use crate::common::*;

/// A free loopback port (the broker's issuer URL must be known before it starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn protected_bin() -> PathBuf {
    mandate_bin()
        .parent()
        .unwrap()
        .join("examples")
        .join("protected")
}

/// Starts `command` and returns it with what its first stdout line announces after `prefix`.
fn announced(mut command: Command, prefix: &str) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("unexpected output: {first:?}"))
        .to_owned();
    (child, url)
}

/// The protected downstream, recording every request it receives.
struct Protected {
    child: Child,
    url: String,
    record: PathBuf,
}

impl Protected {
    fn start(ws: &Workspace, jwks: &str, issuer: &str) -> Self {
        let record = ws.path().join("protected-requests.jsonl");
        let mut command = Command::new(protected_bin());
        command
            .args(["--jwks", jwks, "--issuer", issuer, "--record"])
            .arg(&record);
        let (child, url) = announced(command, "protected listening on ");
        Self { child, url, record }
    }

    /// Every request it received, as recorded.
    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn raw_record(&self) -> String {
        std::fs::read_to_string(&self.record).unwrap_or_default()
    }
}

impl Drop for Protected {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tests/peers/sts.mjs` on a real `oidc-provider`.
struct Sts {
    child: Child,
    issuer: String,
}

impl Sts {
    fn start(mandate: &str, targets: &[&str], scopes: &str, ttl: u64, port: u16) -> Self {
        Self::start_with(mandate, targets, scopes, ttl, port, &[])
    }

    fn start_with(
        mandate: &str,
        targets: &[&str],
        scopes: &str,
        ttl: u64,
        port: u16,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(node22_bin_dir().join("node"));
        command
            .arg(repo().join("tests/peers/sts.mjs"))
            .env(
                "STS_NODE_MODULES",
                peers().join("npm/node_modules").to_string_lossy().as_ref(),
            )
            .env("MANDATE_ISSUER", mandate)
            .env("MANDATE_JWKS", format!("{mandate}/.well-known/jwks.json"))
            .env("STS_TARGETS", targets.join(" "))
            .env("STS_SCOPES", scopes)
            .env("STS_TTL", ttl.to_string())
            .env("STS_PORT", port.to_string())
            .env("STS_SECRET", SECRET)
            .envs(env.iter().copied());
        let (child, issuer) = announced(command, "sts listening on ");
        Self { child, issuer }
    }

    async fn stats(&self) -> Value {
        reqwest::get(format!("{}/stats", self.issuer))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sts {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The client secret of Mandate at the STS (in the workspace's `sts-secret` file).
const SECRET: &str = "s3cret-for-tests";

/// A tool manifest for the protected downstream at `tool-manifests/corp/<name>.toml`.
fn protected_manifest(ws: &Workspace, name: &str, url: &str, auth: &str) {
    ws.write(
        &format!("tool-manifests/corp/{name}.toml"),
        &format!(
            r#"description = "protected sample"
environments = ["prod"]
region = "eu-west-1"
timeout = "10s"

[transport]
kind = "http"
url = "{url}"

[auth]
{auth}

[[tools]]
name = "whoami"
effect = "read"
scopes = ["who.read"]
"#
        ),
    );
}

fn whoami(name: &str) -> CallToolRequestParams {
    let mut p = CallToolRequestParams::new(name.to_owned());
    p.arguments = Some(serde_json::Map::new());
    p
}

/// Calls a tool; the claims the protected downstream saw, or the tool error text.
async fn call(url: &str, token: &str, tool: &str) -> Result<Value, String> {
    let client = client(url, token).await;
    let r = client.call_tool(whoami(tool)).await.unwrap();
    let text = r
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("");
    let _ = client.cancel().await;
    if r.is_error == Some(true) {
        Err(text)
    } else {
        Ok(serde_json::from_str(&text).unwrap())
    }
}

fn jwt_payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

fn bearer_of(request: &Value) -> Option<String> {
    request["headers"]["authorization"]
        .as_str()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_owned)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The broker's JWKS, from a short run of the broker (the protected downstream verifies with
/// it; `mandate pin` runs while no broker holds the store).
async fn broker_jwks(ws: &Workspace, listen: &str) -> PathBuf {
    std::fs::create_dir_all(ws.path().join("tool-manifests")).unwrap();
    let server = ws.serve_on(listen);
    let jwks = reqwest::get(format!("{}/.well-known/jwks.json", server.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    server.stop();
    let path = ws.path().join("broker-jwks.json");
    std::fs::write(&path, jwks).unwrap();
    path
}

/// `mandate pin`, then `mandate serve` on `listen`: the server, the mission's URL and alice's token.
fn pin_and_serve(ws: &Workspace, listen: &str) -> (Server, String, String) {
    ws.pin();
    let server = ws.serve_on(listen);
    let url = server.mission_url("corp/prod/who");
    let token = ws.token(Some("corp/prod/who"));
    (server, url, token)
}

/// A workspace for the `embedded` profile: its listen address and issuer URL fixed (so that
/// `mandate pin` mints with the server's issuer) and the broker's JWKS in a file.
async fn embedded_workspace() -> (Workspace, String, String, PathBuf) {
    let listen = format!("127.0.0.1:{}", free_port());
    let broker = format!("http://{listen}");
    let ws = Workspace::new();
    ws.write(
        "mandate.toml",
        &format!("[server]\nlisten = \"{listen}\"\n"),
    );
    let jwks = broker_jwks(&ws, &listen).await;
    (ws, listen, broker, jwks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_exchange_gives_the_downstream_a_short_lived_token_for_it_and_never_the_callers() {
    let (ws, listen, broker, jwks) = embedded_workspace().await;
    let protected = Protected::start(&ws, jwks.to_str().unwrap(), &broker);
    protected_manifest(
        &ws,
        "protected",
        &protected.url,
        "exchange = \"embedded\"\nscopes = [\"who.list\"]",
    );
    // The same downstream spoken to statelessly (2026-07-28): calls take the rmcp path.
    ws.write(
        "tool-manifests/corp/stateless.toml",
        &std::fs::read_to_string(ws.path().join("tool-manifests/corp/protected.toml"))
            .unwrap()
            .replace(
                "kind = \"http\"",
                "kind = \"http\"\nprotocol = \"2026-07-28\"",
            ),
    );
    ws.mission(
        "corp/prod/who",
        r#""corp/protected/whoami", { tool = "corp/stateless/whoami", as = "whoami_stateless" }"#,
        "",
    );
    // Mandate pins the protected downstream as itself.
    let (server, url, token) = pin_and_serve(&ws, &listen);

    let seen = call(&url, &token, "whoami").await.unwrap();
    assert_eq!(seen["sub"], "alice@acme.example");
    assert_eq!(seen["aud"], protected.url.as_str());
    assert_eq!(seen["iss"], broker.as_str());
    assert_eq!(seen["scope"], "who.read");
    assert_eq!(seen["act"], json!({ "sub": broker, "client_id": "bot" }));
    let exp = seen["exp"].as_u64().unwrap();
    assert!(
        exp > now() && exp <= now() + 300,
        "exp {exp} is not within 5 minutes"
    );
    let first_jti = seen["jti"].as_str().unwrap().to_owned();

    // A second call reuses the cached token.
    let again = call(&url, &token, "whoami").await.unwrap();
    assert_eq!(again["jti"], first_jti.as_str());

    // The rmcp path carries the call's own token too.
    let stateless = call(&url, &token, "whoami_stateless").await.unwrap();
    assert_eq!(stateless["sub"], "alice@acme.example");
    assert_eq!(stateless["aud"], protected.url.as_str());

    // Mandate's own traffic (handshake, tools/list, at pin and at start) carried Mandate's own
    // token: subject Mandate, no actor; every request carried a token.
    let requests = protected.requests();
    assert!(requests.len() >= 6, "{requests:?}");
    let mut own = 0;
    for r in &requests {
        let bearer = bearer_of(r).unwrap_or_else(|| panic!("request without a token: {r}"));
        let claims = jwt_payload(&bearer);
        let body = r["body"].as_str().unwrap();
        if body.contains("\"initialize\"") || body.contains("\"tools/list\"") {
            assert_eq!(claims["sub"], broker.as_str(), "{claims}");
            assert!(claims.get("act").is_none(), "{claims}");
            assert_eq!(claims["scope"], "who.list");
            own += 1;
        }
        if body.contains("\"tools/call\"") {
            assert_eq!(claims["sub"], "alice@acme.example");
        }
    }
    assert!(own >= 2, "the handshakes at pin and start: {requests:?}");

    // The caller's token string never appears in a downstream request, the log, the audit
    // records or the result.
    assert!(!protected.raw_record().contains(&token));
    assert!(!seen.to_string().contains(&token));
    let log = server.log();
    server.stop();
    assert!(!log.contains(&token));
    let records = audit_records(&ws);
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains(&token));
    // The call records carry the exchange: profile, audience, jti, expiry; never the token.
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "call" && r["tool"] == "whoami")
        .collect();
    assert_eq!(calls.len(), 2, "{records:?}");
    let ex = &calls[0]["exchange"];
    assert_eq!(ex["profile"], "embedded");
    assert_eq!(ex["audience"], protected.url.as_str());
    assert_eq!(ex["token_id"], first_jti.as_str());
    assert_eq!(ex["expires_at"], exp);
    assert_eq!(ex["cached"], false);
    assert_eq!(calls[1]["exchange"]["cached"], true);
    for r in &requests {
        assert!(
            !text.contains(&bearer_of(r).unwrap()),
            "an exchanged token in the audit"
        );
    }
}

/// A workspace with the protected downstream behind an `rfc8693` profile at a running STS.
async fn rfc8693_setup(ttl: u64) -> (Workspace, Protected, Sts, String, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let broker = format!("http://{listen}");
    let ws = Workspace::new();
    let sts_port = free_port();
    let sts_issuer = format!("http://127.0.0.1:{sts_port}");
    let protected = Protected::start(&ws, &format!("{sts_issuer}/jwks"), &sts_issuer);
    let sts = Sts::start(
        &broker,
        &[&protected.url],
        "who.read who.list",
        ttl,
        sts_port,
    );
    ws.write("sts-secret", SECRET);
    ws.write(
        "mandate.toml",
        &format!(
            r#"[server]
listen = "{listen}"

[[exchange]]
name = "corp"
kind = "rfc8693"
token_endpoint = "{sts_issuer}/token"
client_id = "mandate"
client_secret_file = "sts-secret"
"#
        ),
    );
    protected_manifest(
        &ws,
        "protected",
        &protected.url,
        "exchange = \"corp\"\nscopes = [\"who.list\"]",
    );
    ws.mission("corp/prod/who", r#""corp/protected/whoami""#, "");
    (ws, protected, sts, listen, sts_port)
}

/// `actor_token = true`: each exchange also presents Mandate's own `client_credentials` token
/// as the actor token; the real provider verifies it (its own token, for the exchanging client)
/// and names that actor in the issued token's `act`, which the protected downstream sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc8693_with_an_actor_token_is_verified_by_the_provider_and_named_in_act() {
    let (ws, _protected, mut sts, listen, _) = rfc8693_setup(300).await;
    let settings = std::fs::read_to_string(ws.path().join("mandate.toml")).unwrap();
    ws.write("mandate.toml", &format!("{settings}actor_token = true\n"));
    let (server, url, alice) = pin_and_serve(&ws, &listen);
    let seen = call(&url, &alice, "whoami").await.unwrap();
    assert_eq!(seen["sub"], "alice@acme.example");
    assert_eq!(seen["act"], json!({ "sub": "mandate" }));
    let stats = sts.stats().await;
    let actors = stats["actors"].as_array().unwrap();
    assert_eq!(actors.len(), 1, "{stats}");
    assert_eq!(actors[0]["client_id"], "mandate", "{stats}");
    assert_eq!(
        actors[0]["type"], "urn:ietf:params:oauth:token-type:access_token",
        "{stats}"
    );
    drop(server);
    sts.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc8693_exchange_at_oidc_provider_is_cached_single_flight_and_fails_closed() {
    let (ws, protected, mut sts, listen, sts_port) = rfc8693_setup(300).await;
    let broker = format!("http://{listen}");
    // Mandate pins and connects the protected downstream with its own client credentials.
    let (server, url, alice) = pin_and_serve(&ws, &listen);
    let exchanges = |stats: &Value| stats["grants"]["token_exchange"].as_u64().unwrap_or(0);

    let seen = call(&url, &alice, "whoami").await.unwrap();
    assert_eq!(seen["sub"], "alice@acme.example");
    assert_eq!(seen["aud"], protected.url.as_str());
    assert_eq!(seen["iss"], sts.issuer.as_str());
    assert_eq!(seen["act"], json!({ "sub": "mandate" }));
    assert_eq!(seen["scope"], "who.read");
    assert_eq!(exchanges(&sts.stats().await), 1);

    // A second call does not reach the identity provider.
    let again = call(&url, &alice, "whoami").await.unwrap();
    assert_eq!(again["jti"], seen["jti"]);
    assert_eq!(exchanges(&sts.stats().await), 1);

    // Concurrent first calls of another user make one exchange.
    let bob = ws.token_for("bob@acme.example", "acme", "bot", Some("corp/prod/who"));
    let calls = (0..6).map(|_| call(&url, &bob, "whoami"));
    let results = futures::future::join_all(calls).await;
    let jtis: std::collections::BTreeSet<String> = results
        .iter()
        .map(|r| r.as_ref().unwrap()["jti"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(jtis.len(), 1, "{results:?}");
    let stats = sts.stats().await;
    assert_eq!(exchanges(&stats), 2, "{stats}");

    // The identity provider never saw a caller's token: it got Mandate's subject assertions.
    for subject in stats["subjects"].as_array().unwrap() {
        let subject = subject.as_str().unwrap();
        assert!(subject != alice && subject != bob);
        let claims = jwt_payload(subject);
        assert_eq!(claims["iss"], broker.as_str());
        assert_eq!(claims["aud"], format!("{}/token", sts.issuer));
        assert_eq!(claims["client_id"], "bot");
    }
    let record = protected.raw_record();
    assert!(!record.contains(&alice) && !record.contains(&bob));

    // `invalid_target`: the identity provider no longer allows the downstream; a new caller's
    // call fails with the provider's reason and reaches nothing (no fallback to any token).
    sts.stop();
    let mut sts = Sts::start(
        &broker,
        &["http://elsewhere.example/mcp"],
        "who.read",
        300,
        sts_port,
    );
    let calls_before = protected
        .requests()
        .iter()
        .filter(|r| r["body"].as_str().unwrap().contains("tools/call"))
        .count();
    let carol = ws.token_for("carol@acme.example", "acme", "bot", Some("corp/prod/who"));
    let refused = call(&url, &carol, "whoami").await.unwrap_err();
    assert!(refused.contains("`invalid_target`"), "{refused}");
    assert!(refused.contains("ask an administrator"), "{refused}");
    let calls_after = protected
        .requests()
        .iter()
        .filter(|r| r["body"].as_str().unwrap().contains("tools/call"))
        .count();
    assert_eq!(calls_before, calls_after);

    // The identity provider down: cached tokens still serve; a caller without one fails closed.
    sts.stop();
    let cached = call(&url, &alice, "whoami").await.unwrap();
    assert_eq!(cached["jti"], seen["jti"]);
    let dave = ws.token_for("dave@acme.example", "acme", "bot", Some("corp/prod/who"));
    let down = call(&url, &dave, "whoami").await.unwrap_err();
    assert!(down.contains("is unavailable"), "{down}");
    assert!(down.contains("retry when it is back"), "{down}");

    let log = server.log();
    server.stop();
    for token in [&alice, &bob, &carol, &dave] {
        assert!(!log.contains(token.as_str()));
    }
    let records = audit_records(&ws);
    let failed: Vec<&Value> = records
        .iter()
        .filter(|r| r["outcome"] == "exchange_failed")
        .collect();
    assert_eq!(failed.len(), 2, "{records:?}");
    let ok = records
        .iter()
        .find(|r| r["kind"] == "call" && r["outcome"] == "ok")
        .unwrap();
    assert_eq!(ok["exchange"]["profile"], "corp");
    assert_eq!(ok["exchange"]["token_id"], seen["jti"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_exchanged_token_expires_and_then_calls_fail_closed_while_the_idp_is_down() {
    let (ws, _protected, mut sts, listen, _) = rfc8693_setup(3).await;
    let (server, url, alice) = pin_and_serve(&ws, &listen);
    let seen = call(&url, &alice, "whoami").await.unwrap();
    sts.stop();
    // Still fresh: served from the cache with the provider gone.
    let cached = call(&url, &alice, "whoami").await.unwrap();
    assert_eq!(cached["jti"], seen["jti"]);
    // Past its expiry nothing is left to send: the call fails closed.
    let exp = seen["exp"].as_u64().unwrap();
    while now() <= exp {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let expired = call(&url, &alice, "whoami").await.unwrap_err();
    assert!(expired.contains("no unexpired token"), "{expired}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_obo_id_jag_and_private_key_jwt_against_oidc_provider() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let broker = format!("http://{listen}");
    let ws = Workspace::new();
    let sts_port = free_port();
    let sts_issuer = format!("http://127.0.0.1:{sts_port}");
    let protected = Protected::start(&ws, &format!("{sts_issuer}/jwks"), &sts_issuer);
    // Mandate's `private_key_jwt` key at the STS (client `mandate-pkjwt`).
    let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
    {
        use p256::pkcs8::EncodePrivateKey;
        ws.write(
            "pkjwt.pem",
            &key.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap(),
        );
    }
    let point =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key.public_key(), false);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = json!({ "kty": "EC", "crv": "P-256", "kid": "pk-1", "alg": "ES256", "use": "sig",
        "x": b64.encode(point.x().unwrap()), "y": b64.encode(point.y().unwrap()) });
    let sts = Sts::start_with(
        &broker,
        &[&protected.url],
        "who.read who.list",
        300,
        sts_port,
        &[("STS_PKJWT_JWK", &jwk.to_string())],
    );
    ws.write("sts-secret", SECRET);
    ws.write(
        "mandate.toml",
        &format!(
            r#"[server]
listen = "{listen}"

[[exchange]]
name = "pk"
kind = "rfc8693"
token_endpoint = "{sts_issuer}/token"
client_id = "mandate-pkjwt"
client_auth = "private_key_jwt"
private_key_file = "pkjwt.pem"
private_key_id = "pk-1"

[[exchange]]
name = "entra"
kind = "entra-obo"
token_endpoint = "{sts_issuer}/token"
client_id = "mandate-post"
client_secret_file = "sts-secret"
client_auth = "client_secret_post"

[[exchange]]
name = "jag"
kind = "id-jag"
token_endpoint = "{sts_issuer}/token"
client_id = "mandate"
client_secret_file = "sts-secret"
resource_token_endpoint = "{sts_issuer}/token"
resource_issuer = "{sts_issuer}"
resource_client_id = "mandate"
resource_client_secret_file = "sts-secret"

[[exchange]]
name = "corp"
kind = "rfc8693"
token_endpoint = "{sts_issuer}/token"
client_id = "mandate"
client_secret_file = "sts-secret"
"#
        ),
    );
    protected_manifest(&ws, "entra", &protected.url, "exchange = \"entra\"");
    protected_manifest(&ws, "jag", &protected.url, "exchange = \"jag\"");
    // The provider answers this scope with `interaction_required` (a conditional-access prompt).
    ws.write(
        "tool-manifests/corp/consent.toml",
        &std::fs::read_to_string(ws.path().join("tool-manifests/corp/jag.toml"))
            .unwrap()
            .replace("exchange = \"jag\"", "exchange = \"corp\"")
            .replace("scopes = [\"who.read\"]", "scopes = [\"needs_user\"]"),
    );
    protected_manifest(&ws, "pkjwt", &protected.url, "exchange = \"pk\"");
    ws.mission(
        "corp/prod/who",
        r#"{ tool = "corp/entra/whoami", as = "whoami_entra" }, { tool = "corp/jag/whoami", as = "whoami_jag" }, { tool = "corp/consent/whoami", as = "whoami_consent" }, { tool = "corp/pkjwt/whoami", as = "whoami_pk" }"#,
        "",
    );
    let (server, url, alice) = pin_and_serve(&ws, &listen);

    // Entra OBO: jwt-bearer with `requested_token_use=on_behalf_of`, client_secret_post.
    let seen = call(&url, &alice, "whoami_entra").await.unwrap();
    assert_eq!(seen["sub"], "alice@acme.example");
    assert_eq!(seen["aud"], protected.url.as_str());
    assert_eq!(seen["act"], json!({ "sub": "mandate-post" }));
    let stats = sts.stats().await;
    assert_eq!(stats["grants"]["on_behalf_of"], 1, "{stats}");

    // An app-only caller (its subject is the agent itself) is refused before the provider.
    let app = ws.token_for("bot", "acme", "bot", Some("corp/prod/who"));
    let refused = call(&url, &app, "whoami_entra").await.unwrap_err();
    assert!(refused.contains("app-only"), "{refused}");
    assert_eq!(sts.stats().await["grants"]["on_behalf_of"], 1);

    // ID-JAG: token exchange for an ID-JAG, then the jwt-bearer grant at the downstream's AS.
    let seen = call(&url, &alice, "whoami_jag").await.unwrap();
    assert_eq!(seen["sub"], "alice@acme.example");
    assert_eq!(seen["aud"], protected.url.as_str());
    assert_eq!(seen["scope"], "who.read");
    let stats = sts.stats().await;
    assert_eq!(stats["grants"]["token_exchange"], 1, "{stats}");
    assert_eq!(stats["grants"]["id_jag_redeem"], 1, "{stats}");
    for subject in stats["subjects"].as_array().unwrap() {
        assert!(subject.as_str().unwrap() != alice && subject.as_str().unwrap() != app);
    }

    // RFC 8693 with `private_key_jwt` client authentication (pinned the same way).
    let seen = call(&url, &alice, "whoami_pk").await.unwrap();
    assert_eq!(seen["sub"], "alice@acme.example");
    assert_eq!(seen["act"], json!({ "sub": "mandate-pkjwt" }));

    // `interaction_required` tells the agent to get the user.
    let prompt = call(&url, &alice, "whoami_consent").await.unwrap_err();
    assert!(
        prompt.contains("needs the user (`interaction_required`"),
        "{prompt}"
    );
    assert!(prompt.contains("ask the user to sign in again"), "{prompt}");
    server.stop();
}

#[test]
fn exchange_configuration_is_validated_with_locations() {
    let ws = Workspace::new();
    ws.write(
        "mandate.toml",
        r#"[[exchange]]
name = "corp"
kind = "rfc8963"

[[exchange]]
name = "okta"
kind = "rfc8693"
token_endpoint = "https://okta.example/oauth2/default/v1/token"
client_id = "mandate"
"#,
    );
    protected_manifest(
        &ws,
        "protected",
        "http://127.0.0.1:9/mcp",
        "exchange = \"crop\"",
    );
    ws.mission("corp/prod/who", r#""corp/protected/whoami""#, "");
    let out = ws.mandate(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mandate.toml:3:8: unknown exchange kind `rfc8963`"),
        "{err}"
    );
    assert!(err.contains("did you mean `rfc8693`"), "{err}");
    assert!(
        err.contains("mandate.toml:5:1: this profile needs client credentials"),
        "{err}"
    );
    assert!(
        err.contains("protected.toml:11:12: unknown exchange profile `crop`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_downstream_gets_the_token_in_meta_only_when_its_manifest_opts_in() {
    let (ws, listen, broker, jwks) = embedded_workspace().await;
    for (name, deliver) in [("local", "deliver = \"meta\""), ("quiet", "")] {
        let audience = format!("urn:mandate:corp/{name}");
        ws.write(
            &format!("tool-manifests/corp/{name}.toml"),
            &format!(
                r#"description = "protected sample over stdio"
environments = ["prod"]
region = "eu-west-1"
timeout = "10s"

[transport]
kind = "stdio"
command = "{}"
args = ["--stdio", "--jwks", "{}", "--issuer", "{broker}", "--audience", "{audience}"]

[auth]
exchange = "embedded"
{deliver}

[[tools]]
name = "whoami"
effect = "read"
scopes = ["who.read"]
"#,
                protected_bin().display(),
                jwks.display()
            ),
        );
    }
    ws.mission(
        "corp/prod/who",
        r#"{ tool = "corp/local/whoami", as = "whoami_local" }, { tool = "corp/quiet/whoami", as = "whoami_quiet" }"#,
        "",
    );
    let (server, url, token) = pin_and_serve(&ws, &listen);

    let seen = call(&url, &token, "whoami_local").await.unwrap();
    assert_eq!(seen["sub"], "alice@acme.example");
    assert_eq!(seen["aud"], "urn:mandate:corp/local");
    assert_eq!(seen["act"], json!({ "sub": broker, "client_id": "bot" }));
    // Without `deliver = "meta"` a stdio downstream gets no token at all.
    let quiet = call(&url, &token, "whoami_quiet").await.unwrap_err();
    assert!(quiet.contains("no token in `_meta"), "{quiet}");
    assert!(!seen.to_string().contains(&token));
    server.stop();
}

#[test]
fn a_missing_client_secret_stops_pin_naming_the_variable() {
    let ws = Workspace::new();
    ws.write(
        "mandate.toml",
        r#"[[exchange]]
name = "corp"
kind = "rfc8693"
token_endpoint = "http://127.0.0.1:9/token"
client_id = "mandate"
client_secret_env = "MANDATE_TEST_SECRET_THAT_IS_NOT_SET"
"#,
    );
    protected_manifest(
        &ws,
        "protected",
        "http://127.0.0.1:9/mcp",
        "exchange = \"corp\"",
    );
    ws.mission("corp/prod/who", r#""corp/protected/whoami""#, "");
    let out = ws.mandate(&["pin"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "the client secret of `mandate` is missing: set the environment variable `MANDATE_TEST_SECRET_THAT_IS_NOT_SET`"
        ),
        "{err}"
    );
}

/// `mandate agents <args>` against the running broker (its admin API); must succeed.
fn agents_ok(ws: &Workspace, args: &[&str]) {
    let mut all = vec!["agents"];
    all.extend(args);
    let out = ws.mandate(&all);
    assert!(
        out.status.success(),
        "mandate agents {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Suspension takes effect at once on the exchange cache: the agent's cached downstream token
/// is dropped, so after `resume` the next call makes a new exchange at the real provider
/// (a new `jti`, a second exchange) instead of reusing the token cached before the suspension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspending_an_agent_drops_its_cached_downstream_tokens() {
    let (ws, _protected, mut sts, listen, _) = rfc8693_setup(300).await;
    let (server, url, alice) = pin_and_serve(&ws, &listen);
    let exchanges = |stats: &Value| stats["grants"]["token_exchange"].as_u64().unwrap_or(0);

    let first = call(&url, &alice, "whoami").await.unwrap();
    assert_eq!(exchanges(&sts.stats().await), 1);
    // The token is cached: without a revocation the next call reuses it.
    let cached = call(&url, &alice, "whoami").await.unwrap();
    assert_eq!(cached["jti"], first["jti"]);
    assert_eq!(exchanges(&sts.stats().await), 1);

    agents_ok(&ws, &["suspend", "bot", "--reason", "incident 7"]);
    agents_ok(&ws, &["resume", "bot"]);

    let after = call(&url, &alice, "whoami").await.unwrap();
    assert_eq!(after["sub"], "alice@acme.example");
    assert_ne!(
        after["jti"], first["jti"],
        "the token cached before the suspension was used again"
    );
    assert_eq!(exchanges(&sts.stats().await), 2);
    server.stop();
    sts.stop();
}

/// The embedded STS never mints a downstream token that outlives the caller's token: a caller
/// token of 30 seconds gets a downstream token expiring with it, not after the profile's 5 min.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_downstream_token_never_outlives_the_callers_token() {
    let (ws, listen, broker, jwks) = embedded_workspace().await;
    let protected = Protected::start(&ws, jwks.to_str().unwrap(), &broker);
    protected_manifest(&ws, "protected", &protected.url, "exchange = \"embedded\"");
    ws.mission("corp/prod/who", r#""corp/protected/whoami""#, "");
    let (server, url, _) = pin_and_serve(&ws, &listen);
    let out = ws.mandate(&[
        "token",
        "--sub",
        "alice@acme.example",
        "--tenant",
        "acme",
        "--agent",
        "bot",
        "--mission",
        "corp/prod/who",
        "--ttl",
        "30s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let short = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let caller_exp = jwt_payload(&short)["exp"].as_u64().unwrap();
    assert!(caller_exp <= now() + 31, "{caller_exp}");

    let seen = call(&url, &short, "whoami").await.unwrap();
    let exp = seen["exp"].as_u64().unwrap();
    assert!(
        exp <= caller_exp,
        "the downstream token expires at {exp}, after the caller's token ({caller_exp})"
    );
    assert!(exp > now(), "{exp}");
    server.stop();
    let records = audit_records(&ws);
    let call = records
        .iter()
        .find(|r| r["kind"] == "call" && r["tool"] == "whoami")
        .unwrap();
    assert_eq!(call["exchange"]["expires_at"], exp);
}

/// An ES256 key for `STS_JWK`: the private JWK the provider signs with, and the same key for
/// the test to sign the user's access token as the provider would have issued it.
fn provider_key() -> (Value, jsonwebtoken::EncodingKey) {
    use p256::pkcs8::EncodePrivateKey;
    let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point =
        p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&key.public_key(), false);
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = json!({ "kty": "EC", "crv": "P-256", "kid": "sts-fixed", "alg": "ES256",
        "use": "sig", "x": b64.encode(point.x().unwrap()), "y": b64.encode(point.y().unwrap()),
        "d": b64.encode(key.to_bytes()) });
    let pem = key.to_pkcs8_pem(p256::pkcs8::LineEnding::LF).unwrap();
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    (jwk, encoding)
}

/// An `at+jwt` access token of the provider (signed with its key) with these claims.
fn provider_token(key: &jsonwebtoken::EncodingKey, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.typ = Some("at+jwt".to_owned());
    header.kid = Some("sts-fixed".to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A caller whose token an EXTERNAL issuer issued: the same `oidc-provider` is both the
/// `[[identity.issuers]]` entry Mandate admits the caller by and the `rfc8693` / `entra-obo`
/// STS. The subject token of the exchange is the caller's own token (the provider verifies it:
/// its own token, audience the exchanging client), the downstream sees the user, the downstream
/// audience and Mandate as actor; the cached exchanged token is kept no longer than the caller's
/// token lives; the caller's token reaches no downstream request, log line or audit record. An
/// app-only token of the same provider is refused for `entra-obo` before the provider is asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_callers_own_token_is_the_subject_token_at_the_sts() {
    let listen = format!("127.0.0.1:{}", free_port());
    let ws = Workspace::new();
    let sts_port = free_port();
    let sts_issuer = format!("http://127.0.0.1:{sts_port}");
    let protected = Protected::start(&ws, &format!("{sts_issuer}/jwks"), &sts_issuer);
    let (jwk, key) = provider_key();
    let mut sts = Sts::start_with(
        &format!("http://{listen}"),
        &[&protected.url],
        "who.read who.list",
        300,
        sts_port,
        &[("STS_JWK", &jwk.to_string())],
    );
    ws.write("sts-secret", SECRET);
    ws.write(
        "mandate.toml",
        &format!(
            r#"[server]
listen = "{listen}"

[[identity.issuers]]
issuer = "{sts_issuer}"
tenant = "acme"
audiences = ["mandate", "mandate-post"]
algorithms = ["ES256"]
attributes = {{ idtyp = "idtyp" }}

[[exchange]]
name = "corp"
kind = "rfc8693"
token_endpoint = "{sts_issuer}/token"
client_id = "mandate"
client_secret_file = "sts-secret"

[[exchange]]
name = "entra"
kind = "entra-obo"
token_endpoint = "{sts_issuer}/token"
client_id = "mandate-post"
client_secret_file = "sts-secret"
client_auth = "client_secret_post"
"#
        ),
    );
    protected_manifest(&ws, "protected", &protected.url, "exchange = \"corp\"");
    protected_manifest(&ws, "entra", &protected.url, "exchange = \"entra\"");
    ws.mission(
        "corp/prod/who",
        r#""corp/protected/whoami", { tool = "corp/entra/whoami", as = "whoami_entra" }"#,
        "",
    );
    ws.pin();
    let server = ws.serve_on(&listen);
    let url = server.mission_url("corp/prod/who");
    for _ in 0..100 {
        let ready: Value = reqwest::get(format!("{}/readyz", server.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["issuers"][0]["ready"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The user's access token for Mandate (audience: Mandate's client ids at the provider),
    // expiring in a minute, well before the provider's 5-minute tokens.
    let caller_exp = now() + 60;
    let alice = provider_token(
        &key,
        &json!({ "iss": sts_issuer, "sub": "alice@acme.example", "aud": ["mandate", "mandate-post"],
            "client_id": "bot", "scope": "who.read", "iat": now(), "exp": caller_exp,
            "jti": "alice-1" }),
    );
    let seen = call(&url, &alice, "whoami").await.unwrap();
    assert_eq!(seen["iss"], sts_issuer.as_str());
    assert_eq!(seen["sub"], "alice@acme.example");
    assert_eq!(seen["aud"], protected.url.as_str());
    assert_eq!(seen["act"], json!({ "sub": "mandate" }));
    // The provider got the caller's own token as the subject token, not a Mandate assertion.
    let stats = sts.stats().await;
    assert_eq!(stats["grants"]["token_exchange"], 1, "{stats}");
    assert_eq!(stats["subjects"], json!([alice]), "{stats}");

    // Entra OBO: the caller's token is the assertion.
    let obo = call(&url, &alice, "whoami_entra").await.unwrap();
    assert_eq!(obo["sub"], "alice@acme.example");
    assert_eq!(obo["aud"], protected.url.as_str());
    assert_eq!(obo["act"], json!({ "sub": "mandate-post" }));
    let stats = sts.stats().await;
    assert_eq!(stats["grants"]["on_behalf_of"], 1, "{stats}");
    assert_eq!(stats["subjects"], json!([alice, alice]), "{stats}");

    // An app-only token of the same provider (no user: its subject is the client, `idtyp` app)
    // is refused for Entra OBO with a clear error, before the provider is asked.
    let requests_before = stats["token_requests"].clone();
    let app = provider_token(
        &key,
        &json!({ "iss": sts_issuer, "sub": "bot", "aud": ["mandate", "mandate-post"],
            "client_id": "bot", "idtyp": "app", "iat": now(), "exp": now() + 60,
            "jti": "app-1" }),
    );
    let refused = call(&url, &app, "whoami_entra").await.unwrap_err();
    assert!(
        refused.contains("needs a user's token, and this caller's token is app-only"),
        "{refused}"
    );
    assert!(
        refused.contains("call with a token issued to a user"),
        "{refused}"
    );
    // Entra's app-only tokens name the service principal as `sub` (not the client id): the
    // `idtyp = app` claim (mapped to the attribute `idtyp`) marks them.
    let principal = provider_token(
        &key,
        &json!({ "iss": sts_issuer, "sub": "5f1c-service-principal", "aud": ["mandate", "mandate-post"],
            "client_id": "bot", "idtyp": "app", "iat": now(), "exp": now() + 60,
            "jti": "app-2" }),
    );
    let refused = call(&url, &principal, "whoami_entra").await.unwrap_err();
    assert!(
        refused.contains("this caller's token is app-only"),
        "{refused}"
    );
    let stats = sts.stats().await;
    assert_eq!(stats["grants"]["on_behalf_of"], 1, "{stats}");
    assert_eq!(stats["token_requests"], requests_before, "{stats}");

    // The caller's token went to the provider only: never to the downstream, the log or the
    // audit records.
    let record = protected.raw_record();
    assert!(!record.contains(&alice) && !record.contains(&app));
    let log = server.log();
    server.stop();
    sts.stop();
    assert!(!log.contains(&alice) && !log.contains(&app));
    let records = audit_records(&ws);
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains(&alice) && !text.contains(&app));
    // The provider's token lives 5 minutes; Mandate keeps it no longer than the caller's token.
    assert!(seen["exp"].as_u64().unwrap() > caller_exp, "{seen}");
    let calls: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "call" && r["outcome"] == "ok")
        .collect();
    assert_eq!(calls.len(), 2, "{records:?}");
    for c in calls {
        assert_eq!(c["subject"], "alice@acme.example");
        assert_eq!(c["exchange"]["expires_at"], caller_exp, "{c}");
    }
}

/// POSTs an MCP `initialize` to `url` with `token`: the HTTP status.
async fn initialize_status(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"}}}),
        )
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The RFC 8693 grant of the embedded authorization server over HTTP, the success path: a
/// registered agent authenticates with its client secret and exchanges a token issued to it for
/// an audience-bound token of the user, which the real protected downstream (verifying with the
/// broker's JWKS, audience itself) accepts, while it refuses the subject token itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oauth_token_endpoint_exchanges_an_agents_token_for_a_downstream_token() {
    let (ws, listen, broker, jwks) = embedded_workspace().await;
    let protected = Protected::start(&ws, jwks.to_str().unwrap(), &broker);
    protected_manifest(&ws, "protected", &protected.url, "exchange = \"embedded\"");
    ws.mission("corp/prod/who", r#""corp/protected/whoami""#, "");
    let mission = ws.path().join("missions/corp/prod/who.toml");
    let text = std::fs::read_to_string(&mission)
        .unwrap()
        .replace("agents = [\"bot\"]", "agents = [\"bot\", \"sdk-bot\"]");
    std::fs::write(&mission, text).unwrap();
    let onboarded = ws.mandate(&[
        "agents",
        "onboard",
        "sdk-bot",
        "--tenant",
        "acme",
        "--owner",
        "dana@acme.example",
        "--mission",
        "corp/prod/who",
        "--json",
    ]);
    assert!(
        onboarded.status.success(),
        "{}",
        String::from_utf8_lossy(&onboarded.stderr)
    );
    let onboarded: Value = serde_json::from_slice(&onboarded.stdout).unwrap();
    let secret = onboarded["client_secret"].as_str().unwrap().to_owned();
    let (server, _, _) = pin_and_serve(&ws, &listen);
    let subject = ws.token_for(
        "alice@acme.example",
        "acme",
        "sdk-bot",
        Some("corp/prod/who"),
    );

    let mut form = reqwest::Url::parse("http://form.invalid/").unwrap();
    form.query_pairs_mut().extend_pairs([
        (
            "grant_type",
            "urn:ietf:params:oauth:grant-type:token-exchange",
        ),
        ("subject_token", subject.as_str()),
        (
            "subject_token_type",
            "urn:ietf:params:oauth:token-type:access_token",
        ),
        ("resource", protected.url.as_str()),
        ("scope", "who.read"),
    ]);
    let r = reqwest::Client::new()
        .post(format!("{}/oauth/token", server.url))
        .basic_auth("sdk-bot", Some(&secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.query().unwrap().to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token",
        "{body}"
    );
    assert_eq!(body["token_type"], "Bearer", "{body}");
    let expires_in = body["expires_in"].as_u64().unwrap();
    assert!(expires_in > 0 && expires_in <= 300, "{body}");
    let token = body["access_token"].as_str().unwrap();
    let claims = jwt_payload(token);
    assert_eq!(claims["iss"], broker.as_str());
    assert_eq!(claims["sub"], "alice@acme.example");
    assert_eq!(claims["aud"], protected.url.as_str());
    assert_eq!(claims["scope"], "who.read");
    assert_eq!(
        claims["act"],
        json!({ "sub": broker, "client_id": "sdk-bot" })
    );
    // The downstream accepts the exchanged token and refuses the subject token (not its audience).
    assert_eq!(initialize_status(&protected.url, token).await, 200);
    assert_eq!(initialize_status(&protected.url, &subject).await, 401);
    server.stop();
}
