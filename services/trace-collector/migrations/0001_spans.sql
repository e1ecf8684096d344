-- One row per span. Times in microseconds since the Unix epoch (Jaeger's unit).
CREATE TABLE spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT NOT NULL,
    service TEXT NOT NULL,
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    start_us BIGINT NOT NULL,
    duration_us BIGINT NOT NULL,
    status_code INTEGER NOT NULL,
    status_message TEXT NOT NULL,
    attributes TEXT NOT NULL,
    resource TEXT NOT NULL,
    events TEXT NOT NULL,
    links TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);

CREATE INDEX spans_by_service_time ON spans (service, start_us);
CREATE INDEX spans_by_operation ON spans (service, name, start_us);
CREATE INDEX spans_by_time ON spans (start_us);
CREATE INDEX spans_by_duration ON spans (duration_us);
