//! Reading PostgreSQL's state into the core's plain structs, without SQL: the backend status
//! array (`backend_status`), the lock manager (`locks`), a whole snapshot of both and the
//! settings (`snapshot`), text between the database encoding and UTF-8 (`encoding`),
//! timestamps from shared memory (`time`), and what the kernel says of a backend's process
//! (`process`).

pub mod backend_status;
pub mod encoding;
pub mod locks;
pub mod process;
pub mod snapshot;
pub mod time;
