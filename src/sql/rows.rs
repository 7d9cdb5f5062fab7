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

/// The result set of the set-returning function being called.
pub struct ResultSet {
    store: *mut pg_sys::Tuplestorestate,
    desc: pg_sys::TupleDesc,
    columns: usize,
}

impl ResultSet {
    /// Switches the call to materialize mode and checks that the function's SQL declaration
    /// has `columns` columns.
    ///
    /// # Safety
    /// `fcinfo` must be that of a set-returning function returning a row type, called by the
    /// executor.
    pub unsafe fn begin(fcinfo: pg_sys::FunctionCallInfo, columns: usize) -> ResultSet {
        unsafe {
            pg_sys::InitMaterializedSRF(fcinfo, 0);
            let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
            let rs = ResultSet {
                store: (*rsinfo).setResult,
                desc: (*rsinfo).setDesc,
                columns,
            };
            let natts = (*rs.desc).natts as usize;
            if natts != columns {
                crate::errors::not_ready(
                    format!("dbconn_guard: the function's SQL declaration has {natts} columns, the library returns {columns}"),
                    None,
                    "Run ALTER EXTENSION dbconn_guard UPDATE, or install the files of one version.",
                );
            }
            rs
        }
    }

    /// Appends one row (the tuplestore copies it).
    pub fn push<const N: usize>(&mut self, cells: &[Cell; N]) {
        assert_eq!(
            N, self.columns,
            "row width differs from the declared columns"
        );
        let mut values = [pg_sys::Datum::from(0); N];
        let mut nulls = [true; N];
        for (i, c) in cells.iter().enumerate() {
            if let Some(d) = c {
                values[i] = *d;
                nulls[i] = false;
            }
        }
        unsafe {
            pg_sys::tuplestore_putvalues(
                self.store,
                self.desc,
                values.as_mut_ptr(),
                nulls.as_mut_ptr(),
            )
        };
    }
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
