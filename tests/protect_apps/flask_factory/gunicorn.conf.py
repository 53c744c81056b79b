# No forkpool hooks: protect(db) alone must keep the workers off the master's socket.
preload_app = True
