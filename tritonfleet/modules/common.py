"""What modules of every topic share: the changed/would-change outcome and the atomic symlink switch."""

from __future__ import annotations

import shlex

from tritonfleet.engine.spec import Outcome

q = shlex.quote


def would(ctx, msg: str, **kw) -> Outcome:
    """A change made, or in check mode one that would be made: the same message, prefixed with "would"."""
    return Outcome(changed=True, msg=("would " if ctx.check else "") + msg, **kw)


def switch_link(ctx, link: str, target: str) -> None:
    """Point `link` at `target` atomically: a new symlink renamed over the old one."""
    tmp = f"{link}.tritonfleet-tmp"
    ctx.conn.run(f"ln -sfn {q(target)} {q(tmp)} && mv -Tf {q(tmp)} {q(link)}")
