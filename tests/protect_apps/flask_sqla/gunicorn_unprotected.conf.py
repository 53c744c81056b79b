preload_app = True
max_requests = 15
max_requests_jitter = 5
