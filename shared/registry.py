"""The embedding models of the collection: which one answers queries, which are being built, how much of
the collection each covers (blue/green re-embedding, see shared/models.py), and which HNSW index each
one's queries use.

Every statement here runs on Citus too: no volatile function in ``ON CONFLICT ... DO UPDATE SET`` (the
time comes in as a parameter), and no correlated subquery against the reference table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import psycopg
from pgvector import Vector as PgVector
from psycopg import sql

from .db import Database, translate_errors
from .embeddings import Vector
from .errors import InvalidInput
from .schema import SCHEMA_LOCK, IndexSpec, create_model_index, drop_indexes, model_indexes

_MODEL_COLUMNS = sql.SQL("model_id, dimension, state, coalesce(index_precision, 'vector'), index_name")


@dataclass(frozen=True)
class Model:
    """A model as queries see it: its vectors' size, its state, and the precision of its HNSW index
    (queries cast to the same type, so the planner can use the index)."""

    model_id: str
    dimension: int
    state: str
    # How its index is built, not which model it is: equal models may differ here during a reindex.
    precision: str = field(default="vector", compare=False)
    index_name: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ModelStatus:
    """A registered model, the settings that identify it, and how many indexed images it covers."""

    model: Model
    config: dict[str, str]
    covered: int
    total: int
    index: IndexSpec | None = None

    @property
    def missing(self) -> int:
        return max(0, self.total - self.covered)


def _model(row: Any) -> Model:
    return Model(str(row[0]), int(row[1]), str(row[2]), str(row[3]), row[4])


class Registry:
    """Reads and writes of ``embedding_models``, and each model's vectors as a whole."""

    def __init__(self, db: Database, *, index: IndexSpec | None = None) -> None:
        self.db = db
        self.index = index or IndexSpec()

    @property
    def hnsw_m(self) -> int:
        return self.index.m

    @property
    def hnsw_ef_construction(self) -> int:
        return self.index.ef_construction

    def register(self, model_id: str, dimension: int, config: dict[str, str] | None = None) -> Model:
        """Register a model: ``active`` if the collection has none yet, else ``building``; a retired
        model registered again is built afresh. Idempotent; no DDL. ``config`` holds the settings that
        identify the model (provider, model version), never secrets: workers rebuild the provider of a
        model being built from it."""
        with translate_errors("registering the embedding model"), self.db.pool.connection() as conn:
            with conn.transaction():
                self._register_on(conn, model_id, dimension, config)
            row = conn.execute(
                sql.SQL("SELECT {} FROM embedding_models WHERE model_id = %s").format(_MODEL_COLUMNS), (model_id,)
            )
            return _model(row.fetchone())

    @staticmethod
    def _register_on(
        conn: psycopg.Connection[Any], model_id: str, dimension: int, config: dict[str, str] | None
    ) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        row = conn.execute("SELECT dimension, state FROM embedding_models WHERE model_id = %s", (model_id,)).fetchone()
        if row is None:
            has_active = conn.execute("SELECT 1 FROM embedding_models WHERE state = 'active'").fetchone()
            state = "building" if has_active else "active"
            conn.execute(
                "INSERT INTO embedding_models (model_id, dimension, state, config, activated_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                (model_id, dimension, state, json.dumps(config or {}), _now() if state == "active" else None),
            )
        elif row[0] != dimension:
            raise InvalidInput(
                f"model {model_id} is registered with {row[0]} dimensions but the provider returns {dimension}"
            )
        elif row[1] == "retired":
            # Registered again (e.g. a re-embedding back to an earlier model): build it afresh.
            conn.execute("UPDATE embedding_models SET state = 'building' WHERE model_id = %s", (model_id,))

    def ensure_model(
        self, model_id: str, dimension: int, config: dict[str, str] | None = None, *, create_index: bool = True
    ) -> Model:
        """:meth:`register`, and build the model's HNSW index in the same transaction (not concurrently:
        for a new model or a small collection, as tests and benchmarks need; ``migrate`` and ``reindex``
        build concurrently)."""
        with translate_errors("registering the embedding model"), self.db.pool.connection() as conn:
            with conn.transaction():
                self.db.sequential(conn)
                self._register_on(conn, model_id, dimension, config)
                if create_index:
                    name = self.index.name(model_id, dimension)
                    # Leftovers of an earlier registration of this name (another size) would refuse its vectors.
                    drop_indexes(conn, [n for n in model_indexes(conn, model_id) if n != name], concurrently=False)
                    create_model_index(conn, model_id, dimension, self.index, concurrently=False)
                    self._record_index_on(conn, model_id, name, self.index)
            row = conn.execute(
                sql.SQL("SELECT {} FROM embedding_models WHERE model_id = %s").format(_MODEL_COLUMNS), (model_id,)
            )
            return _model(row.fetchone())

    def record_index(self, model_id: str, name: str, spec: IndexSpec) -> None:
        """Make ``name`` (built with ``spec``) the index the model's queries use; workers follow within
        their model refresh interval."""
        with translate_errors("recording the model's index"), self.db.pool.connection() as conn:
            self._record_index_on(conn, model_id, name, spec)

    @staticmethod
    def _record_index_on(conn: psycopg.Connection[Any], model_id: str, name: str, spec: IndexSpec) -> None:
        conn.execute(
            "UPDATE embedding_models SET index_name = %s, index_precision = %s, index_m = %s, "
            "index_ef_construction = %s WHERE model_id = %s",
            (name, spec.precision, spec.m, spec.ef_construction, model_id),
        )

    def models(self) -> list[ModelStatus]:
        """Every registered model with its state, config, index and coverage of the indexed images."""
        with translate_errors("reading the embedding models"), self.db.pool.connection() as conn:
            return self._models_on(conn)

    @staticmethod
    def _models_on(conn: psycopg.Connection[Any]) -> list[ModelStatus]:
        total_row = conn.execute("SELECT count(*) FROM images WHERE status = 'indexed'").fetchone()
        total = int(total_row[0]) if total_row else 0
        # Coverage is counted per model first and joined to the registry afterwards: Citus plans a
        # grouped join of the two co-located tables, but no subquery correlated with a reference table.
        rows = conn.execute(
            """SELECT m.model_id, m.dimension, m.state, coalesce(m.index_precision, 'vector'), m.index_name,
                      m.config, coalesce(c.covered, 0), m.index_m, m.index_ef_construction
               FROM embedding_models m
               LEFT JOIN (SELECT v.model_id, count(*) AS covered FROM image_vectors v
                           JOIN images i ON i.id = v.image_id AND v.sha256 = i.sha256
                          WHERE i.status = 'indexed' GROUP BY v.model_id) AS c ON c.model_id = m.model_id
               ORDER BY m.state = 'active' DESC, m.created_at, m.model_id"""
        ).fetchall()
        out = []
        for r in rows:
            index = IndexSpec(str(r[3]), int(r[7]), int(r[8])) if r[4] is not None and r[7] is not None else None
            out.append(ModelStatus(_model(r), dict(r[5] or {}), int(r[6]), total, index))
        return out

    def model_status(self, model_id: str) -> ModelStatus | None:
        return next((m for m in self.models() if m.model.model_id == model_id), None)

    def activate(self, model_id: str, *, force: bool = False) -> ModelStatus:
        """Make ``model_id`` the one queries use, in one transaction; refuses while coverage is incomplete."""
        with translate_errors("activating a model"), self.db.pool.connection() as conn, conn.transaction():
            self.db.sequential(conn)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            status = next((m for m in self._models_on(conn) if m.model.model_id == model_id), None)
            if status is None:
                raise InvalidInput(f"model {model_id} is not registered; run `reembed` first")
            if status.missing and not force:
                raise InvalidInput(
                    f"model {model_id} covers {status.covered} of {status.total} indexed images; "
                    "run `reembed` again to finish (or activate with --force to accept the gap)"
                )
            conn.execute(
                "UPDATE embedding_models SET state = 'retired' WHERE state = 'active' AND model_id <> %s", (model_id,)
            )
            conn.execute(
                "UPDATE embedding_models SET state = 'active', activated_at = %s WHERE model_id = %s",
                (_now(), model_id),
            )
        result = self.model_status(model_id)
        assert result is not None
        return result

    def missing_vectors(self, model_id: str, *, after_id: int = -1, limit: int = 256) -> list[tuple[int, str, bytes]]:
        """Indexed images without a vector of their current bytes under ``model_id``, by id (resumable)."""
        with translate_errors("listing images to re-embed"), self.db.pool.connection() as conn:
            rows = conn.execute(
                """SELECT i.id, i.name, i.sha256 FROM images i
                   WHERE i.status = 'indexed' AND i.id > %s AND NOT EXISTS (
                       SELECT 1 FROM image_vectors v
                        WHERE v.image_id = i.id AND v.model_id = %s AND v.sha256 = i.sha256)
                   ORDER BY i.id LIMIT %s""",
                (after_id, model_id, limit),
            ).fetchall()
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    def add_vector(self, iid: int, model_id: str, sha256: bytes, vector: Vector) -> bool:
        """Store one model's vector for an image, only if the image still has exactly these bytes."""
        return iid in self.add_vectors(model_id, [(iid, sha256, vector)])

    def add_vectors(self, model_id: str, items: Sequence[tuple[int, bytes, Vector]]) -> set[int]:
        """Store many vectors of one model, each (image id, sha256 of the bytes it was made from,
        vector) only if that image still has exactly those bytes; returns the ids written.

        One transaction and one round trip (psycopg sends the statements in a pipeline), each row under
        the same condition as :meth:`add_vector`: a re-embedding writes a page of images at once, and an
        image re-uploaded while its old bytes were being embedded keeps the vector of its new bytes."""
        if not items:
            return set()
        now = _now()
        rows = [(model_id, PgVector(np.asarray(v, dtype=np.float32)), now, iid, sha) for iid, sha, v in items]
        written: set[int] = set()
        with translate_errors("storing vectors"), self.db.pool.connection() as conn, conn.transaction():
            cur = conn.cursor()
            cur.executemany(_ADD_VECTOR, rows, returning=True)
            while True:
                written.update(int(r[0]) for r in cur.fetchall())
                if not cur.nextset():
                    break
        return written

    def drop_model(self, model_id: str) -> int:
        """Remove a model that is not active and its vectors; returns how many vectors went. Its indexes
        stay: dropping them is DDL, which :func:`shared.maintenance.drop_model` does next."""
        with translate_errors("dropping a model"), self.db.pool.connection() as conn, conn.transaction():
            self.db.sequential(conn)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            row = conn.execute("SELECT state FROM embedding_models WHERE model_id = %s", (model_id,)).fetchone()
            if row is None:
                raise InvalidInput(f"model {model_id} is not registered")
            if row[0] == "active":
                raise InvalidInput(f"model {model_id} is the active model: activate another one before dropping it")
            deleted = conn.execute("DELETE FROM image_vectors WHERE model_id = %s", (model_id,)).rowcount
            conn.execute("DELETE FROM embedding_models WHERE model_id = %s", (model_id,))
        return deleted

    def active_model(self) -> Model | None:
        query = sql.SQL("SELECT {} FROM embedding_models WHERE state = 'active'").format(_MODEL_COLUMNS)
        with translate_errors("reading the active model"):
            row = self.db.read(lambda conn: conn.execute(query).fetchone())
        return _model(row) if row else None

    def target_models(self) -> list[Model]:
        """Models ingestion writes: the active one first, then any being built by a re-embedding."""
        # The search pool: searches read this every refresh, and must not wait behind ingestion.
        query = sql.SQL(
            "SELECT {} FROM embedding_models WHERE state IN ('active', 'building') "
            "ORDER BY state = 'active' DESC, model_id"
        ).format(_MODEL_COLUMNS)
        with translate_errors("reading the embedding models"):
            rows = self.db.read(lambda conn: conn.execute(query).fetchall())
        return [_model(r) for r in rows]


# The image's current bytes are the condition: the SELECT finds no row when they changed or the image
# is gone, and nothing is written.
_ADD_VECTOR: Final = """
INSERT INTO image_vectors (image_id, model_id, sha256, embedding, created_at, container, name)
SELECT id, %s, sha256, %s, %s, container, name FROM images WHERE id = %s AND sha256 = %s AND status = 'indexed'
ON CONFLICT (image_id, model_id) DO UPDATE
    SET sha256 = EXCLUDED.sha256, embedding = EXCLUDED.embedding, created_at = EXCLUDED.created_at,
        container = EXCLUDED.container, name = EXCLUDED.name
RETURNING image_id
"""


def _now() -> datetime:
    return datetime.now(UTC)
