"""Every `forkpool` command and option, the library's and the suite's, on one framework (argparse).

The list below is every command, option and default the command had when the suite's commands still
ran on click: each `--help` must work and list exactly these options, each option must still be
parsed, and a user's mistake is one line on stderr with exit 2, whichever command it is.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from forkpool import cli
from harness.cli import FAULT_SCENARIOS, PARSERS

ROOT = Path(__file__).resolve().parents[1]

# command -> {option: what its help says of the default (None: it names none)}; "SCENARIO" is a positional.
COMMANDS: dict[str, dict[str, str | None]] = {
    "budget": {
        "--app": None,
        "--web-workers": "Default 2 (env WEB_CONCURRENCY).",
        "--web-threads": "Default 1 (env WEB_THREADS).",
        "--worker-concurrency": "Default 2 (env WORKER_CONCURRENCY).",
        "--pool-size": "Default 4 (env DB_POOL_SIZE).",
        "--asgi-workers": "Default 0.",
        "--other-clients": "Default 0.",
        "--hosts": "Default 1 (env DB_BUDGET_HOSTS).",
        "--pgbouncer-pool-size": None,
        "--pgbouncer-reserve": "Default 0.",
        "--max-client-conn": "Default 100 (PgBouncer's).",
        "--max-connections": None,
        "--superuser-reserved": "Default 3.",
        "--reserved": "Default 0.",
    },
    "doctor": {
        "--pid": None,
        "--dsn": "(default: DATABASE_URL)",
        "--redis-url": None,
        "--pool-size": None,
        "--app": None,
        "--idle-in-transaction": "Default 60.",
        "--json": None,
        "--watch": "(default 2)",
    },
    "demo": {"--report": None, "--no-contrast": None, "--pgbouncer": None},
    "loadtest": {
        "--web-workers": "Default 3.",
        "--web-threads": "Default 1.",
        "--worker-concurrency": "Default 2.",
        "--pool-size": "Default 4.",
        "--duration": "Default 20.",
        "--users": "Default 10.",
        "--task-rate": "Default 5.",
        "--max-requests": "Default 0.",
        "--max-tasks-per-child": "Default 0.",
        "--preload": "Default --no-preload.",
        "--no-preload": "Default --no-preload.",
        "--kill-workers": "Default 0.",
        "--max-connections": "Default 100.",
        "--json": None,
        "--report": None,
        "--asgi-workers": "Default 0.",
        "--naive": None,
        "--stack": "Default forkpool.",
        "--hosts": "Default 1.",
        "--pgbouncer": None,
        "--pgbouncer-pool-size": "Default 10.",
        "--web-server": "Default gunicorn.",
        "--task-runner": "Default celery.",
    },
    "up": {
        "--port": "Default 8000 (env PORT).",
        "--web-workers": "Default 2 (env WEB_CONCURRENCY).",
        "--web-threads": "Default 1 (env WEB_THREADS).",
        "--worker-concurrency": "Default 2 (env WORKER_CONCURRENCY).",
        "--pool-size": "Default 4 (env DB_POOL_SIZE).",
        "--pgbouncer": None,
    },
    "soak": {"--duration": "Default 600.", "--report": None, "--faults": None},
    "fault": {"SCENARIO": "or all, every one in turn", "--json": None, "--suite": None},
    "stats": {
        "--url": "(default: the suite `forkpool up` started, else :8000)",
        "--database-url": None,
        "--json": None,
    },
    "initdb": {},
}

# What each suite command runs with when given no option (its parser's defaults), every option included.
SUITE_DEFAULTS: dict[str, dict[str, object]] = {
    "demo": {"report_dir": None, "no_contrast": False, "pgbouncer": False},
    "loadtest": {
        "web_workers": 3,
        "web_threads": 1,
        "worker_concurrency": 2,
        "pool_size": 4,
        "duration": 20.0,
        "users": 10,
        "task_rate": 5.0,
        "max_requests": 0,
        "max_tasks_per_child": 0,
        "preload": False,
        "kill_workers": 0,
        "max_connections": 100,
        "json_path": None,
        "report_dir": None,
        "asgi_workers": 0,
        "naive": False,
        "stack": "forkpool",
        "hosts": 1,
        "pgbouncer": False,
        "pgbouncer_pool_size": 10,
        "web_server": "gunicorn",
        "task_runner": "celery",
    },
    "up": {
        "port": 8000,
        "web_workers": 2,
        "web_threads": 1,
        "worker_concurrency": 2,
        "pool_size": 4,
        "pgbouncer": False,
    },
    "soak": {"duration": 600.0, "report_dir": None, "faults": False},
    "fault": {"scenario": "pg-restart", "json_path": None, "suite": False},  # given: the one argument it requires
    "stats": {"url": None, "database_url": None, "as_json": False},
    "initdb": {},
}

# The variables some defaults come from: unset, so that the defaults above are what --help shows.
DEFAULT_SOURCES = ("WEB_CONCURRENCY", "WEB_THREADS", "WORKER_CONCURRENCY", "DB_POOL_SIZE", "DB_BUDGET_HOSTS", "PORT")
FLAGS = {
    "doctor": {"--json"},
    "demo": {"--no-contrast", "--pgbouncer"},
    "loadtest": {"--preload", "--no-preload", "--naive", "--pgbouncer"},
    "up": {"--pgbouncer"},
    "soak": {"--faults"},
    "stats": {"--json"},
    "fault": {"--suite"},
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DEFAULT_SOURCES}
    env.update(COLUMNS="200", **extra)  # one help entry per line where it fits
    return env


def forkpool(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "forkpool", *args], cwd=ROOT, env=clean_env(**env), capture_output=True, text=True
    )


def forkpool_all(*calls: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Several `forkpool` runs side by side (each is mostly interpreter start-up)."""
    with ThreadPoolExecutor(4) as runner:
        return list(runner.map(lambda call: forkpool(*call), calls))


def help_entries(text: str) -> dict[str, str]:
    """{option or positional: its help text} from argparse's --help output."""
    entries: dict[str, str] = {}
    current: list[str] = []
    for line in text.splitlines():
        if re.match(r"^  \S", line):
            head, _, rest = line.strip().partition("  ")
            current = re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", head) or [head]
            for name in current:
                entries[name] = rest.strip()
        elif line.startswith("   ") and current:
            for name in current:
                entries[name] = f"{entries[name]} {line.strip()}".strip()
        else:
            current = []
    return entries


def one_error_line(result: subprocess.CompletedProcess | tuple[int, str, str], command: str) -> str:
    code, out, err = result if isinstance(result, tuple) else (result.returncode, result.stdout, result.stderr)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == cli.EXIT_USAGE, (command, code, err)
    assert "Traceback" not in err and out == "", (command, out, err)
    assert len(lines) == 1 and lines[0].startswith("forkpool"), (command, err)
    return lines[0]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_overview_lists_every_command():
    shown, bare = forkpool_all(("--help",), ())
    assert shown.returncode == cli.EXIT_OK, shown.stderr
    listed = re.findall(r"^  ([a-z]+) ", shown.stdout, re.M)
    assert set(listed) == set(COMMANDS), listed
    assert bare.returncode == cli.EXIT_USAGE and bare.stdout == shown.stdout  # no command: the same, exit 2


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_help_lists_exactly_its_options_and_defaults(name: str, capsys, monkeypatch):
    for var in DEFAULT_SOURCES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # one help entry per line where it fits
    code, out, err = run_main(capsys, name, "--help")
    assert code == cli.EXIT_OK and err == "", err
    assert out.startswith(f"usage: forkpool {name} "), out[:200]
    entries = help_entries(out)
    assert set(entries) == {"-h", "--help", *COMMANDS[name]}, sorted(entries)
    for option, default in COMMANDS[name].items():
        assert entries[option], option  # every option says what it does
        if default is not None:
            assert default in entries[option], (option, entries[option])
    if name == "fault":
        assert all(scenario in entries["SCENARIO"] for scenario in FAULT_SCENARIOS[1:]), entries["SCENARIO"]


def test_the_installed_command_shows_a_commands_help():
    """The same through `python -m forkpool` (what the console script runs): the suite's command found
    through its entry point, every option listed."""
    result = forkpool("loadtest", "--help")
    assert result.returncode == cli.EXIT_OK and result.stderr == "", result.stderr
    assert set(help_entries(result.stdout)) == {"-h", "--help", *COMMANDS["loadtest"]}


@pytest.mark.parametrize("name", sorted(SUITE_DEFAULTS))
def test_suite_command_defaults(name: str, monkeypatch):
    for var in DEFAULT_SOURCES:
        monkeypatch.delenv(var, raising=False)
    argv = ["pg-restart"] if name == "fault" else []
    assert vars(PARSERS[name](f"forkpool {name}").parse_args(argv)) == SUITE_DEFAULTS[name]


def test_the_suite_commands_are_the_entry_points():
    assert set(PARSERS) == set(COMMANDS) - set(cli.LIBRARY_COMMANDS)
    assert set(cli.available_commands()) == set(COMMANDS)


def _mistake(name: str, option: str) -> list[str]:
    """An argv that misuses `option` of command `name`: the parser must name the option in its one line."""
    if option == "SCENARIO":
        return [name, "no-such-scenario"]
    if option == "--watch":
        return [name, option, "soon"]  # its value may be left out, but must be a number
    if option in FLAGS.get(name, set()):
        return [name, f"{option}=yes"]  # a flag takes no value
    return [name, option]  # the value left out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_is_parsed_and_a_misuse_is_one_line(name: str, capsys, monkeypatch):
    for var in DEFAULT_SOURCES:
        monkeypatch.delenv(var, raising=False)
    for option in COMMANDS[name]:
        line = one_error_line(run_main(capsys, *_mistake(name, option)), f"{name} {option}")
        named = line.removeprefix(f"forkpool {name}: argument ").split(":")[0]
        assert option in named.split("/"), (option, line)  # --preload/--no-preload: one argument, two flags
        assert line.endswith(f"(see forkpool {name} --help)"), line


MISTAKES = {
    ("nosuch",): "forkpool: no command 'nosuch'",
    ("loadtest", "--pool-size", "zero"): "--pool-size: 'zero' is not a whole number",
    ("loadtest", "--no-such-option"): "unrecognized arguments: --no-such-option",
    ("loadtest", "--stack", "rails"): "invalid choice: 'rails'",
    ("loadtest", "--duration", "0.5"): "--duration: '0.5' is below 1",
    ("loadtest", "--max-connections", "9"): "--max-connections: '9' is below 10",
    ("loadtest", "--asgi-workers", "1", "--naive"): "--asgi-workers runs forkpool's asyncio pool",
    ("up", "--port", "70000"): "--port: '70000' is above 65535",
    ("soak", "--duration", "nan"): "'nan' is not a finite number",
    ("fault",): "the following arguments are required: SCENARIO",
    ("fault", "latency", "--suite"): "--suite applies to the failover scenario only",
    ("demo", "extra"): "unrecognized arguments: extra",
    ("budget", "--reserved", "-1"): "--reserved: '-1' is below 0",
    ("doctor", "--idle-in-transaction", "long"): "--idle-in-transaction: invalid float value: 'long'",
    ("stats", "--url"): "--url: expected one argument",
    ("initdb", "--force"): "unrecognized arguments: --force",
}


def test_mistakes_are_one_line_with_exit_2(capsys, tmp_path):
    file = tmp_path / "a-file"
    file.write_text("")
    cases = {
        **MISTAKES,
        ("loadtest", "--json", str(tmp_path)): "is a directory",
        ("loadtest", "--report", str(file)): "is a file",
    }
    for args, expected in cases.items():
        line = one_error_line(run_main(capsys, *args), " ".join(args))
        assert expected in line, (args, line)


def test_the_installed_command_takes_mistakes_in_one_line():
    """The same through `python -m forkpool`: an unknown command, a mistake in the library's and the suite's."""
    cases = [("nosuch",), ("loadtest", "--pool-size", "zero"), ("budget", "--reserved", "-1")]
    for args, result in zip(cases, forkpool_all(*cases), strict=True):
        assert MISTAKES[args] in one_error_line(result, " ".join(args))


def test_a_default_from_the_environment_is_checked_when_used_and_named(capsys, monkeypatch):
    for var in DEFAULT_SOURCES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WEB_CONCURRENCY", "lots")
    line = one_error_line(run_main(capsys, "up"), "up")
    assert "argument --web-workers: WEB_CONCURRENCY='lots' is not a whole number" in line, line
    code, out, _ = run_main(capsys, "budget", "--web-workers", "3", "--max-connections", "100")
    assert code == cli.EXIT_OK and "web:     3 workers" in out, out  # given: the variable is not read
    monkeypatch.setenv("WEB_CONCURRENCY", "7")
    code, out, _ = run_main(capsys, "up", "--help")
    assert code == cli.EXIT_OK and "Default 7 (env WEB_CONCURRENCY)." in help_entries(out)["--web-workers"]
    assert PARSERS["up"]("forkpool up").parse_args([]).web_workers == 7
    monkeypatch.setenv("PORT", "http")
    line = one_error_line(run_main(capsys, "up"), "up")
    assert "argument --port: PORT='http' is not a whole number" in line, line


def test_exit_codes_are_the_librarys_for_every_command(capsys, monkeypatch):
    """The protocol a package's command follows: return a code, or raise; main() turns each into one line."""
    assert (cli.EXIT_OK, cli.EXIT_FAILED, cli.EXIT_USAGE, cli.EXIT_DOES_NOT_FIT, cli.EXIT_INTERRUPTED) == (
        0,
        1,
        2,
        3,
        130,
    )

    def returns(argv: list[str], prog: str) -> int:
        return cli.EXIT_DOES_NOT_FIT

    def fails(argv: list[str], prog: str) -> int:
        raise cli.CommandFailed("the server would not start: postgresql://u:secret@db/x")

    def misused(argv: list[str], prog: str) -> int:
        raise cli.UsageError("--a and --b: give one of them")

    def interrupted(argv: list[str], prog: str) -> int:
        raise KeyboardInterrupt

    for name, command in [("returns", returns), ("fails", fails), ("misused", misused), ("interrupted", interrupted)]:
        monkeypatch.setitem(cli.LIBRARY_COMMANDS, name, command)
    assert run_main(capsys, "returns") == (3, "", "")
    code, out, err = run_main(capsys, "fails")
    assert (code, out, err) == (1, "", "forkpool fails: the server would not start: postgresql://u:***@db/x\n")
    assert run_main(capsys, "misused") == (2, "", "forkpool misused: --a and --b: give one of them\n")
    assert run_main(capsys, "interrupted") == (130, "", "")


def test_the_command_needs_no_click():
    """Every command's --help and a mistake in each, with click made unimportable."""
    program = (
        "import sys\n"
        "sys.modules['click'] = None\n"
        "from forkpool.cli import main\n"
        f"codes = [main([name, '--help']) for name in {sorted(COMMANDS)!r}]\n"
        f"codes += [main([name, '--no-such-option']) for name in {sorted(COMMANDS)!r}]\n"
        "print(codes, 'click' in sys.modules and sys.modules['click'] is not None)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last == f"{[0] * len(COMMANDS) + [2] * len(COMMANDS)} False", last
    assert "Traceback" not in result.stderr
