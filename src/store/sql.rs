//! The one way the store's modules run SQL: [`Db`], a connection (a
//! write request's transaction, or a reader), with parameters and columns
//! of the few types the schema uses (integers, text, octets, and NULL as
//! `Option`). No store module names an engine's own types, so each
//! decision's statements are written once and run unchanged on SQLite and
//! on PostgreSQL: statements use `?N` placeholders (numbered here to `$N`
//! for PostgreSQL) and the SQL both engines share. What a module must not
//! assume of the engine is the writer: a decision holds by its predicate
//! or by a lock it names.

use std::cell::RefCell;
use std::collections::HashMap;

use postgres::types::{FromSql as PgFromSql, IsNull, ToSql as PgToSql, Type};
use rusqlite::types::{FromSql, ToSql, ToSqlOutput, Value, ValueRef};

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

/// A PostgreSQL connection and the statements it has prepared.
pub struct Pg {
    client: postgres::Client,
    prepared: HashMap<String, postgres::Statement>,
}

/// Prepared statements kept per PostgreSQL connection; the archive's
/// filters make statements of many shapes, so the cache starts over past this.
const PREPARED_MAX: usize = 256;

impl Pg {
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let client = postgres::Client::connect(url, postgres::NoTls)?;
        Ok(Pg { client, prepared: HashMap::new() })
    }

    /// `sql` prepared for arguments of these types (a statement is
    /// prepared once per connection and per types of its arguments).
    fn statement(&mut self, sql: &str, args: &[PgArg]) -> Result<postgres::Statement, StoreError> {
        let types: Vec<Type> = args.iter().map(PgArg::declared).collect();
        let key = format!("{sql}\0{}", types.iter().map(|t| t.oid().to_string()).collect::<Vec<_>>().join(","));
        if let Some(st) = self.prepared.get(&key) {
            return Ok(st.clone());
        }
        if self.prepared.len() >= PREPARED_MAX {
            self.prepared.clear();
        }
        let st = self
            .client
            .prepare_typed(&numbered(sql), &types)
            .inspect_err(|e| tracing::debug!(error = %e, sql, "cannot prepare"))?;
        self.prepared.insert(key, st.clone());
        Ok(st)
    }

    fn run(&mut self, sql: &str, params: &[&dyn Param]) -> Result<Vec<postgres::Row>, StoreError> {
        let args = PgArg::all(params)?;
        let st = self.statement(sql, &args)?;
        Ok(self.client.query(&st, &PgArg::refs(&args))?)
    }

    fn execute(&mut self, sql: &str, params: &[&dyn Param]) -> Result<usize, StoreError> {
        let args = PgArg::all(params)?;
        let st = self.statement(sql, &args)?;
        Ok(self.client.execute(&st, &PgArg::refs(&args))? as usize)
    }

    /// False once the connection is lost: it is then dropped, not pooled.
    pub(super) fn is_usable(&self) -> bool {
        !self.client.is_closed()
    }

    fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.client.batch_execute(sql)?)
    }
}

/// `sql` with SQLite's placeholders as PostgreSQL's: `?N` is `$N`, and a
/// bare `?` is one more than the largest number before it (SQLite's rule).
/// String literals are copied as they are.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let (mut chars, mut largest, mut quoted) = (sql.chars().peekable(), 0u32, false);
    while let Some(ch) = chars.next() {
        if ch == '\'' {
            quoted = !quoted;
        }
        if ch != '?' || quoted {
            out.push(ch);
            continue;
        }
        let mut digits = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            digits.push(*d);
            chars.next();
        }
        let n = digits.parse().unwrap_or(largest + 1);
        largest = largest.max(n);
        out.push_str(&format!("${n}"));
    }
    out
}

/// A parameter's value, bound as the type PostgreSQL expects there.
#[derive(Debug)]
struct PgArg(Value);

impl PgArg {
    fn all(params: &[&dyn Param]) -> Result<Vec<Self>, StoreError> {
        params.iter().map(|p| Self::of(*p)).collect()
    }

    fn of(p: &dyn Param) -> Result<Self, StoreError> {
        Ok(PgArg(match p.sqlite().to_sql()? {
            ToSqlOutput::Borrowed(v) => v.into(),
            ToSqlOutput::Owned(v) => v,
            _ => return Err(StoreError::Batch("a parameter of a kind PostgreSQL does not take".into())),
        }))
    }

    fn refs(args: &[Self]) -> Vec<&(dyn PgToSql + Sync)> {
        args.iter().map(|a| a as &(dyn PgToSql + Sync)).collect()
    }

    /// The type the statement is prepared with for this argument: its
    /// own, so that PostgreSQL never has to guess it from the SQL around;
    /// for NULL, none (PostgreSQL takes it from the SQL).
    fn declared(&self) -> Type {
        match self.0 {
            Value::Null => Type::new("unspecified".into(), 0, postgres::types::Kind::Simple, "pg_catalog".into()),
            Value::Integer(_) => Type::INT8,
            Value::Real(_) => Type::FLOAT8,
            Value::Text(_) => Type::TEXT,
            Value::Blob(_) => Type::BYTEA,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl PgToSql for PgArg {
    fn to_sql(&self, ty: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, BoxError> {
        match (&self.0, ty) {
            (Value::Null, _) => Ok(IsNull::Yes),
            (Value::Integer(n), &Type::INT8) => PgToSql::to_sql(n, ty, out),
            (Value::Integer(n), &Type::INT4) => PgToSql::to_sql(&i32::try_from(*n)?, ty, out),
            (Value::Integer(n), &Type::INT2) => PgToSql::to_sql(&i16::try_from(*n)?, ty, out),
            (Value::Integer(n), &Type::BOOL) => PgToSql::to_sql(&(*n != 0), ty, out),
            (Value::Real(x), &Type::FLOAT8) => PgToSql::to_sql(x, ty, out),
            (Value::Text(s), &Type::TEXT | &Type::VARCHAR | &Type::BPCHAR | &Type::NAME | &Type::UNKNOWN) => {
                PgToSql::to_sql(&s.as_str(), ty, out)
            }
            (Value::Blob(b), &Type::BYTEA) => PgToSql::to_sql(&b.as_slice(), ty, out),
            (v, _) => Err(format!("a {:?} parameter where PostgreSQL expects {ty}", v.data_type()).into()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A column's value as the store reads it (booleans as 0 and 1).
struct PgValue(Value);

impl<'a> PgFromSql<'a> for PgValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(PgValue(match *ty {
            Type::INT8 => Value::Integer(i64::from_sql(ty, raw)?),
            Type::INT4 => Value::Integer(i32::from_sql(ty, raw)?.into()),
            Type::INT2 => Value::Integer(i16::from_sql(ty, raw)?.into()),
            Type::BOOL => Value::Integer(bool::from_sql(ty, raw)?.into()),
            Type::FLOAT8 => Value::Real(f64::from_sql(ty, raw)?),
            Type::BYTEA => Value::Blob(Vec::<u8>::from_sql(ty, raw)?),
            _ => Value::Text(String::from_sql(ty, raw)?),
        }))
    }

    fn from_sql_null(_: &Type) -> Result<Self, BoxError> {
        Ok(PgValue(Value::Null))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT8 | Type::INT4 | Type::INT2 | Type::BOOL | Type::FLOAT8 | Type::BYTEA)
            || <String as PgFromSql>::accepts(ty)
    }
}

/// The engine under a [`Db`].
#[derive(Clone, Copy)]
enum Conn<'c> {
    Sqlite(&'c rusqlite::Connection),
    Postgres(&'c RefCell<Pg>),
}

/// A connection, in the transaction of the request that holds it.
#[derive(Clone, Copy)]
pub struct Db<'c> {
    conn: Conn<'c>,
}

/// One row of a result.
pub enum Row<'r> {
    Sqlite(&'r rusqlite::Row<'r>),
    Postgres(&'r postgres::Row),
}

impl Row<'_> {
    /// The value of column `i` (from 0).
    pub fn get<T: Column>(&self, i: usize) -> Result<T, StoreError> {
        match self {
            Row::Sqlite(row) => {
                let value = row.get_ref(i)?;
                T::from_sqlite(value).map_err(|e| {
                    StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(i, value.data_type(), Box::new(e)))
                })
            }
            Row::Postgres(row) => {
                let PgValue(value) = row.try_get(i)?;
                T::from_sqlite((&value).into()).map_err(|e| {
                    StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(i, value.data_type(), Box::new(e)))
                })
            }
        }
    }
}

fn bind<'a>(params: &'a [&'a dyn Param]) -> Vec<&'a dyn ToSql> {
    params.iter().map(|p| p.sqlite()).collect()
}

impl<'c> Db<'c> {
    pub(super) fn sqlite(conn: &'c rusqlite::Connection) -> Self {
        Db { conn: Conn::Sqlite(conn) }
    }

    pub(super) fn postgres(conn: &'c RefCell<Pg>) -> Self {
        Db { conn: Conn::Postgres(conn) }
    }

    /// True on PostgreSQL: for the few statements that are the engine's
    /// own (its catalogue, its integrity checks), never for a decision.
    pub fn is_postgres(&self) -> bool {
        matches!(self.conn, Conn::Postgres(_))
    }

    /// The expression for the UTF-8 octets of the text `expr` (the inbox's
    /// acknowledgement scope is its account's octets).
    pub fn utf8_octets(&self, expr: &str) -> String {
        match self.conn {
            Conn::Sqlite(_) => format!("CAST({expr} AS BLOB)"),
            Conn::Postgres(_) => format!("convert_to({expr}, 'UTF8')"),
        }
    }

    /// Runs one statement; the number of rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<usize, StoreError> {
        match self.conn {
            Conn::Sqlite(c) => Ok(c.prepare_cached(sql)?.execute(bind(params).as_slice())?),
            Conn::Postgres(pg) => pg.borrow_mut().execute(sql, params),
        }
    }

    /// Runs statements without parameters or results (DDL, savepoints).
    pub fn execute_batch(&self, sql: &str) -> Result<(), StoreError> {
        match self.conn {
            Conn::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Conn::Postgres(pg) => pg.borrow_mut().batch(sql),
        }
    }

    /// The one row a statement returns (an error if none).
    pub fn query_row<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.query_opt(sql, params, f)?.ok_or(StoreError::NoRow)
    }

    /// The first row a statement returns, if any.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        match self.conn {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(bind(params).as_slice())?;
                match rows.next()? {
                    Some(row) => Ok(Some(f(&Row::Sqlite(row))?)),
                    None => Ok(None),
                }
            }
            Conn::Postgres(pg) => {
                let rows = pg.borrow_mut().run(sql, params)?;
                rows.first().map(|row| f(&Row::Postgres(row))).transpose()
            }
        }
    }

    /// Every row a statement returns, each read by `f`.
    pub fn query_map<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        match self.conn {
            Conn::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(bind(params).as_slice())?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(f(&Row::Sqlite(row))?);
                }
                Ok(out)
            }
            Conn::Postgres(pg) => {
                let rows = pg.borrow_mut().run(sql, params)?;
                rows.iter().map(|row| f(&Row::Postgres(row))).collect()
            }
        }
    }

    /// Runs `f` on one consistent snapshot of the store (a read-only
    /// transaction).
    pub fn snapshot<T>(&self, f: impl FnOnce(&Db) -> Result<T, StoreError>) -> Result<T, StoreError> {
        match self.conn {
            Conn::Sqlite(c) => {
                let tx = c.unchecked_transaction()?;
                let out = f(&Db::sqlite(&tx))?;
                tx.commit()?;
                Ok(out)
            }
            Conn::Postgres(_) => {
                self.execute_batch("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
                let out = f(self);
                self.execute_batch(if out.is_ok() { "COMMIT" } else { "ROLLBACK" })?;
                out
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn placeholders_are_numbered_as_sqlite_numbers_them() {
        assert_eq!(numbered("SELECT ?1, ?2, ?1"), "SELECT $1, $2, $1");
        assert_eq!(numbered("a = ?1 AND b IN (?, ?)"), "a = $1 AND b IN ($2, $3)");
        assert_eq!(numbered("x = '?' AND y = ?"), "x = '?' AND y = $1");
        assert_eq!(numbered("? ?10 ?"), "$1 $10 $11");
    }
}
