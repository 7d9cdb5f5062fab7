//! Name lists with `*` wildcards, as used by `dbconn_guard.include_applications`,
//! `exclude_applications`, `exclude_users` and `exclude_databases`.
//!
//! Syntax: names separated by commas; spaces around a name are ignored; `*` matches any run of
//! characters (also none); matching is case-sensitive, like PostgreSQL's names. A name holding
//! a comma, a leading/trailing space or a literal `"` is written in double quotes, with `""`
//! for a quote inside. `''` (empty) is the empty list.
//! Refused, so that a typo never half-applies: an empty entry (`a,,b`, a trailing comma), an
//! unterminated quote, text after a closing quote, control characters, and a name longer than
//! 63 bytes without a wildcard (PostgreSQL truncates names and application_name to 63 bytes, so
//! it could never match).

/// Longest name PostgreSQL keeps (NAMEDATALEN - 1).
pub const MAX_NAME_BYTES: usize = 63;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatternList {
    patterns: Vec<String>,
}

impl PatternList {
    pub fn parse(input: &str) -> Result<PatternList, String> {
        let mut patterns = Vec::new();
        if input.trim().is_empty() {
            return Ok(PatternList { patterns });
        }
        let mut chars = input.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                chars.next();
            }
            let mut item = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated quoted name \"{item}")),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            item.push('"');
                        }
                        Some('"') => break,
                        Some(c) => item.push(c),
                    }
                }
                while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                    chars.next();
                }
                if chars.peek().is_some_and(|c| *c != ',') {
                    return Err(format!("unexpected text after quoted name \"{item}\""));
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    if c == '"' {
                        return Err(
                            "a double quote must start the name: quote the whole name".into()
                        );
                    }
                    item.push(c);
                    chars.next();
                }
                item = item.trim_end_matches([' ', '\t']).to_string();
            }
            if item.is_empty() {
                return Err(
                    "empty name in list (two commas in a row, or a comma at either end)".into(),
                );
            }
            if item.chars().any(char::is_control) {
                return Err(format!("name {item:?} contains a control character"));
            }
            if !item.contains('*') && item.len() > MAX_NAME_BYTES {
                return Err(format!(
                    "name \"{item}\" is longer than {MAX_NAME_BYTES} bytes, so it can never match (PostgreSQL truncates names)"
                ));
            }
            patterns.push(item);
            match chars.next() {
                None => break,
                Some(',') => continue,
                Some(c) => return Err(format!("unexpected character {c:?}")),
            }
        }
        Ok(PatternList { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Does any pattern match `name` in full?
    pub fn matches(&self, name: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| glob(p.as_bytes(), name.as_bytes()))
    }
}

/// `*`-only glob matching, linear in practice (backtracks to the last star only).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> PatternList {
        PatternList::parse(s).unwrap()
    }

    #[test]
    fn parses_names_spaces_and_quotes() {
        assert_eq!(list("").patterns(), &[] as &[String]);
        assert_eq!(list("  ").patterns(), &[] as &[String]);
        assert_eq!(
            list("api, worker ,cron*").patterns(),
            &["api", "worker", "cron*"]
        );
        assert_eq!(
            list(r#""a, b", " padded ","say ""hi""""#).patterns(),
            &["a, b", " padded ", r#"say "hi""#]
        );
        assert_eq!(list("pg admin tool").patterns(), &["pg admin tool"]);
    }

    #[test]
    fn refuses_malformed_lists() {
        for bad in [
            "a,,b",
            "a,",
            ",a",
            r#""open"#,
            r#""a" b"#,
            "ab\"c",
            "tab\u{7}x",
            &"x".repeat(64),
        ] {
            assert!(
                PatternList::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        let long_wild = format!("{}*", "x".repeat(70));
        assert!(PatternList::parse(&long_wild).is_ok());
        let msg = PatternList::parse("a,,b").unwrap_err();
        assert!(msg.contains("empty name"), "{msg}");
    }

    #[test]
    fn wildcards_match_whole_names_case_sensitively() {
        let l = list("api, batch-*, *-admin, a*b*c");
        for yes in [
            "api",
            "batch-",
            "batch-nightly",
            "db-admin",
            "-admin",
            "abc",
            "aXbYc",
            "abbbc",
        ] {
            assert!(l.matches(yes), "{yes}");
        }
        for no in ["API", "apix", "xapi", "batch", "admin", "acb", "ab", ""] {
            assert!(!l.matches(no), "{no}");
        }
        assert!(list("*").matches(""));
        assert!(!PatternList::default().matches("anything"));
    }

    #[test]
    fn glob_backtracks_correctly() {
        assert!(glob(b"*a*a*a", b"aaaa"));
        assert!(!glob(b"*a*a*a*b", b"aaaa"));
        assert!(glob(b"**", b"x"));
    }
}
