//! Per-application and per-user timeouts: `dbconn_guard.idle_timeout_overrides` and
//! `dbconn_guard.idle_in_transaction_timeout_overrides`.
//!
//! Syntax: comma-separated items `app:<pattern>=<duration>` or `user:<pattern>=<duration>`,
//! e.g. `app:batch-*=1h, app:api=2min, user:etl=30min`. A pattern is a name as in the name lists
//! (`*` matches any run of characters; double quotes around a name holding a comma, `=` or a
//! quote, `""` for a quote). A duration is a number with one of PostgreSQL's time units (`ms`,
//! `s`, `min`, `h`, `d`), a bare number being seconds; `0` means never. The first item that
//! matches a session wins; a session no item matches has the global timeout.
//!
//! A malformed list is refused whole, and the message names the item: a typo never half-applies.

use super::patterns::{PatternList, MAX_NAME_BYTES};
use super::session::{Backend, Micros};

/// Shortest timeout an item may give but 0 (never), as for the global timeouts.
pub const MIN_TIMEOUT: Micros = 1_000_000;
/// Longest: 30 days.
pub const MAX_TIMEOUT: Micros = 30 * 24 * 3600 * 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Application,
    User,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    pub key: Key,
    pub pattern: PatternList,
    /// Microseconds; 0 = never.
    pub timeout: Micros,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    items: Vec<Override>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn items(&self) -> &[Override] {
        &self.items
    }

    /// The timeout of the first item matching `b`, if any (`Some(0)`: never).
    pub fn timeout_for(&self, b: &Backend) -> Option<Micros> {
        self.items
            .iter()
            .find(|o| {
                let name = match o.key {
                    Key::Application => b.application_name.as_deref(),
                    Key::User => b.usename.as_deref(),
                };
                o.pattern.matches(name.unwrap_or(""))
            })
            .map(|o| o.timeout)
    }

    /// The shortest timeout any item gives (0s left out).
    pub fn shortest(&self) -> Option<Micros> {
        self.items
            .iter()
            .map(|o| o.timeout)
            .filter(|&t| t > 0)
            .min()
    }

    pub fn parse(input: &str) -> Result<Overrides, String> {
        let items = parse_keyed(input, "a duration (for example app:api=2min)", |d| {
            parse_duration(d)
        })?
        .into_iter()
        .map(|(key, pattern, timeout)| Override {
            key,
            pattern,
            timeout,
        })
        .collect();
        Ok(Overrides { items })
    }
}

/// Parses a list of items `app:<pattern>=<value>` or `user:<pattern>=<value>` (the overrides,
/// the connection budgets): `value` reads what follows the `=`, and `example` says what it
/// should be, for a missing `=`. A malformed list is refused whole, naming the item.
pub fn parse_keyed<V>(
    input: &str,
    example: &str,
    value: impl Fn(&str) -> Result<V, String>,
) -> Result<Vec<(Key, PatternList, V)>, String> {
    let mut items = Vec::new();
    for (i, raw) in split_items(input)?.into_iter().enumerate() {
        let n = i + 1;
        let item = raw.trim();
        let fail = |why: String| format!("item {n} ({item:?}): {why}");
        if item.is_empty() {
            return Err(format!(
                "item {n} is empty (two commas in a row, or a comma at either end)"
            ));
        }
        let (key, rest) = if let Some(r) = item.strip_prefix("app:") {
            (Key::Application, r)
        } else if let Some(r) = item.strip_prefix("user:") {
            (Key::User, r)
        } else {
            return Err(fail(
                "start it with app: (an application_name) or user: (a role)".into(),
            ));
        };
        let (pattern, v) = split_at_equals(rest)
            .ok_or_else(|| format!("no '=' and {example}"))
            .map_err(&fail)?;
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(fail("no name before '='".into()));
        }
        let unquoted = unquote(pattern).map_err(&fail)?;
        if !unquoted.contains('*') && unquoted.len() > MAX_NAME_BYTES {
            return Err(fail(format!(
                "the name is longer than {MAX_NAME_BYTES} bytes, so it can never match (PostgreSQL truncates names)"
            )));
        }
        let list = PatternList::parse(pattern).map_err(&fail)?;
        let v = value(v.trim()).map_err(&fail)?;
        items.push((key, list, v));
    }
    Ok(items)
}

/// Splits at commas outside double quotes; `''` is no item at all.
fn split_items(input: &str) -> Result<Vec<String>, String> {
    if input.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in input.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                out.last_mut().unwrap().push(c);
            }
            ',' if !quoted => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    if quoted {
        return Err("unterminated double quote".into());
    }
    Ok(out)
}

/// `pattern=duration`, at the first `=` outside double quotes (a name holding `=` is quoted):
/// whatever follows must then be a duration alone, so a forgotten comma
/// (`app:a=0 app:b=2h`) is refused, not read as one odd name.
fn split_at_equals(s: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    let mut at = None;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '=' if !quoted => {
                at = Some(i);
                break;
            }
            _ => {}
        }
    }
    at.map(|i| (&s[..i], &s[i + 1..]))
}

fn unquote(p: &str) -> Result<String, String> {
    let list = PatternList::parse(p)?;
    match list.patterns() {
        [one] => Ok(one.clone()),
        _ => Err("one name per item".into()),
    }
}

/// A duration in PostgreSQL's units; a bare number is seconds; 0 or 1s to 30d.
pub fn parse_duration(s: &str) -> Result<Micros, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration: give a number with a unit, as in 90s, 5min or 1h")
    })?;
    let scale = match unit.trim() {
        "" | "s" => 1e6,
        "ms" => 1e3,
        "min" => 60e6,
        "h" => 3600e6,
        "d" => 86400e6,
        other => return Err(format!("unit {other:?} is not one of ms, s, min, h, d")),
    };
    // 0 is never; anything else must be at least 1s (checked before rounding: a tiny value is
    // not 0)
    if value == 0.0 {
        return Ok(0);
    }
    let us = (value * scale).round() as Micros;
    if us < MIN_TIMEOUT {
        return Err(format!(
            "{s} is under 1s: a timeout is 0 (never) or at least 1s"
        ));
    }
    if us > MAX_TIMEOUT {
        return Err(format!("{s} is over 30d"));
    }
    Ok(us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fixtures::*;

    fn session(app: &str, user: &str) -> Backend {
        let mut b = client(1, "idle", 10);
        b.application_name = Some(app.into());
        b.usename = Some(user.into());
        b
    }

    #[test]
    fn the_first_item_that_matches_wins() {
        let o = Overrides::parse("app:batch-*=1h, app:api=2min, user:etl=30min, app:*=0").unwrap();
        assert_eq!(o.items().len(), 4);
        assert_eq!(
            o.timeout_for(&session("batch-nightly", "etl")),
            Some(3_600_000_000)
        );
        assert_eq!(o.timeout_for(&session("api", "web")), Some(120_000_000));
        // the user item comes before the catch-all
        assert_eq!(
            o.timeout_for(&session("worker", "etl")),
            Some(1_800_000_000)
        );
        assert_eq!(o.timeout_for(&session("worker", "web")), Some(0));
        assert_eq!(o.shortest(), Some(120_000_000));
        let none = Overrides::parse("app:api=2min").unwrap();
        assert_eq!(none.timeout_for(&session("other", "web")), None);
        assert!(Overrides::parse("").unwrap().is_empty());
        assert!(Overrides::parse("  ").unwrap().is_empty());
    }

    #[test]
    fn units_quotes_and_bare_seconds() {
        let o = Overrides::parse(r#"app:"odd, name=x"=90, user:"say ""hi"""=1500ms, app:a = 1.5h"#)
            .unwrap();
        assert_eq!(
            o.timeout_for(&session("odd, name=x", "u")),
            Some(90_000_000)
        );
        assert_eq!(o.timeout_for(&session("x", "say \"hi\"")), Some(1_500_000));
        assert_eq!(o.timeout_for(&session("a", "u")), Some(5_400_000_000));
        assert_eq!(parse_duration("2d"), Ok(172_800_000_000));
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("0min"), Ok(0));
    }

    #[test]
    fn a_malformed_list_is_refused_naming_the_item() {
        for (bad, says) in [
            ("app:api=2min,,user:x=1h", "item 2 is empty"),
            (
                "app:api=2min, db:shop=1h",
                "item 2 (\"db:shop=1h\"): start it with app:",
            ),
            (
                "app:api",
                "no '=' and a duration (for example app:api=2min)",
            ),
            ("app:api=soon", "is not a duration"),
            ("app:api=5 weeks", "unit \"weeks\""),
            ("app:api=300ms", "under 1s"),
            ("app:api=31d", "over 30d"),
            ("app:=1h", "no name before"),
            ("app:\"api=1h", "unterminated"),
            ("user:a,b=1h", "item 1 (\"user:a\")"),
            // a forgotten comma, or another separator: never one odd name
            ("app:reporting=0 app:batch-*=2h", "app:batch-*=2h"),
            ("app:a=1h; app:reporting=0", "item 1"),
            ("app:api==30s", "is not a duration"),
            ("app:api=0.0000001s", "under 1s"),
        ] {
            let e = Overrides::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = format!("app:{}=1h", "x".repeat(64));
        assert!(Overrides::parse(&long)
            .unwrap_err()
            .contains("longer than 63"));
    }
}
