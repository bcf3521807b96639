"""Releases on a host: a Triton tree and a model repository that went live together.

Triton trees live in `/opt/tritonfleet/releases/<bundle-id>`, model repositories in
`<model path>-releases/<digest>`; `/opt/tritonserver` and the model path are symlinks to the live ones, so a
release switch (or a rollback) is two atomic renames. The host keeps a stack of releases, newest last, in
`/var/lib/tritonfleet/releases`: a deploy pushes onto it, a rollback pops the live one. The newest
`keep` releases stay on disk; older trees and repositories are removed.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonfleet.engine.hostlock import STATE_DIR

HISTORY_FILE = f"{STATE_DIR}/releases"


@dataclass(frozen=True)
class Release:
    bundle_id: str
    models_digest: str  # first 16 hex digits of the repository digest
    created: str = ""

    @property
    def id(self) -> str:
        return f"{self.bundle_id}+{self.models_digest[:12]}"

    def line(self) -> str:
        return f"{self.bundle_id} {self.models_digest} {self.created}".rstrip()


def parse_history(text: str) -> list[Release]:
    releases = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            releases.append(Release(parts[0], parts[1], parts[2] if len(parts) > 2 else ""))
    return releases


def pushed(history: list[Release], release: Release) -> list[Release]:
    """The stack after `release` went live (a release deployed again moves to the top)."""
    return [r for r in history if r.id != release.id] + [release]


def popped(history: list[Release]) -> tuple[Release, list[Release]]:
    """The release a rollback goes back to, and the stack after it."""
    if len(history) < 2:
        raise ValueError("no previous release to roll back to")
    return history[-2], history[:-1]


def kept(history: list[Release], keep: int) -> list[Release]:
    return history[-max(1, keep):]


def models_store(models_path: str) -> str:
    """Where the model repositories of all kept releases live, beside the live path."""
    return models_path.rstrip("/") + "-releases"


def render_history(history: list[Release]) -> str:
    return "".join(r.line() + "\n" for r in history)
