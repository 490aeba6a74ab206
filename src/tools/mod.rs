//! Tool definitions: lock files (pinning) and drift detection.
//!
//! `mandate pin` writes `<manifest>.lock.json` beside the tool manifest: every tool definition the
//! downstream served, each with the SHA-256 of its RFC 8785 canonical JSON. Key order and
//! whitespace therefore never count as drift; any change of description, schema, annotations or
//! any other field does, as does a tool added or removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// A lock file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// Manifest id (`<domain>/<name>`).
    pub manifest: String,
    /// When it was pinned (RFC 3339).
    pub pinned_at: String,
    /// Downstream `serverInfo` at pin time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<serde_json::Value>,
    /// Pinned definitions, sorted by name.
    pub tools: Vec<PinnedTool>,
}

/// One pinned tool definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedTool {
    pub name: String,
    /// SHA-256 (hex) of the RFC 8785 canonical JSON of `definition`.
    pub sha256: String,
    /// The definition exactly as the downstream served it.
    pub definition: serde_json::Value,
}

impl LockFile {
    /// Builds a lock from served definitions (JSON objects with a `name`).
    pub fn from_definitions(
        manifest: &str,
        server: Option<serde_json::Value>,
        definitions: Vec<serde_json::Value>,
    ) -> Self {
        let mut tools: Vec<PinnedTool> = definitions
            .into_iter()
            .map(|definition| PinnedTool {
                name: definition
                    .get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                sha256: definition_hash(&definition),
                definition,
            })
            .collect();
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        Self {
            manifest: manifest.to_owned(),
            pinned_at: crate::audit::now_rfc3339(),
            server,
            tools,
        }
    }

    pub fn get(&self, name: &str) -> Option<&PinnedTool> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// Compares served definitions with the lock.
    pub fn drift(&self, served: &[serde_json::Value]) -> Drift {
        let served: BTreeMap<&str, String> = served
            .iter()
            .map(|d| {
                (
                    d.get("name").and_then(|n| n.as_str()).unwrap_or_default(),
                    definition_hash(d),
                )
            })
            .collect();
        let mut drift = Drift::default();
        for pinned in &self.tools {
            match served.get(pinned.name.as_str()) {
                None => {
                    drift.removed.insert(pinned.name.clone());
                }
                Some(hash) if *hash != pinned.sha256 => {
                    drift.changed.insert(pinned.name.clone());
                }
                Some(_) => {}
            }
        }
        for name in served.keys() {
            if self.get(name).is_none() {
                drift.added.insert((*name).to_owned());
            }
        }
        drift
    }

    /// Reads and checks a lock file (each stored hash must match its definition).
    pub fn read(path: &Path) -> Result<Option<Self>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read: {e}")),
        };
        let lock: LockFile = serde_json::from_str(&text)
            .map_err(|e| format!("line {} column {}: {e}", e.line(), e.column()))?;
        for t in &lock.tools {
            if definition_hash(&t.definition) != t.sha256 {
                return Err(format!(
                    "`sha256` of tool `{}` does not match its definition (edited by hand?): run `mandate pin` again after review",
                    t.name
                ));
            }
        }
        Ok(Some(lock))
    }

    /// Writes the lock file (pretty JSON, trailing newline).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, path)
    }
}

/// Where the lock file of a manifest lives: beside it.
pub fn lock_path(manifest_path: &Path) -> PathBuf {
    manifest_path.with_extension("lock.json")
}

/// What differs between the lock and the served definitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drift {
    pub changed: BTreeSet<String>,
    pub removed: BTreeSet<String>,
    pub added: BTreeSet<String>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty() && self.added.is_empty()
    }

    /// Every tool that must not be served.
    pub fn quarantined(&self) -> BTreeSet<String> {
        self.changed
            .iter()
            .chain(&self.removed)
            .chain(&self.added)
            .cloned()
            .collect()
    }

    pub fn describe(&self) -> String {
        let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        let mut parts = Vec::new();
        if !self.changed.is_empty() {
            parts.push(format!("changed: {}", list(&self.changed)));
        }
        if !self.removed.is_empty() {
            parts.push(format!("removed: {}", list(&self.removed)));
        }
        if !self.added.is_empty() {
            parts.push(format!("added: {}", list(&self.added)));
        }
        parts.join("; ")
    }
}

/// SHA-256 (hex) over the RFC 8785 canonical JSON of a definition.
pub fn definition_hash(definition: &serde_json::Value) -> String {
    let bytes = serde_jcs::to_vec(definition).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_whitespace_are_not_drift() {
        let a: serde_json::Value = serde_json::from_str(
            r#"{"name":"t","description":"d","inputSchema":{"type":"object","properties":{"a":{"type":"string"}}}}"#,
        )
        .unwrap();
        let b: serde_json::Value = serde_json::from_str(
            r#"{ "inputSchema" : { "properties": {"a": {"type": "string"}}, "type": "object" },
                 "description": "d", "name": "t" }"#,
        )
        .unwrap();
        let lock = LockFile::from_definitions("x/y", None, vec![a]);
        assert!(lock.drift(&[b]).is_empty());
    }

    #[test]
    fn changes_additions_and_removals_are_drift() {
        let lock = LockFile::from_definitions(
            "x/y",
            None,
            vec![
                json!({"name":"a","description":"one"}),
                json!({"name":"b","description":"two"}),
            ],
        );
        let drift = lock.drift(&[
            json!({"name":"a","description":"one, and emails it"}),
            json!({"name":"c","description":"new"}),
        ]);
        assert_eq!(drift.changed, BTreeSet::from(["a".to_string()]));
        assert_eq!(drift.removed, BTreeSet::from(["b".to_string()]));
        assert_eq!(drift.added, BTreeSet::from(["c".to_string()]));
        let annotations = lock.drift(&[
            json!({"name":"a","description":"one","annotations":{"readOnlyHint":true}}),
            json!({"name":"b","description":"two"}),
        ]);
        assert_eq!(annotations.changed, BTreeSet::from(["a".to_string()]));
    }
}
