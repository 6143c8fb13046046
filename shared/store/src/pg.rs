//! PostgreSQL backend: a deadpool-postgres pool whose sessions carry a
//! server-side `statement_timeout`, value binding that adapts to each
//! parameter's inferred type, and row decoding into portable [`Value`]s.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use std::sync::atomic::{AtomicU8, Ordering};

use deadpool_postgres::{Hook, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

use crate::StoreOptions;
use crate::error::StoreError;
use crate::pg_tls::{self, SslMode};
use crate::value::{Row, Value};

type BoxError = Box<dyn StdError + Sync + Send>;

/// A server-side transaction left idle this long is aborted by PostgreSQL, so a
/// leaked connection can never hold row locks for long.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(300);
/// Extra time the client waits beyond the server-side statement timeout before it
/// gives up on the connection (the server normally cancels first, with 57014).
pub(crate) const CLIENT_GRACE: Duration = Duration::from_secs(2);

/// Builds the pool (lazily connecting: PostgreSQL need not be up yet).
pub(crate) fn pool(url: &str, opts: &StoreOptions) -> Result<Pool, StoreError> {
    let tls = pg_tls::parse(url, opts.ca_file.as_deref())?;
    let mut cfg: tokio_postgres::Config = tls
        .url
        .parse()
        .map_err(|e| StoreError::Config(format!("bad PostgreSQL URL: {e}")))?;
    let mut options = cfg.get_options().unwrap_or_default().to_owned();
    if !opts.statement_timeout.is_zero() {
        options.push_str(&format!(
            " -c statement_timeout={}",
            opts.statement_timeout.as_millis()
        ));
    }
    options.push_str(&format!(
        " -c idle_in_transaction_session_timeout={}",
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
    ));
    cfg.options(options.trim());
    if cfg.get_application_name().is_none() {
        cfg.application_name("fleet");
    }
    cfg.connect_timeout(opts.checkout_timeout);
    cfg.keepalives(true);
    cfg.keepalives_idle(Duration::from_secs(15));
    if tls.ca_file.is_some() && matches!(tls.mode, SslMode::Allow | SslMode::Prefer) {
        tracing::warn!(
            sslmode = tls.mode.as_str(),
            "a PostgreSQL CA file is set but sslmode={} never verifies the server: use sslmode=verify-full",
            tls.mode.as_str()
        );
    }
    let mgr = Manager::from_config(
        cfg,
        tls.connector()?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let t = Some(opts.checkout_timeout);
    Pool::builder(mgr)
        .max_size(opts.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(t)
        .create_timeout(t)
        .recycle_timeout(t)
        .post_create(transport_check(tls.mode))
        .build()
        .map_err(|e| StoreError::Config(format!("cannot build the PostgreSQL pool: {e}")))
}

/// After each new connection: asks the server whether this session is encrypted (the real
/// transport, not the configured wish), logs it at INFO when it first shows or changes, and
/// warns once per change to plaintext.
fn transport_check(mode: SslMode) -> Hook {
    // 0 = not seen yet, 1 = TLS, 2 = plaintext.
    let last = Arc::new(AtomicU8::new(0));
    Hook::async_fn(move |client, _| {
        let last = last.clone();
        Box::pin(async move {
            let row = client
                .query_opt(
                    "SELECT ssl, version, cipher FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await;
            let (ssl, version, cipher) = match row {
                Ok(Some(r)) => (
                    r.try_get::<_, bool>(0).unwrap_or(false),
                    r.try_get::<_, Option<String>>(1).ok().flatten(),
                    r.try_get::<_, Option<String>>(2).ok().flatten(),
                ),
                Ok(None) | Err(_) => {
                    tracing::debug!("pg_stat_ssl unreadable; transport not checked");
                    return Ok(());
                }
            };
            let now = if ssl { 1 } else { 2 };
            if last.swap(now, Ordering::Relaxed) != now {
                if ssl {
                    tracing::info!(
                        sslmode = mode.as_str(),
                        version = version.as_deref().unwrap_or("?"),
                        cipher = cipher.as_deref().unwrap_or("?"),
                        "PostgreSQL connection is encrypted (TLS)"
                    );
                } else {
                    tracing::warn!(
                        sslmode = mode.as_str(),
                        "PostgreSQL connection is NOT encrypted: passwords and data cross the network in plaintext; enable ssl on the server and use sslmode=verify-full with FLEET_DATABASE_CA_FILE (or sslmode=require)"
                    );
                }
            }
            Ok(())
        })
    })
}

/// Takes a connection from the pool within `timeout`.
pub(crate) async fn checkout(
    pool: &Pool,
    timeout: Duration,
) -> Result<deadpool_postgres::Object, StoreError> {
    use deadpool_postgres::PoolError;
    match tokio::time::timeout(timeout, pool.get()).await {
        Err(_) | Ok(Err(PoolError::Timeout(_))) => Err(StoreError::Timeout {
            what: "checkout",
            after: timeout,
        }),
        Ok(Err(PoolError::Backend(e))) => Err(e.into()),
        Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
        Ok(Ok(c)) => Ok(c),
    }
}

/// Runs one statement: rows when `want_rows`, else the affected-row count.
pub(crate) async fn run(
    client: &deadpool_postgres::ClientWrapper,
    sql: &str,
    params: &[Value],
    want_rows: bool,
    timeout: Duration,
) -> Result<(u64, Vec<Row>), StoreError> {
    let work = async {
        let stmt = client.prepare_cached(sql).await?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        if want_rows {
            let rows = client.query(&stmt, &refs).await?;
            let columns: Arc<[String]> =
                stmt.columns().iter().map(|c| c.name().to_owned()).collect();
            let out = rows
                .iter()
                .map(|r| decode_row(r, &columns))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((out.len() as u64, out))
        } else {
            Ok((client.execute(&stmt, &refs).await?, Vec::new()))
        }
    };
    match tokio::time::timeout(timeout + CLIENT_GRACE, work).await {
        Ok(r) => r.map_err(|e| with_after(e, timeout)),
        Err(_) => Err(StoreError::Timeout {
            what: "statement",
            after: timeout,
        }),
    }
}

/// Runs several `;`-separated statements without parameters.
pub(crate) async fn batch(
    client: &deadpool_postgres::ClientWrapper,
    sql: &str,
    timeout: Duration,
) -> Result<(), StoreError> {
    match tokio::time::timeout(timeout + CLIENT_GRACE, client.batch_execute(sql)).await {
        Ok(r) => r.map_err(|e| with_after(e.into(), timeout)),
        Err(_) => Err(StoreError::Timeout {
            what: "statement",
            after: timeout,
        }),
    }
}

fn with_after(e: StoreError, timeout: Duration) -> StoreError {
    match e {
        StoreError::Timeout { what, after } if after.is_zero() => StoreError::Timeout {
            what,
            after: timeout,
        },
        e => e,
    }
}

fn is_text(ty: &Type) -> bool {
    [
        Type::TEXT,
        Type::VARCHAR,
        Type::BPCHAR,
        Type::NAME,
        Type::UNKNOWN,
    ]
    .contains(ty)
        || ty.name() == "citext"
}

fn is_json(ty: &Type) -> bool {
    *ty == Type::JSON || *ty == Type::JSONB
}

fn int_to_sql(i: i64, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
    if *ty == Type::INT8 {
        i.to_sql(ty, out)
    } else if *ty == Type::INT4 {
        i32::try_from(i)?.to_sql(ty, out)
    } else if *ty == Type::INT2 {
        i16::try_from(i)?.to_sql(ty, out)
    } else if *ty == Type::OID {
        u32::try_from(i)?.to_sql(ty, out)
    } else if *ty == Type::FLOAT8 {
        (i as f64).to_sql(ty, out)
    } else if *ty == Type::FLOAT4 {
        (i as f32).to_sql(ty, out)
    } else if *ty == Type::BOOL {
        (i != 0).to_sql(ty, out)
    } else if *ty == Type::TIMESTAMPTZ {
        millis(i)?.to_sql(ty, out)
    } else if is_json(ty) {
        serde_json::Value::from(i).to_sql(ty, out)
    } else if is_text(ty) {
        i.to_string().to_sql(ty, out)
    } else {
        Err(format!("cannot bind an integer to a {ty} parameter").into())
    }
}

fn millis(ms: i64) -> Result<DateTime<Utc>, BoxError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| format!("{ms} ms is not a valid time").into())
}

fn text_to_sql(s: &str, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    if is_text(ty) {
        s.to_sql(ty, out)
    } else if is_json(ty) {
        serde_json::from_str::<serde_json::Value>(s)?.to_sql(ty, out)
    } else if *ty == Type::TIMESTAMPTZ {
        DateTime::parse_from_rfc3339(s)?
            .with_timezone(&Utc)
            .to_sql(ty, out)
    } else if [Type::INT2, Type::INT4, Type::INT8, Type::OID].contains(ty) {
        int_to_sql(s.trim().parse()?, ty, out)
    } else if *ty == Type::FLOAT8 || *ty == Type::FLOAT4 {
        float_to_sql(s.trim().parse()?, ty, out)
    } else if *ty == Type::BOOL {
        s.trim().parse::<bool>()?.to_sql(ty, out)
    } else {
        Err(format!("cannot bind text to a {ty} parameter").into())
    }
}

fn float_to_sql(f: f64, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
    #[allow(clippy::cast_possible_truncation)]
    if *ty == Type::FLOAT8 {
        f.to_sql(ty, out)
    } else if *ty == Type::FLOAT4 {
        (f as f32).to_sql(ty, out)
    } else if is_json(ty) {
        serde_json::Value::from(f).to_sql(ty, out)
    } else if is_text(ty) {
        f.to_string().to_sql(ty, out)
    } else {
        Err(format!(
            "cannot bind a float to a {ty} parameter (cast it: CAST($n AS DOUBLE PRECISION))"
        )
        .into())
    }
}

impl ToSql for Value {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => int_to_sql(*i, ty, out),
            Value::Float(f) => float_to_sql(*f, ty, out),
            Value::Text(s) => text_to_sql(s, ty, out),
            Value::Bool(b) => {
                if *ty == Type::BOOL {
                    b.to_sql(ty, out)
                } else if is_json(ty) {
                    serde_json::Value::from(*b).to_sql(ty, out)
                } else if is_text(ty) {
                    b.to_string().to_sql(ty, out)
                } else {
                    int_to_sql(i64::from(*b), ty, out)
                }
            }
            Value::Json(j) => {
                if is_json(ty) {
                    j.to_sql(ty, out)
                } else if is_text(ty) {
                    j.to_string().to_sql(ty, out)
                } else {
                    Err(format!("cannot bind JSON to a {ty} parameter").into())
                }
            }
            Value::Time(t) => {
                if *ty == Type::TIMESTAMPTZ {
                    t.to_sql(ty, out)
                } else if *ty == Type::TIMESTAMP {
                    t.naive_utc().to_sql(ty, out)
                } else if *ty == Type::INT8 {
                    t.timestamp_millis().to_sql(ty, out)
                } else if is_text(ty) {
                    t.to_rfc3339().to_sql(ty, out)
                } else if is_json(ty) {
                    serde_json::Value::from(t.to_rfc3339()).to_sql(ty, out)
                } else {
                    Err(format!("cannot bind a time to a {ty} parameter").into())
                }
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// NUMERIC (e.g. `SUM(bigint)`) decoded without a decimal crate: integral → Int, else Float.
struct Numeric(Value);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        let word = |i: usize| -> Result<u16, BoxError> {
            raw.get(i * 2..i * 2 + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .ok_or_else(|| "short NUMERIC".into())
        };
        let ndigits = usize::from(word(0)?);
        #[allow(clippy::cast_possible_wrap)]
        let weight = i32::from(word(1)? as i16);
        let sign = word(2)?;
        let dscale = word(3)?;
        match sign {
            0xC000 => return Ok(Numeric(Value::Float(f64::NAN))),
            0xD000 => return Ok(Numeric(Value::Float(f64::INFINITY))),
            0xF000 => return Ok(Numeric(Value::Float(f64::NEG_INFINITY))),
            _ => {}
        }
        let digits = (0..ndigits)
            .map(|i| word(4 + i))
            .collect::<Result<Vec<_>, _>>()?;
        let neg = sign == 0x4000;
        if dscale == 0 {
            let mut acc: Option<i64> = Some(0);
            for pos in 0..=weight.max(-1) {
                let d = usize::try_from(pos)
                    .ok()
                    .and_then(|p| digits.get(p))
                    .copied()
                    .unwrap_or(0);
                acc = acc
                    .and_then(|a| a.checked_mul(10_000))
                    .and_then(|a| a.checked_add(i64::from(d)));
            }
            if let Some(a) = acc {
                return Ok(Numeric(Value::Int(if neg { -a } else { a })));
            }
        }
        let mut f = 0.0f64;
        for (i, d) in digits.iter().enumerate() {
            let exp = weight - i32::try_from(i)?;
            f += f64::from(*d) * 10_000f64.powi(exp);
        }
        Ok(Numeric(Value::Float(if neg { -f } else { f })))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

/// UUID columns as hyphenated text (no uuid feature needed).
struct UuidText(String);

impl<'a> FromSql<'a> for UuidText {
    fn from_sql(_ty: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
        if raw.len() != 16 {
            return Err("bad UUID length".into());
        }
        let h: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        Ok(UuidText(format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::UUID
    }
}

fn get<'a, T: FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
    f: impl FnOnce(T) -> Value,
) -> Result<Value, StoreError> {
    row.try_get::<_, Option<T>>(i)
        .map(|v| v.map_or(Value::Null, f))
        .map_err(|e| StoreError::decode(row.columns()[i].name(), e.to_string()))
}

fn decode_row(row: &tokio_postgres::Row, columns: &Arc<[String]>) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let ty = col.type_();
        let v = if *ty == Type::INT8 {
            get(row, i, Value::Int)?
        } else if *ty == Type::INT4 {
            get(row, i, |v: i32| Value::Int(v.into()))?
        } else if *ty == Type::INT2 {
            get(row, i, |v: i16| Value::Int(v.into()))?
        } else if *ty == Type::OID {
            get(row, i, |v: u32| Value::Int(v.into()))?
        } else if *ty == Type::FLOAT8 {
            get(row, i, Value::Float)?
        } else if *ty == Type::FLOAT4 {
            get(row, i, |v: f32| Value::Float(v.into()))?
        } else if *ty == Type::BOOL {
            get(row, i, Value::Bool)?
        } else if is_json(ty) {
            get(row, i, Value::Json)?
        } else if *ty == Type::TIMESTAMPTZ {
            get(row, i, Value::Time)?
        } else if *ty == Type::TIMESTAMP {
            get(row, i, |v: NaiveDateTime| Value::Time(v.and_utc()))?
        } else if *ty == Type::NUMERIC {
            get(row, i, |v: Numeric| v.0)?
        } else if *ty == Type::UUID {
            get(row, i, |v: UuidText| Value::Text(v.0))?
        } else if *ty == Type::CHAR {
            get(row, i, |v: i8| Value::Int(v.into()))?
        } else if is_text(ty) || <String as FromSql>::accepts(ty) {
            get(row, i, Value::Text)?
        } else {
            return Err(StoreError::decode(
                col.name(),
                format!("unsupported column type {ty}; cast it in SQL (e.g. to TEXT or BIGINT)"),
            ));
        };
        values.push(v);
    }
    Ok(Row::new(columns.clone(), values))
}
