//! Where in a TOML file an error is: line and dotted field path (`things[1].address`). toml's
//! errors carry a byte span but not the field's name, so the text is scanned for table headers
//! and `key =` lines. Shared by the agent's config and the template descriptors: one place, one
//! behaviour, one error format (`file:line: field `x`: message`).

use std::fmt;
use std::path::PathBuf;

/// An error with its place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is not about a place in the file (e.g. it cannot be read).
    pub line: usize,
    /// Dotted path of the field, e.g. `things[1].address`; empty when unknown.
    pub field: String,
    pub message: String,
}

impl fmt::Display for PlacedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for PlacedError {}

/// Line (1-based) and dotted field path of byte offset `at`. Headers up to and including the
/// error's line count: a missing field points at its table's header. `[[name]]` tables are
/// numbered (`name[0]`, `name[1]`, …).
pub fn locate(text: &str, at: usize) -> (usize, String) {
    let at = at.min(text.len());
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = Default::default();
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    for l in text[..line_end].lines() {
        let l = l.trim();
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.trim().to_owned();
        }
    }
    let this_line = text[before.rfind('\n').map_or(0, |i| i + 1)..]
        .lines()
        .next()
        .unwrap_or("");
    let key = match this_line.split_once('=') {
        Some((k, _)) if !this_line.trim_start().starts_with('[') => k.trim().trim_matches('"'),
        _ => "",
    };
    let field = match (table.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    };
    (line, field)
}

/// Line (1-based) of `key = …` in the `nth` occurrence of table `table` (`[table]` or
/// `[[table]]`; the top level when `table` is empty), else of that table's header, else 0.
pub fn key_line(text: &str, table: &str, nth: usize, key: &str) -> usize {
    let mut seen = 0;
    let mut inside = table.is_empty();
    let mut header = 0;
    for (i, l) in text.lines().enumerate() {
        let l = l.trim();
        if l.starts_with('[') {
            let name = l
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
            inside = false;
            if name == table {
                if seen == nth {
                    inside = true;
                    header = i + 1;
                }
                seen += 1;
            }
            continue;
        }
        if inside
            && !key.is_empty()
            && l.split_once('=')
                .is_some_and(|(k, _)| k.trim().trim_matches('"') == key)
        {
            return i + 1;
        }
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "a = 1\n[t]\nx = 2\n[[arr]]\nk = 1\n[[arr]]\nj = 2\nk = 3\n";

    #[test]
    fn locate_names_tables_arrays_and_keys() {
        assert_eq!(locate(T, 0), (1, "a".into()));
        assert_eq!(locate(T, T.find("x =").unwrap_or(0)), (3, "t.x".into()));
        assert_eq!(
            locate(T, T.rfind("k =").unwrap_or(0)),
            (8, "arr[1].k".into())
        );
        assert_eq!(locate(T, T.find("[t]").unwrap_or(0)), (2, "t".into()));
    }

    #[test]
    fn key_line_finds_the_nth_table() {
        assert_eq!(key_line(T, "", 0, "a"), 1);
        assert_eq!(key_line(T, "t", 0, "x"), 3);
        assert_eq!(key_line(T, "arr", 1, "k"), 8);
        assert_eq!(key_line(T, "arr", 1, "missing"), 6);
        assert_eq!(key_line(T, "arr", 2, "k"), 0);
        assert_eq!(key_line(T, "", 0, "x"), 0);
    }

    #[test]
    fn display_has_file_line_and_field() {
        let e = PlacedError {
            file: "/a.toml".into(),
            line: 3,
            field: "t.x".into(),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "/a.toml:3: field `t.x`: bad");
    }
}
