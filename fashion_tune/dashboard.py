"""`fashion-tune dashboard`: optuna-dashboard on a sweep's Optuna journal, live while the sweep runs.

The sweep's searcher appends every suggestion, intermediate value (ASHA's rungs) and outcome to the
journal (`fashion_tune.study`); the dashboard reads it on every request, so trials, intermediate
values, importances and the Pareto front of a running sweep show as they happen.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from fashion_tune.cluster import is_uri
from fashion_tune.errors import FashionTuneError
from fashion_tune.study import JOURNAL_FILE, find_journal, journal_storage, study_name_in

DEFAULT_HOST = "127.0.0.1"  # this machine only; --host 0.0.0.0 shows it to the network
DEFAULT_PORT = 8080


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request: the page polls the API while a long request (importances) runs."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the page polls every few seconds; no line per request
        pass


def study_of(experiment_dir: str | os.PathLike) -> tuple[Path, str]:
    """The journal of an experiment and the name of its study, or a one-line error saying what is missing."""
    location = str(experiment_dir)
    if not is_uri(location) and not Path(location).is_dir():
        raise FashionTuneError(f"{location} is not a directory; give a sweep's directory, e.g. ray_results/NAME")
    journal, name = find_journal(location)
    if not journal.is_file():
        raise FashionTuneError(f"{location} has no Optuna journal ({journal}); sweeps keep one ({JOURNAL_FILE}) "
                               "from the moment they start, so this one is older or never started")
    return journal, study_name_in(journal, name)


def serve(experiment_dir: str | os.PathLike, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          echo: Callable[[str], None] = print) -> None:
    """Serve optuna-dashboard on the experiment's journal until Ctrl-C; prints the study's URL first."""
    import optuna_dashboard

    journal, name = study_of(experiment_dir)
    storage = journal_storage(journal)
    study_id = storage.get_study_id_from_name(name)
    try:
        server = make_server(host, port, optuna_dashboard.wsgi(storage), server_class=_Server,
                             handler_class=_QuietHandler)
    except OSError as exc:
        raise FashionTuneError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                               "pick another --port (or --host)") from None
    shown = f"[{host}]" if ":" in host else host
    echo(f"optuna-dashboard for study {name} ({journal})")
    echo(f"  http://{shown}:{server.server_port}/dashboard/studies/{study_id}")
    echo("Ctrl-C stops it; the sweep is not affected.")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
