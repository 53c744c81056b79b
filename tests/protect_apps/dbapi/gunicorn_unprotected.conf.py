preload_app = True
max_requests = 10
max_requests_jitter = 3
