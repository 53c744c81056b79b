"""What the suite benchmark's app and tasks read and write: tables, statements, task name."""

ITEM_ROWS = 1000
ITEM_QUERY = "SELECT id, name, score FROM bench_items WHERE id = %s"
EVENT_INSERT = "INSERT INTO bench_events (key, pid) VALUES (%s, %s)"
TASK_WRITE_ROW = "bench.write_row"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS bench_items (id integer PRIMARY KEY, name text NOT NULL, score double precision NOT NULL);
INSERT INTO bench_items SELECT g, 'item ' || g, g * 0.5 FROM generate_series(1, {ITEM_ROWS}) g ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS bench_events (id bigserial PRIMARY KEY, key text NOT NULL, pid integer NOT NULL);
"""
