//! Portable values: what goes into a statement ([`Value`]) and what comes back
//! ([`Row`], read with [`Row::get`] through [`FromValue`]).

use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};

use crate::error::StoreError;

/// A statement parameter or a column value, the same on both backends.
///
/// On SQLite `Bool` is stored as 0/1, `Json` as JSON text and `Time` as unix
/// milliseconds; on PostgreSQL each value adapts to the parameter's inferred
/// type (e.g. `Time` into a `BIGINT` column is unix milliseconds, into a
/// `TIMESTAMPTZ` column a timestamp), so the recommended portable column
/// types bind identically on both.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A 64-bit integer.
    Int(i64),
    /// A double.
    Float(f64),
    /// Text.
    Text(String),
    /// A boolean.
    Bool(bool),
    /// A JSON document.
    Json(serde_json::Value),
    /// A point in time (unix milliseconds in portable `BIGINT` columns).
    Time(DateTime<Utc>),
}

impl Value {
    /// True for SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "integer",
            Value::Float(_) => "float",
            Value::Text(_) => "text",
            Value::Bool(_) => "bool",
            Value::Json(_) => "json",
            Value::Time(_) => "time",
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value {
                Value::Int(i64::from(v))
            }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}
impl From<f32> for Value {
    fn from(v: f32) -> Value {
        Value::Float(f64::from(v))
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::Text(v.clone())
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Text(v.to_owned())
    }
}
impl From<serde_json::Value> for Value {
    fn from(v: serde_json::Value) -> Value {
        Value::Json(v)
    }
}
impl From<&serde_json::Value> for Value {
    fn from(v: &serde_json::Value) -> Value {
        Value::Json(v.clone())
    }
}
impl From<DateTime<Utc>> for Value {
    fn from(v: DateTime<Utc>) -> Value {
        Value::Time(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// Builds a `&[Value]` parameter list: `params![job_id, 3, Utc::now()]`.
#[macro_export]
macro_rules! params {
    () => { &[] as &[$crate::Value] };
    ($($v:expr),+ $(,)?) => { &[$($crate::Value::from($v)),+] as &[$crate::Value] };
}

/// Converts a column [`Value`] to a Rust type, leniently across backends
/// (e.g. `bool` from SQLite's 0/1, JSON from SQLite's text, time from millis).
pub trait FromValue: Sized {
    /// The conversion; the error says why it is impossible.
    fn from_value(v: &Value) -> Result<Self, String>;
}

fn mismatch<T>(v: &Value, want: &str) -> Result<T, String> {
    Err(format!("expected {want}, found {}", v.kind()))
}

impl FromValue for Value {
    fn from_value(v: &Value) -> Result<Self, String> {
        Ok(v.clone())
    }
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(i64::from(*b)),
            #[allow(clippy::cast_possible_truncation)]
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(*f as i64),
            Value::Text(s) => s.trim().parse().map_err(|e| format!("{e}: {s:?}")),
            Value::Time(t) => Ok(t.timestamp_millis()),
            Value::Json(serde_json::Value::Number(n)) => {
                n.as_i64().ok_or_else(|| format!("{n} is not an i64"))
            }
            _ => mismatch(v, "integer"),
        }
    }
}

macro_rules! from_value_int {
    ($($t:ty),*) => {$(
        impl FromValue for $t {
            fn from_value(v: &Value) -> Result<Self, String> {
                let i = i64::from_value(v)?;
                <$t>::try_from(i).map_err(|_| format!("{i} out of range for {}", stringify!($t)))
            }
        }
    )*};
}
from_value_int!(i32, i16, u32, u64, usize);

impl FromValue for f64 {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Float(f) => Ok(*f),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Ok(*i as f64),
            Value::Text(s) => s.trim().parse().map_err(|e| format!("{e}: {s:?}")),
            Value::Json(serde_json::Value::Number(n)) => {
                n.as_f64().ok_or_else(|| format!("{n} is not an f64"))
            }
            _ => mismatch(v, "float"),
        }
    }
}

impl FromValue for bool {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Bool(b) => Ok(*b),
            Value::Int(i) => Ok(*i != 0),
            Value::Text(s) => match s.as_str() {
                "t" | "true" | "1" | "TRUE" => Ok(true),
                "f" | "false" | "0" | "FALSE" => Ok(false),
                _ => Err(format!("{s:?} is not a boolean")),
            },
            Value::Json(serde_json::Value::Bool(b)) => Ok(*b),
            _ => mismatch(v, "bool"),
        }
    }
}

impl FromValue for String {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            Value::Int(i) => Ok(i.to_string()),
            Value::Float(f) => Ok(f.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Json(serde_json::Value::String(s)) => Ok(s.clone()),
            Value::Json(j) => Ok(j.to_string()),
            Value::Time(t) => Ok(t.to_rfc3339()),
            Value::Null => mismatch(v, "text"),
        }
    }
}

impl FromValue for serde_json::Value {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Json(j) => Ok(j.clone()),
            Value::Text(s) => serde_json::from_str(s).map_err(|e| format!("invalid JSON: {e}")),
            Value::Int(i) => Ok((*i).into()),
            Value::Float(f) => Ok((*f).into()),
            Value::Bool(b) => Ok((*b).into()),
            Value::Time(t) => Ok(t.to_rfc3339().into()),
            Value::Null => mismatch(v, "json"),
        }
    }
}

impl FromValue for DateTime<Utc> {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Time(t) => Ok(*t),
            Value::Int(ms) => Utc
                .timestamp_millis_opt(*ms)
                .single()
                .ok_or_else(|| format!("{ms} ms is out of range")),
            Value::Text(s) => DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .or_else(|_| {
                    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").map(|n| n.and_utc())
                })
                .map_err(|e| format!("{e}: {s:?}")),
            _ => mismatch(v, "time"),
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// Selects a column by position (from 0) or by name.
pub trait ColumnIndex: std::fmt::Debug {
    /// The position of this column in `row`, if any.
    fn index_in(&self, row: &Row) -> Option<usize>;
}

impl ColumnIndex for usize {
    fn index_in(&self, row: &Row) -> Option<usize> {
        (*self < row.values.len()).then_some(*self)
    }
}

impl ColumnIndex for &str {
    fn index_in(&self, row: &Row) -> Option<usize> {
        row.columns.iter().position(|c| c == self)
    }
}

/// One result row: column names and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub(crate) columns: Arc<[String]>,
    pub(crate) values: Vec<Value>,
}

impl Row {
    /// A row from its column names and values (tests, adapters).
    pub fn new(columns: Arc<[String]>, values: Vec<Value>) -> Row {
        Row { columns, values }
    }

    /// The column names, in order.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The raw values, in column order.
    pub fn values(&self) -> &[Value] {
        &self.values
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The raw value of a column, if the column exists.
    pub fn value(&self, col: impl ColumnIndex) -> Option<&Value> {
        col.index_in(self).map(|i| &self.values[i])
    }

    /// A typed column value: `row.get::<i64>(0)?`, `row.get::<Option<String>>("summary")?`.
    pub fn get<T: FromValue>(&self, col: impl ColumnIndex) -> Result<T, StoreError> {
        let i = col
            .index_in(self)
            .ok_or_else(|| StoreError::decode(format!("{col:?}"), "no such column"))?;
        T::from_value(&self.values[i]).map_err(|m| StoreError::decode(self.columns[i].clone(), m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_conversions() {
        let row = Row::new(
            vec!["n".into(), "b".into(), "j".into(), "t".into(), "z".into()].into(),
            vec![
                Value::Int(7),
                Value::Int(1),
                Value::Text("{\"a\":1}".into()),
                Value::Int(1_700_000_000_123),
                Value::Null,
            ],
        );
        assert_eq!(row.get::<i64>("n").unwrap(), 7);
        assert!(row.get::<bool>("b").unwrap());
        assert_eq!(
            row.get::<serde_json::Value>("j").unwrap(),
            serde_json::json!({"a": 1})
        );
        let t: DateTime<Utc> = row.get(3).unwrap();
        assert_eq!(t.timestamp_millis(), 1_700_000_000_123);
        assert_eq!(row.get::<Option<String>>("z").unwrap(), None);
        assert!(row.get::<String>("z").is_err());
        assert!(row.get::<i64>("missing").is_err());
        let p = params![1, "a", None::<String>, true];
        assert_eq!(p.len(), 4);
        assert_eq!(p[2], Value::Null);
    }
}
