-- Sessions, counted cells, corrections, final results and the outbox.
CREATE TABLE sessions (
    id            TEXT PRIMARY KEY,          -- uuid4 hex
    sample_id     TEXT,
    operator      TEXT,
    device        TEXT,
    model_version TEXT,
    backend       TEXT,
    target        INTEGER NOT NULL,
    wbc_count     REAL,                      -- x10^9/L, optional
    status        TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'finalised', 'aborted')),
    frames        INTEGER NOT NULL DEFAULT 0,
    started_at    TEXT NOT NULL,
    ended_at      TEXT
);

CREATE TABLE cells (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  TEXT NOT NULL REFERENCES sessions(id),
    track_id    INTEGER,
    label       TEXT NOT NULL,               -- current label (after corrections)
    model_label TEXT,                        -- what the model said (NULL for manual cells)
    probs       TEXT,                        -- JSON {class: p}
    confidence  REAL,
    box         TEXT,                        -- JSON [x1, y1, x2, y2] in frame pixels
    slide_x     REAL,
    slide_y     REAL,
    frame_index INTEGER,
    flagged     INTEGER NOT NULL DEFAULT 0,
    source      TEXT NOT NULL DEFAULT 'auto' CHECK (source IN ('auto', 'manual')),
    deleted     INTEGER NOT NULL DEFAULT 0,  -- set by undo of a manual add
    crop        BLOB,                        -- small JPEG
    created_at  TEXT NOT NULL
);
CREATE INDEX cells_session ON cells(session_id);

CREATE TABLE corrections (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id  TEXT NOT NULL REFERENCES sessions(id),
    cell_id     INTEGER REFERENCES cells(id),
    action      TEXT NOT NULL CHECK (action IN ('reclassify', 'add', 'undo')),
    from_label  TEXT,
    to_label    TEXT,
    operator    TEXT,
    at          TEXT NOT NULL,
    undone      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE results (
    session_id  TEXT PRIMARY KEY REFERENCES sessions(id),
    result_id   TEXT NOT NULL UNIQUE,        -- stable id for idempotent delivery
    payload     TEXT NOT NULL,               -- JSON summary (counts, percent, ci95, ...)
    created_at  TEXT NOT NULL
);

CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id       TEXT NOT NULL REFERENCES results(result_id),
    destination     TEXT NOT NULL,           -- 'fhir', 'astm', 'hl7'
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    created_at      TEXT NOT NULL,
    done_at         TEXT,
    UNIQUE (result_id, destination)
);

CREATE TABLE events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    kind    TEXT NOT NULL,                   -- 'selftest', 'engine', 'camera', ...
    detail  TEXT                             -- JSON
);
