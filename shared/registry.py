"""The embedding models of the collection: which one answers queries, which are being built, and
how much of the collection each covers (blue/green re-embedding, see shared/models.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from pgvector import Vector as PgVector

from .db import Database, translate_errors
from .embeddings import Vector
from .errors import InvalidInput
from .schema import SCHEMA_LOCK, create_model_index, drop_model_indexes, index_name


@dataclass(frozen=True)
class Model:
    model_id: str
    dimension: int
    state: str


@dataclass(frozen=True)
class ModelStatus:
    """A registered model, the settings that identify it, and how many indexed images it covers."""

    model: Model
    config: dict[str, str]
    covered: int
    total: int

    @property
    def missing(self) -> int:
        return max(0, self.total - self.covered)


class Registry:
    """Reads and writes of ``embedding_models``, and each model's vectors as a whole."""

    def __init__(self, db: Database, *, hnsw_m: int = 16, hnsw_ef_construction: int = 64) -> None:
        self.db = db
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction

    def ensure_model(
        self, model_id: str, dimension: int, config: dict[str, str] | None = None, *, create_index: bool = True
    ) -> Model:
        """Register a model (active if the collection has none yet, else ``building``) and its HNSW index.

        Idempotent. ``config`` holds the settings that identify the model (provider, model version),
        never secrets: workers rebuild the provider of a model being built from it.
        """
        with translate_errors("registering the embedding model"), self.db.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            row = conn.execute(
                "SELECT model_id, dimension, state FROM embedding_models WHERE model_id = %s", (model_id,)
            ).fetchone()
            if row is None:
                has_active = conn.execute("SELECT 1 FROM embedding_models WHERE state = 'active'").fetchone()
                state = "building" if has_active else "active"
                conn.execute(
                    "INSERT INTO embedding_models (model_id, dimension, state, config, activated_at) "
                    "VALUES (%s, %s, %s, %s, CASE WHEN %s = 'active' THEN now() END)",
                    (model_id, dimension, state, json.dumps(config or {}), state),
                )
                row = (model_id, dimension, state)
                drop_model_indexes(conn, model_id, keep=index_name(model_id, dimension))
            elif row[1] != dimension:
                raise InvalidInput(
                    f"model {model_id} is registered with {row[1]} dimensions but the provider returns {dimension}"
                )
            elif row[2] == "retired":
                # Registered again (e.g. a re-embedding back to an earlier model): build it afresh.
                conn.execute("UPDATE embedding_models SET state = 'building' WHERE model_id = %s", (model_id,))
                row = (model_id, dimension, "building")
            if create_index:
                create_model_index(conn, model_id, dimension, self.hnsw_m, self.hnsw_ef_construction)
        return Model(*row)

    def models(self) -> list[ModelStatus]:
        """Every registered model with its state, config and coverage of the indexed images."""
        with translate_errors("reading the embedding models"), self.db.pool.connection() as conn:
            return self._models_on(conn)

    @staticmethod
    def _models_on(conn: psycopg.Connection[Any]) -> list[ModelStatus]:
        total_row = conn.execute("SELECT count(*) FROM images WHERE status = 'indexed'").fetchone()
        total = int(total_row[0]) if total_row else 0
        rows = conn.execute(
            """SELECT m.model_id, m.dimension, m.state, m.config,
                      (SELECT count(*) FROM image_vectors v JOIN images i ON i.id = v.image_id
                        WHERE v.model_id = m.model_id AND i.status = 'indexed' AND v.sha256 = i.sha256)
               FROM embedding_models m ORDER BY m.state = 'active' DESC, m.created_at, m.model_id"""
        ).fetchall()
        return [ModelStatus(Model(r[0], r[1], r[2]), dict(r[3] or {}), int(r[4]), total) for r in rows]

    def model_status(self, model_id: str) -> ModelStatus | None:
        return next((m for m in self.models() if m.model.model_id == model_id), None)

    def activate(self, model_id: str, *, force: bool = False) -> ModelStatus:
        """Make ``model_id`` the one queries use, in one transaction; refuses while coverage is incomplete."""
        with translate_errors("activating a model"), self.db.pool.connection() as conn, conn.transaction():
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
                "UPDATE embedding_models SET state = 'active', activated_at = now() WHERE model_id = %s", (model_id,)
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
        with translate_errors("storing a vector"), self.db.pool.connection() as conn:
            cur = conn.execute(
                """INSERT INTO image_vectors (image_id, model_id, sha256, embedding)
                   SELECT id, %s, sha256, %s FROM images WHERE id = %s AND sha256 = %s AND status = 'indexed'
                   ON CONFLICT (image_id, model_id) DO UPDATE
                       SET sha256 = EXCLUDED.sha256, embedding = EXCLUDED.embedding, created_at = now()""",
                (model_id, PgVector(np.asarray(vector, dtype=np.float32)), iid, sha256),
            )
            return cur.rowcount > 0

    def drop_model(self, model_id: str) -> int:
        """Remove a model that is not active, its vectors and its index; returns how many vectors went."""
        with translate_errors("dropping a model"), self.db.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            state = conn.execute("SELECT state FROM embedding_models WHERE model_id = %s", (model_id,)).fetchone()
            if state is None:
                raise InvalidInput(f"model {model_id} is not registered")
            if state[0] == "active":
                raise InvalidInput(f"model {model_id} is the active model: activate another one before dropping it")
            deleted = conn.execute("DELETE FROM image_vectors WHERE model_id = %s", (model_id,)).rowcount
            conn.execute("DELETE FROM embedding_models WHERE model_id = %s", (model_id,))
            drop_model_indexes(conn, model_id)
        return deleted

    def active_model(self) -> Model | None:
        with translate_errors("reading the active model"), self.db.pool.connection() as conn:
            row = conn.execute(
                "SELECT model_id, dimension, state FROM embedding_models WHERE state = 'active'"
            ).fetchone()
        return Model(*row) if row else None

    def target_models(self) -> list[Model]:
        """Models ingestion writes: the active one first, then any being built by a re-embedding."""
        with translate_errors("reading the embedding models"), self.db.pool.connection() as conn:
            rows = conn.execute(
                "SELECT model_id, dimension, state FROM embedding_models WHERE state IN ('active', 'building') "
                "ORDER BY state = 'active' DESC, model_id"
            ).fetchall()
        return [Model(*r) for r in rows]
