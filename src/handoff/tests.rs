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
