//! What the kernel says of a backend's process, for the kill path's last look (see
//! `core::recheck`): on Linux, the state letter of `/proc/<pid>/stat`. Elsewhere, or when
//! `/proc` cannot be read (mounted with `hidepid`, say), there is no word, and the status entry
//! alone decides.

use crate::core::recheck::Task;

/// The state of process `pid` now. One open and one read of at most 64 bytes: enough for
/// `pid (comm) S`, since the kernel caps `comm` at 15 bytes.
#[cfg(target_os = "linux")]
pub fn task_of(pid: i32) -> Task {
    use std::io::Read;
    let mut buf = [0u8; 64];
    let Ok(mut f) = std::fs::File::open(format!("/proc/{pid}/stat")) else {
        return Task::Unknown;
    };
    let mut len = 0;
    while len < buf.len() {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Task::Unknown,
        }
    }
    Task::from_proc_stat(&buf[..len])
}

#[cfg(not(target_os = "linux"))]
pub fn task_of(_pid: i32) -> Task {
    Task::Unknown
}
