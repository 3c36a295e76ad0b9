//! The one way the store's modules run SQL: [`Db`], a connection (a
//! write request's transaction, or a reader), with parameters and columns
//! of the few types the schema uses (integers, text, octets, and NULL as
//! `Option`). No store module names the engine's own types, so each
//! decision's statements are written once for every engine the store runs
//! on. What a module must not assume of the engine is the writer: a
//! decision holds by its predicate or by a lock it names.

use rusqlite::types::{FromSql, ToSql, ValueRef};

use super::StoreError;

/// A value bound to a statement's parameter.
pub trait Param: Sync {
    fn sqlite(&self) -> &dyn ToSql;
}

impl<T: ToSql + Sync> Param for T {
    fn sqlite(&self) -> &dyn ToSql {
        self
    }
}

/// A value read from a result column.
pub trait Column: Sized {
    fn from_sqlite(value: ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self>;
}

impl<T: FromSql> Column for T {
    fn from_sqlite(value: ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        T::column_result(value)
    }
}

/// A parameter list: `params![a, b]` is `&[&a, &b]` as `&[&dyn Param]`.
#[macro_export]
#[doc(hidden)]
macro_rules! store_params {
    ($($p:expr),* $(,)?) => { &[$(&$p as &dyn $crate::store::sql::Param),*] as &[&dyn $crate::store::sql::Param] };
}
pub(crate) use store_params as params;

/// A connection, in the transaction of the request that holds it.
#[derive(Clone, Copy)]
pub struct Db<'c> {
    conn: &'c rusqlite::Connection,
}

/// One row of a result.
pub struct Row<'r> {
    row: &'r rusqlite::Row<'r>,
}

impl Row<'_> {
    /// The value of column `i` (from 0).
    pub fn get<T: Column>(&self, i: usize) -> Result<T, StoreError> {
        let value = self.row.get_ref(i)?;
        T::from_sqlite(value)
            .map_err(|e| StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(i, value.data_type(), Box::new(e))))
    }
}

fn bind<'a>(params: &'a [&'a dyn Param]) -> Vec<&'a dyn ToSql> {
    params.iter().map(|p| p.sqlite()).collect()
}

impl<'c> Db<'c> {
    pub(super) fn sqlite(conn: &'c rusqlite::Connection) -> Self {
        Db { conn }
    }

    /// Runs one statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<usize, StoreError> {
        Ok(self.conn.prepare_cached(sql)?.execute(bind(params).as_slice())?)
    }

    /// Runs statements without parameters or results (DDL, savepoints).
    pub fn execute_batch(&self, sql: &str) -> Result<(), StoreError> {
        Ok(self.conn.execute_batch(sql)?)
    }

    /// The one row a statement returns (an error if none).
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.query_opt(sql, params, f)?.ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// The first row a statement returns, if any.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut st = self.conn.prepare_cached(sql)?;
        let mut rows = st.query(bind(params).as_slice())?;
        match rows.next()? {
            Some(row) => Ok(Some(f(&Row { row })?)),
            None => Ok(None),
        }
    }

    /// Every row a statement returns, each read by `f`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let mut st = self.conn.prepare_cached(sql)?;
        let mut rows = st.query(bind(params).as_slice())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(f(&Row { row })?);
        }
        Ok(out)
    }

    /// Runs `f` on one consistent snapshot of the store (a transaction).
    pub fn snapshot<T>(&self, f: impl FnOnce(&Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let out = f(&Db { conn: &tx })?;
        tx.commit()?;
        Ok(out)
    }
}
