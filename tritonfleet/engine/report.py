"""What a person sees while a run works (stderr) and the recap at its end; `--json` goes to stdout."""

from __future__ import annotations

import json
import sys
import threading

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tritonfleet import secrets

STYLE = {"ok": "green", "changed": "yellow", "failed": "bold red", "skipped": "cyan", "unreachable": "bold red"}


def redact(text):
    """`text` with every registered secret value (raw, and as rich markup escapes it) replaced.

    Every string the Reporter prints and every string in the `--json` report goes through here, and so do
    the errors the CLI prints."""
    if not isinstance(text, str) or not text:
        return text
    for value in secrets.registered():
        if value in text:
            text = text.replace(value, secrets.REDACTED)
        escaped = escape(value)
        if escaped != value and escaped in text:
            text = text.replace(escaped, secrets.REDACTED)
    return text


def redact_data(data):
    """A copy of a JSON-able structure with every string (keys too) redacted."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {redact_data(k): redact_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v) for v in data]
    if isinstance(data, set):
        return [redact_data(v) for v in sorted(data, key=str)]
    return data


class Reporter:
    def __init__(self, json_output: bool = False, verbose: bool = False, console: Console | None = None,
                 diff: bool = False):
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True,
                                          width=None if sys.stderr.isatty() else 160)
        self.json_output = json_output
        self.verbose = verbose
        self.diff = diff  # show file diffs (`--diff`), as Ansible: only when asked; --json has them either way
        self._lock = threading.Lock()

    def add_secrets(self, values) -> None:
        """Values to redact from everything this run prints or dumps (the runner passes them)."""
        secrets.register(values)

    def _print(self, text: str) -> None:
        with self._lock:
            self.console.print(redact(text))

    def info(self, msg: str) -> None:
        self._print(f"[dim]{escape(msg)}[/dim]")

    def start(self, book, hosts, check: bool) -> None:
        mode = " [yellow](check mode: nothing will change)[/yellow]" if check else ""
        self._print(f"[bold]{escape(book.path.name)}[/bold] on {len(hosts)} host(s): "
                    f"{escape(', '.join(h.name for h in hosts))}{mode}")

    def progress(self, host: str, msg: str) -> None:
        self._print(f"  {escape(host)} [dim]… {escape(msg)}[/dim]")

    def step(self, host: str, task, outcome, handler: bool = False) -> None:
        status = outcome.status
        kind = "handler " if handler else ""
        line = f"  {escape(host)} [{STYLE[status]}]{status:<8}[/{STYLE[status]}] {kind}{escape(task.name)}"
        if outcome.msg and (status != "ok" or outcome.show or self.verbose):
            body = escape(outcome.msg)
            line += f"\n{body}" if "\n" in outcome.msg else f" [dim]— {body}[/dim]"
        if outcome.diff and self.diff:
            line += "\n" + escape(outcome.diff.rstrip())
        if outcome.failed and outcome.data.get("journal"):
            line += "\n    last lines of the service journal:\n" + escape(
                "\n".join("      " + ln for ln in outcome.data["journal"].splitlines()))
        self._print(line)

    def failed_host(self, host: str, msg: str) -> None:
        self._print(f"  {escape(host)} [bold red]FAILED[/bold red] {escape(msg)}")

    def unreachable(self, host: str, msg: str) -> None:
        self._print(f"  {escape(host)} [bold red]UNREACHABLE[/bold red] {escape(msg)}")

    def recap(self, result) -> None:
        table = Table(title="recap" + (" (check mode)" if result.check else ""), title_justify="left")
        for col in ("host", "ok", "changed", "failed", "skipped", "unreachable", "sent", "release"):
            table.add_column(col)
        for h in result.hosts:
            table.add_row(h.name, str(h.counts["ok"]), str(h.counts["changed"]), str(h.counts["failed"]),
                          str(h.counts["skipped"]), "yes" if h.unreachable else "", _bytes(h.bytes_sent),
                          h.release_after or h.live_release.rsplit("/", 1)[-1])
        with self._lock:
            self.console.print(table)
            # Ansible's recap line, so habits and scripts that grep for `changed=0` keep working.
            for h in result.hosts:
                self.console.print(redact(f"{h.name:<20} : ok={h.counts['ok']} changed={h.counts['changed']} "
                                   f"unreachable={int(h.unreachable)} failed={h.counts['failed']} "
                                   f"skipped={h.counts['skipped']}"), highlight=False)
        if self.json_output:
            json.dump(redact_data(json.loads(json.dumps(result.as_dict(), default=str))), sys.stdout, indent=2)
            sys.stdout.write("\n")


    def rollout_recap(self, result) -> None:
        table = Table(title="rollout recap", title_justify="left")
        for col in ("host", "batch", "result", "release before", "release after", "sent", "error"):
            table.add_column(col)
        for h in result.hosts:
            style = "green" if h.state in ("ok", "changed") else "yellow" if h.state == "not reached" else "bold red"
            table.add_row(h.name, str(h.batch or ""), f"[{style}]{escape(h.state)}[/{style}]", h.release_before,
                          h.release_after, _bytes(h.bytes_sent), escape(h.error.splitlines()[0] if h.error else ""))
        with self._lock:
            self.console.print(table)
            if result.stopped:
                self.console.print(f"[bold red]rollout stopped:[/bold red] {escape(result.stopped)}")
        if self.json_output:
            json.dump(result.as_dict(), sys.stdout, indent=2, default=str)
            sys.stdout.write("\n")


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
