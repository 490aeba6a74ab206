//! Diagnostics: every configuration problem, with `path:line:col`.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in one file. Line 0 means the file (or directory) as a whole: printed as
/// `path: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.file.display(), self.message);
        }
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// Something in the configuration directory that loads but that the user should know about,
/// e.g. a file Mandate reads nothing from yet. Printed as `path: warning: message`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    pub file: PathBuf,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: warning: {}", self.file.display(), self.message)
    }
}

/// A source file being validated: turns byte offsets into line and column.
pub struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// A diagnostic at byte `offset` (1-based line and column, columns in characters).
    pub fn at(&self, offset: usize, message: impl Into<String>) -> Diagnostic {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let col = before
            .rsplit_once('\n')
            .map_or(before, |(_, tail)| tail)
            .chars()
            .count()
            + 1;
        Diagnostic {
            file: self.path.to_owned(),
            line,
            col,
            message: message.into(),
        }
    }

    /// A diagnostic for the whole file (line 1, column 1).
    pub fn file(&self, message: impl Into<String>) -> Diagnostic {
        self.at(0, message)
    }

    /// Converts a TOML parse error (which carries a span) into a diagnostic.
    pub fn toml_error(&self, e: &toml::de::Error) -> Diagnostic {
        let offset = e.span().map_or(0, |s| s.start);
        self.at(offset, tidy_toml_message(e.message()))
    }
}

/// Makes serde's messages read like ours: `unknown field `x`, expected one of …`.
fn tidy_toml_message(message: &str) -> String {
    message.trim().trim_end_matches('.').replace('\n', " ")
}

/// The closest candidate to `word`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// ` (did you mean `x`?)` or nothing.
pub fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    did_you_mean(word, candidates)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_line_and_column() {
        let src = Source {
            path: Path::new("m.toml"),
            text: "a = 1\nbé = 2\n",
        };
        assert_eq!(src.at(0, "x").to_string(), "m.toml:1:1: x");
        assert_eq!(src.at(9, "x").to_string(), "m.toml:2:3: x");
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("hr/people/lookp", ["hr/people/lookup", "finance/ledger/x"]),
            Some("hr/people/lookup")
        );
        assert_eq!(did_you_mean("zzz", ["finance/ledger/get_invoice"]), None);
    }
}
