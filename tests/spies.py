"""Test helper: watch whether a lean path accepted each call."""


def acceptance_spy(monkeypatch, owner, name):
    """Wrap ``owner.name`` (a function returning None when it declines); returns a list that gets, per call,
    whether it accepted."""
    seen = []
    inner = getattr(owner, name)

    def spy(*args):
        out = inner(*args)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(owner, name, spy)
    return seen
