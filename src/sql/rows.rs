//! Set-returning functions that fill their whole result in one call, straight into the
//! executor's tuplestore (PostgreSQL's materialize mode, `InitMaterializedSRF`).
//!
//! For results of hundreds of thousands of rows (`blocking_pairs` under a long lock queue) this
//! is what keeps the cost per row down to forming the tuple: pgrx's value-per-call iterator
//! converts every cell of every row from an owned Rust value and crosses the function-call
//! boundary (with its error guard) once per row; here each distinct text value is converted to
//! a datum once and the same datum is reused in every row that shows it.

use pgrx::pg_sys;
use pgrx::IntoDatum;

/// One cell of a row: `None` is SQL NULL.
pub type Cell = Option<pg_sys::Datum>;

/// A `text` datum in the database encoding, allocated in the current memory context.
pub fn text(s: Option<&str>) -> Cell {
    crate::read::encoding::text_datum(s?)
}

pub fn float8(v: Option<f64>) -> Cell {
    v.and_then(IntoDatum::into_datum)
}

pub fn int4(v: i32) -> Cell {
    v.into_datum()
}

/// A column of a result set, as the function's SQL declaration must have it.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub type_oid: pg_sys::Oid,
}

/// A row of a set-returning function: its columns, by name and type in the order of the SQL
/// declaration, and its cells in that order. Declared with `row!`, which makes both from one
/// list of named fields, so a cell is put in a column by name, never by position.
pub trait Row {
    fn columns() -> Vec<Column>;
    /// Appends the cells, in the order of `columns()`.
    fn cells(self, out: &mut Vec<Cell>);
}

/// Declares a row type of a set-returning function: a struct of named cells, and its `Row`
/// implementation (columns named as the fields, typed `int4`, `int8`, `float8`, `text`,
/// `timestamptz` or `bool`). `ResultSet::begin` checks the SQL declaration against it.
macro_rules! row {
    ($(#[$m:meta])* $vis:vis struct $name:ident { $($field:ident : $ty:ident),* $(,)? }) => {
        $(#[$m])*
        $vis struct $name {
            $(pub $field: $crate::sql::rows::Cell),*
        }
        impl $crate::sql::rows::Row for $name {
            fn columns() -> Vec<$crate::sql::rows::Column> {
                vec![$($crate::sql::rows::Column {
                    name: stringify!($field),
                    type_oid: $crate::sql::rows::sql_type!($ty),
                }),*]
            }
            fn cells(self, out: &mut Vec<$crate::sql::rows::Cell>) {
                $(out.push(self.$field);)*
            }
        }
    };
}
pub(crate) use row;

/// The type oid of a `row!` column type.
macro_rules! sql_type {
    (int4) => {
        pgrx::pg_sys::INT4OID
    };
    (int8) => {
        pgrx::pg_sys::INT8OID
    };
    (float8) => {
        pgrx::pg_sys::FLOAT8OID
    };
    (text) => {
        pgrx::pg_sys::TEXTOID
    };
    (timestamptz) => {
        pgrx::pg_sys::TIMESTAMPTZOID
    };
    (bool) => {
        pgrx::pg_sys::BOOLOID
    };
}
pub(crate) use sql_type;

/// The result set of the set-returning function being called, of rows `R`.
pub struct ResultSet<R: Row> {
    store: *mut pg_sys::Tuplestorestate,
    desc: pg_sys::TupleDesc,
    cells: Vec<Cell>,
    values: Vec<pg_sys::Datum>,
    nulls: Vec<bool>,
    row: std::marker::PhantomData<R>,
}

impl<R: Row> ResultSet<R> {
    /// Switches the call to materialize mode and checks the function's SQL declaration against
    /// `R`'s columns, by name and type: a column renamed, retyped, added, dropped or moved on
    /// either side is an error naming it, never a value under another column's name.
    ///
    /// # Safety
    /// `fcinfo` must be that of a set-returning function returning a row type, called by the
    /// executor.
    pub unsafe fn begin(fcinfo: pg_sys::FunctionCallInfo) -> ResultSet<R> {
        let expected = R::columns();
        unsafe {
            pg_sys::InitMaterializedSRF(fcinfo, 0);
            let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
            let desc = (*rsinfo).setDesc;
            // (the executor's descriptor, borrowed: not freed here)
            let declared: Vec<(String, pg_sys::Oid)> = pgrx::PgTupleDesc::from_pg_unchecked(desc)
                .iter()
                .map(|a| (a.name().to_string(), a.atttypid))
                .collect();
            if let Some(m) = mismatch(&declared, &expected) {
                crate::errors::not_ready(
                    format!("dbconn_guard: the function's SQL declaration does not match the library: {m}"),
                    None,
                    "Run ALTER EXTENSION dbconn_guard UPDATE, or install the files of one version.",
                );
            }
            let n = expected.len();
            ResultSet {
                store: (*rsinfo).setResult,
                desc,
                cells: Vec::with_capacity(n),
                values: vec![pg_sys::Datum::from(0); n],
                nulls: vec![true; n],
                row: std::marker::PhantomData,
            }
        }
    }

    /// Appends one row (the tuplestore copies it).
    pub fn push(&mut self, row: R) {
        self.cells.clear();
        row.cells(&mut self.cells);
        debug_assert_eq!(self.cells.len(), self.values.len());
        for (i, c) in self.cells.iter().enumerate() {
            match c {
                Some(d) => {
                    self.values[i] = *d;
                    self.nulls[i] = false;
                }
                None => {
                    self.values[i] = pg_sys::Datum::from(0);
                    self.nulls[i] = true;
                }
            }
        }
        unsafe {
            pg_sys::tuplestore_putvalues(
                self.store,
                self.desc,
                self.values.as_mut_ptr(),
                self.nulls.as_mut_ptr(),
            )
        };
    }
}

/// The first difference between the declared columns and the library's, in words.
fn mismatch(declared: &[(String, pg_sys::Oid)], expected: &[Column]) -> Option<String> {
    for (i, c) in expected.iter().enumerate() {
        match declared.get(i) {
            None => {
                return Some(format!(
                    "column {} ({}) is missing ({} declared, {} expected)",
                    i + 1,
                    c.name,
                    declared.len(),
                    expected.len()
                ))
            }
            Some((name, _)) if name != c.name => {
                return Some(format!(
                    "column {} is \"{name}\", expected \"{}\"",
                    i + 1,
                    c.name
                ))
            }
            Some((name, oid)) if *oid != c.type_oid => {
                return Some(format!(
                    "column \"{name}\" has type oid {}, expected {}",
                    oid.to_u32(),
                    c.type_oid.to_u32()
                ))
            }
            Some(_) => {}
        }
    }
    (declared.len() > expected.len()).then(|| {
        format!(
            "{} columns declared, {} expected (\"{}\" is extra)",
            declared.len(),
            expected.len(),
            declared[expected.len()].0
        )
    })
}

/// Declares a C function of this library to PostgreSQL's function manager (version 1 calling
/// convention), as `PG_FUNCTION_INFO_V1` does in C.
macro_rules! function_info_v1 {
    ($finfo:ident) => {
        #[unsafe(no_mangle)]
        pub extern "C" fn $finfo() -> &'static pgrx::pg_sys::Pg_finfo_record {
            const V1: pgrx::pg_sys::Pg_finfo_record =
                pgrx::pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }
    };
}
pub(crate) use function_info_v1;

#[cfg(test)]
mod tests {
    use super::*;

    row! {
        struct Two {
            blocked_pid: int4,
            wait_seconds: float8,
        }
    }

    fn declared(cols: &[(&str, pg_sys::Oid)]) -> Vec<(String, pg_sys::Oid)> {
        cols.iter().map(|(n, o)| (n.to_string(), *o)).collect()
    }

    #[test]
    fn columns_are_matched_by_name_and_type() {
        let expected = Two::columns();
        assert_eq!(
            expected.iter().map(|c| c.name).collect::<Vec<_>>(),
            ["blocked_pid", "wait_seconds"]
        );
        let (int4, float8) = (pg_sys::INT4OID, pg_sys::FLOAT8OID);
        assert_eq!(
            mismatch(
                &declared(&[("blocked_pid", int4), ("wait_seconds", float8)]),
                &expected
            ),
            None
        );
        // two columns swapped in the SQL declaration
        let m = mismatch(
            &declared(&[("wait_seconds", float8), ("blocked_pid", int4)]),
            &expected,
        )
        .unwrap();
        assert_eq!(m, r#"column 1 is "wait_seconds", expected "blocked_pid""#);
        // the same name, another type
        let m = mismatch(
            &declared(&[("blocked_pid", pg_sys::INT8OID), ("wait_seconds", float8)]),
            &expected,
        )
        .unwrap();
        assert!(
            m.starts_with(r#"column "blocked_pid" has type oid 20"#),
            "{m}"
        );
        // one missing, one extra
        let m = mismatch(&declared(&[("blocked_pid", int4)]), &expected).unwrap();
        assert!(m.contains("column 2 (wait_seconds) is missing"), "{m}");
        let m = mismatch(
            &declared(&[
                ("blocked_pid", int4),
                ("wait_seconds", float8),
                ("query", pg_sys::TEXTOID),
            ]),
            &expected,
        )
        .unwrap();
        assert!(m.contains(r#""query" is extra"#), "{m}");
    }

    #[test]
    fn a_row_puts_each_cell_under_its_own_name() {
        let mut out = Vec::new();
        Two {
            wait_seconds: Some(pg_sys::Datum::from(7)),
            blocked_pid: Some(pg_sys::Datum::from(3)),
        }
        .cells(&mut out);
        assert_eq!(
            out,
            [Some(pg_sys::Datum::from(3)), Some(pg_sys::Datum::from(7))]
        );
    }
}
