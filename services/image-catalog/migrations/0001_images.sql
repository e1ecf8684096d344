-- Image metadata. Portable SQL: the same migration runs on SQLite and PostgreSQL.
-- `state` makes uploads and deletes safe against partial failure: a row is `pending` until its
-- bytes are stored, `deleting` from the moment a delete starts until the bytes are gone; only
-- `ready` rows are served, and the recovery sweep finishes or undoes the others.
CREATE TABLE images (
    id TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    state TEXT NOT NULL
);

CREATE INDEX images_by_state ON images (state, id);
