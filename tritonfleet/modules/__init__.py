"""Modules: each reads facts, compares them with the desired state and runs only what is needed.

Every module returns an Outcome (ok / changed / failed / skipped, a message, a diff for files) and honours
check mode: in check mode it says what it would change and changes nothing. Modules are declared by topic,
each with its argument spec (`engine.spec.module`); MODULES is every module declared in these topics, by name.
"""

from __future__ import annotations

from tritonfleet.engine.spec import Module
from tritonfleet.modules import models, release, server, system, tls


def _declared_in(*topics) -> dict[str, Module]:
    return {m.name: m for topic in topics for m in vars(topic).values() if isinstance(m, Module)}


MODULES: dict[str, Module] = _declared_in(release, system, models, server, tls)
