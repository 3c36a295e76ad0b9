//! The process's log: text for people or one JSON object per line, on
//! stderr. Third-party migration chatter stays below info, and source
//! locations appear only when `log.source_location` asks for them.

use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use xmpp_mls::config::LogFormat;
use xmpp_mls::store::MIGRATION_LOG_TARGETS as QUIET_TARGETS;

/// `level` (a tracing filter) with [`QUIET_TARGETS`] at warn unless it names them.
fn filter(level: &str) -> String {
    let quiet = QUIET_TARGETS.iter().filter(|t| !level.contains(*t)).map(|t| format!(",{t}=warn"));
    std::iter::once(level.to_owned()).chain(quiet).collect()
}

pub fn init(format: LogFormat, level: &str, source_location: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter(level)))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_file(source_location)
        .with_line_number(source_location);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.event_format(JsonLine { source_location }).init(),
    }
}

/// tracing-subscriber's JSON layout (timestamp, level, fields, target)
/// without the `log.file` / `log.line` / `log.module_path` / `log.target`
/// fields that events bridged from the `log` crate carry; the source
/// location comes back as `filename` and `line_number` when asked.
struct JsonLine {
    source_location: bool,
}

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
{
    fn format_event(&self, _: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let mut fields = Fields(serde_json::Map::new());
        event.record(&mut fields);
        let mut line = serde_json::json!({
            "timestamp": timestamp,
            "level": meta.level().as_str(),
            "fields": fields.0,
            "target": meta.target(),
        });
        if let (true, Some(file), Some(number)) = (self.source_location, meta.file(), meta.line()) {
            line["filename"] = file.into();
            line["line_number"] = number.into();
        }
        writeln!(writer, "{line}")
    }
}

/// An event's own fields, as JSON values.
struct Fields(serde_json::Map<String, serde_json::Value>);

impl Fields {
    fn insert(&mut self, field: &Field, value: serde_json::Value) {
        if !field.name().starts_with("log.") {
            self.0.insert(field.name().to_owned(), value);
        }
    }
}

impl Visit for Fields {
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.insert(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_targets_are_quiet_unless_named() {
        let [schema, openmls] = QUIET_TARGETS else { panic!("{QUIET_TARGETS:?}") };
        assert_eq!(filter("info"), format!("info,{schema}=warn,{openmls}=warn"));
        let named = format!("info,{openmls}=debug");
        assert_eq!(filter(&named), format!("{named},{schema}=warn"));
    }
}
