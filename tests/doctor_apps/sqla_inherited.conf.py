# The engine is created in the master (preload_app) and inherited by every worker.
preload_app = True
workers = 3
