-- Each resource once, spans referring to it. Schema 1 copied the resource's JSON into every span
-- row: one request of 2,000 spans with a 64 KiB resource grew the database by 233 MiB. Ids become
-- their bytes (16/8) instead of hex text, and the indexes shrink to what the queries use, so the
-- database grows by about twice the OTLP bytes it is sent.

CREATE TABLE resources (
    id INTEGER PRIMARY KEY,
    -- SHA-256 of the service name and the attributes: the key ingest deduplicates on. NULL only
    -- for rows this migration copied; the collector fills those in when it opens the database.
    hash BLOB UNIQUE,
    service TEXT NOT NULL,
    -- The resource attributes, a JSON object.
    attributes TEXT NOT NULL
);

CREATE INDEX resources_by_service ON resources (service);

INSERT INTO resources (service, attributes) SELECT DISTINCT service, resource FROM spans;

-- One row per span. Times in microseconds since the Unix epoch (Jaeger's unit).
CREATE TABLE spans_v2 (
    trace_id BLOB NOT NULL,
    span_id BLOB NOT NULL,
    -- NULL for a root span.
    parent_span_id BLOB,
    resource_id INTEGER NOT NULL REFERENCES resources (id),
    name TEXT NOT NULL,
    kind INTEGER NOT NULL,
    start_us INTEGER NOT NULL,
    duration_us INTEGER NOT NULL,
    status_code INTEGER NOT NULL,
    status_message TEXT NOT NULL,
    attributes TEXT NOT NULL,
    events TEXT NOT NULL,
    links TEXT NOT NULL,
    PRIMARY KEY (trace_id, span_id)
);

-- Schema 1 kept ids as hex text; one that is not valid hex (schema 1 stored Zipkin parent ids as
-- sent) becomes NULL: a span without a parent.
INSERT OR IGNORE INTO spans_v2
SELECT unhex(s.trace_id), unhex(s.span_id),
       CASE WHEN s.parent_span_id = '' THEN NULL ELSE unhex(s.parent_span_id) END,
       r.id, s.name, s.kind, s.start_us, s.duration_us, s.status_code, s.status_message,
       s.attributes, s.events, s.links
FROM spans s JOIN resources r ON r.service = s.service AND r.attributes = s.resource
WHERE unhex(s.trace_id) IS NOT NULL AND unhex(s.span_id) IS NOT NULL;

DROP TABLE spans;
ALTER TABLE spans_v2 RENAME TO spans;

-- Search by service (through its resources) and operation, operation lists, and the resource
-- clean-up after retention.
CREATE INDEX spans_by_resource_operation ON spans (resource_id, name, start_us);
-- Search by time and retention.
CREATE INDEX spans_by_time ON spans (start_us);
