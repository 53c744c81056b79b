import forkpool

def app(environ, start_response):
    with forkpool.get_pool().connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        body = f"served by backend {cur.fetchone()[0]}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
