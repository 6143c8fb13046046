//! One broker's benchmark: set up a run-unique topology, measure the raw loop, then the
//! runtime, on the same queue at the same prefetch, and always clean up.

use std::sync::Arc;

use anyhow::Context as _;
use fleet_core::Broker;

use crate::Args;
use crate::load::{self, Kind, Run};
use crate::report::{Measured, Row};
use crate::{cpu, raw_amqp, raw_floor, raw_nats, runtime_side};

/// Benchmarks one broker: raw loop, then runtime; deletes the run's topology on every path.
pub async fn run(kind: Kind, args: &Args) -> anyhow::Result<Row> {
    let run = Run::new(kind, args)?;
    let pid = cpu::watch_broker(cpu::url_port(kind.url(args), kind.default_port()));
    eprintln!(
        "[{}] prefix {} (N = {}, prefetch = {}, broker pid {})",
        kind.label(),
        run.prefix,
        args.jobs,
        args.prefetch,
        pid.map_or_else(
            || "not found: no broker CPU figures".to_owned(),
            |p| p.to_string()
        )
    );
    let broker = load::connect(kind, kind.url(args))
        .await
        .with_context(|| format!("connecting to {} at {}", kind.label(), kind.url(args)))?;
    let measured = measure(&run, &broker, args).await;
    let cleaned = load::cleanup(&run, &*broker, args.limit()).await;
    broker.close().await;
    let (raw, raw_multiple, runtime) = measured?;
    cleaned?;
    Ok(Row {
        broker: kind.label(),
        raw,
        raw_multiple: raw_multiple.0,
        raw_floor: raw_multiple.1,
        runtime,
    })
}

async fn measure(
    run: &Run,
    broker: &Arc<dyn Broker>,
    args: &Args,
) -> anyhow::Result<(Measured, (Option<Measured>, Option<Measured>), Measured)> {
    let n = args.jobs;
    let limit = args.limit();
    load::declare(run, &**broker, limit).await?;

    load::preload(&**broker, "bench-raw", n, limit).await?;
    eprintln!("[{}] loaded {n} jobs; raw loop", run.kind.label());
    let raw = match run.kind {
        Kind::RabbitMq => {
            let queue = run.names().jobs(load::STAGE);
            raw_amqp::consume(&args.amqp_url, &queue, args.prefetch, n, false, limit).await?
        }
        Kind::Nats => {
            let stream = run.names().jobs_stream();
            raw_nats::consume(
                &args.nats_url,
                &stream,
                load::STAGE,
                args.prefetch,
                n,
                limit,
            )
            .await?
        }
    };
    load::wait_depth(&**broker, 0, limit)
        .await
        .context("after the raw loop")?;
    eprintln!("[{}] raw: {:.0} jobs/s", run.kind.label(), raw.rate());

    let raw_multiple = match run.kind {
        Kind::RabbitMq => {
            load::preload(&**broker, "bench-raw-multiple", n, limit).await?;
            eprintln!(
                "[{}] loaded {n} jobs; raw loop, multiple acks",
                run.kind.label()
            );
            let queue = run.names().jobs(load::STAGE);
            let m =
                raw_amqp::consume(&args.amqp_url, &queue, args.prefetch, n, true, limit).await?;
            load::wait_depth(&**broker, 0, limit)
                .await
                .context("after the multiple-ack raw loop")?;
            eprintln!(
                "[{}] raw, multiple acks: {:.0} jobs/s",
                run.kind.label(),
                m.rate()
            );
            Some(m)
        }
        Kind::Nats => None,
    };

    let raw_floor = match run.kind {
        Kind::RabbitMq => None,
        Kind::Nats => {
            load::preload(&**broker, "bench-raw-floor", n, limit).await?;
            eprintln!(
                "[{}] loaded {n} jobs; raw floor (decode, confirmed event batch per {}, plain acks)",
                run.kind.label(),
                raw_floor::BATCH
            );
            let (stream, events) = (run.names().jobs_stream(), run.names().events(load::STAGE));
            let target = raw_floor::Target {
                url: &args.nats_url,
                stream: &stream,
                consumer: load::STAGE,
                events: &events,
                stage: load::STAGE,
            };
            let m = raw_floor::consume(&target, args.prefetch, n, limit).await?;
            load::wait_depth(&**broker, 0, limit)
                .await
                .context("after the raw floor loop")?;
            eprintln!("[{}] raw floor: {:.0} jobs/s", run.kind.label(), m.rate());
            Some(m)
        }
    };

    load::preload(&**broker, "bench-runtime", n, limit).await?;
    eprintln!("[{}] loaded {n} jobs; runtime", run.kind.label());
    let runtime = runtime_side::consume(run, &**broker, n, limit, args.probe).await?;
    eprintln!(
        "[{}] runtime: {:.0} jobs/s",
        run.kind.label(),
        runtime.rate()
    );
    Ok((raw, (raw_multiple, raw_floor), runtime))
}
