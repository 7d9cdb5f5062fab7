//! Connection budgets: `dbconn_guard.connection_budgets`, how many sessions an application or a
//! role may hold.
//!
//! Syntax: as the overrides (`core::overrides`), with a count where they have a duration:
//! `app:api=200, user:etl=10, app:*=100`. The first item that matches a session charges the
//! session to that item, under the name it matched; an item with a wildcard is a budget per
//! name (`app:*=100`: every application may hold 100). `0` is no budget: the sessions it
//! matches are never ended by this rule (as `0` is "never" in the overrides), so
//! `app:reporting=0, app:*=100` leaves reporting alone. A malformed list is refused whole, and
//! the message names the item.
//!
//! An application's budget is per role: `application_name` is the client's to choose, so a
//! session of another role that calls itself `api` is charged to a group of its own, and can
//! never make the real `api`'s sessions end. A wildcard never charges a session without a name
//! (no `application_name`, or a role without a name): unrelated clients that set no name are no
//! one group.

use super::overrides::{parse_keyed, Key};
use super::patterns::PatternList;
use super::session::{Backend, Micros};
use std::collections::HashMap;

/// The largest budget: `max_connections`' own upper bound.
pub const MAX_BUDGET: u32 = 262_143;

#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub key: Key,
    pub pattern: PatternList,
    /// Sessions; 0 = no budget.
    pub limit: u32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Budgets {
    items: Vec<Budget>,
}

/// The group a session is charged to: the item of the list, the name it matched, and (for an
/// application's item) the session's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Charge<'a> {
    pub item: usize,
    pub name: &'a str,
    /// `app:` items: the role (an application's budget is per role); `user:` items: None.
    pub role: Option<&'a str>,
}

impl Budgets {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn items(&self) -> &[Budget] {
        &self.items
    }

    /// The group `b` is charged to and its budget: the first item that matches it (`None`: no
    /// item matches, or the first that does is 0, no budget).
    pub fn charge<'a>(&self, b: &'a Backend) -> Option<(Charge<'a>, u32)> {
        self.items
            .iter()
            .enumerate()
            .find_map(|(item, i)| {
                let name = match i.key {
                    Key::Application => b.application_name.as_deref(),
                    Key::User => b.usename.as_deref(),
                }
                .unwrap_or("");
                // a wildcard never charges a session without a name
                if name.is_empty() && i.pattern.patterns().iter().any(|p| p.contains('*')) {
                    return None;
                }
                let role = match i.key {
                    Key::Application => Some(b.usename.as_deref().unwrap_or("")),
                    Key::User => None,
                };
                i.pattern
                    .matches(name)
                    .then_some((Charge { item, name, role }, i.limit))
            })
            .filter(|(_, limit)| *limit > 0)
    }

    pub fn parse(input: &str) -> Result<Budgets, String> {
        let items = parse_keyed(input, "a count (for example app:api=200)", parse_count)?
            .into_iter()
            .map(|(key, pattern, limit)| Budget {
                key,
                pattern,
                limit,
            })
            .collect();
        Ok(Budgets { items })
    }
}

/// A group over its budget, as the rule judged it (for the log line and the audit).
#[derive(Clone, Debug, PartialEq)]
pub struct OverBudget {
    pub key: Key,
    /// The application or role it matched.
    pub name: String,
    /// An application's: the role whose sessions of it the group is.
    pub role: Option<String>,
    /// Sessions it held when judged (those already being ended left out).
    pub holds: usize,
    pub budget: u32,
}

impl OverBudget {
    /// "application \"api\" holds 260 sessions, over its budget of 200", for the log.
    pub fn describe(&self) -> String {
        let who = match (&self.key, &self.role) {
            (Key::Application, Some(r)) => format!(
                "application {} of user {}",
                super::quote::quoted(&self.name),
                super::quote::quoted(r)
            ),
            (Key::Application, None) => {
                format!("application {}", super::quote::quoted(&self.name))
            }
            (Key::User, _) => format!("user {}", super::quote::quoted(&self.name)),
        };
        format!(
            "{who} holds {} sessions, over its budget of {}",
            self.holds, self.budget
        )
    }
}

/// What the budgets end now: for each group that holds more sessions than its budget, the
/// sessions the rule may end, longest idle first, down to the budget.
///
/// `holds(b)`: whether `b` counts toward its group (a session being ended does not, nor one
/// the guard protects). `eligible_from(b)`: the moment the rule may end `b`, and its rank
/// (lower first: a plain idle session before one idle in a transaction, whose end rolls its
/// transaction back); None: never, as for a session running a statement. Returns the sessions
/// to end, each with that moment and its group, and the earliest moment a session of a group
/// still over its budget becomes eligible (when to look again).
pub fn over_budget<'a>(
    budgets: &Budgets,
    clients: impl Iterator<Item = &'a Backend>,
    now: Micros,
    holds: impl Fn(&Backend) -> bool,
    eligible_from: impl Fn(&Backend) -> Option<(u8, Micros)>,
) -> (Vec<(&'a Backend, Micros, OverBudget)>, Option<Micros>) {
    struct Group<'a> {
        holds: usize,
        budget: u32,
        ready: Vec<(u8, Micros, &'a Backend)>,
        later: Option<Micros>,
    }
    let mut groups: HashMap<Charge<'a>, Group<'a>> = HashMap::new();
    for b in clients {
        if !holds(b) {
            continue;
        }
        let Some((charge, budget)) = budgets.charge(b) else {
            continue;
        };
        let g = groups.entry(charge).or_insert(Group {
            holds: 0,
            budget,
            ready: Vec::new(),
            later: None,
        });
        g.holds += 1;
        match eligible_from(b) {
            Some((rank, t)) if t <= now => g.ready.push((rank, t, b)),
            Some((_, t)) => g.later = Some(g.later.map_or(t, |l: Micros| l.min(t))),
            None => {}
        }
    }
    let mut out = Vec::new();
    let mut next: Option<Micros> = None;
    for (charge, mut g) in groups {
        let budget = g.budget as usize;
        if g.holds <= budget {
            continue;
        }
        let excess = g.holds - budget;
        g.ready.sort_by_key(|(rank, t, b)| (*rank, *t, b.pid));
        if g.ready.len() < excess {
            if let Some(l) = g.later {
                next = Some(next.map_or(l, |n: Micros| n.min(l)));
            }
        }
        let over = OverBudget {
            key: budgets.items[charge.item].key,
            name: charge.name.to_string(),
            role: charge.role.map(str::to_string),
            holds: g.holds,
            budget: g.budget,
        };
        out.extend(
            g.ready
                .into_iter()
                .take(excess)
                .map(|(_, t, b)| (b, t, over.clone())),
        );
    }
    (out, next)
}

/// A whole number of sessions, 0 (no budget) to `MAX_BUDGET`.
fn parse_count(s: &str) -> Result<u32, String> {
    let n: u64 = s.parse().map_err(|_| {
        format!("{s:?} is not a count of sessions: give a whole number, as in 200 (0: no budget)")
    })?;
    if n > MAX_BUDGET as u64 {
        return Err(format!(
            "{s} is over {MAX_BUDGET}, more sessions than max_connections allows"
        ));
    }
    Ok(n as u32)
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
    fn the_first_item_that_matches_charges_the_session_under_the_name_it_matched() {
        let b = Budgets::parse("app:api=200, user:etl=10, app:reporting=0, app:*=100").unwrap();
        assert_eq!(b.items().len(), 4);
        let api = session("api", "etl");
        assert_eq!(
            b.charge(&api),
            Some((
                Charge {
                    item: 0,
                    name: "api",
                    role: Some("etl")
                },
                200
            ))
        );
        let etl = session("loader", "etl");
        assert_eq!(
            b.charge(&etl),
            Some((
                Charge {
                    item: 1,
                    name: "etl",
                    role: None
                },
                10
            ))
        );
        // a wildcard is a budget per name
        let (a, b1) = (session("web", "u"), session("cron", "u"));
        assert_eq!(b.charge(&a).unwrap().0.name, "web");
        assert_eq!(b.charge(&b1).unwrap().0.name, "cron");
        assert_ne!(b.charge(&a).unwrap().0, b.charge(&b1).unwrap().0);
        // 0: no budget, and the catch-all after it does not apply
        assert_eq!(b.charge(&session("reporting", "u")), None);
        // no item matches
        let only = Budgets::parse("app:api=5").unwrap();
        assert_eq!(only.charge(&session("web", "u")), None);
        // a wildcard never charges a session without a name; a name given whole may be empty
        assert_eq!(b.charge(&session("", "u")), None);
        assert!(Budgets::parse("").unwrap().is_empty());
    }

    #[test]
    fn a_malformed_list_is_refused_naming_the_item() {
        for (bad, says) in [
            ("app:api=200,,user:x=1", "item 2 is empty"),
            ("db:shop=10", "start it with app:"),
            ("app:api", "no '=' and a count (for example app:api=200)"),
            ("app:api=lots", "is not a count of sessions"),
            ("app:api=2min", "is not a count of sessions"),
            ("app:api=-1", "is not a count of sessions"),
            ("app:api=1.5", "is not a count of sessions"),
            ("app:api=300000", "over 262143"),
            ("app:=10", "no name before"),
            ("app:a=1 app:b=2", "is not a count"),
        ] {
            let e = Budgets::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
