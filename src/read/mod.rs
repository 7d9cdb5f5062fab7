//! Reading PostgreSQL's state into the core's plain structs, without SQL: the backend status
//! array (`backend_status`), the lock manager (`locks`), a whole snapshot of both and the
//! settings (`snapshot`), and text between the database encoding and UTF-8 (`encoding`).

pub mod backend_status;
pub mod encoding;
pub mod locks;
pub mod snapshot;
