//! The last word before a signal.
//!
//! A session is judged from a snapshot, recorded, and only then signalled. Right before the
//! signal its status entry is read once more, and this decides, from that fresh read alone,
//! whether the signal may go: it must be the same session (same pid and backend start), in the
//! same state since the same moment (a session that ran anything in between has a new
//! `state_change`), and still unprotected under the policy in force.

use super::policy::{Protection, Scope};
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
        }
    }
}

/// May the session `judged` (as read when it was planned) be signalled, given what its status
/// entry says now?
pub fn last_word(judged: &Backend, now: Fresh, scope: &Scope, own_pid: i32) -> Verdict {
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
    match scope.protection(b, own_pid) {
        Some(p) => Verdict::Protected(p),
        None => Verdict::Proceed,
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
            last_word(&b, Fresh::Read(&b.clone()), &Scope::default(), 0),
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
            last_word(&b, Fresh::Read(&busy), &Scope::default(), 0),
            Verdict::Changed
        );
        // back to idle in transaction already: same state, later state_change
        let mut again = b.clone();
        again.state_change = b.state_change.map(|t| t + 1);
        assert_eq!(
            last_word(&b, Fresh::Read(&again), &Scope::default(), 0),
            Verdict::Changed
        );
        // a state this reader cannot see is no proof of anything
        let mut blank = b.clone();
        blank.state = None;
        assert_eq!(
            last_word(&b, Fresh::Read(&blank), &Scope::default(), 0),
            Verdict::Changed
        );
    }

    #[test]
    fn another_session_in_the_same_slot_or_pid_is_not_the_target() {
        let b = judged();
        let mut reborn = b.clone();
        reborn.backend_start = b.backend_start.map(|t| t + 1);
        assert_eq!(
            last_word(&b, Fresh::Read(&reborn), &Scope::default(), 0),
            Verdict::Gone
        );
        let mut other = b.clone();
        other.pid = 8;
        assert_eq!(
            last_word(&b, Fresh::Read(&other), &Scope::default(), 0),
            Verdict::Gone
        );
        assert_eq!(
            last_word(&b, Fresh::Gone, &Scope::default(), 0),
            Verdict::Gone
        );
        assert_eq!(
            last_word(&b, Fresh::Unreadable, &Scope::default(), 0),
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
            last_word(&b, Fresh::Read(&renamed), &scope, 0),
            Verdict::Protected(Protection::ExcludedApplication)
        );
        let mut promoted = b.clone();
        promoted.is_superuser = Some(true);
        assert_eq!(
            last_word(&b, Fresh::Read(&promoted), &Scope::default(), 0),
            Verdict::Protected(Protection::Superuser)
        );
        assert_eq!(
            last_word(&b, Fresh::Read(&b.clone()), &Scope::default(), 7),
            Verdict::Protected(Protection::OwnSession)
        );
    }
}
