//! The `toolgate` binary: parse the command line, set up logging, and hand over to the
//! library. Bad configuration prints one clear message and exits non-zero.
#![forbid(unsafe_code)]

use clap::Parser;
use std::process::ExitCode;
use toolgate::config::{
    AuditCommand, Cli, Command, Config, KeysCommand, LogFormat, resolve_database_url,
};
use toolgate::policy::Role;
use toolgate::policy::names::{TenantId, check_id};
use toolgate::store::Store;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Keys { command } => runtime.block_on(keys(command)),
        Command::Audit { command } => return runtime.block_on(audit(command)),
        Command::Client(command) => return runtime.block_on(toolgate::cli::run(command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => fail(message),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("toolgate: {message}");
    ExitCode::from(2)
}

async fn serve(args: toolgate::config::ServeArgs) -> Result<(), String> {
    let config = Config::resolve(&args).map_err(|e| e.to_string())?;
    // Held until `serve` returns: dropping them writes out what is still queued (the
    // traces first, while the log still runs).
    let (_log, _traces) = init_tracing(config.log_format, config.otlp_endpoint.as_deref())?;
    // Every setting as written (the database password redacted), as one JSON object.
    let settings = serde_json::to_string(&config).unwrap_or_default();
    tracing::info!(config = %settings, tls = config.tls.is_some(), "starting");
    let listeners = toolgate::server::Listeners::bind(&config).await?;
    toolgate::run(config, listeners, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

/// Logs go to standard error, so standard output stays clean for `keys create`.
///
/// A line is formatted by the thread that logs it and written by a writer thread
/// ([`toolgate::logging::LogWriter`]), which writes whatever has queued up in one system
/// call: with the decision log (a line per Decide) a write per line cost more than the rest
/// of the log together (BENCHMARKS.md). Nothing is dropped: when the queue is full, loggers
/// wait.
fn init_tracing(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Result<
    (
        toolgate::logging::LogGuard,
        Option<toolgate::telemetry::Traces>,
    ),
    String,
> {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a file or a log collector.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Loggers wait once 4 MiB are queued (about ten thousand lines).
    let (writer, guard) = toolgate::logging::LogWriter::start(std::io::stderr(), 4 << 20)
        .map_err(|e| format!("cannot start the log's writer thread: {e}"))?;
    let (traces, exported) = match otlp_endpoint {
        Some(endpoint) => {
            let (layer, traces) = toolgate::telemetry::layer(endpoint)?;
            (Some(layer), Some(traces))
        }
        None => (None, None),
    };
    let own = own_format(format, ansi);
    if let (Some(line), None) = (own, &traces) {
        // Nothing else reads events: decision lines go straight into the log, and calls
        // run without a span (our formats read the call from `logging::CALL`).
        toolgate::logging::write_decisions(writer.clone(), line);
    }
    let registry = tracing_subscriber::registry().with(filter).with(traces);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    match own {
        Some(toolgate::logging::LineFormat::Json) => registry
            .with(
                fmt.fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(toolgate::logging::FlatJson),
            )
            .init(),
        Some(toolgate::logging::LineFormat::Text { time }) => registry
            .with(
                fmt.fmt_fields(toolgate::logging::TextFields)
                    .event_format(toolgate::logging::TextLine { time }),
            )
            .init(),
        // At a terminal, tracing-subscriber's own format, in colour.
        None => registry
            .with(fmt.fmt_fields(toolgate::logging::TextFields))
            .init(),
    }
    Ok((guard, exported))
}

/// Which of toolgate's own line formats writes the log: JSON, or the text format when
/// the log is not a terminal (the same text without colours, written faster). `None` at a
/// terminal, where tracing-subscriber's own format writes it in colour.
fn own_format(format: LogFormat, ansi: bool) -> Option<toolgate::logging::LineFormat> {
    match format {
        LogFormat::Json => Some(toolgate::logging::LineFormat::Json),
        LogFormat::Text if ansi => None,
        LogFormat::Text => Some(toolgate::logging::LineFormat::Text { time: true }),
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

async fn keys(command: KeysCommand) -> Result<(), String> {
    match command {
        KeysCommand::Create {
            tenant,
            role,
            name,
            db,
        } => {
            let tenant = TenantId::parse("--tenant", tenant).map_err(|e| e.to_string())?;
            if let Some(name) = &name {
                check_id("--name", name).map_err(|e| e.to_string())?;
            }
            let role = Role::parse(&role)
                .ok_or_else(|| format!("--role: {role:?} is not agent, approver or admin"))?;
            let store = open(&db).await?;
            let key = toolgate::keys::generate().map_err(|e| format!("no randomness: {e}"))?;
            store
                .create_key(
                    &key.id,
                    tenant.as_str(),
                    role,
                    &key.secret_sha256,
                    name.as_deref(),
                )
                .await
                .map_err(|e| e.to_string())?;
            eprintln!(
                "created key {} for tenant \"{tenant}\" with role {role}; it is shown once:",
                key.id
            );
            println!("{}", key.token);
            Ok(())
        }
        KeysCommand::Generate { tenant } => {
            let tenant = TenantId::parse("--tenant", tenant).map_err(|e| e.to_string())?;
            let key = toolgate::keys::generate().map_err(|e| format!("no randomness: {e}"))?;
            let value = toolgate::keys::Bootstrap::of(tenant.as_str(), &key);
            eprintln!(
                "generated admin key {} for tenant \"{tenant}\" (shown once, below); give the \
                 server its hash as bootstrap_admin_key (TOOLGATE_BOOTSTRAP_ADMIN_KEY):\n{value}",
                key.id
            );
            println!("{}", key.token);
            Ok(())
        }
        KeysCommand::List { output, db } => list_keys(&output, &db).await,
        KeysCommand::Revoke { id, db } => {
            let store = open(&db).await?;
            if store.revoke_key(&id).await.map_err(|e| e.to_string())? {
                eprintln!(
                    "revoked key {id}; running servers refuse it within their key_refresh_interval"
                );
                Ok(())
            } else {
                Err(format!("no live key with id {id:?}"))
            }
        }
    }
}

/// `keys list`: a table, or a JSON line per key; times as UTC dates.
async fn list_keys(output: &str, db: &toolgate::config::DatabaseArgs) -> Result<(), String> {
    let json = match output {
        "table" => false,
        "json" => true,
        other => return Err(format!("--output: {other:?} is not table or json")),
    };
    let store = open(db).await?;
    let keys = store.list_keys().await.map_err(|e| e.to_string())?;
    // Times as dates (UTC), to the second.
    let date = |ms: i64| {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
        humantime::format_rfc3339_seconds(at).to_string()
    };
    if json {
        for k in keys {
            let line = serde_json::json!({
                "id": k.id,
                "tenant": k.tenant,
                "role": k.role.as_str(),
                "name": k.name,
                "created_at": date(k.created_at),
                "revoked_at": k.revoked_at.map(date),
            });
            println!("{line}");
        }
        return Ok(());
    }
    println!(
        "{:<18} {:<24} {:<9} {:<24} {:<21} revoked_at",
        "id", "tenant", "role", "name", "created_at"
    );
    for k in keys {
        let revoked = k.revoked_at.map(date).unwrap_or_else(|| "-".into());
        println!(
            "{:<18} {:<24} {:<9} {:<24} {:<21} {revoked}",
            k.id,
            k.tenant,
            k.role.as_str(),
            k.name.as_deref().unwrap_or("-"),
            date(k.created_at)
        );
    }
    Ok(())
}

/// `audit verify` exits 0 with what it checked, 1 naming the first record that does not
/// hold, 2 when it cannot read the database; `audit export` prints JSON lines.
async fn audit(command: AuditCommand) -> ExitCode {
    let result = match command {
        AuditCommand::Verify { db } => audit_verify(&db).await,
        AuditCommand::Export {
            tenant,
            since_revision,
            db,
        } => audit_export(&tenant, since_revision, &db)
            .await
            .map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => fail(message),
    }
}

/// Whether every tenant's chains (revisions, then approval events) hold; the first break is
/// printed.
async fn audit_verify(db: &toolgate::config::DatabaseArgs) -> Result<bool, String> {
    use toolgate::policy::audit::{self, Stored};
    let store = open(db).await?;
    let text = |e: toolgate::store::StoreError| e.to_string();
    let tenants = store.tenant_revisions().await.map_err(text)?;
    let mut names: Vec<String> = tenants.iter().map(|(t, _)| t.clone()).collect();
    for (tenant, _, _) in store.approval_chain_heads().await.map_err(text)? {
        if !names.contains(&tenant) {
            names.push(tenant);
        }
    }
    let last_revision: std::collections::HashMap<String, u64> = tenants.into_iter().collect();
    for tenant in names {
        let chain = store.revision_chain(&tenant).await.map_err(text)?;
        let stored = chain.iter().map(|r| Stored {
            head: chain_head(&tenant, r),
            changes: &r.changes,
            hash: &r.hash,
        });
        let last = last_revision.get(&tenant).copied().unwrap_or(0);
        let revisions = match audit::verify(stored, last) {
            Ok(v) => v,
            Err(b) => {
                eprintln!("tenant {tenant:?}: revision {} {}", b.at, b.problem);
                return Ok(false);
            }
        };
        let events = store.approval_event_chain(&tenant).await.map_err(text)?;
        let before = events.before_chain;
        let rows = events.events.iter().map(|(e, hash)| (e, hash.as_str()));
        let chained = match audit::verify_events(rows, &events.head) {
            Ok(n) => n,
            Err(b) => {
                eprintln!("tenant {tenant:?}: approval event {} {}", b.at, b.problem);
                return Ok(false);
            }
        };
        if events.unchained != before {
            eprintln!(
                "tenant {tenant:?}: {} approval events are outside the chain, but {before} \
                 were written before it began",
                events.unchained
            );
            return Ok(false);
        }
        if let Some(id) = &events.arguments_changed {
            eprintln!(
                "tenant {tenant:?}: approval {id}'s stored arguments are not the ones its \
                 arguments_sha256 (in the chain) was computed from"
            );
            return Ok(false);
        }
        println!(
            "tenant {tenant:?}: {} revisions verified ({} saved before the chain began); \
             {chained} approval events verified ({before} written before the chain began)",
            revisions.chained, revisions.before_chain
        );
    }
    Ok(true)
}

/// One line per revision after `since`, then one per approval event: its record
/// (canonical), its hash, the one before. `chain` says which chain a line belongs to.
async fn audit_export(
    tenant: &str,
    since: u64,
    db: &toolgate::config::DatabaseArgs,
) -> Result<(), String> {
    use toolgate::policy::audit;
    use toolgate::policy::canonical::canonicalize;
    let store = open(db).await?;
    let chain = store
        .revision_chain(tenant)
        .await
        .map_err(|e| e.to_string())?;
    let name = serde_json::Value::from(tenant);
    let mut previous = audit::GENESIS.to_owned();
    for r in &chain {
        if r.revision > since {
            let record = audit::record(&chain_head(tenant, r), &r.changes);
            println!(
                "{{\"chain\":\"revisions\",\"tenant\":{name},\"revision\":{},\"previous_hash\":\"{previous}\",\"hash\":\"{}\",\"record\":{}}}",
                r.revision,
                r.hash,
                canonicalize(&record)
            );
        }
        if !r.hash.is_empty() {
            previous = r.hash.clone();
        }
    }
    let events = store
        .approval_event_chain(tenant)
        .await
        .map_err(|e| e.to_string())?;
    let mut previous = audit::GENESIS.to_owned();
    for (event, hash) in &events.events {
        println!(
            "{{\"chain\":\"approval_events\",\"tenant\":{name},\"seq\":{},\"previous_hash\":\"{previous}\",\"hash\":\"{hash}\",\"record\":{}}}",
            event.seq,
            canonicalize(&audit::event_record(event))
        );
        previous = hash.clone();
    }
    Ok(())
}

fn chain_head<'a>(
    tenant: &'a str,
    r: &'a toolgate::store::ChainedRevision,
) -> toolgate::policy::audit::RevisionHead<'a> {
    toolgate::policy::audit::RevisionHead {
        tenant,
        revision: r.revision,
        kind: &r.kind,
        actor_key_id: &r.actor_key_id,
        saved_at_ms: r.saved_at_ms,
        comment: &r.comment,
    }
}

/// The database of the `keys` and `audit` commands: opened (and migrated) only if it exists.
/// A key minted into a new, empty file in the wrong directory is a key no server accepts.
/// The file of a `sqlite:` URL (`sqlite://PATH` or `sqlite:PATH`, options after `?`);
/// `None` for other databases and for an in-memory one.
fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then_some(path)
}

async fn open(db: &toolgate::config::DatabaseArgs) -> Result<toolgate::store::SqlStore, String> {
    let url = resolve_database_url(db).map_err(|e| e.to_string())?;
    // Which database, so a key minted into the wrong one is noticed at once.
    eprintln!("database: {}", url.redacted());
    if let Some(path) = sqlite_file(url.expose())
        && !std::path::Path::new(path).exists()
    {
        return Err(format!(
            "database {}: no such file. Key and audit commands never create a database: \
             give the --database-url (or TOOLGATE_DATABASE_URL) the server uses, or start \
             `toolgate serve` on it first, which creates it",
            url.redacted()
        ));
    }
    toolgate::store::open(url.expose(), &Default::default())
        .await
        .map_err(|e| format!("database {:?}: {e}", url))
}
