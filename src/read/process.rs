//! What the kernel says of a backend's process, for the kill path's last look (see
//! `core::recheck`): on Linux, the state letter of `/proc/<pid>/stat`. Elsewhere, or when this
//! process's `/proc` is not its own (a host's `/proc` mounted into a container with a pid
//! namespace of its own, where a pid names another process), there is no word, and the status
//! entry alone decides.

use crate::core::recheck::Task;

/// The state of process `pid` now. One open and one read of at most 128 bytes: enough for
/// `pid (comm) S`, since the kernel caps `comm` at 15 bytes.
#[cfg(target_os = "linux")]
pub fn task_of(pid: i32) -> Task {
    if !own_proc() {
        return Task::Unknown;
    }
    read_state(pid).unwrap_or(Task::Unknown)
}

#[cfg(not(target_os = "linux"))]
pub fn task_of(_pid: i32) -> Task {
    Task::Unknown
}

#[cfg(target_os = "linux")]
fn read_state(pid: i32) -> Option<Task> {
    let (buf, len) = read_stat(&format!("/proc/{pid}/stat"))?;
    Some(Task::from_proc_stat(&buf[..len]))
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
        assert!(Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap()
            .success());
        until(pid, Task::Stopped);
        child.kill().unwrap();
        child.wait().unwrap();
        // gone: no word
        assert_eq!(read_state(pid), None);
    }
}
