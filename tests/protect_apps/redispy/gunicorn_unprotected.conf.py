import os

preload_app = True
max_requests = 15
max_requests_jitter = 5
if os.environ.get("VARIANT") == "asyncio":
    worker_class = "uvicorn_worker.UvicornWorker"
