"""`fashion-tune dashboard`: optuna-dashboard on a sweep's Optuna journal, live while the sweep runs.

The sweep's searcher appends every suggestion, intermediate value (ASHA's rungs) and outcome to the
journal (`fashion_tune.search.study`); the dashboard reads it on every request, so trials, intermediate
values, importances and the Pareto front of a running sweep show as they happen.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from fashion_tune.util.errors import FashionTuneError
from fashion_tune.util.files import is_uri
from fashion_tune.search.study import JOURNAL_FILE, Journal, find_journal, journal_storage, refresh_copy, study_name_in

DEFAULT_HOST = "127.0.0.1"  # this machine only; --host 0.0.0.0 shows it to the network
DEFAULT_PORT = 8080
REFRESH_S = 10.0  # how often a copy of a bucket's journal is fetched again


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request: the page polls the API while a long request (importances) runs."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the page polls every few seconds; no line per request
        pass


def study_of(experiment_dir: str | os.PathLike) -> tuple[Journal, str]:
    """The journal of an experiment and the name of its study, or a one-line error saying what is missing."""
    location = str(experiment_dir)
    if not is_uri(location) and not Path(location).is_dir():
        raise FashionTuneError(f"{location} is not a directory; give a sweep's directory, e.g. ray_results/NAME")
    journal = find_journal(location)
    if not journal.path.is_file():
        raise FashionTuneError(f"{location} has no Optuna journal ({journal.copied_from or journal.path}"
                               f"{'/' + JOURNAL_FILE if journal.copied_from else ''}); sweeps keep one ({JOURNAL_FILE}) "
                               "from the moment they start, so this one is older or never started")
    return journal, study_name_in(journal.path, journal.study_name)


def serve(experiment_dir: str | os.PathLike, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          echo: Callable[[str], None] = print, refresh_s: float = REFRESH_S) -> None:
    """Serve optuna-dashboard on the experiment's journal until Ctrl-C; prints the study's URL first.

    A URI experiment's journal, when this is not the machine that writes it, is a copy of the bucket's,
    downloaded again every `refresh_s` seconds (the sweep uploads it at each Tune snapshot).
    """
    import optuna_dashboard

    journal, name = study_of(experiment_dir)
    storage = journal_storage(journal.path)
    study_id = storage.get_study_id_from_name(name)
    try:
        server = make_server(host, port, optuna_dashboard.wsgi(storage), server_class=_Server,
                             handler_class=_QuietHandler)
    except OSError as exc:
        raise FashionTuneError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                               "pick another --port (or --host)") from None
    shown = f"[{host}]" if ":" in host else host
    echo(f"optuna-dashboard for study {name} ({journal.path})")
    if journal.copied_from:
        echo(f"  a copy of {journal.copied_from}/{JOURNAL_FILE}, fetched again every {refresh_s:g} s")
        _keep_fetching(journal, refresh_s)
    echo(f"  http://{shown}:{server.server_port}/dashboard/studies/{study_id}")
    echo("Ctrl-C stops it; the sweep is not affected.")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _keep_fetching(journal: Journal, every_s: float) -> None:
    """A daemon thread that replaces the copy with the bucket's journal every `every_s` seconds.

    The journal is append-only, so each copy extends the last: Optuna's reader, which continues
    from the offset it reached, sees the new records."""
    def fetch() -> None:
        while True:
            time.sleep(every_s)
            try:
                refresh_copy(journal.copied_from, journal.path)
            except Exception as exc:  # noqa: BLE001 - storage hiccups: keep serving the last copy
                logging.getLogger(__name__).warning("could not fetch %s: %s", journal.copied_from, exc)

    threading.Thread(target=fetch, name="journal-fetch", daemon=True).start()
