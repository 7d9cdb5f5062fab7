//! The last word before a signal.
//!
//! A session is judged from a snapshot, recorded, and only then signalled. Right before the
//! signal its status entry is read once more, and this decides, from that fresh read alone,
//! whether the signal may go: it must be the same session (same pid and backend start), in the
//! same state since the same moment (a session that ran anything in between has a new
//! `state_change`), and still unprotected under the policy in force.
//!
//! The status entry says what the backend last reported, not what is on its way to it. A
//! client's next statement can sit in the backend's socket while the entry still says idle:
//! the backend was woken but has not run yet (a loaded host, a pooler that hands the server
//! connection to the next client at once). So for a session the guard would end while idle,
//! what the kernel says of its process is read first, just before the status entry:
//! - a process that is not asleep (it runs, or waits for a CPU) has something to do: it is
//!   left for the next check, where it has usually run its statement (a new `state_change`).
//!   An idle backend also wakes for other work that leaves its status alone (a NOTIFY to a
//!   listener, a cache invalidation): found busy at `WOKEN_LOOKS` checks in a row, unchanged,
//!   its process no longer holds the rule up, so nobody can keep a session alive by keeping
//!   its backend busy;
//! - a stopped or traced process would take the signal only when continued, and end the
//!   session then, before the statement its client sent meanwhile: it is left alone (the
//!   worker backs off, and logs it once).
//!
//! Left unprotected: a statement that arrives between that read and the signal (microseconds,
//! more when the worker itself waits for a CPU in between: `signal_window_us` measures it),
//! and a statement split over several packets of which the backend has read a part and gone
//! back to sleep waiting for the rest.

use super::policy::{Protection, Scope, IDLE_STATES};
use super::session::Backend;

/// What the fresh read of the target's status entry found.
#[derive(Clone, Copy, Debug)]
pub enum Fresh<'a> {
    /// The entry is unused or holds another backend: the session ended.
    Gone,
    /// The entry was still being rewritten after the reader's retries.
    Unreadable,
    Read(&'a Backend),
}

/// What the kernel said of the target's process just before its status entry was read (on
/// Linux, the state letter of `/proc/<pid>/stat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Asleep (`S`): an idle backend waits for its client so.
    Sleeping,
    /// Running or waiting for a CPU (`R`), or in an uninterruptible wait (`D`): it was woken,
    /// or is busy with something.
    Busy,
    /// Stopped or traced (`T`, `t`): a signal waits until it is continued.
    Stopped,
    /// Not read (not Linux, `/proc` unreadable or not this server's, a state this reader
    /// does not know, a session not judged idle, or one found busy too often): the status
    /// entry alone decides, as on any platform.
    Unknown,
}

/// Checks in a row at which a session judged idle may be found with its process busy and its
/// status unchanged before the guard stops waiting for it (see the module comment).
pub const WOKEN_LOOKS: u32 = 3;

impl Task {
    /// What a read counts for, given how many checks in a row before this one found the
    /// session's process busy with its status unchanged (`woken_before`): past `WOKEN_LOOKS`,
    /// busy is no reason to wait any more.
    pub fn counted(self, woken_before: u32) -> Task {
        if self == Task::Busy && woken_before >= WOKEN_LOOKS {
            Task::Unknown
        } else {
            self
        }
    }

    /// The state of a process from the text of its `/proc/<pid>/stat`: `pid (comm) S ...`,
    /// where `comm` may hold spaces and parentheses itself, so the state is the first field
    /// after the last `)`. The bytes may be the file's beginning only, as long as they reach
    /// the state (the kernel caps `comm` at 15 bytes, and no later field holds a `)`).
    pub fn from_proc_stat(stat: &[u8]) -> Task {
        let Some(close) = stat.iter().rposition(|&c| c == b')') else {
            return Task::Unknown;
        };
        match stat[close + 1..]
            .split(|c| c.is_ascii_whitespace())
            .find(|f| !f.is_empty())
        {
            Some(b"S") => Task::Sleeping,
            Some(b"R" | b"D") => Task::Busy,
            Some(b"T" | b"t") => Task::Stopped,
            _ => Task::Unknown,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still the session that was judged, unchanged and unprotected: signal it now.
    Proceed,
    /// The session ended, or is another one now.
    Gone,
    /// Its status could not be read consistently: leave it for the next check.
    Unreadable,
    /// It ran a query or changed state since it was judged.
    Changed,
    /// A protection applies now (its application_name changed, the policy was reloaded, ...).
    Protected(Protection),
    /// Root-blocker rules: it no longer holds up enough waits past `blocker_timeout` (they
    /// gave up or got their lock, it waits itself now, or the rule changed).
    NoLongerBlocking,
    /// The root-blocker rules on an active root: it builds an index CONCURRENTLY. Such a build
    /// waits for older snapshots in turns, and between them it is a root for a moment; only
    /// DDL queues behind its lock (the lock-queue rule's business): never cancelled or ended.
    ConcurrentIndexBuild,
    /// The lock-queue rule: its statement no longer waits in the queue holding up enough
    /// waits past `lock_queue_timeout` (it got its lock, they gave up, or the rule changed).
    NoLongerQueued,
    /// A cancel (`blocker_cancel`, `manual_cancel`): its statement is a COMMIT waiting for a
    /// synchronous standby. A cancel would make it commit locally without the standby's
    /// confirmation: never.
    CommitWaitsForStandby,
    /// Judged idle, and its status entry still says so, but its process was not asleep: it
    /// was woken (by its client's next statement, most likely) and has not said so yet.
    Woken,
    /// Judged idle, and its process is stopped or traced: the signal would wait, and end the
    /// session when it is continued, before whatever its client sent meanwhile.
    Stopped,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Proceed => "unchanged",
            Verdict::Gone => "the session ended",
            Verdict::Unreadable => "its status could not be read",
            Verdict::Changed => "it ran a query or changed state",
            Verdict::Protected(p) => p.as_str(),
            Verdict::NoLongerBlocking => {
                "it no longer holds up other sessions past dbconn_guard.blocker_timeout"
            }
            Verdict::ConcurrentIndexBuild => {
                "it builds an index CONCURRENTLY: only DDL queues behind it, and that is the lock-queue rule's business"
            }
            Verdict::NoLongerQueued => {
                "it no longer waits in a lock queue holding up other sessions past dbconn_guard.lock_queue_timeout"
            }
            Verdict::CommitWaitsForStandby => {
                "its COMMIT waits for a synchronous standby: a cancel would commit it without the standby"
            }
            Verdict::Woken => {
                "its process was not asleep (its client's next statement may be on its way)"
            }
            Verdict::Stopped => {
                "its process is stopped or traced: the signal would end it when continued, before what its client sent meanwhile"
            }
        }
    }
}

/// Whether the kernel's word on the process counts for this session: it was judged idle (or
/// idle in a transaction), where a backend waits for its client. An active statement runs or
/// waits as it pleases.
pub fn reads_task(judged: &Backend) -> bool {
    judged.state.is_some_and(|s| IDLE_STATES.contains(&s))
}

/// May the session `judged` (as read when it was planned) be signalled, given what its status
/// entry says now, and what the kernel said of its process just before (`task`)?
pub fn last_word(judged: &Backend, now: Fresh, task: Task, scope: &Scope, own_pid: i32) -> Verdict {
    let b = match now {
        Fresh::Gone => return Verdict::Gone,
        Fresh::Unreadable => return Verdict::Unreadable,
        Fresh::Read(b) => b,
    };
    if b.pid != judged.pid || b.backend_start != judged.backend_start {
        return Verdict::Gone;
    }
    if b.state.is_none()
        || b.state_change.is_none()
        || b.state != judged.state
        || b.state_change != judged.state_change
    {
        return Verdict::Changed;
    }
    if let Some(p) = scope.protection(b, own_pid) {
        return Verdict::Protected(p);
    }
    if !reads_task(judged) {
        return Verdict::Proceed;
    }
    match task {
        Task::Busy => Verdict::Woken,
        Task::Stopped => Verdict::Stopped,
        Task::Sleeping | Task::Unknown => Verdict::Proceed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patterns::PatternList;
    use crate::session::fixtures::*;

    fn judged() -> Backend {
        client(7, "idle in transaction", 400)
    }

    #[test]
    fn an_unchanged_session_may_be_signalled() {
        let b = judged();
        assert_eq!(
            last_word(
                &b,
                Fresh::Read(&b.clone()),
                Task::Sleeping,
                &Scope::default(),
                0
            ),
            Verdict::Proceed
        );
    }

    #[test]
    fn a_session_that_ran_anything_since_is_left_alone() {
        let b = judged();
        let mut busy = b.clone();
        busy.state = Some("active");
        busy.state_change = b.state_change.map(|t| t + 5);
        assert_eq!(
            last_word(&b, Fresh::Read(&busy), Task::Sleeping, &Scope::default(), 0),
            Verdict::Changed
        );
        // back to idle in transaction already: same state, later state_change
        let mut again = b.clone();
        again.state_change = b.state_change.map(|t| t + 1);
        assert_eq!(
            last_word(
                &b,
                Fresh::Read(&again),
                Task::Sleeping,
                &Scope::default(),
                0
            ),
            Verdict::Changed
        );
        // a state this reader cannot see is no proof of anything
        let mut blank = b.clone();
        blank.state = None;
        assert_eq!(
            last_word(
                &b,
                Fresh::Read(&blank),
                Task::Sleeping,
                &Scope::default(),
                0
            ),
            Verdict::Changed
        );
    }

    #[test]
    fn another_session_in_the_same_slot_or_pid_is_not_the_target() {
        let b = judged();
        let mut reborn = b.clone();
        reborn.backend_start = b.backend_start.map(|t| t + 1);
        assert_eq!(
            last_word(
                &b,
                Fresh::Read(&reborn),
                Task::Sleeping,
                &Scope::default(),
                0
            ),
            Verdict::Gone
        );
        let mut other = b.clone();
        other.pid = 8;
        assert_eq!(
            last_word(
                &b,
                Fresh::Read(&other),
                Task::Sleeping,
                &Scope::default(),
                0
            ),
            Verdict::Gone
        );
        assert_eq!(
            last_word(&b, Fresh::Gone, Task::Sleeping, &Scope::default(), 0),
            Verdict::Gone
        );
        assert_eq!(
            last_word(&b, Fresh::Unreadable, Task::Sleeping, &Scope::default(), 0),
            Verdict::Unreadable
        );
    }

    #[test]
    fn protections_are_judged_on_the_fresh_read() {
        let b = judged();
        let scope = Scope {
            exclude_applications: PatternList::parse("keep-*").unwrap(),
            ..Scope::default()
        };
        let mut renamed = b.clone();
        renamed.application_name = Some("keep-me".into());
        assert_eq!(
            last_word(&b, Fresh::Read(&renamed), Task::Sleeping, &scope, 0),
            Verdict::Protected(Protection::ExcludedApplication)
        );
        let mut promoted = b.clone();
        promoted.is_superuser = Some(true);
        assert_eq!(
            last_word(
                &b,
                Fresh::Read(&promoted),
                Task::Sleeping,
                &Scope::default(),
                0
            ),
            Verdict::Protected(Protection::Superuser)
        );
        assert_eq!(
            last_word(
                &b,
                Fresh::Read(&b.clone()),
                Task::Sleeping,
                &Scope::default(),
                7
            ),
            Verdict::Protected(Protection::OwnSession)
        );
    }
    #[test]
    fn an_idle_session_whose_process_is_not_asleep_is_left_for_the_next_check() {
        for state in [
            "idle",
            "idle in transaction",
            "idle in transaction (aborted)",
        ] {
            let b = client(7, state, 400);
            let look = |task| last_word(&b, Fresh::Read(&b.clone()), task, &Scope::default(), 0);
            assert_eq!(look(Task::Sleeping), Verdict::Proceed, "{state}");
            assert_eq!(look(Task::Busy), Verdict::Woken, "{state}");
            assert_eq!(look(Task::Stopped), Verdict::Stopped, "{state}");
            // no word from the kernel: the status entry alone decides, as before
            assert_eq!(look(Task::Unknown), Verdict::Proceed, "{state}");
        }
    }

    #[test]
    fn a_process_found_busy_too_often_no_longer_holds_the_rule_up() {
        let b = judged();
        let look = |task: Task, before| {
            last_word(
                &b,
                Fresh::Read(&b.clone()),
                task.counted(before),
                &Scope::default(),
                0,
            )
        };
        for before in 0..WOKEN_LOOKS {
            assert_eq!(look(Task::Busy, before), Verdict::Woken, "{before}");
        }
        assert_eq!(look(Task::Busy, WOKEN_LOOKS), Verdict::Proceed);
        assert_eq!(look(Task::Busy, WOKEN_LOOKS + 7), Verdict::Proceed);
        // a stopped process is never signalled for nothing, however often it is seen
        assert_eq!(look(Task::Stopped, WOKEN_LOOKS + 7), Verdict::Stopped);
        assert_eq!(look(Task::Sleeping, WOKEN_LOOKS + 7), Verdict::Proceed);
    }

    #[test]
    fn an_active_statement_is_judged_on_its_status_alone() {
        for state in ["active", "fastpath function call", "disabled"] {
            assert!(!reads_task(&client(7, state, 400)), "{state}");
        }
        let b = client(7, "active", 400);
        assert!(!reads_task(&b));
        for task in [Task::Sleeping, Task::Busy, Task::Stopped, Task::Unknown] {
            assert_eq!(
                last_word(&b, Fresh::Read(&b.clone()), task, &Scope::default(), 0),
                Verdict::Proceed
            );
        }
    }

    #[test]
    fn what_the_status_entry_says_comes_before_the_process() {
        // a session that ended, changed or is protected is reported so, whatever its process
        let b = judged();
        let mut busy = b.clone();
        busy.state = Some("active");
        assert_eq!(
            last_word(&b, Fresh::Read(&busy), Task::Busy, &Scope::default(), 0),
            Verdict::Changed
        );
        assert_eq!(
            last_word(&b, Fresh::Gone, Task::Stopped, &Scope::default(), 0),
            Verdict::Gone
        );
    }

    #[test]
    fn the_state_letter_is_read_after_the_last_parenthesis() {
        let stat = |comm: &str, state: &str| {
            format!("4242 ({comm}) {state} 1 4242 4242 0 -1 4194560").into_bytes()
        };
        assert_eq!(Task::from_proc_stat(&stat("postgres", "S")), Task::Sleeping);
        assert_eq!(Task::from_proc_stat(&stat("postgres", "R")), Task::Busy);
        assert_eq!(Task::from_proc_stat(&stat("postgres", "D")), Task::Busy);
        assert_eq!(Task::from_proc_stat(&stat("postgres", "T")), Task::Stopped);
        assert_eq!(Task::from_proc_stat(&stat("postgres", "t")), Task::Stopped);
        // a process may name itself anything, parentheses and state letters included
        assert_eq!(Task::from_proc_stat(&stat("a) R (b", "S")), Task::Sleeping);
        assert_eq!(Task::from_proc_stat(&stat(") T", "R")), Task::Busy);
        // a zombie, an unknown letter, a truncated or empty read: no word
        assert_eq!(Task::from_proc_stat(&stat("postgres", "Z")), Task::Unknown);
        assert_eq!(Task::from_proc_stat(b"4242 (postgres"), Task::Unknown);
        assert_eq!(Task::from_proc_stat(b"4242 (postgres)"), Task::Unknown);
        assert_eq!(Task::from_proc_stat(b""), Task::Unknown);
    }
}
