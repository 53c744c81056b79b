from flask import Flask
from forkpool.flask import ForkPool

db = ForkPool()

def create_app():
    app = Flask(__name__)
    db.init_app(app)

    @app.get("/")
    def backend():
        with db.connection().cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            return {"backend_pid": cur.fetchone()[0]}

    return app
