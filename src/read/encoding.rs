//! Text between PostgreSQL's database encoding and Rust's UTF-8.
//!
//! Names and query text read from PostgreSQL (the backend status array, the catalogs) are bytes
//! in the encoding of the database this backend is connected to, exactly as `pg_stat_activity`
//! interprets them; text handed back to PostgreSQL must be in that encoding too. In a UTF-8
//! database (the common case) nothing is converted. In any other (LATIN1, EUC_JP, ...) the
//! text is converted on the way in and on the way out, so a view shows what `pg_stat_activity`
//! shows, byte for byte, instead of mojibake or an error.

use pgrx::prelude::*;
use pgrx::{pg_sys, IntoDatum};
use std::borrow::Cow;

/// The database encoding of this backend, once known.
fn encoding() -> i32 {
    use std::sync::atomic::{AtomicI32, Ordering};
    static ENCODING: AtomicI32 = AtomicI32::new(-1);
    let e = ENCODING.load(Ordering::Relaxed);
    if e >= 0 {
        return e;
    }
    // fixed for the life of a backend once it is connected to its database
    let e = unsafe { pg_sys::GetDatabaseEncoding() };
    if unsafe { pg_sys::MyDatabaseId } != pg_sys::InvalidOid {
        ENCODING.store(e, Ordering::Relaxed);
    }
    e
}

fn is_utf8(enc: i32) -> bool {
    enc == pg_sys::pg_enc::PG_UTF8 as i32
}

fn is_sql_ascii(enc: i32) -> bool {
    enc == pg_sys::pg_enc::PG_SQL_ASCII as i32
}

/// Text from a buffer in the database encoding, as UTF-8. A multibyte character cut by the end
/// of its buffer (PostgreSQL clips names and query text by bytes) is dropped whole.
pub fn to_rust(bytes: &[u8]) -> Cow<'_, str> {
    let enc = encoding();
    if is_utf8(enc) || bytes.is_ascii() {
        return Cow::Borrowed(utf8_prefix(bytes));
    }
    if is_sql_ascii(enc) {
        // no encoding at all: show what is valid UTF-8, replace the rest
        return String::from_utf8_lossy(bytes);
    }
    // the valid prefix in the database encoding, then converted
    let valid =
        unsafe { pg_sys::pg_encoding_verifymbstr(enc, bytes.as_ptr().cast(), bytes.len() as i32) }
            .max(0) as usize;
    let valid = &bytes[..valid.min(bytes.len())];
    PgTryBuilder::new(|| unsafe {
        let out = pg_sys::pg_server_to_any(
            valid.as_ptr().cast(),
            valid.len() as i32,
            pg_sys::pg_enc::PG_UTF8 as i32,
        );
        let s = std::ffi::CStr::from_ptr(out).to_string_lossy().into_owned();
        if out.cast_const() != valid.as_ptr().cast() {
            pg_sys::pfree(out.cast());
        }
        Cow::Owned(s)
    })
    .catch_others(|_| String::from_utf8_lossy(valid).into_owned().into())
    .execute()
}

/// `to_rust` for a NUL-terminated string PostgreSQL allocated (a catalog name).
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string.
pub unsafe fn cstr_to_rust(p: *const std::ffi::c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let bytes = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
    Some(to_rust(bytes).into_owned())
}

/// Text from a buffer, keeping the whole characters of a multibyte one cut by its end.
pub fn utf8_prefix(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    }
}

/// A `text` datum holding `s` in the database encoding, allocated in the current memory
/// context. A character the database encoding cannot hold becomes `?`.
pub fn text_datum(s: &str) -> Option<pg_sys::Datum> {
    let enc = encoding();
    if is_utf8(enc) || is_sql_ascii(enc) || s.is_ascii() {
        let len = i32::try_from(s.len()).ok()?;
        return Some(pg_sys::Datum::from(unsafe {
            pg_sys::cstring_to_text_with_len(s.as_ptr().cast(), len)
        }));
    }
    let converted = to_server(s).or_else(|| {
        let safe: String = s
            .chars()
            .map(|c| {
                let mut b = [0u8; 4];
                if to_server(c.encode_utf8(&mut b)).is_some() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        to_server(&safe)
    })?;
    let len = i32::try_from(converted.len()).ok()?;
    Some(pg_sys::Datum::from(unsafe {
        pg_sys::cstring_to_text_with_len(converted.as_ptr().cast(), len)
    }))
}

/// `s` converted to the database encoding; `None` when it holds a character that encoding
/// cannot represent.
fn to_server(s: &str) -> Option<Vec<u8>> {
    PgTryBuilder::new(|| unsafe {
        let out = pg_sys::pg_any_to_server(
            s.as_ptr().cast(),
            s.len() as i32,
            pg_sys::pg_enc::PG_UTF8 as i32,
        );
        let bytes = std::ffi::CStr::from_ptr(out).to_bytes().to_vec();
        if out.cast_const() != s.as_ptr().cast() {
            pg_sys::pfree(out.cast());
        }
        Some(bytes)
    })
    .catch_others(|_| None)
    .execute()
}

/// A `text` result column: UTF-8 in Rust, the database encoding in PostgreSQL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbText(pub String);

impl From<String> for DbText {
    fn from(s: String) -> Self {
        DbText(s)
    }
}

impl From<&str> for DbText {
    fn from(s: &str) -> Self {
        DbText(s.to_string())
    }
}

impl IntoDatum for DbText {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        text_datum(&self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::TEXTOID
    }
}

pgrx::pgrx_sql_entity_graph::impl_sql_translatable!(DbText, "text");

unsafe impl pgrx::callconv::BoxRet for DbText {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        match self.into_datum() {
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::utf8_prefix;

    #[test]
    fn a_cut_multibyte_character_is_dropped_whole() {
        assert_eq!(utf8_prefix("café".as_bytes()), "café");
        let cut = &"café".as_bytes()[..4];
        assert_eq!(utf8_prefix(cut), "caf");
        assert_eq!(utf8_prefix(b""), "");
    }
}
