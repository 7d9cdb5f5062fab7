//! What a configuration reload changed.
//!
//! The worker reads every setting (`pg_settings`: its value as the server's configuration gives
//! it, its unit, and whether it waits for a restart) at its start and after each reload it
//! processes; the difference from the previous reading is kept in shared memory, logged, shown
//! by `setting_changes()` and named by `diagnose()`: "work_mem 4MB → 64MB at 14:05 UTC".

use crate::session::Micros;
use std::collections::BTreeMap;

/// One setting as `pg_settings` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    /// `reset_val` (or `setting` where that is NULL), in its unit.
    pub value: String,
    /// `pg_settings.unit` (`kB`, `8kB`, `ms`, `s`, ...), if any.
    pub unit: Option<String>,
    pub pending_restart: bool,
}

/// One changed setting, its values shown as `SHOW` shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub old: String,
    pub new: String,
}

/// A change, with when the worker saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedChange {
    pub at: Micros,
    pub change: Change,
}

/// What stands for a setting that did not exist on one side (a custom setting defined, or a
/// placeholder left behind).
pub const NOT_SET: &str = "(not set)";
/// The new value of a setting that takes effect only at a restart: `pg_settings` shows the old
/// one until then.
pub const PENDING_RESTART: &str = "(changed: takes effect at a restart)";

/// `value` with every `password=...` of a connection string (`primary_conninfo`, ...) written
/// as `password=********`: a change is kept in shared memory, logged and shown by diagnose(),
/// whose text goes into tickets.
pub fn redact(value: &str) -> String {
    let lower = value.to_ascii_lowercase();
    let mut out = String::with_capacity(value.len());
    let mut rest = 0;
    let mut from = 0;
    while let Some(i) = lower[from..].find("password") {
        let at = from + i;
        // `password`, optional spaces, `=`
        let after = &lower[at + "password".len()..];
        let eq = after.len() - after.trim_start().len();
        if !after[eq..].starts_with('=') {
            from = at + "password".len();
            continue;
        }
        let value_start = at + "password".len() + eq + 1;
        let v = &value[value_start..];
        let v_trim = v.len() - v.trim_start().len();
        let vs = value_start + v_trim;
        // a quoted value ends at its closing quote, a bare one at white space
        let end = if value[vs..].starts_with('\'') {
            let mut j = vs + 1;
            let b = value.as_bytes();
            while j < b.len() {
                if b[j] == b'\\' {
                    j += 2;
                    continue;
                }
                if b[j] == b'\'' {
                    j += 1;
                    break;
                }
                j += 1;
            }
            j.min(value.len())
        } else {
            value[vs..]
                .find(char::is_whitespace)
                .map_or(value.len(), |k| vs + k)
        };
        out.push_str(&value[rest..vs]);
        out.push_str("********");
        rest = end;
        from = end;
    }
    out.push_str(&value[rest..]);
    out
}

/// The settings that differ between `before` and `after`, by name; passwords in their values
/// redacted.
pub fn diff(before: &[Setting], after: &[Setting]) -> Vec<Change> {
    let mut out = diff_plain(before, after);
    for c in &mut out {
        c.old = redact(&c.old);
        c.new = redact(&c.new);
    }
    out
}

fn diff_plain(before: &[Setting], after: &[Setting]) -> Vec<Change> {
    let old: BTreeMap<&str, &Setting> = before.iter().map(|s| (s.name.as_str(), s)).collect();
    let new: BTreeMap<&str, &Setting> = after.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut out = Vec::new();
    for (name, n) in &new {
        match old.get(name) {
            None => out.push(Change {
                name: name.to_string(),
                old: NOT_SET.into(),
                new: display(n),
            }),
            Some(o) if o.value != n.value || o.unit != n.unit => out.push(Change {
                name: name.to_string(),
                old: display(o),
                new: display(n),
            }),
            Some(o) if n.pending_restart && !o.pending_restart => out.push(Change {
                name: name.to_string(),
                old: display(o),
                new: PENDING_RESTART.into(),
            }),
            Some(_) => {}
        }
    }
    for (name, o) in &old {
        if !new.contains_key(name) {
            out.push(Change {
                name: name.to_string(),
                old: display(o),
                new: NOT_SET.into(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A setting's value as `SHOW` shows it: a number with a memory or time unit in the largest
/// unit that divides it exactly (`4096` kB is `4MB`, `60000` ms is `1min`), anything else as it
/// is; an empty string as `""`.
pub fn display(s: &Setting) -> String {
    if s.value.is_empty() {
        return "\"\"".into();
    }
    let Some(unit) = s.unit.as_deref() else {
        return s.value.clone();
    };
    // a value as a configuration file writes it (`'1min'`) carries its unit already
    let Ok(v) = s.value.parse::<i64>() else {
        return s.value.clone();
    };
    // -1 and 0 usually mean "off" or "the default": shown bare, as SHOW shows -1
    if v <= 0 {
        return if v == 0 {
            format!("0{}", base_unit(unit))
        } else {
            v.to_string()
        };
    }
    const MEMORY: [(&str, i64); 5] = [
        ("TB", 1 << 40),
        ("GB", 1 << 30),
        ("MB", 1 << 20),
        ("kB", 1 << 10),
        ("B", 1),
    ];
    const TIME: [(&str, i64); 6] = [
        ("d", 86_400_000_000),
        ("h", 3_600_000_000),
        ("min", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
        ("us", 1),
    ];
    let (table, per): (&[(&str, i64)], i64) = match unit {
        "B" => (&MEMORY, 1),
        "kB" => (&MEMORY, 1 << 10),
        "8kB" => (&MEMORY, 8 << 10),
        "16kB" => (&MEMORY, 16 << 10),
        "32kB" => (&MEMORY, 32 << 10),
        "MB" => (&MEMORY, 1 << 20),
        "us" => (&TIME, 1),
        "ms" => (&TIME, 1_000),
        "s" => (&TIME, 1_000_000),
        "min" => (&TIME, 60_000_000),
        _ => return format!("{v}{unit}"),
    };
    let Some(base) = v.checked_mul(per) else {
        return format!("{v}{unit}");
    };
    let (name, size) = table
        .iter()
        .find(|(_, size)| base % size == 0)
        .copied()
        .unwrap_or(("", 1));
    format!("{}{name}", base / size)
}

fn base_unit(unit: &str) -> &str {
    match unit {
        "8kB" | "16kB" | "32kB" => "kB",
        u => u,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, value: &str, unit: Option<&str>) -> Setting {
        Setting {
            name: name.into(),
            value: value.into(),
            unit: unit.map(Into::into),
            pending_restart: false,
        }
    }

    #[test]
    fn values_are_shown_as_show_shows_them() {
        assert_eq!(display(&s("work_mem", "4096", Some("kB"))), "4MB");
        assert_eq!(display(&s("work_mem", "65536", Some("kB"))), "64MB");
        assert_eq!(display(&s("work_mem", "1000", Some("kB"))), "1000kB");
        assert_eq!(display(&s("shared_buffers", "16384", Some("8kB"))), "128MB");
        assert_eq!(display(&s("statement_timeout", "0", Some("ms"))), "0ms");
        assert_eq!(
            display(&s("statement_timeout", "60000", Some("ms"))),
            "1min"
        );
        assert_eq!(
            display(&s("statement_timeout", "1500", Some("ms"))),
            "1500ms"
        );
        assert_eq!(display(&s("autovacuum_naptime", "60", Some("s"))), "1min");
        assert_eq!(
            display(&s("log_min_duration_statement", "-1", Some("ms"))),
            "-1"
        );
        assert_eq!(
            display(&s("search_path", "\"$user\", public", None)),
            "\"$user\", public"
        );
        assert_eq!(display(&s("application_name", "", None)), "\"\"");
        assert_eq!(display(&s("x", "12", Some("furlongs"))), "12furlongs");
        // as a configuration file line writes it
        assert_eq!(display(&s("statement_timeout", "1min", Some("ms"))), "1min");
    }

    #[test]
    fn passwords_in_connection_strings_are_never_kept() {
        assert_eq!(
            redact("host=a password=secret1 user=r"),
            "host=a password=******** user=r"
        );
        assert_eq!(
            redact("password = 'se cr\\'et' port=5"),
            "password = ******** port=5"
        );
        assert_eq!(redact("PASSWORD=x"), "PASSWORD=********");
        assert_eq!(redact("passwordless=1"), "passwordless=1");
        assert_eq!(redact("no secret here"), "no secret here");
        let before = vec![s("primary_conninfo", "host=a password=old", None)];
        let after = vec![s("primary_conninfo", "host=b password=new", None)];
        let d = diff(&before, &after);
        assert_eq!(d[0].old, "host=a password=********");
        assert_eq!(d[0].new, "host=b password=********");
    }

    #[test]
    fn a_reload_changes_what_differs_and_nothing_else() {
        let before = vec![
            s("work_mem", "4096", Some("kB")),
            s("max_connections", "100", None),
            s("dbconn_guard.naptime", "10000", Some("ms")),
            s("custom.gone", "1", None),
        ];
        let mut after = vec![
            s("work_mem", "65536", Some("kB")),
            s("max_connections", "100", None),
            s("dbconn_guard.naptime", "10000", Some("ms")),
            s("custom.new", "x", None),
        ];
        after[1].pending_restart = true;
        assert_eq!(
            diff(&before, &after),
            vec![
                Change {
                    name: "custom.gone".into(),
                    old: "1".into(),
                    new: NOT_SET.into()
                },
                Change {
                    name: "custom.new".into(),
                    old: NOT_SET.into(),
                    new: "x".into()
                },
                Change {
                    name: "max_connections".into(),
                    old: "100".into(),
                    new: PENDING_RESTART.into()
                },
                Change {
                    name: "work_mem".into(),
                    old: "4MB".into(),
                    new: "64MB".into()
                },
            ]
        );
        // a reload that changed nothing
        assert!(diff(&before, &before).is_empty());
        // a setting already waiting for a restart is not changed again by the next reload
        assert!(diff(&after, &after).is_empty());
    }
}
