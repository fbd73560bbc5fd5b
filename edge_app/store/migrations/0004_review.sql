-- Review and sign-off. Every change and every confirmation of a counted cell by a
-- person is one row of cell_reviews (a confirmation has from_label = to_label; a
-- cell added by hand on the kiosk has no from_label). result_versions holds each
-- version of a session's result: who opened it (and why, for a re-open) and who
-- signed it; a signed version is frozen, the next change opens version + 1.
CREATE TABLE cell_reviews (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    cell_id     INTEGER NOT NULL REFERENCES cells(id),
    session_id  TEXT NOT NULL REFERENCES sessions(id),
    version     INTEGER NOT NULL DEFAULT 1,  -- result version the change belongs to
    from_label  TEXT,
    to_label    TEXT NOT NULL CHECK (to_label IN ('neutrophil', 'lymphocyte', 'monocyte', 'eosinophil',
                                                  'basophil', 'other', 'x')),
    user        TEXT NOT NULL,
    at          TEXT NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('kiosk', 'review', 'remote')),
    reason      TEXT
);
CREATE INDEX cell_reviews_session ON cell_reviews(session_id);
CREATE INDEX cell_reviews_cell ON cell_reviews(cell_id);
CREATE INDEX cell_reviews_at ON cell_reviews(at);

CREATE TABLE result_versions (
    session_id  TEXT NOT NULL REFERENCES sessions(id),
    version     INTEGER NOT NULL CHECK (version >= 1),
    opened_by   TEXT,                        -- NULL for version 1 (opened by the count itself)
    opened_at   TEXT NOT NULL,
    reason      TEXT,                        -- why a signed result was re-opened (version > 1)
    signed_by   TEXT,
    signed_at   TEXT,
    sign_reason TEXT,
    payload     TEXT,                        -- the result as signed (JSON), NULL until signed
    PRIMARY KEY (session_id, version),
    CHECK (version = 1 OR reason IS NOT NULL)
);
