//! JSON Schemas of the configuration files, for editors: generated from the raw config types
//! (their `///` docs become the descriptions), so they cannot drift from what `mandate check`
//! accepts. Shipped files point at them with taplo's `#:schema` directive, which VS Code (Even
//! Better TOML) and taplo use to validate and complete while a user types.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;

use super::raw::{RawManifest, RawMission, RawSettings};

/// One schema file: its file name and its text.
pub struct SchemaFile {
    /// File name, e.g. `mission.schema.json`.
    pub name: &'static str,
    /// Pretty-printed JSON, ending in a newline.
    pub text: String,
}

/// The schemas of `mandate.toml`, mission manifests and tool manifests (JSON Schema draft 7,
/// which editors support widely).
pub fn manifests() -> Result<Vec<SchemaFile>, serde_json::Error> {
    Ok(vec![
        file::<RawSettings>(
            "mandate.schema.json",
            "Mandate broker settings (mandate.toml)",
        )?,
        file::<RawMission>(
            "mission.schema.json",
            "Mandate mission manifest (missions/<domain>/<env>/<name>.toml)",
        )?,
        file::<RawManifest>(
            "tool-manifest.schema.json",
            "Mandate tool manifest (tool-manifests/<domain>/<name>.toml)",
        )?,
    ])
}

fn file<T: JsonSchema>(name: &'static str, title: &str) -> Result<SchemaFile, serde_json::Error> {
    let mut schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    if let Some(object) = schema.as_object_mut() {
        object.insert("title".into(), title.into());
    }
    let mut text = serde_json::to_string_pretty(&schema)?;
    text.push('\n');
    Ok(SchemaFile { name, text })
}
