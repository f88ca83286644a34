//! TOML config files whose errors are located: the file, the 1-based line and the dotted key
//! (`agent.toml:12: scale_up.for: ...`). Values are checked while they are deserialized, so
//! toml's span points at the bad value; [`toml_error`] maps that span back to its key by
//! walking the document. Used by `hybrid-agent` (agent.toml) and `hybridctl` (hybridfs.toml).

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml_edit::{Item, Table, Value};

/// A config file that cannot be used, located in the file.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {key}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line of the offending key or value (0 when the file could not be read).
    pub line: usize,
    /// Dotted path of the key (`scale_up.for`), or `-` when no key applies.
    pub key: String,
    pub message: String,
}

/// The 1-based line of byte `offset` in `text`.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

/// toml's error, located: its line and the key its span falls in.
pub fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let message = e.message().trim().to_string();
    let mut key = toml_edit::ImDocument::parse(text)
        .ok()
        .and_then(|doc| key_at(doc.as_table(), &span, String::new()))
        .unwrap_or_default();
    // A missing field is reported on its table: name the field too.
    if let Some(field) = message.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
        key = if key.is_empty() { field.to_string() } else { format!("{key}.{field}") };
    }
    ConfigError {
        file: path.to_path_buf(),
        line: line_of(text, span.start),
        key: if key.is_empty() { "-".into() } else { key },
        message,
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn within(outer: &Option<Range<usize>>, inner: &Range<usize>) -> bool {
    outer.as_ref().is_some_and(|o| o.start <= inner.start && inner.end <= o.end.max(o.start + 1))
}

/// The deepest key whose name or value covers `span`; for a span on a table header, the table.
fn key_at(table: &Table, span: &Range<usize>, prefix: String) -> Option<String> {
    for (name, item) in table.iter() {
        let path = join(&prefix, name);
        if let Some((k, _)) = table.get_key_value(name) {
            if within(&k.span(), span) {
                return Some(path);
            }
        }
        match item {
            Item::Table(t) => {
                if let Some(found) = key_at(t, span, path.clone()) {
                    return Some(found);
                }
                if within(&t.span(), span) {
                    return Some(path);
                }
            }
            Item::Value(v) => {
                if let Some(found) = value_key(v, span, path) {
                    return Some(found);
                }
            }
            _ => {}
        }
    }
    None
}

fn value_key(v: &Value, span: &Range<usize>, path: String) -> Option<String> {
    if !within(&v.span(), span) {
        return None;
    }
    if let Value::InlineTable(t) = v {
        for (name, inner) in t.iter() {
            if let Some((k, _)) = t.get_key_value(name) {
                if within(&k.span(), span) {
                    return Some(join(&path, name));
                }
            }
            if let Some(found) = value_key(inner, span, join(&path, name)) {
                return Some(found);
            }
        }
    }
    Some(path)
}
