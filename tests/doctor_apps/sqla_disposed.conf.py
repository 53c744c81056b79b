# The same app done right: the master closes its engine's connections before
# forking (it owns them), and each worker drops whatever it inherited without
# closing it (SQLAlchemy's own recommendation for the child).
preload_app = True
workers = 3


def when_ready(server):
    import sqla_app

    sqla_app.engine.dispose()


def post_fork(server, worker):
    import sqla_app

    sqla_app.engine.dispose(close=False)
