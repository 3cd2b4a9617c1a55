//! The `strata` command.
//!
//! This crate owns the command line, the config file and environment variables, process
//! wiring (which components a `serve` process runs and how they are stopped) and the
//! global allocator. It holds no broker logic of its own.

mod alloc;
mod bench;
mod config;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::report;
    use anyhow::Context;

    #[test]
    fn each_cause_is_said_once() {
        let inner = std::io::Error::other("disk on fire");
        let e = Err::<(), _>(inner)
            .context("opening the log: disk on fire")
            .context("starting the broker")
            .unwrap_err();
        assert_eq!(
            report(&e),
            "strata: starting the broker\n  caused by: opening the log: disk on fire"
        );
    }
}

#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

/// Strata: a Kafka-compatible broker with tiered storage.
#[derive(Debug, Parser)]
#[command(name = "strata", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no command, `strata` serves: its flags and `STRATA_*` variables apply too.
    #[command(flatten)]
    serve: config::Overrides,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a broker (the default when no command is given).
    Serve(Box<config::Overrides>),
    /// Produce to a running broker and read everything back: throughput and latency.
    Bench(bench::BenchArgs),
}

/// An error and its causes, one per line, each said once: a cause whose text its
/// parent's message already contains is not repeated.
fn report(e: &anyhow::Error) -> String {
    let mut out = format!("strata: {e}");
    let mut last = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !last.contains(&text) {
            out.push_str(&format!("\n  caused by: {text}"));
        }
        last = text;
    }
    out
}

fn bench_main(args: bench::BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata bench: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", report(&e).replacen("strata:", "strata bench:", 1));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = match cli.command {
        Some(Command::Serve(o)) => *o,
        Some(Command::Bench(args)) => return bench_main(args),
        None => cli.serve,
    };
    let cfg = match config::ServeConfig::resolve(&overrides, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}", report(&e));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let metrics = match strata_telemetry::Metrics::new() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("strata: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The gRPC exporter's client lives on the runtime.
    let otel = match runtime.block_on(async {
        strata_telemetry::Otel::start(cfg.otlp_endpoint.as_deref(), &metrics, &|name| {
            std::env::var(name).ok()
        })
    }) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("strata: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = strata_telemetry::init_logging(cfg.log_level.as_deref(), otel.as_ref()) {
        eprintln!("strata: {e}");
        return ExitCode::from(2);
    }
    if let Some(o) = &otel {
        tracing::info!("{}", o.description());
    }
    if let Err(e) = alloc::purge_in_background() {
        tracing::warn!(error = %e, "jemalloc's background purging is off: freed memory returns to the kernel only as the broker allocates");
    }
    let result = runtime.block_on(serve::run(cfg, metrics));
    if let Some(o) = otel {
        // Flushes the last spans and metrics (blocking, while the runtime still runs).
        o.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", report(&e));
            ExitCode::FAILURE
        }
    }
}
