//! The field names each configuration file may contain, checked before deserializing.
//!
//! serde's `deny_unknown_fields` stops at the first unknown field, so a misspelt field hid every
//! problem below it. Here every unknown field is reported with a did-you-mean and taken out of
//! the document (a misspelling of an absent field is read as that field), so that the raw types
//! (which keep `deny_unknown_fields` as a second line of defence) validate the rest.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::diag::{Diagnostic, Source};

/// What a field may hold, as far as field names go (values are checked by serde).
pub enum Shape {
    /// Any value.
    Value,
    /// A table (`[name]`) with these fields.
    Table(&'static [Field]),
    /// An array of tables (`[[name]]`) with these fields.
    Tables(&'static [Field]),
    /// An array whose inline-table entries have these fields (other entries are left alone).
    Entries(&'static [Field]),
    /// A table whose fields depend on its `kind` (unknown kinds are left to serde).
    Tagged(&'static [(&'static str, &'static [Field])]),
}

/// A field name and what it holds.
pub type Field = (&'static str, Shape);

use Shape::Value as V;

/// `mandate.toml`.
pub const SETTINGS: &[Field] = &[
    (
        "server",
        Shape::Table(&[
            ("listen", V),
            ("public_url", V),
            ("allowed_hosts", V),
            ("allowed_origins", V),
            ("tls", Shape::Table(&[("cert", V), ("key", V)])),
            ("worker_threads", V),
        ]),
    ),
    ("store", Shape::Table(&[("path", V)])),
    (
        "identity",
        Shape::Table(&[(
            "issuers",
            Shape::Tables(&[
                ("issuer", V),
                ("audiences", V),
                ("tenant_claim", V),
                ("tenant", V),
                ("agent_claim", V),
                ("groups_claim", V),
                ("roles_claim", V),
                ("attributes", V),
                ("typ", V),
                ("algorithms", V),
                ("required_scopes", V),
                ("jwks_refresh", V),
                ("jwks_min_interval", V),
            ]),
        )]),
    ),
    (
        "exchange",
        Shape::Tables(&[
            ("name", V),
            ("kind", V),
            ("token_endpoint", V),
            ("client_id", V),
            ("client_secret_env", V),
            ("client_secret_file", V),
            ("client_auth", V),
            ("private_key_file", V),
            ("private_key_id", V),
            ("actor_token", V),
            ("ttl", V),
            ("resource_token_endpoint", V),
            ("resource_issuer", V),
            ("resource_client_id", V),
            ("resource_client_secret_env", V),
            ("resource_client_secret_file", V),
        ]),
    ),
    (
        "agents",
        Shape::Table(&[
            ("register_mission_agents", V),
            ("sweep_interval", V),
            ("max_idle", V),
        ]),
    ),
    ("handoff", Shape::Table(&[("max_depth", V), ("ttl", V)])),
    (
        "approvals",
        Shape::Table(&[
            ("ttl", V),
            ("wait", V),
            ("approver_role", V),
            ("webhook_url", V),
            ("webhook_secret_env", V),
            ("replay_window", V),
            ("retain", V),
        ]),
    ),
];

/// A tool manifest.
pub const MANIFEST: &[Field] = &[
    ("description", V),
    ("environments", V),
    ("region", V),
    (
        "transport",
        Shape::Tagged(&[
            (
                "stdio",
                &[
                    ("kind", V),
                    ("command", V),
                    ("args", V),
                    ("env", V),
                    ("protocol", V),
                ],
            ),
            ("http", &[("kind", V), ("url", V), ("protocol", V)]),
        ]),
    ),
    (
        "auth",
        Shape::Table(&[
            ("exchange", V),
            ("audience", V),
            ("scopes", V),
            ("deliver", V),
            ("mission", V),
            ("agent", V),
        ]),
    ),
    ("timeout", V),
    (
        "isolation",
        Shape::Table(&[("mode", V), ("max_instances", V), ("idle_timeout", V)]),
    ),
    (
        "tools",
        Shape::Tables(&[
            ("name", V),
            ("effect", V),
            ("sensitivity", V),
            ("scopes", V),
            ("approval", V),
            ("timeout", V),
        ]),
    ),
];

/// A mission.
pub const MISSION: &[Field] = &[
    ("description", V),
    ("tenant", V),
    ("owner", V),
    ("expires", V),
    ("agents", V),
    ("regions", V),
    ("tools", Shape::Entries(&[("tool", V), ("as", V)])),
    ("resources", V),
    ("prompts", V),
    ("handoffs", V),
    ("require_reasoning", V),
    (
        "limits",
        Shape::Table(&[
            ("calls_per_minute", V),
            ("per_agent", V),
            ("per_user", V),
            ("per_tool", V),
        ]),
    ),
];

/// Parses `src` as a `T` whose fields are `fields`. Every unknown field goes to `diags`, and the
/// value is still returned (read without them) so that the caller validates the rest; `None`
/// (with a diagnostic) when the file is not TOML or not a `T`.
pub fn parse<T: DeserializeOwned>(
    src: &Source,
    fields: &[Field],
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    let mut doc = match DeTable::parse(src.text) {
        Ok(doc) => doc,
        Err(e) => {
            diags.push(src.toml_error(&e));
            return None;
        }
    };
    check_table(src, doc.get_mut(), fields, "", "", diags);
    match T::deserialize(toml::de::Deserializer::from(doc)) {
        Ok(raw) => Some(raw),
        Err(e) => {
            diags.push(src.toml_error(&e));
            None
        }
    }
}

/// Reports and removes the unknown fields of `table`, then checks its known fields' tables.
/// `path` is the table's dotted key (empty for the document), `label` says where it is for
/// messages, e.g. `` in `[transport]` ``.
fn check_table(
    src: &Source,
    table: &mut DeTable<'_>,
    fields: &[Field],
    path: &str,
    label: &str,
    diags: &mut Vec<Diagnostic>,
) {
    let names = || fields.iter().map(|(name, _)| *name);
    let unknown: Vec<Spanned<Cow<'_, str>>> = table
        .keys()
        .filter(|k| !names().any(|n| n == k.get_ref().as_ref()))
        .cloned()
        .collect();
    for key in unknown {
        let Some((_, value)) = table.remove_entry(key.get_ref().as_ref()) else {
            continue;
        };
        let word = key.get_ref().as_ref();
        let message = match closest_field(word, names()) {
            Some(meant) => {
                // Read as the field it was meant to be, so that the rest is checked as if
                // corrected (and no "missing field" follows).
                if !table.contains_key(meant) {
                    table.insert(Spanned::new(key.span(), Cow::Borrowed(meant)), value);
                }
                format!("unknown field `{word}`{label} (did you mean `{meant}`?)")
            }
            None => format!(
                "unknown field `{word}`{label} (expected one of {})",
                names()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        diags.push(src.at(key.span().start, message));
    }
    for (name, shape) in fields {
        let Some(value) = table.get_mut(*name) else {
            continue;
        };
        let full = if path.is_empty() {
            (*name).to_owned()
        } else {
            format!("{path}.{name}")
        };
        match (shape, value.get_mut()) {
            (Shape::Table(inner), DeValue::Table(t)) => {
                check_table(src, t, inner, &full, &format!(" in `[{full}]`"), diags)
            }
            (Shape::Tables(inner) | Shape::Entries(inner), DeValue::Array(items)) => {
                let label = match shape {
                    Shape::Tables(_) => format!(" in `[[{full}]]`"),
                    _ => format!(" in a `{full}` entry"),
                };
                for item in items.iter_mut() {
                    if let DeValue::Table(t) = item.get_mut() {
                        check_table(src, t, inner, &full, &label, diags);
                    }
                }
            }
            (Shape::Tagged(variants), DeValue::Table(t)) => {
                let kind = t.get("kind").and_then(|k| k.get_ref().as_str());
                if let Some((_, inner)) = variants.iter().find(|(v, _)| Some(*v) == kind) {
                    check_table(src, t, inner, &full, &format!(" in `[{full}]`"), diags);
                }
            }
            _ => {}
        }
    }
}

/// The field `word` is likely a misspelling of: closer than for other names, because field names
/// are short (`url` is not a misspelt `args`).
fn closest_field<'a>(word: &str, names: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    names
        .map(|n| (strsim::levenshtein(word, n), n))
        .filter(|(d, n)| *d <= (n.chars().count() / 3).clamp(1, 2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}
