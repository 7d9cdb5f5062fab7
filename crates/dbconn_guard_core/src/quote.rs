//! Client-chosen text in log lines, and in the statements diagnose() offers to paste: the one
//! place where names become text.
//!
//! Application names, role and database names and client addresses go into the guard's LOG and
//! WARNING lines as `key=value` fields. A client may call itself anything — say
//! `x client=10.0.0.9 actor=manual:alice` — so every such value is written double-quoted, with
//! quotes, backslashes and control characters escaped, and cannot pose as another field or line.

use std::fmt::Write;

/// `value` in double quotes, with `"` and `\` escaped and every control character written as
/// `\n`, `\t`, `\r` or `\u{..}`; other characters (letters of any script) are kept.
pub fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `quoted`, or a bare word for an absent value (`-`, or what the caller says).
pub fn quoted_or(value: Option<&str>, absent: &str) -> String {
    value.map_or_else(|| absent.to_string(), quoted)
}

/// `s` as a SQL string literal that is always one literal: `'...'` with quotes doubled, or
/// `E'...'` with backslashes and control characters escaped when it holds any (so it reads the
/// same whatever `standard_conforming_strings` is, and stays on one line).
pub fn sql_literal(s: &str) -> String {
    let escape = s.chars().any(|c| c == '\\' || c.is_control());
    let mut out = String::with_capacity(s.len() + 3);
    if escape {
        out.push('E');
    }
    out.push('\'');
    for ch in s.chars() {
        match ch {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ch if ch.is_control() => {
                let _ = write!(out, "\\u{:04x}", ch as u32);
            }
            ch => out.push(ch),
        }
    }
    out.push('\'');
    out
}

/// `s` as a quoted SQL identifier (`"..."`, quotes doubled): always one identifier.
pub fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `s` as one shell word (`'...'`, a quote written `'\''`).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A name for an item of the guard's name lists, override lists and budget lists: bare, or in double quotes when it holds what the
/// list syntax reads (comma, quote, `=`, spaces at either end).
pub fn list_item(name: &str) -> String {
    let special = name.contains([',', '"', '='])
        || name.starts_with([' ', '\t'])
        || name.ends_with([' ', '\t']);
    if special {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_name_cannot_forge_fields_or_lines() {
        let forged = "x client=10.0.0.9 actor=manual:alice";
        assert_eq!(quoted(forged), "\"x client=10.0.0.9 actor=manual:alice\"");
        assert_eq!(quoted("a\" actor=\"x"), r#""a\" actor=\"x""#);
        assert_eq!(
            quoted("line\nLOG:  fake"),
            "\"line\\nLOG:  fake\"",
            "no new line in the log"
        );
        assert_eq!(quoted("tab\there\\"), r#""tab\there\\""#);
        assert_eq!(quoted("bell\u{7}"), r#""bell\u{7}""#);
        assert_eq!(quoted("café"), "\"café\"");
        assert_eq!(quoted(""), "\"\"");
        assert_eq!(quoted_or(None, "local"), "local");
    }
}
