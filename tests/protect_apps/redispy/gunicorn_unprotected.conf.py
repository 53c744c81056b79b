import os

preload_app = True
max_requests = 10
max_requests_jitter = 3
if os.environ.get("VARIANT") == "asyncio":
    worker_class = "uvicorn_worker.UvicornWorker"
