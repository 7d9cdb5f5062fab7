//! The documentation's SQL examples are executed: every ```sql block of README.md and docs/*.md,
//! in order, statement by statement, in a database of their own. A block preceded by a line
//! `<!-- not executed: <why> -->` is skipped.

use dbconn_guard_integration::*;
use std::path::PathBuf;

/// The statements of a block: `--` comments removed, split at `;`.
fn statements(block: &str) -> Vec<String> {
    let mut text = String::new();
    for line in block.lines() {
        let code = match line.find("--") {
            Some(i) if !line[..i].contains('\'') => &line[..i],
            _ => line,
        };
        text.push_str(code);
        text.push('\n');
    }
    text.split(';')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// (file, line, block) of every executed ```sql block, README first.
fn examples() -> Vec<(String, usize, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            if lines[i].trim() == "```sql" {
                let skip = i > 0 && lines[i - 1].trim_start().starts_with("<!-- not executed");
                let start = i + 1;
                let mut j = start;
                while j < lines.len() && lines[j].trim() != "```" {
                    j += 1;
                }
                if !skip {
                    out.push((
                        f.file_name().unwrap().to_string_lossy().into_owned(),
                        start,
                        lines[start..j].join("\n"),
                    ));
                }
                i = j;
            }
            i += 1;
        }
    }
    out
}

#[test]
fn the_documentation_sql_examples_run() {
    let mut a = guard_admin();
    // the role the docs grant the admin role to
    ensure_role(&mut a, "alice", "");
    a.batch_execute("DROP DATABASE IF EXISTS it_docs WITH (FORCE)")
        .unwrap();
    a.batch_execute("CREATE DATABASE it_docs").unwrap();
    let all = examples();
    assert!(all.len() >= 10, "only {} examples found", all.len());
    let mut c = connect_to("postgres", "it_docs", "it_docs");
    let mut ran = 0;
    for (file, line, block) in &all {
        for sql in statements(block) {
            c.simple_query(&sql)
                .unwrap_or_else(|e| panic!("{file}:{line}: {sql}\n{}", db_error(&e)));
            ran += 1;
        }
    }
    drop(c);
    reset_system(&mut a);
    a.batch_execute("DROP DATABASE it_docs WITH (FORCE)")
        .unwrap();
    a.batch_execute("DROP ROLE alice").unwrap();
    eprintln!("{ran} statements of {} examples ran", all.len());
}

#[test]
fn statements_are_split_without_comments() {
    assert_eq!(
        statements("SELECT 1; -- a comment; with a semicolon\nSELECT 'a -- b';\n-- SELECT 3;"),
        vec!["SELECT 1".to_string(), "SELECT 'a -- b'".to_string()]
    );
}
