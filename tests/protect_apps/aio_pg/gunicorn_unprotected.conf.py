preload_app = True
worker_class = "uvicorn_worker.UvicornWorker"
