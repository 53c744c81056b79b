"""Flask-SQLAlchemy's app-factory shape: ``protect(db)`` before ``create_app()`` calls ``db.init_app(app)``.

Run under Gunicorn with preload_app and WITHOUT forkpool's hooks: the engine
Flask-SQLAlchemy makes in init_app is used in the master (create_all), and
each worker must let go of the master's socket by itself. TEST_CONFIG=1 is the
way Flask-SQLAlchemy users run their tests: ``SQLALCHEMY_DATABASE_URI="sqlite://"``.
PROTECT=0 leaves protect() out.
"""

import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import func, select, text

import forkpool

db = SQLAlchemy()
if os.environ.get("PROTECT", "1") == "1":
    forkpool.protect(db)  # before any engine exists


class Visit(db.Model):
    __tablename__ = "forkpool_factory_visit"
    id = db.Column(db.Integer, primary_key=True)


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=os.environ.get("APP_DATABASE_URL"),
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 2, "max_overflow": 0, "pool_timeout": 10},
    )
    if test_config:
        app.config.update(test_config)
    db.init_app(app)
    with app.app_context():  # work in the factory: in the master, under preload_app
        db.create_all()
        if db.engine.dialect.name == "sqlite":
            db.session.add(Visit())
            db.session.commit()
        db.session.execute(text("SELECT 1"))
        db.session.remove()

    @app.get("/")
    def backend():
        try:
            if db.engine.dialect.name == "postgresql":
                found = str(db.session.execute(text("SELECT pg_backend_pid() FROM pg_sleep(0.005)")).scalar())
            else:  # an in-memory database: this worker's copy of the master's, as it was at fork
                found = f"rows={db.session.execute(select(func.count()).select_from(Visit)).scalar()}"
            db.session.remove()
            return f"{os.getpid()} {found}", 200, {"Content-Type": "text/plain"}
        except Exception as exc:  # noqa: BLE001 - the test counts what users would see
            db.session.remove()
            return f"{os.getpid()} error {type(exc).__name__}", 500, {"Content-Type": "text/plain"}

    return app


TEST_CONFIG = {"SQLALCHEMY_DATABASE_URI": "sqlite://", "SQLALCHEMY_ENGINE_OPTIONS": {}}
app = create_app(TEST_CONFIG if os.environ.get("TEST_CONFIG") == "1" else None)
