//! Unit tests of the handoff chain: the `act` claim's nesting and the ledger checks.

use super::*;

fn actor(agent: &str, mission: &str, handoff: Option<&str>) -> Actor {
    Actor {
        agent: agent.into(),
        mission: mission.into(),
        handoff: handoff.map(str::to_owned),
    }
}

#[test]
fn act_nests_the_earliest_actor_deepest() {
    let chain = [
        actor("b-bot", "acme/prod/b", Some("j1")),
        actor("a-bot", "acme/prod/a", None),
    ];
    assert_eq!(
        act_claim(&chain),
        Some(serde_json::json!({
            "sub": "b-bot", "mission": "acme/prod/b", "handoff": "j1",
            "act": { "sub": "a-bot", "mission": "acme/prod/a" }
        }))
    );
    assert_eq!(act_claim(&[]), None);
}

#[test]
fn only_ledger_and_chain_problems_are_forbidden_rather_than_unauthenticated() {
    assert!(HandoffError::Replayed.invalid_token());
    assert!(HandoffError::Expired.invalid_token());
    assert!(!HandoffError::TooDeep(3).invalid_token());
    assert!(
        !HandoffError::ActorInactive {
            agent: "a".into(),
            mission: "m".into()
        }
        .invalid_token()
    );
}

mod ledger {
    //! Minting and admitting against a real sled ledger and the real verifier.

    use std::path::Path;
    use std::sync::Arc;

    use super::super::*;
    use super::actor;
    use crate::authn::Verifier;
    use crate::config::{Sources, build};
    use crate::store::Store;

    const URL: &str = "http://127.0.0.1:9";

    fn mission(agent: &str, handoffs: &str) -> String {
        format!(
            "description = \"m\"\ntenant = \"acme\"\nowner = \"o@acme.example\"\nexpires = 2099-12-31\nagents = [\"{agent}\"]\ntools = []\nhandoffs = [{handoffs}]\n"
        )
    }

    /// Missions a → b → c → d (each handing to the next), `max_depth = 2`.
    fn config() -> Config {
        let root = Path::new("/cfg");
        let missions = [
            ("a", "a-bot", "\"acme/prod/b\""),
            ("b", "b-bot", "\"acme/prod/c\""),
            ("c", "c-bot", "\"acme/prod/d\""),
            ("d", "d-bot", ""),
        ]
        .iter()
        .map(|(name, agent, handoffs)| {
            (
                root.join(format!("missions/acme/prod/{name}.toml")),
                mission(agent, handoffs),
            )
        })
        .collect();
        let sources = Sources {
            settings: Some((
                root.join("mandate.toml"),
                format!("[server]\npublic_url = \"{URL}\"\n[handoff]\nmax_depth = 2\n"),
            )),
            manifests: vec![],
            missions,
            warnings: vec![],
        };
        build(root, &sources, false).unwrap_or_else(|d| unreachable!("{d:?}"))
    }

    fn target(name: &str) -> HandoffTarget {
        HandoffTarget {
            mission: format!("acme/prod/{name}"),
            agent: format!("{name}-bot"),
        }
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        handoffs: Handoffs,
        verifier: Verifier,
    }

    /// The agent registry with every agent the missions declare registered and active.
    async fn registry(store: &Store) -> Arc<crate::agents::Registry> {
        let (audit, _writer) =
            crate::audit::Auditor::start(store).unwrap_or_else(|e| unreachable!("{e}"));
        let agents = store.agents().unwrap_or_else(|e| unreachable!("{e}"));
        let registry = crate::agents::Registry::load(Arc::new(agents), audit)
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        registry
            .register_declared(&config())
            .await
            .unwrap_or_else(|e| unreachable!("{e}"));
        registry
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let store = Store::open(dir.path()).unwrap_or_else(|e| unreachable!("{e}"));
        let issuer =
            Arc::new(Issuer::load_or_create(&store, URL).unwrap_or_else(|e| unreachable!("{e}")));
        let ledger = Arc::new(store.handoffs().unwrap_or_else(|e| unreachable!("{e}")));
        let agents = registry(&store).await;
        Fixture {
            handoffs: Handoffs::new(issuer.clone(), ledger, &config(), agents),
            verifier: Verifier::new(issuer, &[]).unwrap_or_else(|e| unreachable!("{e}")),
            _dir: dir,
        }
    }

    /// The caller a handoff token makes at its mission, before the ledger check.
    async fn presented(f: &Fixture, minted: &Minted) -> Arc<Caller> {
        use secrecy::ExposeSecret;
        let aud = format!("{URL}/mcp/{}", minted.to);
        f.verifier
            .verify(minted.token.expose_secret(), &[aud.as_str()])
            .await
            .unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn user_of_a() -> Caller {
        Caller {
            issuer: URL.into(),
            subject: "alice@acme.example".into(),
            tenant: "acme".into(),
            agent: "a-bot".into(),
            roles: vec![],
            token_id: "direct".into(),
            audience: format!("{URL}/mcp/acme/prod/a"),
            expires_at: unix_now() + 60,
            scopes: vec![],
            attributes: Default::default(),
            act: None,
            actors: vec![],
            token: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_handoff_is_used_once_re_verified_hop_by_hop_and_bounded_in_depth() {
        let f = fixture().await;
        let a = user_of_a();
        let mut a = a;
        a.attributes = [
            ("department", serde_json::json!("finance")),
            ("region", serde_json::json!("eu-west-1")),
            ("clearance", serde_json::json!(3)),
            ("groups", serde_json::json!(["ap"])),
            ("unmapped", serde_json::json!("never carried")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let to_b = f.handoffs.mint(&a, "acme/prod/a", &target("b")).await;
        let to_b = to_b.unwrap_or_else(|e| unreachable!("{e}"));
        let b = presented(&f, &to_b).await;
        assert_eq!(b.agent, "b-bot");
        assert_eq!(b.subject, "alice@acme.example");
        // The receiving mission's policies see the user's policy attributes, and only those.
        for name in ["department", "region", "clearance", "groups"] {
            assert_eq!(b.attributes.get(name), a.attributes.get(name), "{name}");
        }
        assert_eq!(b.attributes.get("unmapped"), None);
        assert!(b.actors.is_empty(), "the verifier grants no chain");

        // For another mission, or without the ledger's blessing, it opens nothing.
        let elsewhere = f.handoffs.admit(&b, "acme/prod/c", true).await;
        assert_eq!(elsewhere.err(), Some(HandoffError::WrongRecipient));
        // Opening uses it up; a second opening is a replay; requests on the session pass.
        let b = f.handoffs.admit(&b, "acme/prod/b", true).await;
        let b = b.unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(b.actors, [actor("a-bot", "acme/prod/a", None)]);
        let again = f.handoffs.admit(&b, "acme/prod/b", true).await;
        assert_eq!(again.err(), Some(HandoffError::Replayed));
        assert!(f.handoffs.admit(&b, "acme/prod/b", false).await.is_ok());

        // B hands on to C: the chain grows by exactly one hop, naming B's handoff.
        let to_c = f.handoffs.mint(&b, "acme/prod/b", &target("c")).await;
        let to_c = to_c.unwrap_or_else(|e| unreachable!("{e}"));
        let c = presented(&f, &to_c).await;
        let c = f.handoffs.admit(&c, "acme/prod/c", true).await;
        let c = c.unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(
            c.actors,
            [
                actor("b-bot", "acme/prod/b", Some(&to_b.jti)),
                actor("a-bot", "acme/prod/a", None),
            ]
        );
        // C → D would be three actors: over `max_depth = 2`.
        let to_d = f.handoffs.mint(&c, "acme/prod/c", &target("d")).await;
        assert_eq!(to_d.err(), Some(HandoffError::TooDeep(2)));
        // No edge from B back to A; no handoff to an agent the target does not list.
        let back = f.handoffs.mint(&b, "acme/prod/b", &target("a")).await;
        assert!(matches!(back, Err(HandoffError::EdgeNotAllowed { .. })));
        let mut wrong = target("c");
        wrong.agent = "a-bot".into();
        let wrong = f.handoffs.mint(&b, "acme/prod/b", &wrong).await;
        assert_eq!(wrong.err(), Some(HandoffError::WrongRecipient));
    }

    #[test]
    fn a_session_opened_with_a_handoff_token_takes_no_other_token() {
        use crate::inbound::session::Principal;
        let direct = user_of_a();
        let mut handed = user_of_a();
        handed.token_id = "jti-1".into();
        handed.actors = vec![actor("z-bot", "acme/prod/z", None)];
        let mut other = handed.clone();
        other.token_id = "jti-2".into();
        let session = Principal::of(&handed);
        assert!(session.matches(&handed));
        assert!(
            !session.matches(&other),
            "another handoff token of the same user and agent"
        );
        assert!(!session.matches(&direct), "the agent's own token");
        assert!(!Principal::of(&direct).matches(&handed));
    }

    #[tokio::test]
    async fn act_that_the_ledger_did_not_issue_is_refused() {
        let f = fixture().await;
        // A token of another issuer claiming a chain.
        let mut foreign = user_of_a();
        foreign.issuer = "https://idp.example".into();
        foreign.act = Some(serde_json::json!({ "sub": "admin-bot" }));
        let r = f.handoffs.admit(&foreign, "acme/prod/a", true).await;
        assert_eq!(r.err(), Some(HandoffError::Foreign));
        // The embedded issuer's own token with an `act` it never recorded.
        let mut unrecorded = user_of_a();
        unrecorded.act = Some(serde_json::json!({ "sub": "admin-bot" }));
        let r = f.handoffs.admit(&unrecorded, "acme/prod/a", true).await;
        assert_eq!(r.err(), Some(HandoffError::Foreign));
        // A recorded handoff whose presented chain differs from the recorded one (a nested
        // admin actor added): refused, nested actors never elevate.
        let minted = f
            .handoffs
            .mint(&user_of_a(), "acme/prod/a", &target("b"))
            .await;
        let minted = minted.unwrap_or_else(|e| unreachable!("{e}"));
        let mut b = (*presented(&f, &minted).await).clone();
        if let Some(serde_json::Value::Object(act)) = &mut b.act {
            act.insert("act".into(), serde_json::json!({ "sub": "admin-bot" }));
        }
        let r = f.handoffs.admit(&b, "acme/prod/b", true).await;
        assert_eq!(r.err(), Some(HandoffError::WrongRecipient));
    }

    /// Records a day past their expiry are forgotten; live ones, recently expired ones (a later
    /// hop may still name them) and unreadable ones stay.
    #[tokio::test]
    async fn pruning_forgets_only_records_a_day_past_expiry() {
        use crate::store::HandoffStore;
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let store = Store::open(dir.path()).unwrap_or_else(|e| unreachable!("{e}"));
        let issuer =
            Arc::new(Issuer::load_or_create(&store, URL).unwrap_or_else(|e| unreachable!("{e}")));
        let ledger = Arc::new(store.handoffs().unwrap_or_else(|e| unreachable!("{e}")));
        let handoffs = Handoffs::new(issuer, ledger.clone(), &config(), registry(&store).await);
        let now = crate::authn::unix_now();
        let record = |expires: u64| {
            serde_json::to_vec(&Record {
                user: "alice@acme.example".into(),
                user_issuer: URL.into(),
                tenant: "acme".into(),
                from: "acme/prod/a".into(),
                to: "acme/prod/b".into(),
                agent: "b-bot".into(),
                actors: vec![actor("a-bot", "acme/prod/a", None)],
                issued: expires.saturating_sub(300),
                expires,
                used: None,
            })
            .unwrap_or_default()
        };
        let put = |jti: &str, bytes: &[u8]| {
            assert!(ledger.insert(jti, bytes).unwrap_or(false), "{jti}");
        };
        put("old", &record(now - 2 * 24 * 3600));
        put("recent", &record(now - 3600));
        put("live", &record(now + 300));
        put("unreadable", b"not json");
        assert_eq!(handoffs.prune().await, Ok(1));
        let present = |jti: &str| ledger.get(jti).ok().flatten().is_some();
        assert!(!present("old"));
        assert!(present("recent") && present("live") && present("unreadable"));
        assert_eq!(handoffs.prune().await, Ok(0), "nothing more to forget");
    }
}
