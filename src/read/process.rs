//! What the kernel says of a backend's process, for the kill path's last look (see
//! `core::recheck`): on Linux, the state letter of `/proc/<pid>/stat`. Elsewhere, or when this
//! process's `/proc` is not its own (a host's `/proc` mounted into a container with a pid
//! namespace of its own, where a pid names another process), there is no word, and the status
//! entry alone decides.

use crate::core::recheck::Task;

/// A process's `stat` file, opened ahead of the moment its state is read: the open (a path
/// lookup in `/proc`) stays out of the kill path's window, and each `task()` is one `pread`.
/// The open file names the process it was opened for: should that process end and its pid be
/// taken by another, a read says nothing (no word), never the other's state.
pub struct ProcessStat(#[cfg(target_os = "linux")] Option<std::fs::File>);

impl ProcessStat {
    /// Opens process `pid`'s `stat` file (nothing, where `/proc` is not this server's own).
    #[cfg(target_os = "linux")]
    pub fn open(pid: i32) -> ProcessStat {
        ProcessStat(
            own_proc()
                .then(|| std::fs::File::open(format!("/proc/{pid}/stat")).ok())
                .flatten(),
        )
    }

    #[cfg(not(target_os = "linux"))]
    pub fn open(_pid: i32) -> ProcessStat {
        ProcessStat()
    }

    /// Nothing opened: the status entry alone decides (an active target's look).
    #[cfg(target_os = "linux")]
    pub fn none() -> ProcessStat {
        ProcessStat(None)
    }

    #[cfg(not(target_os = "linux"))]
    pub fn none() -> ProcessStat {
        ProcessStat()
    }

    /// The process's state now: one read of at most 128 bytes from the start of the file
    /// (enough for `pid (comm) S`, since the kernel caps `comm` at 15 bytes).
    #[cfg(target_os = "linux")]
    pub fn task(&self) -> Task {
        use std::os::unix::fs::FileExt;
        let Some(f) = &self.0 else {
            return Task::Unknown;
        };
        let mut buf = [0u8; 128];
        let mut len = 0;
        while len < buf.len() {
            match f.read_at(&mut buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return Task::Unknown,
            }
        }
        Task::from_proc_stat(&buf[..len])
    }

    #[cfg(not(target_os = "linux"))]
    pub fn task(&self) -> Task {
        Task::Unknown
    }
}

/// The first 128 bytes of a `stat` file, and how many were read.
#[cfg(target_os = "linux")]
fn read_stat(path: &str) -> Option<([u8; 128], usize)> {
    use std::io::Read;
    let mut buf = [0u8; 128];
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = 0;
    while len < buf.len() {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    Some((buf, len))
}

/// Whether `/proc` is this process's own: `/proc/self/stat` begins with the pid this process
/// has. Judged once per process, and said once in the log when not.
#[cfg(target_os = "linux")]
fn own_proc() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| {
        let own = proc_is_own();
        if !own {
            pgrx::log!(
                "dbconn_guard: /proc cannot be read or is not this server's: the last look before ending an idle session reads its status entry only (a statement on its way to it is not seen)"
            );
        }
        own
    })
}

#[cfg(target_os = "linux")]
fn proc_is_own() -> bool {
    let me = std::process::id().to_string();
    read_stat("/proc/self/stat")
        .is_some_and(|(buf, len)| buf[..len].split(|&c| c == b' ').next() == Some(me.as_bytes()))
}

// (plain tests: nothing here may reach PostgreSQL's symbols, which a test binary lacks)
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::process::Command;
    use std::time::{Duration, Instant};

    fn read_state(pid: i32) -> Option<Task> {
        let (buf, len) = read_stat(&format!("/proc/{pid}/stat"))?;
        Some(Task::from_proc_stat(&buf[..len]))
    }

    fn until(pid: i32, want: Task) {
        let start = Instant::now();
        while read_state(pid) != Some(want) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "pid {pid} never {want:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn the_kernel_says_busy_asleep_or_stopped() {
        assert!(proc_is_own());
        // this thread runs: busy (a backend has one thread, its pid's; a test runs in one of
        // several, the process's main thread waits)
        let (buf, len) = read_stat("/proc/thread-self/stat").unwrap();
        assert_eq!(Task::from_proc_stat(&buf[..len]), Task::Busy);
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        until(pid, Task::Sleeping);
        // opened once, read again and again: each read is the state at that moment
        let stat = ProcessStat(std::fs::File::open(format!("/proc/{pid}/stat")).ok());
        assert_eq!(stat.task(), Task::Sleeping);
        assert!(Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success());
        until(pid, Task::Stopped);
        assert_eq!(stat.task(), Task::Stopped);
        child.kill().unwrap();
        child.wait().unwrap();
        // gone: no word, from the path or from the file opened before
        assert_eq!(read_state(pid), None);
        assert_eq!(stat.task(), Task::Unknown);
    }
}
