//! Traces in the terminal, read from the collector's Jaeger-compatible API: a list of recent
//! traces, and one trace as a waterfall (colour when writing to a terminal).

use std::collections::HashMap;
use std::fmt::Write as _;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::DemoError;

/// GETs `url` from the collector and returns Jaeger's `data`.
pub async fn query(url: &str) -> Result<Value, DemoError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri: http::Uri = url.parse().map_err(|e| DemoError::http(url, e))?;
    let response =
        client.get(uri).await.map_err(|e| DemoError::Unreachable { url: url.to_owned(), source: e.into() })?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| DemoError::http(url, e))?.to_bytes();
    let value: Value = serde_json::from_slice(&body)
        .map_err(|source| DemoError::Json { what: format!("{url} answered {status}"), source })?;
    if !status.is_success() {
        let message = value["errors"][0]["msg"].as_str().unwrap_or("error").to_owned();
        return Err(DemoError::Collector { url: url.to_owned(), status: status.as_u16(), message });
    }
    Ok(value["data"].clone())
}

const SERVICE_COLOURS: [&str; 6] = ["34", "32", "33", "35", "36", "94"];

struct Painter {
    colour: bool,
    services: HashMap<String, &'static str>,
}

impl Painter {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
    }

    fn service(&mut self, name: &str) -> &'static str {
        let next = SERVICE_COLOURS[self.services.len() % SERVICE_COLOURS.len()];
        self.services.entry(name.to_owned()).or_insert(next)
    }
}

/// A duration in microseconds, humanly.
pub fn human(us: i64) -> String {
    if us < 1000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

fn is_error(span: &Value) -> bool {
    span["tags"].as_array().is_some_and(|tags| tags.iter().any(|t| t["key"] == "error" && t["value"] == true))
}

fn parent(span: &Value) -> Option<&str> {
    span["references"].as_array()?.iter().find(|r| r["refType"] == "CHILD_OF").and_then(|r| r["spanID"].as_str())
}

/// One trace (Jaeger's JSON) as a waterfall, `width` characters for the bars.
pub fn render(trace: &Value, colour: bool, width: usize) -> String {
    let empty = Vec::new();
    let spans = trace["spans"].as_array().unwrap_or(&empty);
    let service_of = |span: &Value| {
        span["processID"]
            .as_str()
            .map(|p| trace["processes"][p]["serviceName"].as_str().unwrap_or("?"))
            .unwrap_or("?")
            .to_owned()
    };
    let start = spans.iter().filter_map(|s| s["startTime"].as_i64()).min().unwrap_or(0);
    let end =
        spans.iter().filter_map(|s| Some(s["startTime"].as_i64()? + s["duration"].as_i64()?)).max().unwrap_or(start);
    let total = (end - start).max(1);
    let ids: Vec<&str> = spans.iter().filter_map(|s| s["spanID"].as_str()).collect();
    let mut children: HashMap<Option<&str>, Vec<&Value>> = HashMap::new();
    for span in spans {
        let parent = parent(span).filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s["startTime"].as_i64().unwrap_or(0));
    }
    let mut rows = Vec::new();
    let mut stack: Vec<(&Value, usize)> =
        children.get(&None).map(|roots| roots.iter().rev().map(|s| (*s, 0)).collect()).unwrap_or_default();
    while let Some((span, depth)) = stack.pop() {
        rows.push((span, depth));
        if let Some(kids) = children.get(&span["spanID"].as_str()) {
            stack.extend(kids.iter().rev().map(|s| (*s, depth + 1)));
        }
    }
    let mut painter = Painter { colour, services: HashMap::new() };
    let label_width = rows
        .iter()
        .map(|(span, depth)| {
            depth * 2 + service_of(span).len() + span["operationName"].as_str().unwrap_or("").len() + 1
        })
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    let trace_id = trace["traceID"].as_str().unwrap_or("?");
    let _ = writeln!(out, "trace {trace_id} · {} · {} spans", human(total), spans.len());
    for (span, depth) in rows {
        let service = service_of(span);
        let name = span["operationName"].as_str().unwrap_or("");
        let code = painter.service(&service);
        let error = is_error(span);
        let offset =
            ((span["startTime"].as_i64().unwrap_or(start) - start) as f64 / total as f64 * width as f64) as usize;
        let length =
            ((span["duration"].as_i64().unwrap_or(0) as f64 / total as f64 * width as f64).ceil() as usize).max(1);
        let bar =
            format!("{}{}", " ".repeat(offset.min(width)), "█".repeat(length.min(width - offset.min(width)).max(1)));
        let plain_label = format!("{}{} {}", "  ".repeat(depth), service, name);
        let label = format!(
            "{}{} {}",
            "  ".repeat(depth),
            painter.paint(code, &service),
            if error { painter.paint("31", name) } else { name.to_owned() }
        );
        let padding = " ".repeat(label_width.saturating_sub(plain_label.chars().count()));
        let _ = writeln!(
            out,
            "{label}{padding} │{}{}│ {}{}",
            painter.paint(if error { "31" } else { code }, &bar),
            " ".repeat(width.saturating_sub(bar.chars().count())),
            human(span["duration"].as_i64().unwrap_or(0)),
            if error { painter.paint("31", " error") } else { String::new() }
        );
    }
    out
}

/// A line per trace: when, root operation, duration, spans, services, errors.
pub fn render_list(traces: &Value, colour: bool) -> String {
    let mut out = String::new();
    let painter = Painter { colour, services: HashMap::new() };
    for trace in traces.as_array().into_iter().flatten() {
        let spans = trace["spans"].as_array().cloned().unwrap_or_default();
        let start = spans.iter().filter_map(|s| s["startTime"].as_i64()).min().unwrap_or(0);
        let end = spans
            .iter()
            .filter_map(|s| Some(s["startTime"].as_i64()? + s["duration"].as_i64()?))
            .max()
            .unwrap_or(start);
        let ids: Vec<&str> = spans.iter().filter_map(|s| s["spanID"].as_str()).collect();
        let root = spans.iter().find(|s| parent(s).is_none_or(|p| !ids.contains(&p))).unwrap_or(&Value::Null);
        let mut services: Vec<String> = trace["processes"]
            .as_object()
            .map(|p| p.values().filter_map(|v| v["serviceName"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        services.sort();
        services.dedup();
        let errors = spans.iter().filter(|s| is_error(s)).count();
        let _ = writeln!(
            out,
            "{}  {:<32} {:>10}  {:>3} spans  {}{}",
            trace["traceID"].as_str().unwrap_or("?"),
            root["operationName"].as_str().unwrap_or("?"),
            human(end - start),
            spans.len(),
            services.join(", "),
            if errors > 0 { painter.paint("31", &format!("  {errors} errors")) } else { String::new() }
        );
    }
    if out.is_empty() {
        out.push_str("no traces\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_is_drawn_as_nested_rows_with_bars_and_durations() {
        let trace = serde_json::json!({
            "traceID": "01",
            "processes": { "p1": { "serviceName": "api" }, "p2": { "serviceName": "db" } },
            "spans": [
                { "spanID": "b", "operationName": "SELECT", "processID": "p2", "startTime": 1_000_050, "duration": 25,
                  "references": [{ "refType": "CHILD_OF", "spanID": "a" }], "tags": [{ "key": "error", "value": true }] },
                { "spanID": "a", "operationName": "GET /", "processID": "p1", "startTime": 1_000_000, "duration": 100,
                  "references": [], "tags": [] }
            ]
        });
        let drawn = render(&trace, false, 20);
        let lines: Vec<&str> = drawn.lines().collect();
        assert_eq!(lines[0], "trace 01 · 100 µs · 2 spans");
        assert!(lines[1].starts_with("api GET /") && lines[1].contains(&"█".repeat(20)), "{drawn}");
        assert!(lines[2].starts_with("  db SELECT") && lines[2].ends_with("25 µs error"), "{drawn}");
        assert!(
            lines[2].contains(&format!("│{}{}", " ".repeat(10), "█".repeat(5))),
            "the child starts halfway: {drawn}"
        );
    }
}
