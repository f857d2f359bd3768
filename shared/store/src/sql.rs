//! Statements written once, run on a sqlx connection (PostgreSQL or SQLite) or directly on a
//! SQLite connection owned by a [`crate::writer::Writer`].
//!
//! sqlx runs every SQLite statement on a worker thread of its own: each statement is a round
//! trip between threads, tens of microseconds at best and far more on a busy machine. A batch
//! transaction of a few hundred statements paid that many round trips. [`Conn::Sqlite`] runs the
//! same SQL in the caller's thread, so a batch pays one hand-over to the writer thread in all.
//!
//! SQL uses `$1`-style placeholders, which both backends accept; on the direct SQLite path each
//! `$n` is bound by name, so a placeholder may appear several times and in any order.

use std::borrow::Cow;
use std::sync::Arc;

use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, AssertSqlSafe, Row as _};

use crate::Backend;

/// One argument of a statement, borrowed from the caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg<'a> {
    /// An integer.
    Int(i64),
    /// A text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
    /// NULL in an integer column (PostgreSQL wants the type of a NULL it compares or stores).
    NullInt,
    /// NULL in a text column.
    NullText,
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<i32> for Arg<'_> {
    fn from(v: i32) -> Self {
        Arg::Int(i64::from(v))
    }
}

impl From<u32> for Arg<'_> {
    fn from(v: u32) -> Self {
        Arg::Int(i64::from(v))
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Int(i64::from(v))
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Blob(v)
    }
}

impl<'a> From<&'a Vec<u8>> for Arg<'a> {
    fn from(v: &'a Vec<u8>) -> Self {
        Arg::Blob(v)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        v.map_or(Arg::NullText, Arg::Text)
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Arg::NullInt, Arg::Int)
    }
}

/// The arguments of a statement: `args![a, b, c]` is `&[Arg::from(a), Arg::from(b), Arg::from(c)]`.
#[macro_export]
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        &[$($crate::sql::Arg::from($arg)),*]
    };
}

/// A value read on the direct SQLite path.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Real(f64),
    /// A text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// A row read by [`Conn`]; columns are read by name ([`Row::get`]) or position ([`Row::at`]).
pub struct Row(RowInner);

enum RowInner {
    Any(AnyRow),
    Sqlite { names: Arc<[String]>, values: Vec<Value> },
}

/// A type a column can be read as, on either path.
pub trait Column: Sized {
    /// Reads column `index` of a sqlx row.
    fn from_any(row: &AnyRow, index: usize) -> Result<Self, sqlx::Error>;
    /// Converts a value read directly from SQLite.
    fn from_value(value: &Value) -> Result<Self, String>;
}

macro_rules! column_via_sqlx {
    ($t:ty, $from:expr) => {
        impl Column for $t {
            fn from_any(row: &AnyRow, index: usize) -> Result<Self, sqlx::Error> {
                row.try_get(index)
            }
            fn from_value(value: &Value) -> Result<Self, String> {
                #[allow(clippy::redundant_closure_call)]
                ($from)(value)
            }
        }
    };
}

column_via_sqlx!(i64, |v: &Value| match v {
    Value::Int(n) => Ok(*n),
    other => Err(format!("expected an integer, found {other:?}")),
});
column_via_sqlx!(i32, |v: &Value| match v {
    Value::Int(n) => i32::try_from(*n).map_err(|_| format!("integer {n} does not fit in 32 bits")),
    other => Err(format!("expected an integer, found {other:?}")),
});
column_via_sqlx!(bool, |v: &Value| match v {
    Value::Int(n) => Ok(*n != 0),
    other => Err(format!("expected a boolean, found {other:?}")),
});
column_via_sqlx!(f64, |v: &Value| match v {
    Value::Real(x) => Ok(*x),
    Value::Int(n) => Ok(*n as f64),
    other => Err(format!("expected a number, found {other:?}")),
});
column_via_sqlx!(String, |v: &Value| match v {
    Value::Text(s) => Ok(s.clone()),
    other => Err(format!("expected a text, found {other:?}")),
});
column_via_sqlx!(Vec<u8>, |v: &Value| match v {
    Value::Blob(b) => Ok(b.clone()),
    Value::Text(s) => Ok(s.as_bytes().to_vec()),
    other => Err(format!("expected bytes, found {other:?}")),
});

impl<T> Column for Option<T>
where
    T: Column,
    Option<T>: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    fn from_any(row: &AnyRow, index: usize) -> Result<Self, sqlx::Error> {
        row.try_get(index)
    }
    fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Null => Ok(None),
            other => T::from_value(other).map(Some),
        }
    }
}

impl Row {
    /// Column `name`, as `T`; an error (never a default) when it is missing or of another type.
    pub fn get<T: Column>(&self, name: &str) -> Result<T, sqlx::Error> {
        match &self.0 {
            RowInner::Any(row) => {
                let index = row.try_column(name).map(sqlx::Column::ordinal)?;
                T::from_any(row, index)
            }
            RowInner::Sqlite { names, .. } => {
                let index = names.iter().position(|n| n == name).ok_or_else(|| sqlx::Error::ColumnNotFound(name.to_string()))?;
                self.at(index)
            }
        }
    }

    /// Column `index` (from 0), as `T`.
    pub fn at<T: Column>(&self, index: usize) -> Result<T, sqlx::Error> {
        match &self.0 {
            RowInner::Any(row) => T::from_any(row, index),
            RowInner::Sqlite { names, values } => {
                let value = values.get(index).ok_or(sqlx::Error::ColumnIndexOutOfBounds { index, len: values.len() })?;
                T::from_value(value).map_err(|e| sqlx::Error::ColumnDecode { index: names[index].clone(), source: e.into() })
            }
        }
    }
}

/// A database connection that statements run on: a sqlx connection, or a SQLite connection held
/// by this thread (see [`crate::writer::Writer`]).
pub enum Conn<'c> {
    /// Through sqlx: PostgreSQL, or SQLite on sqlx's worker thread.
    Sqlx(&'c mut AnyConnection),
    /// SQLite, in this thread.
    Sqlite(&'c mut rusqlite::Connection),
}

impl<'c> From<&'c mut AnyConnection> for Conn<'c> {
    fn from(conn: &'c mut AnyConnection) -> Self {
        Conn::Sqlx(conn)
    }
}

impl Conn<'_> {
    /// Which dialect the connection speaks.
    pub fn backend(&self) -> Backend {
        match self {
            Conn::Sqlx(c) if c.backend_name().eq_ignore_ascii_case("postgresql") => Backend::Postgres,
            _ => Backend::Sqlite,
        }
    }

    /// The same connection for a shorter while (to pass on without giving it up).
    pub fn reborrow(&mut self) -> Conn<'_> {
        match self {
            Conn::Sqlx(c) => Conn::Sqlx(c),
            Conn::Sqlite(c) => Conn::Sqlite(c),
        }
    }

    /// Runs a statement; returns how many rows it changed.
    pub async fn execute(&mut self, sql: impl Into<Cow<'static, str>>, args: &[Arg<'_>]) -> Result<u64, sqlx::Error> {
        let sql = sql.into();
        match self {
            Conn::Sqlx(c) => {
                Ok(bind_sqlx(sqlx::query(AssertSqlSafe(sql.clone())), args).execute(&mut **c).await.map_err(|e| in_statement(e, &sql))?.rows_affected())
            }
            Conn::Sqlite(c) => {
                let run = |c: &mut rusqlite::Connection| {
                    let mut statement = c.prepare_cached(&sql).map_err(from_sqlite)?;
                    bind_sqlite(&mut statement, args)?;
                    statement.raw_execute().map(|n| n as u64).map_err(from_sqlite)
                };
                run(c).map_err(|e| in_statement(e, &sql))
            }
        }
    }

    /// Runs a query; returns every row.
    pub async fn fetch_all(&mut self, sql: impl Into<Cow<'static, str>>, args: &[Arg<'_>]) -> Result<Vec<Row>, sqlx::Error> {
        let sql = sql.into();
        match self {
            Conn::Sqlx(c) => Ok(bind_sqlx(sqlx::query(AssertSqlSafe(sql.clone())), args)
                .fetch_all(&mut **c)
                .await
                .map_err(|e| in_statement(e, &sql))?
                .into_iter()
                .map(|r| Row(RowInner::Any(r)))
                .collect()),
            Conn::Sqlite(c) => query_sqlite(c, &sql, args, usize::MAX).map_err(|e| in_statement(e, &sql)),
        }
    }

    /// Runs a query; returns its first row, if any.
    pub async fn fetch_optional(&mut self, sql: impl Into<Cow<'static, str>>, args: &[Arg<'_>]) -> Result<Option<Row>, sqlx::Error> {
        let sql = sql.into();
        match self {
            Conn::Sqlx(c) => Ok(bind_sqlx(sqlx::query(AssertSqlSafe(sql.clone())), args)
                .fetch_optional(&mut **c)
                .await
                .map_err(|e| in_statement(e, &sql))?
                .map(|r| Row(RowInner::Any(r)))),
            Conn::Sqlite(c) => Ok(query_sqlite(c, &sql, args, 1).map_err(|e| in_statement(e, &sql))?.pop()),
        }
    }

    /// Runs a query; returns its first row, or [`sqlx::Error::RowNotFound`].
    pub async fn fetch_one(&mut self, sql: impl Into<Cow<'static, str>>, args: &[Arg<'_>]) -> Result<Row, sqlx::Error> {
        self.fetch_optional(sql, args).await?.ok_or(sqlx::Error::RowNotFound)
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>;

fn bind_sqlx<'q>(mut query: AnyQuery<'q>, args: &[Arg<'q>]) -> AnyQuery<'q> {
    for arg in args {
        query = match *arg {
            Arg::Int(v) => query.bind(v),
            Arg::Text(v) => query.bind(v),
            Arg::Blob(v) => query.bind(v),
            Arg::NullInt => query.bind(None::<i64>),
            Arg::NullText => query.bind(None::<String>),
        };
    }
    query
}

/// Placeholder names `$1`..`$32`, so binding by name allocates nothing.
const NAMES: [&str; 32] = [
    "$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9", "$10", "$11", "$12", "$13", "$14", "$15", "$16", "$17", "$18", "$19", "$20", "$21", "$22", "$23",
    "$24", "$25", "$26", "$27", "$28", "$29", "$30", "$31", "$32",
];

fn bind_sqlite(statement: &mut rusqlite::Statement<'_>, args: &[Arg<'_>]) -> Result<(), sqlx::Error> {
    use rusqlite::types::{Null, ToSqlOutput, ValueRef};
    if args.len() > NAMES.len() {
        return Err(sqlx::Error::InvalidArgument(format!("{} arguments; at most {} are supported", args.len(), NAMES.len())));
    }
    for (arg, name) in args.iter().zip(NAMES) {
        // A placeholder the statement does not use is not an error, as with sqlx.
        let Some(index) = statement.parameter_index(name).map_err(from_sqlite)? else { continue };
        let value = match *arg {
            Arg::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(v)),
            Arg::Text(v) => ToSqlOutput::Borrowed(ValueRef::Text(v.as_bytes())),
            Arg::Blob(v) => ToSqlOutput::Borrowed(ValueRef::Blob(v)),
            Arg::NullInt | Arg::NullText => ToSqlOutput::Owned(rusqlite::types::Value::from(Null)),
        };
        statement.raw_bind_parameter(index, value).map_err(from_sqlite)?;
    }
    Ok(())
}

fn query_sqlite(conn: &mut rusqlite::Connection, sql: &str, args: &[Arg<'_>], limit: usize) -> Result<Vec<Row>, sqlx::Error> {
    use rusqlite::types::ValueRef;
    let mut statement = conn.prepare_cached(sql).map_err(from_sqlite)?;
    bind_sqlite(&mut statement, args)?;
    let names: Arc<[String]> = statement.column_names().into_iter().map(str::to_string).collect();
    let width = names.len();
    let mut rows = statement.raw_query();
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(row) = rows.next().map_err(from_sqlite)? else { break };
        let mut values = Vec::with_capacity(width);
        for i in 0..width {
            values.push(match row.get_ref(i).map_err(from_sqlite)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) => Value::Int(n),
                ValueRef::Real(x) => Value::Real(x),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            });
        }
        out.push(Row(RowInner::Sqlite { names: names.clone(), values }));
    }
    Ok(out)
}

/// A SQLite failure, as the sqlx error the rest of the code classifies (the extended result code
/// is the error's code, as sqlx's own SQLite driver reports it).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SqliteFailure {
    code: i32,
    message: String,
}

impl sqlx::error::DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(self.code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use sqlx::error::ErrorKind;
        // Extended codes of SQLITE_CONSTRAINT (19): unique 2067, primary key 1555, foreign key 787,
        // not null 1299, check 275.
        match self.code {
            2067 | 1555 => ErrorKind::UniqueViolation,
            787 => ErrorKind::ForeignKeyViolation,
            1299 => ErrorKind::NotNullViolation,
            275 => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

/// A database's error with the statement that met it, so that a log line or a dead letter says
/// which statement failed. Code, kind and constraint are the database's own (classification does
/// not change).
#[derive(Debug)]
struct InStatement {
    inner: Box<dyn sqlx::error::DatabaseError>,
    statement: String,
}

impl std::fmt::Display for InStatement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Statements are one line in the source; long ones are cut.
        let statement: String = self.statement.split_whitespace().collect::<Vec<_>>().join(" ");
        let cut = statement.char_indices().nth(200).map_or(statement.len(), |(i, _)| i);
        write!(f, "{} (in `{}{}`)", self.inner, &statement[..cut], if cut < statement.len() { " ..." } else { "" })
    }
}

impl std::error::Error for InStatement {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.inner.as_error())
    }
}

impl sqlx::error::DatabaseError for InStatement {
    fn message(&self) -> &str {
        self.inner.message()
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.inner.code()
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn constraint(&self) -> Option<&str> {
        self.inner.constraint()
    }

    fn table(&self) -> Option<&str> {
        self.inner.table()
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        self.inner.kind()
    }
}

/// A database error that names the statement it met; other errors as they are.
fn in_statement(e: sqlx::Error, statement: &str) -> sqlx::Error {
    match e {
        sqlx::Error::Database(inner) => sqlx::Error::Database(Box::new(InStatement { inner, statement: statement.to_string() })),
        other => other,
    }
}

/// Turns a rusqlite error into the sqlx error the callers classify.
pub fn from_sqlite(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::SqliteFailure(failure, message) => {
            let message = message.unwrap_or_else(|| failure.to_string());
            sqlx::Error::Database(Box::new(SqliteFailure { code: failure.extended_code, message }))
        }
        rusqlite::Error::QueryReturnedNoRows => sqlx::Error::RowNotFound,
        // A misuse of the API (wrong type, wrong argument count): nothing a retry can mend.
        other => sqlx::Error::InvalidArgument(format!("sqlite: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct() -> (tempfile::TempDir, rusqlite::Connection) {
        let dir = tempfile::tempdir().expect("temp dir");
        let conn = crate::writer::connect(&dir.path().join("t.db")).expect("open sqlite");
        conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, n INTEGER, b BLOB)").expect("create table");
        (dir, conn)
    }

    #[tokio::test]
    async fn placeholders_bind_by_number_in_any_order_and_repeat() {
        let (_dir, mut raw) = direct();
        let mut conn = Conn::Sqlite(&mut raw);
        // $2 comes first in the text, $1 twice: each binds its own argument.
        let n = conn.execute("INSERT INTO t (n, name, b) VALUES ($2 + $1, $3, $4)", args![1_i64, 40_i64, "x", &b"\x00\x01".to_vec()]).await.unwrap();
        assert_eq!(n, 1);
        let row = conn.fetch_one("SELECT n, name, b FROM t WHERE name = $1 AND n = $2 - $2 + 41", args!["x", 7_i64]).await.unwrap();
        assert_eq!((row.get::<i64>("n").unwrap(), row.get::<String>("name").unwrap()), (41, "x".to_string()));
        assert_eq!(row.at::<Vec<u8>>(2).unwrap(), vec![0, 1]);
    }

    #[tokio::test]
    async fn nulls_read_as_none_and_a_wrong_type_is_an_error_not_a_default() {
        let (_dir, mut raw) = direct();
        let mut conn = Conn::Sqlite(&mut raw);
        let id: i64 = conn.fetch_one("INSERT INTO t (name, n) VALUES ($1, $2) RETURNING id", args![None::<&str>, None::<i64>]).await.unwrap().at(0).unwrap();
        let row = conn.fetch_one("SELECT name, n FROM t WHERE id = $1", args![id]).await.unwrap();
        assert_eq!(row.get::<Option<String>>("name").unwrap(), None);
        assert_eq!(row.get::<Option<i64>>("n").unwrap(), None);
        assert!(row.get::<String>("name").is_err(), "NULL is not a text");
        assert!(matches!(row.get::<i64>("missing"), Err(sqlx::Error::ColumnNotFound(_))));
        assert!(conn.fetch_optional("SELECT id FROM t WHERE id = $1", args![id + 1]).await.unwrap().is_none());
        assert!(matches!(conn.fetch_one("SELECT id FROM t WHERE id = $1", args![id + 1]).await, Err(sqlx::Error::RowNotFound)));
    }

    #[tokio::test]
    async fn a_constraint_violation_is_permanent_and_a_busy_database_transient() {
        let (dir, mut raw) = direct();
        let mut conn = Conn::Sqlite(&mut raw);
        conn.execute("INSERT INTO t (name) VALUES ($1)", args!["same"]).await.unwrap();
        let e = conn.execute("INSERT INTO t (name) VALUES ($1)", args!["same"]).await.unwrap_err();
        assert!(matches!(&e, sqlx::Error::Database(d) if d.is_unique_violation()), "{e:?}");
        assert!(!crate::is_transient(&e));
        // Another connection holds the write lock: after its busy timeout, this one is told to retry.
        raw.execute_batch("BEGIN IMMEDIATE").unwrap();
        let other = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        other.busy_timeout(std::time::Duration::from_millis(10)).unwrap();
        let mut other = other;
        let e = Conn::Sqlite(&mut other).execute("INSERT INTO t (name) VALUES ($1)", args!["other"]).await.unwrap_err();
        assert!(crate::is_transient(&e), "{e:?}");
        raw.execute_batch("ROLLBACK").unwrap();
    }

    #[tokio::test]
    async fn a_missing_table_or_a_read_only_file_is_fatal_and_names_the_statement() {
        let (dir, mut raw) = direct();
        let e = Conn::Sqlite(&mut raw).execute("INSERT INTO nowhere (name) VALUES ($1)", args!["x"]).await.unwrap_err();
        assert_eq!(crate::classify(&e), crate::Failure::Fatal, "{e:?}");
        assert!(e.to_string().contains("no such table: nowhere") && e.to_string().contains("in `INSERT INTO nowhere (name) VALUES ($1)`"), "{e}");
        // The same file opened read-only, as a database a deployment mounted read-only.
        drop(raw);
        let mut ro = rusqlite::Connection::open_with_flags(dir.path().join("t.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let e = Conn::Sqlite(&mut ro).execute("INSERT INTO t (name) VALUES ($1)", args!["x"]).await.unwrap_err();
        assert_eq!(crate::classify(&e), crate::Failure::Fatal, "{e:?}");
        // A constraint is the data's fault, not the database's.
        let mut rw = crate::writer::connect(&dir.path().join("t.db")).unwrap();
        Conn::Sqlite(&mut rw).execute("INSERT INTO t (name) VALUES ($1)", args!["y"]).await.unwrap();
        let e = Conn::Sqlite(&mut rw).execute("INSERT INTO t (name) VALUES ($1)", args!["y"]).await.unwrap_err();
        assert_eq!(crate::classify(&e), crate::Failure::Poison, "{e:?}");
    }

    #[tokio::test]
    async fn the_same_statements_run_through_sqlx() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Db::connect(&format!("sqlite://{}", dir.path().join("t.db").display()), 1).await.unwrap();
        let mut pooled = db.pool().acquire().await.unwrap();
        let mut conn = Conn::Sqlx(&mut pooled);
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n INTEGER)", &[]).await.unwrap();
        let id: i64 =
            conn.fetch_one("INSERT INTO t (n, name) VALUES ($2 + $1, $3) RETURNING id", args![1_i64, 40_i64, None::<&str>]).await.unwrap().at(0).unwrap();
        let row = conn.fetch_one("SELECT name, n FROM t WHERE id = $1", args![id]).await.unwrap();
        assert_eq!((row.get::<Option<String>>("name").unwrap(), row.get::<i64>("n").unwrap()), (None, 41));
        assert_eq!(conn.backend(), Backend::Sqlite);
    }
}
